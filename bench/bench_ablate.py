"""Cost of ablation in the scoring loop, measured side by side in one run:

1. ablated vs plain scoring of the same texts in the same batches (common.score_texts with and without
   common.ablation_hooks at τ = 10 %): tokens per second and their ratio (target: within 5 %);
2. a sweep of K ablation configurations as ablate.py runs it (one loaded model, texts tokenised once through
   common.MemoTokenizer, per-configuration score caches) vs K plain evaluations of the same items.

    python bench/bench_ablate.py
    python bench/bench_ablate.py --threads 1 --configs 6
    python bench/bench_ablate.py --model /path/to/runs/gpt2-medium/harmless/seed0/rm --device cuda --max-items 200

3. held-out HH-RLHF pairs through train.py's shared-prefix forward (their dialogue once) vs two full forwards in
   length-sorted batches, as score_items (and so the sweep) scores them.

Prints one table of seconds, tokens per second (real tokens of the full texts, the same numerator for both pair
rows) and ratios; checks that an empty neuron set gives the plain scores.
"""
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
from bench_score import bench_model, machine, machine_options


@click.command(context_settings={"show_default": True})
@click.option("--model", default="tiny-gpt2",
              help="A saved RM or local model dir, or a backbone name / hub id given a fresh reward head.")
@click.option("--items", "item_paths", multiple=True, default=("demo",),
              help="--bench sources (demo, or .jsonl files / folders in the SPEC §1 item format); repeatable.")
@click.option("--max-items", type=click.IntRange(min=1), default=None, help="At most N items per task (seeded).")
@click.option("--site", type=click.Choice(common.NEURON_SITES), default="act", help="Neuron site.")
@click.option("--tau", type=float, default=10.0, help="Percent of neurons ablated in part 1.")
@click.option("--configs", type=click.IntRange(min=1), default=4, help="K: ablation configurations in part 2.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, help="Transcripts per forward pass.")
@click.option("--max-length", type=click.IntRange(min=8), default=256, help="Tokens per transcript (end kept).")
@click.option("--repeats", type=click.IntRange(min=1), default=3,
              help="Rounds of part 1, interleaved; each loop's best round counts (others share the CPU).")
@click.option("--pairs-dir", type=click.Path(exists=True, file_okay=False), default="data/demo/hh-rlhf",
              help="HH-RLHF folder for part 3: its held-out pairs (test split, 20 % of it by hash).")
@click.option("--max-pairs", type=click.IntRange(min=1), default=200, help="Held-out pairs used in part 3.")
@machine_options
def main(**cfg):
    """The bench as one straight run (load, the three measurements side by side, the table): its parts share the
    model, items and timer, and read in the order of the table they print, so they stay in one function."""
    device, dtype = machine(cfg)

    # load
    items = common.cap_items(common.load_benchmarks(cfg["item_paths"], common.load_tasks()).items, cfg["max_items"])
    model, tokenizer = bench_model(cfg["model"], device)
    max_length = min(cfg["max_length"], common.context_length(model))
    texts = list(dict.fromkeys(t for item in items for t in item.texts()))
    tokens = sum(len(ids) for ids in common.encode(tokenizer, texts, max_length))
    shape = common.mlp_shape(model)

    def mask(seed):
        return common.select_top(torch.rand(shape, generator=torch.Generator().manual_seed(seed)), cfg["tau"])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        start = time.perf_counter()
        value = fn()
        sync()
        return time.perf_counter() - start, value

    # part 1: the same texts, the same batches, with and without hooks
    def plain():
        return common.score_texts(model, tokenizer, texts, cfg["batch_size"], max_length, device, dtype, desc="plain")

    def ablated():
        return common.score_texts(model, tokenizer, texts, cfg["batch_size"], max_length, device, dtype,
                                  desc="ablated", hooks=common.ablation_hooks(model, cfg["site"], mask(0)))

    empty = torch.zeros(shape, dtype=torch.bool)
    reference = plain()  # also the warm-up
    same = common.score_texts(model, tokenizer, texts, cfg["batch_size"], max_length, device, dtype, desc="empty",
                              hooks=common.ablation_hooks(model, cfg["site"], empty))
    if same != reference:
        raise click.ClickException("an empty neuron set changed the scores")
    best = {}
    for _ in range(cfg["repeats"]):
        for name, fn in (("plain", plain), ("ablated", ablated)):
            seconds, _ = timed(fn)
            best[name] = min(best.get(name, seconds), seconds)

    # part 2: K configurations as ablate.py sweeps them vs K plain evaluations of the same items
    k = cfg["configs"]

    def k_plain():
        for _ in range(k):
            common.score_items(model, tokenizer, items, None, cfg["batch_size"], max_length, device, dtype,
                               desc="plain")

    def sweep():
        memo = common.MemoTokenizer(tokenizer)
        with tempfile.TemporaryDirectory() as tmp:
            for config in range(k):
                selected = mask(config)
                common.score_items(model, memo, items, Path(tmp) / str(config), cfg["batch_size"], max_length,
                                   device, dtype, fingerprint="bench", desc=f"config {config}",
                                   hooks=common.ablation_hooks(model, cfg["site"], selected),
                                   intervention=common.intervention(cfg["site"], "zero", selected))

    plain_k, _ = timed(k_plain)
    sweep_k, _ = timed(sweep)

    # part 3: held-out pairs through train.py's shared-prefix forward vs two full forwards (what score_items does)
    held_out = {"data_dir": cfg["pairs_dir"], "train_split": "test", "eval_split": "test", "eval_fraction": 0.2}
    pairs = common.subsample(common.held_out_items("mixed", held_out), cfg["max_pairs"], 0)
    pair_texts = [p.chosen[0] for p in pairs] + [p.rejected[0] for p in pairs]
    pair_tokens = sum(len(ids) for ids in common.encode(tokenizer, pair_texts, max_length))
    net = train.BradleyTerry(model, tokenizer.pad_token_id).eval()

    def shared_prefix():
        ids = common.encode(tokenizer, pair_texts, max_length)
        with common.autocast(device, dtype):
            return train.held_out_accuracy(net, ids[:len(pairs)], ids[len(pairs):], cfg["batch_size"] * max_length)

    paired = {}
    for _ in range(cfg["repeats"]):
        for name, fn in (("shared prefix", shared_prefix),
                         ("two full forwards", lambda: common.score_items(model, tokenizer, pairs, None,
                                                                          cfg["batch_size"], max_length, device,
                                                                          dtype, desc="pairs"))):
            seconds, _ = timed(fn)
            paired[name] = min(paired.get(name, seconds), seconds)

    # report
    click.echo(f"{len(items)} items, {len(texts)} distinct texts, {tokens} tokens; model {cfg['model']} "
               f"({shape[0]} layers × {shape[1]} neurons) on {device} ({dtype}, {torch.get_num_threads()} threads); "
               f"batch {cfg['batch_size']}, max length {max_length}; site {cfg['site']}")
    rows = [
        ["plain scoring (best of %d)" % cfg["repeats"], f"{best['plain']:.3f}", f"{tokens / best['plain']:.0f}", "1.000"],
        [f"ablated, τ = {cfg['tau']:g} % (best of {cfg['repeats']})", f"{best['ablated']:.3f}",
         f"{tokens / best['ablated']:.0f}", f"{best['ablated'] / best['plain']:.3f}"],
        [f"{k} plain evaluations", f"{plain_k:.3f}", f"{k * tokens / plain_k:.0f}", "1.000"],
        [f"sweep of {k} ablated configurations", f"{sweep_k:.3f}", f"{k * tokens / sweep_k:.0f}",
         f"{sweep_k / plain_k:.3f}"],
        [f"{len(pairs)} held-out pairs, two full forwards", f"{paired['two full forwards']:.3f}",
         f"{pair_tokens / paired['two full forwards']:.0f}", "1.000"],
        [f"{len(pairs)} held-out pairs, shared-prefix forward", f"{paired['shared prefix']:.3f}",
         f"{pair_tokens / paired['shared prefix']:.0f}",
         f"{paired['shared prefix'] / paired['two full forwards']:.3f}"],
    ]
    click.echo(common.markdown_table(["what", "seconds", "tokens/s", "time ratio"], rows))
    click.echo(f"ablated / plain scoring: {100 * (best['ablated'] / best['plain'] - 1):+.1f} % time (target: "
               f"within 5 %); sweep of {k} / {k} plain evaluations: {sweep_k / plain_k:.2f}×; held-out pairs: shared "
               f"prefix {paired['two full forwards'] / paired['shared prefix']:.2f}× faster than two full forwards")


if __name__ == "__main__":
    main()
