"""Cost of the attribution method (common.AttributionPass: one forward and one backward per batch) against a plain
forward of the same batches, and its peak memory at two pair counts, side by side in one run:

    python bench/bench_attribution.py
    python bench/bench_attribution.py --model smollm2-135m-instruct-q4 --data-dir ../shared/data/hh-rlhf --pairs 16 \\
        --memory-pairs 8 --memory-pairs 32

Prints one table: seconds of each, their ratio (target: at most ~3×), and the peak resident memory each pair count
adds in a fresh process (it must not grow with the number of pairs: nothing of size pairs × tokens × neurons is kept).
"""
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import click
import torch

import common


@click.command(context_settings={"show_default": True})
@click.option("--model", default="tiny-gpt2", help="Backbone (registry name, hub id or local dir), fresh reward head.")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False), default=str(REPO / "data/demo/hh-rlhf"),
              help="HH-RLHF folder with a test split (harmless-base pairs are used).")
@click.option("--pairs", type=click.IntRange(min=1), default=64, help="Pairs timed.")
@click.option("--memory-pairs", type=click.IntRange(min=1), multiple=True, default=(16, 128),
              help="Pair counts for the memory measurement; repeatable.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Pairs per forward.")
@click.option("--max-length", type=click.IntRange(min=8), default=256, help="Tokens per transcript (end kept).")
@click.option("--reps", type=click.IntRange(min=1), default=3, help="Rounds; each side's best counts.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", help="Compute device.")
@click.option("--child-pairs", type=int, default=None, hidden=True, help="Internal: one memory measurement.")
def main(**cfg):
    device = common.resolve_device(cfg["device"])
    model, tokenizer = common.new_reward_model(cfg["model"], 0)
    model = model.to(device).eval()

    def batches(n):
        pairs = common.subsample(common.load_hh("harmless", cfg["data_dir"], "test", "test", 0.2,
                                                common.BadRows())[0], n, 0)
        return list(common.pair_batches(*common.encode_pairs(tokenizer, pairs, cfg["max_length"]),
                                        cfg["batch_size"], tokenizer.pad_token_id))

    if cfg["child_pairs"] is not None:  # one pass in this fresh process: what it adds to the loaded model and data
        data = batches(cfg["child_pairs"])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        common.AttributionPass(model, "act").run(data, device, torch.float32)
        click.echo(json.dumps({"added_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
        return

    data = batches(cfg["pairs"])

    def plain():
        with torch.inference_mode():
            for _, input_ids, mask in data:
                common.rewards(model, input_ids.to(device), mask.to(device))

    def attribution():
        common.AttributionPass(model, "act").run(data, device, torch.float32)

    best = {}
    for _ in range(cfg["reps"]):
        for name, fn in (("plain forward", plain), ("attribution", attribution)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    rows = [[name, f"{seconds:.3f}", f"{seconds / best['plain forward']:.2f}×"] for name, seconds in best.items()]
    for n in cfg["memory_pairs"]:
        out = subprocess.run([sys.executable, __file__, "--model", cfg["model"], "--data-dir", cfg["data_dir"],
                              "--batch-size", str(cfg["batch_size"]), "--max-length", str(cfg["max_length"]),
                              "--device", cfg["device"], "--child-pairs", str(n)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append([f"peak memory added by the pass, {n} pairs", f"{json.loads(out)['added_mb']:.0f} MB", ""])
    layers, d_mlp = common.mlp_shape(model)
    click.echo(f"{cfg['model']} ({layers} layers × {d_mlp} MLP units), {cfg['pairs']} harmless-base pairs, batch "
               f"{cfg['batch_size']}, max length {cfg['max_length']}, {device}, {torch.get_num_threads()} threads")
    click.echo(common.markdown_table(["measurement", "value", "ratio to the plain forward"], rows))


if __name__ == "__main__":
    main()
