"""Cost of experiments/neurons.py's streaming scoring pass, in one run on real HH-RLHF pairs (harmless-base test):

    python bench/bench_neurons.py                                             # tiny-gpt2, a few minutes on 2 cores
    python bench/bench_neurons.py --model smollm2-135m-instruct-q4 --pairs 32 --naive-pairs 16 --memory-pairs 20 \\
        --memory-pairs 200

Prints one table:
 (a) the scoring pass (hooks on every layer + rmt_kernels.accumulate_ with per-example means) against the same
     forward passes on the same batches with no hooks: overhead %;
 (b) end to end (tokenise, score, write magnitude.h5 with pair_rmsd) against the straightforward version: every
     text padded to --max-length in arrival order, Python hooks that keep the full activation tensors, the
     statistics computed from them at the end and per-neuron results dumped as JSON; also checks both agree;
 (c) accumulate_ alone on one real layer's activations: the C++/CUDA extension against the pure-torch reference;
 (d) peak resident memory of the scoring pass in fresh subprocesses for each --memory-pairs: what the pass adds
     on top of the loaded model and data, beside the size of the tokenised dataset.
Times are the minimum over --reps repetitions (the machine is shared).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

import click
import torch

import common
import rmt_kernels as rk
from bench_accumulate import time_calls


@click.command(context_settings={"show_default": True})
@click.option("--model", default="tiny-gpt2", help="Backbone (registry name, hub id or local dir), fresh reward head.")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              default=str(REPO.parent / "shared" / "data" / "hh-rlhf"), help="HH-RLHF folder with a test split.")
@click.option("--pairs", type=click.IntRange(min=1), default=128, help="Pairs for (a) and (c).")
@click.option("--naive-pairs", type=click.IntRange(min=1), default=100,
              help="Pairs for (b); the straightforward version holds all their activations.")
@click.option("--memory-pairs", type=click.IntRange(min=1), multiple=True, default=(100, 1000),
              help="Pair counts for (d); repeatable.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, help="Pairs per forward pass.")
@click.option("--max-length", type=click.IntRange(min=8), default=512, help="Tokens per transcript (end kept).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", help="Compute device.")
@click.option("--reps", type=click.IntRange(min=1), default=5, help="Repetitions of each timing.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch.set_num_threads (default: torch's choice); 1 is steadier on a busy machine.")
@click.option("--child-pairs", type=int, default=None, hidden=True, help="Internal: one memory measurement.")
@click.option("--child-plain", is_flag=True, hidden=True, help="Internal: measure the plain forward instead.")
def main(**cfg):
    """The bench as one straight run (or, with the hidden --child-* options, one memory measurement in a fresh
    process): its measurements share the model and batches and read in the order of the table they print."""
    device = common.resolve_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if cfg["child_pairs"] is not None:
        click.echo(json.dumps(memory_child(cfg, cfg["child_pairs"], cfg["child_plain"], device)))
        return
    pairs = load_pairs(cfg["data_dir"], max(cfg["pairs"], cfg["naive_pairs"]))
    model, tokenizer = common.new_reward_model(cfg["model"], 0)
    model = model.to(device).eval()
    layers, d_mlp = common.mlp_shape(model)
    click.echo(f"model {cfg['model']} ({layers} layers × {d_mlp} MLP units), harmless-base pairs, batch "
               f"{cfg['batch_size']} pairs, max length {cfg['max_length']}, {device}, {torch.get_num_threads()} "
               f"threads, rmt_kernels backend {rk.backend(device)}")
    batches = list(common.pair_batches(*common.encode_pairs(tokenizer, pairs[:cfg["pairs"]], cfg["max_length"]),
                                        cfg["batch_size"], tokenizer.pad_token_id))
    rows = []

    # (a) hooks + accumulation against the bare forward, same batches
    timed = []
    plain, scored = best([lambda: plain_forward(model, batches, device),
                          lambda: timed.append(TimedPass(model).timed_run(batches, device))], cfg["reps"], device)
    hooks = min(timed)
    rows.append(("(a) scoring pass vs plain forward, s", scored, plain, f"{100 * (scored / plain - 1):+.1f} %",
                 "< 5 %"))
    rows.append(("(a) time inside the hooks vs plain forward, s (same runs; steadier under load)", hooks, plain,
                 f"+{100 * hooks / plain:.1f} %", "< 5 %"))

    # (b) end to end against the straightforward version
    few = pairs[:cfg["naive_pairs"]]
    with tempfile.TemporaryDirectory() as tmp:
        scores = {}
        ours, naive = best([lambda: scores.update(ours=ours_end_to_end(model, tokenizer, few, cfg, device, tmp)),
                            lambda: scores.update(naive=naive_end_to_end(model, tokenizer, few, cfg, device, tmp))],
                           cfg["reps"], device)
    agree = (scores["ours"] - scores["naive"]).abs().max().item()
    rows.append((f"(b) end to end vs straightforward, s ({len(few)} pairs; max |Δscore| {agree:.1e})", ours, naive,
                 f"{naive / ours:.1f}× faster", "≥ 3×"))

    # (c) the accumulation op alone, on one real layer of the longest batch
    rows.append(accumulate_row(model, batches[0], device, cfg["reps"]))

    # (d) peak memory in fresh processes
    for n in cfg["memory_pairs"]:
        ours, plain = (memory(cfg, n, flag) for flag in ([], ["--child-plain"]))
        rows.append((f"(d) peak RSS MB, {n} pairs ({ours['tokens']} tokens): above model + tokenised data "
                     f"({ours['loaded_mb']:.0f} MB)", ours["added_mb"], plain["added_mb"],
                     f"pass adds {ours['added_mb'] - plain['added_mb']:+.0f} MB over the plain forward; tokenising "
                     f"added {ours['loaded_mb'] - ours['model_mb']:.0f} MB", "flat in pairs"))

    click.echo("\n| measurement | ours | reference | result | target |\n|---|---:|---:|---|---|")
    for name, ours_value, ref_value, result, target in rows:
        click.echo(f"| {name} | {ours_value:.3f} | {ref_value:.3f} | {result} | {target} |")


def load_pairs(data_dir, n):
    pairs, _ = common.load_hh("harmless", data_dir, "test", "test", 0.2, common.BadRows())
    return common.subsample(pairs, n, 0)


def best(fns, reps, device):
    """Minimum wall time of each fn over reps rounds, the fns interleaved within a round so that a change in the
    machine's load hits them alike; one untimed warm-up each."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, spent in zip(fns, times):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            spent.append(time.perf_counter() - start)
    return [min(spent) for spent in times]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedPass(common.ScoringPass):
    """The scoring pass, also adding up the time spent inside its hooks (accumulation and bookkeeping)."""

    def timed_run(self, batches, device):
        self.hook_seconds = 0.0
        self.run(batches, device, torch.float32)
        return self.hook_seconds

    def record(self, layer, acts):
        synchronize(acts.device)
        start = time.perf_counter()
        super().record(layer, acts)
        synchronize(acts.device)
        self.hook_seconds += time.perf_counter() - start


@torch.inference_mode()
def plain_forward(model, batches, device):
    for _, input_ids, mask in batches:
        model.base_model(input_ids=input_ids.to(device), attention_mask=mask.to(device))


def ours_end_to_end(model, tokenizer, pairs, cfg, device, tmp):
    scoring = common.ScoringPass(model)
    scoring.run(common.pair_batches(*common.encode_pairs(tokenizer, pairs, cfg["max_length"]), cfg["batch_size"],
                                     tokenizer.pad_token_id), device, torch.float32)
    score = scoring.magnitude().float().cpu()
    common.write_neuron_file(Path(tmp) / "magnitude.h5", score, scoring, {"method": "magnitude"}, change=False)
    return score


def naive_end_to_end(model, tokenizer, pairs, cfg, device, tmp):
    """Every text padded to max length in arrival order; hooks keep full activations; statistics at the end."""
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    layers, d_mlp = common.mlp_shape(model)
    kept, masks = [[] for _ in range(layers)], []
    arch = common.arch_of(model)
    handles = [block.get_submodule(arch.act).register_forward_hook(
        lambda module, args, out, i=i: kept[i].append(out.detach().clone())) for i, block in
        enumerate(common.transformer_layers(model))]
    with torch.no_grad():
        for start in range(0, len(texts), cfg["batch_size"] * 2):
            enc = tokenizer(texts[start:start + cfg["batch_size"] * 2], padding="max_length", truncation=True,
                            max_length=cfg["max_length"], return_tensors="pt")
            model.base_model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
            masks.append(enc["attention_mask"].bool().to(device))
    for handle in handles:
        handle.remove()
    mask, n = torch.cat(masks), len(pairs)
    results, score, pair_sq = [], torch.zeros(layers, d_mlp, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for layer in range(layers):
        acts = torch.cat(kept[layer]).double()
        token_means = (acts * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        pair_sq += (token_means[:n] - token_means[n:]).square().sum(1).cpu()
        stats = {}
        for side, rows in (("chosen", slice(0, n)), ("rejected", slice(n, 2 * n))):
            x = acts[rows][mask[rows]]
            stats[side] = {"sum": x.sum(0), "abs_sum": x.abs().sum(0), "sq_sum": x.square().sum(0),
                           "pos_count": (x > 0).sum(0), "tokens": x.shape[0]}
        score[layer] = ((stats["chosen"]["sum"] / stats["chosen"]["tokens"]
                         + stats["rejected"]["sum"] / stats["rejected"]["tokens"]) / 2).cpu()
        for unit in range(d_mlp):
            results.append({"layer": layer, "unit": unit, "score": score[layer, unit].item(),
                            **{f"{side}_{k}": (v if k == "tokens" else v[unit].item()) for side in stats
                               for k, v in stats[side].items()}})
    (Path(tmp) / "neurons.json").write_text(json.dumps({"neurons": results,
                                                        "pair_rmsd": (pair_sq / (layers * d_mlp)).sqrt().tolist()}))
    return score.float()


def accumulate_row(model, first_batch, device, reps):
    """ms per accumulate_ call (with per-example means) on a middle layer's activations of one batch."""
    layers, d_mlp = common.mlp_shape(model)
    _, input_ids, mask = first_batch
    captured = {}
    with common.mlp_hooks(model, "act", lambda layer, acts: captured.setdefault(layer, acts.clone())), \
            torch.inference_mode():
        model.base_model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
    acts, mask = captured[layers // 2], mask.bool().to(device)

    def call():
        acc = [torch.zeros(d_mlp, dtype=torch.float64, device=device) for _ in range(4)]
        rk.accumulate_(acts, mask, *acc, torch.zeros((), dtype=torch.int64, device=device),
                       example_mean=torch.empty(acts.shape[0], d_mlp, device=device))

    timings = {}
    for name in ("ext", "torch") if rk.backend(device) != "torch" else ("torch",):
        rk.set_backend(name)
        timings[name] = statistics.median(time_calls(call, max(10, reps * 10), 3, device))
    rk.set_backend("auto")
    label = f"(c) accumulate_ ms/call on {list(acts.shape)}: ext vs torch"
    if "ext" not in timings:
        return label, float("nan"), timings["torch"], "extension not built", "–"
    return label, timings["ext"], timings["torch"], f"{timings['torch'] / timings['ext']:.1f}× faster", "–"


def memory(cfg, n, flags):
    """One memory measurement in a fresh process: this one's allocator history must not count. A fixed mmap
    threshold gives every large tensor back to the OS when freed, so the peak is what was live at once, not
    glibc's heap fragmentation from batches of many shapes (which grows with the number of batches either way)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, __file__, "--child-pairs", str(n), *flags, *child_args(cfg)], check=True,
                         capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def child_args(cfg):
    return ["--model", cfg["model"], "--data-dir", cfg["data_dir"], "--batch-size", str(cfg["batch_size"]),
            "--max-length", str(cfg["max_length"]), "--device", cfg["device"]] + \
        (["--threads", str(cfg["threads"])] if cfg["threads"] else [])


def memory_child(cfg, n, plain, device):
    """VmHWM (peak RSS) with the model loaded, with the pairs read and tokenised, and after the scoring pass (or
    the plain forward over the same batches)."""
    model, tokenizer = common.new_reward_model(cfg["model"], 0)
    model = model.to(device).eval()
    torch.stack([p.sum() for p in model.parameters()])  # page in memory-mapped weights: they count as model
    pairs = load_pairs(cfg["data_dir"], n)
    model_mb = peak_rss_mb()
    ids = common.encode_pairs(tokenizer, pairs, cfg["max_length"])
    loaded_mb = peak_rss_mb()
    batches = common.pair_batches(*ids, cfg["batch_size"], tokenizer.pad_token_id)
    if plain:
        plain_forward(model, batches, device)
    else:
        common.ScoringPass(model).run(batches, device, torch.float32)
    return {"model_mb": model_mb, "loaded_mb": loaded_mb, "added_mb": peak_rss_mb() - loaded_mb,
            "tokens": sum(len(seq) for side in ids for seq in side)}


def peak_rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise click.ClickException("needs /proc/self/status (Linux) for peak memory")


if __name__ == "__main__":
    main()
