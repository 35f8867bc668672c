"""What checking an RM's weights costs (issue #17): common.rm_fingerprint with a current record (one stat() per
weight file), a full rehash of the weights (what a changed or copied file costs once), and one plain scoring of the
demo benchmark by the same RM (the work of one RM in a demo behaviour step), side by side in one run.

    python bench/bench_weights.py                                      # a tiny-gpt2 RM saved as train.py saves it
    python bench/bench_weights.py --rm runs/smollm2-135m-instruct-q4/mixed/seed0/rm --max-items 20

Prints one table: seconds per call of each and its share of the scoring.
"""
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

import click
import torch

import common
import train


def seconds_per_call(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@click.command(context_settings={"show_default": True})
@click.option("--rm", "rm_path", type=click.Path(exists=True, file_okay=False), default=None,
              help="A saved RM (with weights.sha256); default: a fresh tiny-gpt2 RM saved as train.py saves it.")
@click.option("--max-items", type=click.IntRange(min=1), default=None, help="Demo items per task to score.")
@click.option("--max-length", type=click.IntRange(min=8), default=256, help="Tokens per transcript (the demo's).")
@click.option("--repeats", type=click.IntRange(min=1), default=200, help="Calls of the check timed (median).")
def main(rm_path, max_items, max_length, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        rm = Path(tmp) / "rm"
        if rm_path is None:
            model, tokenizer = common.new_reward_model("tiny-gpt2", 0)
            train.save_rm(model, tokenizer, rm)
        else:
            shutil.copytree(rm_path, rm)
            common.record_weights(rm)  # a record that matches this copy's files
        model, tokenizer = common.load_reward_model(rm, torch.device("cpu"))
        items = common.cap_items(common.load_benchmarks(["demo"], common.load_tasks()).items, max_items)
        check = seconds_per_call(lambda: common.rm_fingerprint(rm), repeats)
        rehash = seconds_per_call(lambda: common.weights_sha256(rm), max(1, repeats // 50))
        scoring = seconds_per_call(lambda: common.score_items(model, tokenizer, items, None, 32, max_length,
                                                              torch.device("cpu"), desc="demo items"), 1)
        size = sum(path.stat().st_size for path in common.weight_files(rm))
    click.echo(f"RM: {rm_path or 'tiny-gpt2 (fresh)'}, {size / 2**20:.1f} MiB of weights; {len(items)} demo items, "
               f"{torch.get_num_threads()} threads")
    rows = [["weights check, record current (stat only)", f"{check:.6f}", f"{100 * check / scoring:.4f} %"],
            ["full rehash (a changed or copied file, once)", f"{rehash:.6f}", f"{100 * rehash / scoring:.4f} %"],
            ["plain scoring of the demo items", f"{scoring:.3f}", "100 %"]]
    click.echo(common.markdown_table(["what", "seconds per call", "share of the scoring"], rows))


if __name__ == "__main__":
    main()
