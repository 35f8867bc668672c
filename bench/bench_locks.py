"""What the lock of a unit (common.unit_lock: one per RM training, score cache, neuron folder, conflict file, taken by
every run, with or without --shard) costs beside the smallest unit the steps lock: scoring one benchmark subset.

    python bench/bench_locks.py
    python bench/bench_locks.py --model smollm2-135m-instruct-q4 --texts 64 --max-length 256

Prints one table: the milliseconds of one lock (taken, its refresher thread started, released) on a free unit,
the milliseconds of scoring --texts texts of the demo (a subset's cache is at least that), and the lock's share.
"""
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
@click.option("--texts", type=click.IntRange(min=1), default=32, help="Texts of the scored unit.")
@click.option("--max-length", type=click.IntRange(min=8), default=128, help="Tokens per text.")
@click.option("--locks", type=click.IntRange(min=1), default=500, help="Locks taken and released to time one.")
def main(**cfg):
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for index in range(cfg["locks"]):
            with common.unit_lock(Path(tmp) / f"unit{index % 7}", None, "bench"):
                pass
        lock = (time.perf_counter() - started) / cfg["locks"]

    model, tokenizer = common.new_reward_model(cfg["model"], 0)
    pairs = common.read_hh_subset(str(REPO / "data/demo/hh-rlhf"), "harmless-base", "test", common.BadRows())
    texts = [text for pair in pairs for text in (pair.chosen, pair.rejected)][:cfg["texts"]]
    torch.set_grad_enabled(False)
    common.score_texts(model, tokenizer, texts[:4], 8, cfg["max_length"], torch.device("cpu"))  # warm-up
    started = time.perf_counter()
    common.score_texts(model, tokenizer, texts, 8, cfg["max_length"], torch.device("cpu"))
    unit = time.perf_counter() - started

    print(common.markdown_table(
        ["", "ms"],
        [["one lock (take, refresher thread, release)", f"{1e3 * lock:.3f}"],
         [f"scoring {len(texts)} texts of {cfg['model']} (the smallest unit)", f"{1e3 * unit:.1f}"],
         ["the lock's share of that unit", f"{100 * lock / unit:.3f} %"]]))


if __name__ == "__main__":
    main()
