"""1 vs N processes (torchrun) on the same neuron pass and the same ablation sweep, and what combining the ranks'
results costs: the sums of the neuron pass's statistics and the gathering of the sweep's per-text scores.

    python bench/bench_distributed.py
    python bench/bench_distributed.py --model smollm2-135m-instruct-q4 --pairs 48 --texts 96 --max-length 256
    python bench/bench_distributed.py --device cuda --nproc 4

Prints one table: per process count, the seconds of the neuron pass and of the sweep (plain + K ablated scorings
of the same texts), and the seconds the reduction / gathering itself takes, as a share of its step (target <= 2 %).
On a CPU the N processes share the same cores, so the speed-up says little there; the share of the reduction is
the number to read. Each process count runs in its own torchrun launch, one after the other.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import click
import torch

import common


@click.command(context_settings={"show_default": True})
@click.option("--model", default="tiny-gpt2", help="A backbone name or local model dir, given a fresh reward head.")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False), default=str(REPO / "data/demo/hh-rlhf"),
              help="HH-RLHF folder: its mixed test pairs are the neuron pass's pairs and the sweep's texts.")
@click.option("--pairs", type=click.IntRange(min=1), default=96, help="Pairs of the neuron pass.")
@click.option("--texts", type=click.IntRange(min=1), default=192, help="Texts of the sweep.")
@click.option("--configs", type=click.IntRange(min=1), default=2, help="Ablation configurations of the sweep.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Pairs (texts: twice) per forward.")
@click.option("--max-length", type=click.IntRange(min=8), default=128, help="Tokens per transcript.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", help="Compute device.")
@click.option("--nproc", type=click.IntRange(min=2), default=2, help="The process count compared with 1.")
@click.option("--worker", type=click.Path(dir_okay=False), default=None, hidden=True,
              help="(internal) run the measurements in this torchrun process and write them here.")
def main(**cfg):
    if cfg["worker"]:
        return measure(cfg)
    rows = []
    for nproc in (1, cfg["nproc"]):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "timings.json"
            args = [a for k, v in cfg.items() if k not in ("worker", "nproc")
                    for a in (f"--{k.replace('_', '-')}", str(v))]
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                            str(nproc), __file__, *args, "--worker", str(out)], check=True)
            rows.append({"processes": nproc, **json.loads(out.read_text())})
    print(common.markdown_table(
        ["processes", "neuron pass s", "its sums s (share)", "sweep s", "its gathering s (share)"],
        [[r["processes"], f"{r['pass']:.2f}", f"{r['pass_reduce']:.4f} ({100 * r['pass_reduce'] / r['pass']:.2f} %)",
          f"{r['sweep']:.2f}", f"{r['sweep_gather']:.4f} ({100 * r['sweep_gather'] / r['sweep']:.2f} %)"]
         for r in rows]))


def measure(cfg):
    """In each torchrun process: the neuron pass and the sweep as the steps run them, then the reduction and the
    gathering alone on results of the same shapes (what the pass and the sweep do at their end)."""
    device = torch.device(cfg["device"])
    common.start_processes(device)
    rank, world = common.rank_and_world()
    model, tokenizer = common.new_reward_model(cfg["model"], 0)
    model = model.to(device).eval()
    pairs = common.subsample(common.load_hh("mixed", cfg["data_dir"], "test", "test", 0.2, common.BadRows())[0],
                             cfg["pairs"], 0)
    texts = [t for p in pairs for t in (p.chosen, p.rejected)][:cfg["texts"]]
    max_length = min(cfg["max_length"], common.context_length(model))

    def timed(fn):
        common.all_ranks_here()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        common.all_ranks_here()
        return time.perf_counter() - start, value

    def neuron_pass(subset=pairs):
        scoring = common.ScoringPass(model)
        scoring.run(common.pair_batches(*common.encode_pairs(tokenizer, subset, max_length), cfg["batch_size"],
                                        tokenizer.pad_token_id), device, torch.float32)
        return scoring

    def sweep():
        shape = common.mlp_shape(model)
        masks = [common.select_top(torch.rand(shape, generator=torch.Generator().manual_seed(k)), 10.0)
                 for k in range(cfg["configs"])]
        score = [common.score_texts(model, tokenizer, texts, 2 * cfg["batch_size"], max_length, device)]
        return score + [common.score_texts(model, tokenizer, texts, 2 * cfg["batch_size"], max_length, device,
                                           hooks=common.ablation_hooks(model, "act", mask)) for mask in masks]

    neuron_pass(pairs[:2 * world * cfg["batch_size"]])  # warm-up: first calls allocate and pick kernels
    pass_seconds, scoring = timed(neuron_pass)
    sweep_seconds, _ = timed(sweep)
    stats = [t.clone() for group in scoring.act.values() for t in group.values()]
    pass_reduce, _ = timed(lambda: (common.sum_over_ranks(*stats), common.gather_over_ranks(scoring.pair_sq)))
    per_text = [(i, 0.0) for i in range(len(texts))][rank::world]
    sweep_gather, _ = timed(lambda: [common.gather_over_ranks(per_text) for _ in range(cfg["configs"] + 1)])
    if rank == 0:
        Path(cfg["worker"]).write_text(json.dumps({"pass": pass_seconds, "pass_reduce": pass_reduce,
                                                   "sweep": sweep_seconds, "sweep_gather": sweep_gather}))


if __name__ == "__main__":
    main()
