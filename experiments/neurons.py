"""Per-neuron importance of each reward model: magnitude, change and random scores (paper §2.3, §4.1,
Fig. 4, Table 16).

    python experiments/neurons.py --model tiny-gpt2 --runs-dir /tmp/rmt_runs_n --data-dir data/demo/hh-rlhf
    python experiments/neurons.py --model smollm2-135m-instruct-q4 --objective harmless \\
        --data-dir ../shared/data/hh-rlhf --train-split test --eval-fraction 0.2 --max-pairs 600
    python experiments/neurons.py --model gpt2-medium --seed 0 --seed 1 --seed 2 --max-pairs 2000 --site down_in

Scoring data: the training pairs of the RM's own objective (the same split, held-out rule and seeded
subsample as train.py). Each batch holds the chosen AND the rejected transcript of the same pairs, run in one
forward pass with a hook on every layer that adds the activations to float64 running sums (rmt_kernels).

Writes <runs-dir>/<model>/<objective>/seed<k>/neurons/<method>.h5:
  score [layers, d_mlp] float32 — magnitude: (I_chosen + I_rejected) / 2 with I = sum / tokens, the mean
      activation over real tokens; change: sqrt(sq_sum / tokens) over the chosen and rejected tokens together,
      the RMS of (a_trained − a_base); random: uniform [0, 1) from a torch.Generator seeded with the seed and
      the objective (random_generator).
  chosen/, rejected/ — sum, abs_sum, sq_sum, pos_count [layers, d_mlp] float64 and tokens (scalar) of the RM's
      activations (magnitude, random). For change they hold the squared-difference accumulators instead:
      sq_sum = Σ (a_trained − a_base)² and tokens.
  pair_rmsd [pairs] float64 (magnitude only) — per pair, RMSD over all neurons between the token-mean
      activation vectors of chosen and rejected.
  attributes: method, site, tau, top_tau_k, top_tau_threshold, backend, pairs, layers, d_mlp, config (JSON).
and under <results-dir>/<model>/neurons/: layers.csv/.md and fig4_layers.png (share of the top-τ % neurons in
the early / middle / late third of the layers; layer l is in third floor(3·l / layers)), rmsd.csv/.md
(Table 16), report_section.md and run.json.
"""
import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import h5py
import torch
from tqdm.auto import tqdm

import common
import rmt_kernels as rk

METHODS = ("magnitude", "change", "random")
SIDES = ("chosen", "rejected")
ACT_STATS = ("sum", "abs_sum", "sq_sum", "pos_count")
THIRDS = ("early", "middle", "late")


@click.command(context_settings={"show_default": True})
@click.option("--model", default="tiny-gpt2", help="Registry name, hub id or local dir the RMs were trained from.")
@click.option("--objective", type=click.Choice(common.OBJECTIVES), multiple=True, default=common.OBJECTIVES,
              help="RM objective(s) to score; repeatable.")
@click.option("--seed", type=int, multiple=True, default=(0,), help="Seed(s); repeatable.")
@click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", help="Where the RMs are saved.")
@click.option("--results-dir", type=click.Path(file_okay=False), default="results", help="Where tables go.")
@common.hh_data_options
@click.option("--method", type=click.Choice(METHODS), multiple=True, default=METHODS,
              help="Scoring method(s); repeatable.")
@click.option("--site", type=click.Choice(common.NEURON_SITES), default="act",
              help="act: the MLP activation output (the paper's); down_in: the down projection's input.")
@click.option("--tau", type=click.FloatRange(0, 100, min_open=True), default=10.0,
              help="Percent of all neurons selected for the layer distribution.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16,
              help="Pairs per forward pass (chosen and rejected together: twice as many rows).")
@click.option("--max-length", type=click.IntRange(min=8), default=512, help="Tokens per transcript (end kept).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Compute device.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              help="Autocast dtype; sums are float64 either way. auto = bf16 on GPUs that have it, else float32.")
@click.option("--backend", type=click.Choice(["auto", "ext", "torch"]), default="auto",
              help="rmt_kernels implementation: the C++/CUDA extension or the pure-torch reference.")
@click.option("--force", is_flag=True, help="Rescore even if the .h5 files exist.")
def main(**cfg):
    rk.set_backend(cfg["backend"])
    device = common.resolve_device(cfg["device"])
    dtype = common.resolve_dtype(cfg["dtype"], device)
    rms = [(objective, seed) for objective in cfg["objective"] for seed in cfg["seed"]]
    for objective, seed in rms:  # every missing RM before hours of scoring the others
        check_trained(cfg, objective, seed)
    runs = [score_rm(cfg, objective, seed, device, dtype) for objective, seed in rms]
    out = Path(cfg["results_dir"]) / common.model_slug(cfg["model"]) / "neurons"
    write_results(cfg, out)
    common.write_json(out / "run.json", {**common.run_record({**cfg, "dtype": str(dtype), "device": str(device),
                                                              "backend": rk.backend()}), "rms": runs})
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"tables and figure → {out}; report: {report}")


@functools.cache
def training_pairs(objective, data_dir, train_split, eval_split, eval_fraction):
    bad = common.BadRows()
    train, _ = common.load_hh(objective, data_dir, train_split, eval_split, eval_fraction, bad)
    click.echo(f"[{objective}] {len(train)} training pairs; {bad.summary()}")
    return train


def pending_methods(cfg, run):
    return [m for m in cfg["method"] if cfg["force"] or not (run / "neurons" / f"{m}.h5").exists()]


def check_trained(cfg, objective, seed):
    run = common.rm_dir(cfg["runs_dir"], cfg["model"], objective, seed)
    if pending_methods(cfg, run) and not (run / "rm" / "config.json").exists():
        data = "" if cfg["data_dir"] is None else f" --data-dir {cfg['data_dir']}"
        raise click.ClickException(
            f"[{objective} seed {seed}] no trained reward model at {run / 'rm'}. Train it first:\n  python "
            f"experiments/train.py --model {cfg['model']} --objective {objective} --seed {seed} --runs-dir "
            f"{cfg['runs_dir']}{data} --train-split {cfg['train_split']}")


def score_rm(cfg, objective, seed, device, dtype) -> dict:
    """Score one RM and write its .h5 files; returns a line for run.json."""
    run = common.rm_dir(cfg["runs_dir"], cfg["model"], objective, seed)
    todo = pending_methods(cfg, run)
    tag = f"[{objective} seed {seed}]"
    if not todo:
        click.echo(f"{tag} already scored: {run / 'neurons'} (use --force to rescore)")
        return {"objective": objective, "seed": seed, "skipped": True}

    # load
    pairs = common.subsample(training_pairs(objective, cfg["data_dir"], cfg["train_split"], cfg["eval_split"],
                                            cfg["eval_fraction"]), cfg["max_pairs"], seed)
    if not pairs:
        raise click.ClickException(f"{tag} no training pairs to score")
    model, tokenizer = common.load_reward_model(run / "rm", device)
    base = None
    if "change" in todo:
        base = common.new_reward_model(cfg["model"], seed)[0].to(device).eval()  # the backbone before training
        if common.mlp_shape(base) != common.mlp_shape(model):
            raise click.ClickException(f"{tag} the RM's MLP grid {common.mlp_shape(model)} differs from --model "
                                       f"{cfg['model']}'s {common.mlp_shape(base)}: pass the model it was trained from")

    # run
    started = time.perf_counter()
    scoring = ScoringPass(model, base, activations=bool({"magnitude", "random"} & set(todo)), site=cfg["site"])
    batches = pair_batches(*common.encode_pairs(tokenizer, pairs, cfg["max_length"]), cfg["batch_size"],
                           tokenizer.pad_token_id)
    scoring.run(batches, device, dtype, total=math.ceil(len(pairs) / cfg["batch_size"]), desc=f"neurons {objective}")
    seconds = time.perf_counter() - started

    # save
    scores = {"magnitude": scoring.magnitude, "change": scoring.change,
              "random": lambda: torch.rand(scoring.shape, generator=random_generator(objective, seed))}
    config = {**cfg, "objective": objective, "seed": seed, "dtype": str(dtype), "device": str(device)}
    for method in todo:
        score = scores[method]().float().cpu()
        indices, threshold = rk.top_tau(score, cfg["tau"])
        attrs = {"method": method, "site": cfg["site"], "tau": cfg["tau"], "top_tau_k": len(indices),
                 "top_tau_threshold": threshold, "backend": rk.backend(), "pairs": len(pairs),
                 "layers": scoring.shape[0], "d_mlp": scoring.shape[1], "config": json.dumps(config, default=str)}
        groups = scoring.diff if method == "change" else scoring.act
        extra = {"pair_rmsd": scoring.pair_rmsd()} if method == "magnitude" else {}
        write_h5(run / "neurons" / f"{method}.h5", score, groups, attrs, extra)
    tokens = int(sum(scoring.tokens(side) for side in SIDES))
    click.echo(f"{tag} {', '.join(todo)} from {len(pairs)} pairs, {tokens} tokens in {seconds:.1f} s "
               f"({rk.backend()}) → {run / 'neurons'}")
    return {"objective": objective, "seed": seed, "methods": todo, "pairs": len(pairs), "tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_second": round(tokens / max(seconds, 1e-9), 1)}


def random_generator(objective, seed):
    """Seeded by the seed and the objective: the same seed must not give every RM type the same random set,
    or the random baseline would overlap itself 100 % across RMs."""
    return torch.Generator().manual_seed(common.pair_hash("random", objective, str(seed)) % 2**63)


def pair_batches(chosen, rejected, batch_size, pad_id):
    """(pair indices, input_ids, attention mask) per batch: rows are the chosen transcripts of the pairs, then
    their rejected ones, so both members of a pair are seen in the same forward. Batches are sorted by the
    longer member, which keeps padding small."""
    lengths = [max(len(c), len(r)) for c, r in zip(chosen, rejected)]
    for batch in common.token_budget_batches(lengths, batch_size):
        input_ids, mask = common.pad_batch([chosen[i] for i in batch] + [rejected[i] for i in batch], pad_id)
        yield batch, input_ids, mask


class ScoringPass:
    """The streaming accumulation for one RM: float64 per-neuron sums for chosen and rejected rows, the
    squared difference to the base backbone, and the chosen-vs-rejected RMSD of every pair.

    Memory is [layers, d_mlp] per statistic plus one float per pair; with `base`, one batch's base activations
    of every layer are held until the trained model reaches that layer (lower --batch-size if that is too much).
    """

    def __init__(self, model, base=None, activations=True, site="act"):
        self.model, self.base, self.site = model, base, site
        self.shape = common.mlp_shape(model)
        device = next(model.parameters()).device

        def stats(names):
            return {**{n: torch.zeros(self.shape, dtype=torch.float64, device=device) for n in names},
                    "tokens": torch.zeros(self.shape[0], dtype=torch.int64, device=device)}

        self.act = {side: stats(ACT_STATS) for side in SIDES} if activations else None
        self.diff = {side: stats(("sq_sum",)) for side in SIDES} if base is not None else None
        self.pair_sq = []  # (pair indices, Σ over neurons of (mean_chosen − mean_rejected)²) per batch
        self.base_acts = {}

    def run(self, batches, device, dtype, total=None, desc="neurons"):
        """Accumulate over `batches` as made by pair_batches."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            stack.enter_context(common.mlp_hooks(self.model, self.site, self.record))
            if self.base is not None:
                stack.enter_context(common.mlp_hooks(self.base, self.site, self.keep_base))
            for batch, input_ids, mask in tqdm(batches, total=total, desc=desc, unit="batch", leave=False,
                                               disable=None):
                input_ids, mask = input_ids.to(device), mask.to(device)
                self.start_batch(batch, mask)
                with common.autocast(device, dtype):
                    if self.base is not None:
                        self.base.base_model(input_ids=input_ids, attention_mask=mask)
                    self.model.base_model(input_ids=input_ids, attention_mask=mask)
                self.finish_batch()

    def start_batch(self, batch, mask):
        n = len(batch)
        self.batch = batch
        self.rows = {"chosen": slice(0, n), "rejected": slice(n, 2 * n)}
        self.mask = mask.bool()
        if self.act is not None:
            device = mask.device
            self.means = {side: torch.empty(n, self.shape[1], device=device) for side in SIDES}
            self.batch_sq = torch.zeros(n, dtype=torch.float64, device=device)

    def keep_base(self, layer, acts):
        self.base_acts[layer] = acts

    def record(self, layer, acts):
        acts = acts.contiguous()
        for side, rows in self.rows.items():
            if self.act is not None:
                s = self.act[side]
                rk.accumulate_(acts[rows], self.mask[rows], s["sum"][layer], s["abs_sum"][layer], s["sq_sum"][layer],
                               s["pos_count"][layer], s["tokens"][layer], example_mean=self.means[side])
            if self.diff is not None:
                d = self.diff[side]
                rk.accumulate_sq_diff_(acts[rows], self.base_acts[layer][rows].contiguous(), self.mask[rows],
                                       d["sq_sum"][layer], d["tokens"][layer])
        if self.act is not None:
            self.batch_sq += (self.means["chosen"] - self.means["rejected"]).double().square().sum(1)
        self.base_acts.pop(layer, None)

    def finish_batch(self):
        if self.act is not None:
            self.pair_sq.append((self.batch, self.batch_sq.cpu()))

    def tokens(self, side):
        stats = self.act if self.act is not None else self.diff
        return int(stats[side]["tokens"][0])

    def magnitude(self):
        return sum(self.act[side]["sum"] / self.act[side]["tokens"][:, None] for side in SIDES) / 2

    def change(self):
        return ((self.diff["chosen"]["sq_sum"] + self.diff["rejected"]["sq_sum"])
                / (self.diff["chosen"]["tokens"] + self.diff["rejected"]["tokens"])[:, None]).sqrt()

    def pair_rmsd(self):
        """RMSD over all layers × units between chosen and rejected token means, per pair in input order."""
        rmsd = torch.empty(sum(len(batch) for batch, _ in self.pair_sq), dtype=torch.float64)
        for batch, sq in self.pair_sq:
            rmsd[batch] = (sq / (self.shape[0] * self.shape[1])).sqrt()
        return rmsd


def write_h5(path, score, groups, attrs, extra):
    """One method's file, written under a temporary name and renamed when complete."""
    with common.atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        f.create_dataset("score", data=score.numpy())
        for side, stats in groups.items():
            group = f.create_group(side)
            for name, value in stats.items():
                # every layer sees the same tokens, so one count stands for all
                group.create_dataset(name, data=int(value[0]) if name == "tokens" else value.cpu().numpy())
        for name, value in extra.items():
            f.create_dataset(name, data=value.numpy())


# ---------------------------------------------------------------------------------------------
# Tables and figure over all requested RMs.
# ---------------------------------------------------------------------------------------------
def layer_shares(score, tau):
    """Share of the top-τ % neurons in the early / middle / late third of the layers."""
    indices, _ = rk.top_tau(score, tau)
    thirds = torch.bincount(indices[:, 0] * 3 // score.shape[0], minlength=3)
    return (thirds.double() / len(indices)).tolist()


def mean_std(values):
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else float("nan")


def write_results(cfg, out):
    """layers.csv/.md + fig4_layers.png (Fig. 4), rmsd.csv/.md (Table 16) and report_section.md."""
    layer_rows, rmsd_rows = [], []
    for objective in cfg["objective"]:
        files = {seed: common.rm_dir(cfg["runs_dir"], cfg["model"], objective, seed) / "neurons"
                 for seed in cfg["seed"]}
        for method in cfg["method"]:
            shares = []
            for seed, folder in files.items():
                with h5py.File(folder / f"{method}.h5", "r") as f:
                    shares.append(layer_shares(torch.from_numpy(f["score"][()]), cfg["tau"]))
            row = {"objective": objective, "method": method, "tau": cfg["tau"], "seeds": len(shares)}
            for third, values in zip(THIRDS, zip(*shares)):
                row[third], row[f"{third}_std"] = mean_std(values)
            layer_rows.append(row)
        if "magnitude" in cfg["method"]:
            per_seed, pairs = [], 0
            for folder in files.values():
                with h5py.File(folder / "magnitude.h5", "r") as f:
                    per_seed.append(float(f["pair_rmsd"][()].mean()))
                    pairs += len(f["pair_rmsd"])
            mean, std = mean_std(per_seed)
            rmsd_rows.append({"objective": objective, "rmsd": mean, "rmsd_std": std, "seeds": len(per_seed),
                              "pairs": pairs})
    write_table(out / "layers", layer_rows)
    write_table(out / "rmsd", rmsd_rows)
    plot_layers(layer_rows, cfg, out / "fig4_layers.png")
    common.write_text(out / "report_section.md", report_section(cfg, layer_rows, rmsd_rows))


def fmt(value):
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown(rows):
    return common.markdown_table(list(rows[0]), [[fmt(v) for v in row.values()] for row in rows])


def write_table(stem: Path, rows):
    if rows:
        common.write_table(stem, list(rows[0]), [list(row.values()) for row in rows], markdown(rows))
    else:
        common.remove_table(stem)


def plot_layers(rows, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(cfg["method"])
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.2), sharey=True, squeeze=False)
    width = 0.8 / len(cfg["objective"])
    for ax, method in zip(axes[0], methods):
        for k, objective in enumerate(cfg["objective"]):
            row = next(r for r in rows if r["objective"] == objective and r["method"] == method)
            stds = [row[f"{t}_std"] for t in THIRDS]  # NaN with a single seed: no error bars then
            ax.bar([i + (k - (len(cfg["objective"]) - 1) / 2) * width for i in range(3)], [row[t] for t in THIRDS],
                   width, yerr=None if math.isnan(stds[0]) else stds, label=objective, capsize=2)
        ax.set_xticks(range(3), THIRDS)
        ax.set_title(f"{method} (top {cfg['tau']:g} %)")
    axes[0][0].set_ylabel("share of selected neurons")
    axes[0][-1].legend(title="RM", fontsize=8)
    fig.suptitle(f"{cfg['model']}: where the top-τ neurons are (site {cfg['site']})")
    fig.tight_layout()
    with common.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def report_section(cfg, layer_rows, rmsd_rows):
    """Paths are relative to results/<model>/, where report.md gathers the sections."""
    seeds = ", ".join(map(str, cfg["seed"]))
    pairs = "all training pairs" if cfg["max_pairs"] is None else f"up to {cfg['max_pairs']} training pairs"
    text = [
        "## Neurons: where the objectives live (§4.1, Fig. 4, Table 16)\n",
        f"Neuron site `{cfg['site']}`; scores over {pairs} of each RM's own objective (seeds {seeds}); top "
        f"{cfg['tau']:g} % of all MLP neurons selected globally. Shares are means over seeds (± std in the CSV).\n",
        "### Layer distribution of the selected neurons (Fig. 4)\n",
        markdown([{k: v for k, v in row.items() if not k.endswith("_std")} for row in layer_rows]),
        "![Fig. 4: layer distribution](neurons/fig4_layers.png)\n",
        "Third of the layers holding the most selected neurons — " + "; ".join(
            f"{method}: " + ", ".join(f"{row['objective']} {top} ({row[top]:.2f})" for row in layer_rows
                                     if row["method"] == method for top in [max(THIRDS, key=row.get)])
            for method in cfg["method"]) + ". The paper finds the late layers for all three RM types (magnitude); "
        "random selection follows the number of layers per third.\n",
    ]
    if rmsd_rows:
        text += ["### Chosen vs rejected: RMSD of token-mean activations (Table 16)\n", markdown(rmsd_rows),
                 "The paper reports ~1e-3: chosen and rejected transcripts engage nearly the same neurons.\n"]
    return "\n".join(text)


if __name__ == "__main__":
    main()
