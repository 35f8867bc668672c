"""Time the rmt_kernels extension against the pure-torch references, side by side, on one layer's
activations with a realistic padding mask:

    .venv/bin/python bench/bench_accumulate.py

Defaults: [8, 256, 1536] (SmolLM2-135M's MLP width), float32 and bfloat16, ~20% padding, the number
of threads torch uses. Needs the extension built and importable: `pip install --no-build-isolation -e .`
(or `python setup.py build_ext --inplace` and PYTHONPATH=.). See --help.
"""
import statistics
import time

import click
import torch

import rmt_kernels as rk


def make_mask(batch, seq, pad):
    """Right padding, lengths uniform in [(1 - 2 pad) seq, seq]: about pad of the positions are padding."""
    g = torch.Generator().manual_seed(0)
    lengths = (seq - (torch.rand(batch, generator=g) * 2 * pad * seq).round().long()).clamp(1, seq)
    return torch.arange(seq) < lengths[:, None]


def make_acts(batch, seq, d, dtype, seed):
    return torch.randn(batch, seq, d, generator=torch.Generator().manual_seed(seed)).to(dtype)


def time_calls(fn, reps, warmup, device):
    """Per-call wall times in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


@click.command()
@click.option("--batch", default=8, show_default=True, help="Examples per batch.")
@click.option("--seq", default=256, show_default=True, help="Tokens per example (padded length).")
@click.option("--d", "d", default=1536, show_default=True, help="Neurons in the layer (MLP width).")
@click.option("--dtype", "dtypes", multiple=True, default=("float32", "bfloat16"), show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]), help="Activation dtype (repeatable).")
@click.option("--pad", default=0.2, show_default=True, help="Mean fraction of positions that are padding.")
@click.option("--example-mean/--no-example-mean", default=True, show_default=True,
              help="Also compute per-example means (as the chosen-vs-rejected RMSD needs).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--threads", default=None, type=int, help="torch.set_num_threads (default: torch's choice).")
@click.option("--reps", default=30, show_default=True, help="Timed calls per measurement.")
@click.option("--warmup", default=3, show_default=True, help="Untimed calls first.")
def main(batch, seq, d, dtypes, pad, example_mean, device, threads, reps, warmup):
    """Print ms/call of accumulate_ and accumulate_sq_diff_: extension vs torch reference."""
    rk.set_backend("ext")  # fails with the build command when the extension is missing
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    mask = make_mask(batch, seq, pad)
    tokens = int(mask.sum())
    mask = mask.to(device)
    print(f"[{batch}, {seq}, {d}], {tokens} real tokens ({1 - tokens / (batch * seq):.0%} padding); "
          f"backend {rk.backend(device)}, device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if device.type == "cuda" and rk.backend(device) != "ext-cuda":
        print("note: the extension has no CUDA kernels, so 'ext' below is the torch reference too")
    header = (f"{'op':<20} {'dtype':<9} {'ext median':>10} {'ext min':>8} {'ref median':>10} {'ref min':>8} "
              f"{'speed-up':>8}")
    print(header + "\n" + "-" * len(header))

    def zeros(dtype=torch.float64):
        return torch.zeros(d, dtype=dtype, device=device)

    for op in ("accumulate_", "accumulate_sq_diff_"):
        for name in dtypes:
            acts = make_acts(batch, seq, d, getattr(torch, name), seed=0).to(device)
            count = torch.zeros((), dtype=torch.int64, device=device)
            if op == "accumulate_":
                args = [acts, mask, zeros(), zeros(), zeros(), zeros(torch.int64), count]
                if example_mean:
                    args.append(torch.empty(batch, d, device=device))
                ext, ref = rk.accumulate_, rk.accumulate_ref
            else:
                other = make_acts(batch, seq, d, getattr(torch, name), seed=1).to(device)
                args = [acts, other, mask, zeros(), count]
                ext, ref = rk.accumulate_sq_diff_, rk.accumulate_sq_diff_ref
            t_ext = time_calls(lambda: ext(*args), reps, warmup, device)
            t_ref = time_calls(lambda: ref(*args), reps, warmup, device)
            med_ext, med_ref = statistics.median(t_ext), statistics.median(t_ref)
            print(f"{op:<20} {name:<9} {med_ext:>10.2f} {min(t_ext):>8.2f} {med_ref:>10.2f} {min(t_ref):>8.2f} "
                  f"{med_ref / med_ext:>7.1f}x")
    print("ms per call; speed-up = ref median / ext median")


if __name__ == "__main__":
    main()
