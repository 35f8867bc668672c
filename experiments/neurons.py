"""Per-neuron importance of each reward model: magnitude, change and random scores (paper §2.3, §4.1,
Fig. 4, Table 16).

    python experiments/neurons.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256
    python experiments/neurons.py --model smollm2-135m-instruct-q4 --objective harmless \\
        --data-dir ../shared/data/hh-rlhf --train-split test --eval-fraction 0.2 --max-pairs 600
    python experiments/neurons.py --model gpt2-medium --seed 0 --seed 1 --seed 2 --max-pairs 2000 --site down_in
    python experiments/neurons.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256 \\
        --method attribution --validate-attribution 32 --validate-pairs 16

Scoring data: the training pairs of the RM's own objective (the same split, held-out rule and seeded
subsample as train.py; the data options default to what the RM's train.json records). Each batch holds the
chosen AND the rejected transcript of the same pairs, run in one forward pass with a hook on every layer that
adds the activations to float64 running sums (rmt_kernels).

Writes <runs-dir>/<model>/<objective>/seed<k>/neurons/<method>.h5 (--site down_in: neurons/down_in/), reused only
while every setting it records equals the request; and under <results-dir>/<model>/neurons/ (neurons/down_in/):
layers (Fig. 4), rmsd (Table 16), with --validate-attribution attribution_validation and its summary, figures,
report_section.md and run.json. Formats: docs/artifacts.md; definitions (scores, selection, the validation of
the attribution against real zero-ablation): docs/methods.md.
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy
import torch

import common
import rmt_kernels as rk

THIRDS = ("early", "middle", "late")
GROUP_KS = (1, 10, 100)  # top-k groups by |attribution| ablated together (capped at the neuron count)
SHARE_KS = (1, 5, 10)  # top-k agreement of |predicted| and |measured| among the sampled single neurons


@common.step()
@common.rm_options
@common.reading_options
@common.results_option
@common.hh_data_options
@common.method_option()
@common.neuron_options
@common.tau_option(multiple=False)
@common.compute_options
@common.micro_batch_option
@click.option("--force", is_flag=True, help="Rescore even if up-to-date .h5 files exist.")
@click.option("--validate-attribution", type=click.IntRange(min=0), default=0,
              help="Check the attribution against real zero-ablation on N single neurons per RM (the top N/2 by "
                   "|attribution| and N/2 seeded-random others) and on the top-k groups (k = "
                   f"{', '.join(map(str, GROUP_KS))}); makes attribution.h5 where it is missing. 0 = off.")
@click.option("--validate-pairs", type=click.IntRange(min=1), default=16,
              help="Scoring pairs (a seeded subsample) the attribution validation predicts and ablates on.")
def main(**cfg):
    cfg, runs, _, device, dtype = common.start_analysis(cfg)
    out = common.step_dir(cfg["results_dir"], cfg["model"], "neurons", cfg["site"])
    # the validation reads the attribution's file, made with the others where it is missing
    methods = tuple(dict.fromkeys(cfg["method"] + (("attribution",) if cfg["validate_attribution"] else ())))

    # score (what is missing or stale)
    pairs = common.training_pairs(cfg, [objective for objective, _ in runs])
    scored = list(common.shard_map(lambda key: common.compute_neuron_files(
        cfg, runs[key] / "rm", *key, methods, common.neuron_dir(runs[key], cfg["site"]), lambda: pairs, device, dtype),
        runs, cfg["shard"]).values())
    if common.shard_done(cfg, "neurons.py"):
        if cfg["validate_attribution"]:
            common.say("note: --validate-attribution runs in the run without --shard, beside the tables")
        return
    files = {(objective, seed, method): read_file(cfg, run, objective, seed, method)
             for (objective, seed), run in runs.items() for method in methods}
    # the attribution's predictions against real ablations (opt-in), then tables from what the files record
    validated = [row for (objective, seed), run in runs.items()
                 for row in validate_attribution(cfg, objective, seed, run, files[objective, seed, "attribution"],
                                                 pairs, device, dtype)] if cfg["validate_attribution"] else []
    validation = write_validation(cfg, validated, out)
    write_results(cfg, files, out, validation)
    common.write_json(out / "run.json", {**common.run_record({**cfg, "dtype": str(dtype), "device": str(device),
                                                              "backend": rk.backend(device)}), "rms": scored})
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"tables and figure → {out}; report: {report}")


def read_file(cfg, run, objective, seed, method) -> common.NeuronFile:
    """A neuron file compute_neuron_files has just made or found up to date for this RM."""
    return common.read_neurons(common.neuron_dir(run, cfg["site"]) / f"{method}.h5",
                               common.neurons_command(cfg, objective, seed, [method]),
                               extra=("signed",) if method == "attribution" else ())


# ---------------------------------------------------------------------------------------------
# Tables and figure over all requested RMs, described from what the .h5 files record.
# ---------------------------------------------------------------------------------------------
def layer_shares(score, tau):
    """(share of the top-τ % neurons in the early / middle / late third of the layers, the threshold score)."""
    selected = common.select_top(score, tau)
    layer_of = selected.nonzero()[:, 0]
    thirds = torch.bincount(layer_of * 3 // score.shape[0], minlength=3)
    return (thirds.double() / len(layer_of)).tolist(), float(score[selected].min())


def write_results(cfg, files, out, validation=""):
    """layers.csv/.md + fig4_layers.png (Fig. 4), rmsd.csv/.md (Table 16) and report_section.md (ending in the
    attribution validation's paragraph when it ran), from the neuron files `files` {(objective, seed, method)}."""
    layer_rows, rmsd_rows = [], []
    for objective in cfg["objective"]:
        for method in cfg["method"]:
            shares, thresholds = zip(*(layer_shares(files[objective, seed, method].score, cfg["tau"])
                                       for seed in cfg["seed"]))
            row = {"objective": objective, "method": method, "tau": cfg["tau"], "seeds": len(shares)}
            for third, values in zip(THIRDS, zip(*shares)):
                row[third], row[f"{third}_std"], _ = common.mean_std(values)
            row["threshold"] = common.mean_std(thresholds)[0]
            layer_rows.append(row)
        if "magnitude" in cfg["method"]:
            rmsd = [files[objective, seed, "magnitude"].pair_rmsd for seed in cfg["seed"]]
            mean, std, _ = common.mean_std(float(r.mean()) for r in rmsd)
            rmsd_rows.append({"objective": objective, "rmsd": mean, "rmsd_std": std, "seeds": len(rmsd),
                              "pairs": sum(len(r) for r in rmsd)})
    common.write_rows(out / "layers", layer_rows)
    common.write_rows(out / "rmsd", rmsd_rows)
    plot_layers(layer_rows, cfg, out / "fig4_layers.png")
    recorded = {(o, s): {"site": f.attrs["site"], "pairs": int(f.attrs["pairs"])} for (o, s, _), f in files.items()}
    common.write_text(out / "report_section.md", report_section(cfg, layer_rows, rmsd_rows, recorded) + validation)


def plot_layers(rows, cfg, path):
    """Fig. 4: the share of each RM type's selected neurons per third of the layers (bars: ± std over seeds, drawn
    where there are several seeds)."""
    plt = common.pyplot()
    methods = list(cfg["method"])
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.4), sharey=True, squeeze=False)
    width = 0.8 / len(cfg["objective"])
    for ax, method in zip(axes[0], methods):
        for k, objective in enumerate(cfg["objective"]):
            row = next(r for r in rows if r["objective"] == objective and r["method"] == method)
            mean, std = numpy.array([row[t] for t in THIRDS]), numpy.array([row[f"{t}_std"] for t in THIRDS])
            spread = (mean - std, mean + std) if row["seeds"] > 1 else (None, None)
            common.plot_estimates(ax, [i + (k - (len(cfg["objective"]) - 1) / 2) * width for i in range(3)], mean,
                                  *spread, style="bars", width=width, color=common.RM_COLORS[objective],
                                  label=objective)
        ax.set_xticks(range(3), [f"{t} third" for t in THIRDS])
        ax.set_xlabel("layers")
        ax.set_title(f"{method} (top {cfg['tau']:g} %)")
    axes[0][0].set_ylabel("share of selected neurons")
    axes[0][-1].legend(title="RM", fontsize=8)
    seeds = len(cfg["seed"])
    fig.suptitle(f"{cfg['model']}: where the top-τ neurons are (site {cfg['site']}; "
                 + (f"± std over {seeds} seeds)" if seeds > 1 else "one seed)"))
    common.save_figure(fig, path)


def report_section(cfg, layer_rows, rmsd_rows, recorded):
    """Paths are relative to results/<model>/, where report.md gathers the sections. Site and pair counts come
    from the .h5 files, not from the command line."""
    sites = sorted({r["site"] for r in recorded.values()})
    pairs = ", ".join(f"{o} seed {s}: {r['pairs']}" for (o, s), r in recorded.items())
    figure = f"{common.step_folder('neurons', cfg['site'])}/fig4_layers.png"
    text = [
        "## Neurons: where the objectives live (§4.1, Fig. 4, Table 16)\n",
        f"Neuron site `{', '.join(sites)}`; scored over each RM's own training pairs ({pairs}); top "
        f"{cfg['tau']:g} % of all MLP neurons selected globally (exact count; `threshold` is the lowest selected "
        "score). Shares are means over seeds (± population std over seeds in the CSV).\n",
        "### Layer distribution of the selected neurons (Fig. 4)\n",
        common.rows_markdown([{k: v for k, v in row.items() if not k.endswith("_std")} for row in layer_rows]),
        f"![Fig. 4: layer distribution]({figure})\n",
        "Third of the layers holding the most selected neurons — " + "; ".join(
            f"{method}: " + ", ".join(f"{row['objective']} {top} ({row[top]:.2f})" for row in layer_rows
                                     if row["method"] == method for top in [max(THIRDS, key=row.get)])
            for method in cfg["method"]) + ". The paper finds the late layers for all three RM types (magnitude); "
        "random selection follows the number of layers per third.\n",
    ]
    if rmsd_rows:
        text += ["### Chosen vs rejected: RMSD of token-mean activations (Table 16)\n", common.rows_markdown(rmsd_rows),
                 "The paper reports ~1e-3: chosen and rejected transcripts engage nearly the same neurons.\n"]
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------
# Validation of the attribution against real zero-ablation (opt-in, issue #13)
# ---------------------------------------------------------------------------------------------
def validation_units(ranked, n, generator):
    """(kind, k, rank, members [m, 2] of (layer, unit)) of what is ablated, from `ranked` (every neuron by
    |attribution|, rank order, as rmt_kernels.top_tau gives it): the top n // 2 and a `generator`-drawn sample of the
    others as single neurons (n at most the neuron count; rank 1-based), then the top-k groups of GROUP_KS."""
    n = min(n, len(ranked))
    top = n // 2
    others = top + torch.randperm(len(ranked) - top, generator=generator)[:n - top].sort().values
    singles = [("single", 1, int(r) + 1, ranked[r:r + 1]) for r in [*range(top), *others.tolist()]]
    return singles + [("top-k", k, "", ranked[:k]) for k in sorted({min(k, len(ranked)) for k in GROUP_KS})]


@torch.inference_mode()
def pair_margins(model, batches, device, dtype) -> torch.Tensor:
    """r(chosen) − r(rejected) of every pair (float64, by pair index), one forward per batch of
    common.pair_batches (chosen and rejected rows together)."""
    margins = torch.empty(sum(len(batch) for batch, _, _ in batches), dtype=torch.float64)
    for batch, input_ids, mask in batches:
        with common.autocast(device, dtype):
            reward = common.rewards(model, input_ids, mask).double().cpu()
        margins[batch] = reward[:len(batch)] - reward[len(batch):]
    return margins


def validate_attribution(cfg, objective, seed, run, neurons: common.NeuronFile, pairs, device, dtype) -> list[dict]:
    """Rows of attribution_validation.csv for one RM: per unit of validation_units, the predicted Δm (AttributionPass
    on the validation pairs; a group's is the sum of its members') and the measured Δm (the same pairs scored with
    the unit zero-ablated at every token, common.ablation_hooks), both means over those pairs; `predicted_all_pairs`
    is attribution.h5's `signed` (mean over all scoring pairs), `neurons` that file read."""
    # load
    model, tokenizer = common.load_reward_model(run / "rm", device, common.reading_of(cfg))
    score, recorded = neurons.score, neurons.extra["signed"]
    pairs = common.subsample(common.scoring_pairs(pairs, cfg, objective, seed), cfg["validate_pairs"], seed)
    max_length = min(cfg["max_length"], common.context_length(model))
    inputs = common.input_device(model)
    batches = [(batch, input_ids.to(inputs), mask.to(inputs)) for batch, input_ids, mask in common.pair_batches(
        *common.encode_pairs(tokenizer, pairs, max_length), cfg["batch_size"], tokenizer.pad_token_id)]
    units = validation_units(rk.top_tau(score, 100.0)[0].cpu(), cfg["validate_attribution"],
                             common.random_generator(objective, seed, "validate-attribution"))

    # predict, then measure: one ablated forward over the validation pairs per unit
    attribution = common.AttributionPass(model, cfg["site"])
    attribution.run(batches, device, dtype, total=len(batches), desc=f"attribution {objective} (validation pairs)",
                    token_budget=common.token_budget(cfg["micro_batch_tokens"], device))
    predicted = attribution.signed().cpu()
    base = pair_margins(model, batches, device, dtype)
    rows = []
    for kind, k, rank, members in common.progress(units, desc=f"ablations {objective} seed {seed}", unit="unit"):
        selected = torch.zeros(score.shape, dtype=torch.bool)
        selected[members[:, 0], members[:, 1]] = True
        with common.ablation_hooks(model, cfg["site"], selected):
            measured = float((pair_margins(model, batches, device, dtype) - base).mean())
        layer, unit = members[0].tolist() if kind == "single" else ("", "")
        rows.append({"objective": objective, "seed": seed, "kind": kind, "k": k, "layer": layer, "neuron": unit,
                     "rank": rank, "pairs": len(pairs), "predicted": float(predicted[selected].sum()),
                     "measured": measured, "predicted_all_pairs": float(recorded[selected].sum())})
    return rows


def bootstrap_ci(statistic, n_items: int, resamples: int = common.BOOTSTRAP_RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)`: each of `resamples` draws picks n_items item indices
    with replacement (numpy Generator seeded with `seed`); (nan, nan) without items."""
    if n_items == 0:
        return math.nan, math.nan
    draws = numpy.random.default_rng(seed).integers(0, n_items, size=(resamples, n_items))
    values = numpy.array([statistic(indices) for indices in draws], dtype=float)
    low, high = numpy.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def average_ranks(values) -> numpy.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    _, inverse, counts = numpy.unique(numpy.asarray(values, dtype=float), return_inverse=True, return_counts=True)
    ends = numpy.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def spearman(x, y) -> float:
    """Spearman's ρ (Pearson r of the average ranks); NaN when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / norm if norm > 0 else math.nan


def top_k_share(predicted, measured, k) -> float:
    """Share of the k units with the largest |measured| that are among the k with the largest |predicted|."""
    def top(values):
        return set(numpy.argsort(-numpy.abs(values), kind="stable")[:k].tolist())
    return len(top(predicted) & top(measured)) / k


def validation_summary(rows) -> list[dict]:
    """Per RM, over its single neurons: Spearman ρ of predicted vs measured Δm with a 95 % bootstrap interval over
    neurons, and top-k shares (NaN where k is not below the number of singles)."""
    summary = []
    for objective, seed in dict.fromkeys((r["objective"], r["seed"]) for r in rows):
        singles = [r for r in rows if (r["objective"], r["seed"], r["kind"]) == (objective, seed, "single")]
        predicted, measured = (numpy.array([r[key] for r in singles]) for key in ("predicted", "measured"))
        low, high = bootstrap_ci(lambda i: spearman(predicted[i], measured[i]), len(singles)) \
            if len(singles) > 2 else (math.nan, math.nan)
        summary.append({"objective": objective, "seed": seed, "pairs": singles[0]["pairs"], "singles": len(singles),
                        "spearman": spearman(predicted, measured), "spearman_ci_low": low, "spearman_ci_high": high,
                        **{f"top{k}_share": top_k_share(predicted, measured, k) if k < len(singles) else math.nan
                           for k in SHARE_KS}})
    return summary


def write_validation(cfg, rows, out) -> str:
    """attribution_validation.{csv,md} (the units), attribution_validation_summary.{csv,md} and
    fig_attribution_validation.png; returns report_section.md's paragraph. Without rows (the validation did not run)
    an earlier run's files are removed, and the paragraph is empty."""
    summary = validation_summary(rows)
    common.write_rows(out / "attribution_validation", rows, digits=6)
    common.write_rows(out / "attribution_validation_summary", summary)
    figure = out / "fig_attribution_validation.png"
    if not rows:
        figure.unlink(missing_ok=True)
        return ""
    plot_validation(rows, summary, cfg, figure)
    return validation_section(cfg, rows, summary)


def plot_validation(rows, summary, cfg, path):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5))
    markers = "os^Dv<>p"
    for i, rm in enumerate(summary):
        singles = [r for r in rows if (r["objective"], r["seed"], r["kind"]) == (rm["objective"], rm["seed"], "single")]
        ax.scatter([r["predicted"] for r in singles], [r["measured"] for r in singles], s=18, alpha=0.7,
                   color=common.RM_COLORS.get(rm["objective"], "black"), marker=markers[i % len(markers)],
                   label=f"{rm['objective']} seed {rm['seed']} (ρ = {rm['spearman']:.2f})")
    values = numpy.abs([r[key] for r in rows if r["kind"] == "single" for key in ("predicted", "measured")])
    values = values[values > 0]
    limit = 1.3 * float(values.max()) if values.size else 1.0
    # symlog: the top neurons and the random ones lie orders of magnitude apart; linear within the smallest decile
    linthresh = float(numpy.percentile(values, 10)) if values.size else 1.0
    ax.plot([-limit, limit], [-limit, limit], "k--", lw=0.8, label="identity (exact prediction)")
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_xlabel("predicted Δm = −Σ a·∂m/∂a (grad × activation)")
    ax.set_ylabel("measured Δm (neuron zero-ablated)")
    ax.legend(fontsize=7, title="RM (Spearman ρ)", title_fontsize=7)
    ax.set_title(f"{cfg['model']}: attribution vs zero-ablation of single neurons\n(site {cfg['site']}; mean over "
                 f"{summary[0]['pairs']} pairs; symlog axes)", fontsize=9)
    common.save_figure(fig, path)


def validation_section(cfg, rows, summary) -> str:
    groups = [{key: r[key] for key in ("objective", "seed", "k", "predicted", "measured", "predicted_all_pairs")}
              for r in rows if r["kind"] == "top-k"]
    rhos = [rm["spearman"] for rm in summary if not math.isnan(rm["spearman"])]
    shown = f"{min(rhos):.2f}" + (f" to {max(rhos):.2f}" if len(rhos) > 1 else "") if rhos else "undefined"
    return "\n".join([
        "\n### Does the attribution predict real ablation? (ours, issue #13)\n",
        f"Per RM, {summary[0]['singles']} single neurons (the top half by |attribution|, the rest seeded-random) and "
        "the top-k groups: `predicted` Δm = the first-order estimate (grad × activation; a group's is the sum of its "
        f"members'), `measured` Δm = the margin change when they are zero-ablated at every token, both means over the "
        f"same {summary[0]['pairs']} validation pairs (a seeded subsample of the scoring pairs); `predicted_all_pairs` "
        "is the .h5's estimate over all scoring pairs. Spearman ρ over the single neurons with a 95 % bootstrap "
        f"interval over neurons ({common.BOOTSTRAP_RESAMPLES} resamples); `topk_share`: share of the k singles with "
        "the largest |measured| that are also among the k largest |predicted|.\n",
        common.rows_markdown(summary, digits=3),
        common.rows_markdown(groups),
        f"![attribution vs zero-ablation]({common.step_folder('neurons', cfg['site'])}/fig_attribution_validation.png)\n",
        f"Spearman ρ between predicted and measured Δm over the sampled neurons is {shown} across RMs (1: the "
        "attribution orders neurons exactly as ablating them does); where the top-k rows' `measured` departs from "
        "`predicted`, the neurons interact or the margin is not linear in them.\n",
    ])


if __name__ == "__main__":
    main()
