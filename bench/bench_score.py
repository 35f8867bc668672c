"""Throughput of the shared item-scoring loop (common.score_items) against two naive loops, on the same RM and
the same real benchmark items: one item at a time, and pad-to-longest batches in arrival order.

    python bench/bench_score.py --threads 1
    python bench/bench_score.py --model /tmp/rmt_runs/tiny-gpt2/mixed/seed0/rm --max-items 400
    python bench/bench_score.py --items ../shared/data/alpacaeval/converted --max-length 1024 --device cuda

Prints one table: seconds, real tokens and padding waste (pad slots / real tokens) of each loop, item tokens
per second (all responses of all items / seconds, the same numerator for every loop) and the speed-up of the
shared loop; and checks that every loop gives the same scores.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import torch

import common

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# the machine options of the scoring benches (bench_ablate.py takes them from here too)
machine_options = common.options(
    click.option("--threads", type=click.IntRange(min=0), default=0,
                 help="CPU threads for torch (0: its default). 1 gives steadier timings on a CPU shared with others."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Compute device."),
    click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", help="Autocast dtype."))


@click.command(context_settings={"show_default": True})
@click.option("--model", default="tiny-gpt2",
              help="A saved RM or local model dir, or a backbone name / hub id given a fresh reward head.")
@click.option("--items", "item_paths", multiple=True,
              default=(str(SHARED_DATA / "xstest" / "converted"), str(SHARED_DATA / "rm-bench" / "converted")),
              help="Item files / folders in the SPEC §1 format; repeatable.")
@click.option("--max-items", type=click.IntRange(min=1), default=300,
              help="Items used, an even-spaced sample over all of them (deterministic).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, help="Transcripts per forward pass.")
@click.option("--max-length", type=click.IntRange(min=8), default=512, help="Tokens per transcript (end kept).")
@click.option("--repeats", type=click.IntRange(min=1), default=3,
              help="Rounds of all loops, interleaved; each loop's best round counts (others share the CPU).")
@machine_options
def main(**cfg):
    device, dtype = machine(cfg)

    # load
    items = common.load_benchmarks(cfg["item_paths"], common.load_tasks()).items
    step = max(1, len(items) // cfg["max_items"])
    items = items[::step][:cfg["max_items"]]
    model, tokenizer = bench_model(cfg["model"], device)
    texts = [text for item in items for text in item.texts()]
    item_tokens = sum(len(ids) for ids in common.encode(tokenizer, texts, cfg["max_length"]))

    # run
    common.score_texts(model, tokenizer, texts[:cfg["batch_size"]], cfg["batch_size"], cfg["max_length"], device,
                       dtype)  # warm-up: first-call allocations would otherwise count against one loop
    loops = {
        "shared (length-sorted, dedup)": shared_loop,
        "naive: one item at a time": lambda *a: naive_loop(*a, per_item=True),
        "naive: arrival-order batches": lambda *a: naive_loop(*a, per_item=False),
    }
    results = {}
    for _ in range(cfg["repeats"]):
        for name, loop in loops.items():
            result = timed(loop, model, tokenizer, items, cfg, device, dtype)
            if name not in results or result["seconds"] < results[name]["seconds"]:
                results[name] = result

    # report
    reference = results["shared (length-sorted, dedup)"]
    click.echo(f"{len(items)} items, {len(texts)} responses, {item_tokens} item tokens; model {cfg['model']} on "
               f"{device} ({dtype}, {torch.get_num_threads()} threads); batch {cfg['batch_size']}, max length "
               f"{cfg['max_length']}; best of {cfg['repeats']} rounds")
    click.echo(f"{'loop':32} {'seconds':>8} {'real tok':>9} {'pad waste':>9} {'item tok/s':>10} {'speed-up':>9} "
               f"{'max |Δscore|':>12}")
    for name, r in results.items():
        diff = max(abs(a - b) for a, b in zip(flatten(r["scores"]), flatten(reference["scores"])))
        click.echo(f"{name:32} {r['seconds']:8.2f} {r['real']:9d} {r['padded'] / r['real']:9.1%} "
                   f"{item_tokens / r['seconds']:10.0f} {r['seconds'] / reference['seconds']:8.2f}x {diff:12.2e}")
    click.echo("speed-up = naive seconds / shared seconds (shared row: 1.00x); pad waste = pad slots / real tokens")


def timed(loop, model, tokenizer, items, cfg, device, dtype) -> dict:
    """Run a loop, counting real tokens and pad slots of every forward it makes."""
    counts = {"real": 0, "padded": 0}

    def count(mask: torch.Tensor):
        counts["real"] += int(mask.sum())
        counts["padded"] += mask.numel() - int(mask.sum())

    started = time.perf_counter()
    scores = loop(model, tokenizer, items, cfg, device, dtype, count)
    return {"seconds": time.perf_counter() - started, "scores": scores, **counts}


def shared_loop(model, tokenizer, items, cfg, device, dtype, count):
    return common.score_items(model, tokenizer, items, None, cfg["batch_size"], cfg["max_length"], device, dtype,
                              desc="shared loop", on_batch=lambda batch, mask: count(mask))


@torch.no_grad()
def naive_loop(model, tokenizer, items, cfg, device, dtype, count, per_item: bool):
    """Batches as the items come: each item's responses alone, or `batch_size` responses in arrival order; every
    batch padded to its longest, every text scored even when it repeats."""
    texts = [text for item in items for text in item.texts()]
    if per_item:
        bounds = [0]
        for item in items:
            bounds.append(bounds[-1] + len(item.chosen) + len(item.rejected))
        batches = [range(a, b) for a, b in zip(bounds, bounds[1:])]
    else:
        batches = [range(a, min(a + cfg["batch_size"], len(texts))) for a in range(0, len(texts), cfg["batch_size"])]
    values = []
    for batch in batches:
        ids = common.encode(tokenizer, [texts[i] for i in batch], cfg["max_length"])
        input_ids, mask = common.pad_batch(ids, tokenizer.pad_token_id)
        count(mask)
        with common.autocast(device, dtype):
            values += common.rewards(model, input_ids.to(device), mask.to(device)).tolist()
    scores, start = [], 0
    for item in items:
        middle, end = start + len(item.chosen), start + len(item.chosen) + len(item.rejected)
        scores.append(common.ItemScores(values[start:middle], values[middle:end]))
        start = end
    return scores


def flatten(scores):
    return [v for s in scores for v in (*s.chosen, *s.rejected)]


def bench_model(name: str, device: torch.device):
    """A saved RM or local model dir as it is, or a backbone name / hub id with a fresh reward head."""
    if (Path(name) / "config.json").exists():
        return common.load_reward_model(name, device)
    model, tokenizer = common.new_reward_model(name, 0)
    return model.to(device).eval(), tokenizer


def machine(cfg) -> tuple[torch.device, torch.dtype]:
    """Device, autocast dtype and thread count of a scoring bench (also bench_ablate.py's)."""
    device = common.resolve_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    return device, common.resolve_dtype(cfg["dtype"], device)


if __name__ == "__main__":
    main()
