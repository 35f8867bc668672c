"""Ablating each RM's own top-τ neurons (paper §4: Tables 2–3 and 20–21, Fig. 5, Fig. 7).

    python experiments/ablate.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256 --tau 2 --tau 10
    python experiments/ablate.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256 --ablation mean \\
        --method magnitude --tau 10
    python experiments/ablate.py --model gpt2-medium --tau 10
    python experiments/ablate.py --model gpt2-medium --tau 10 --shard 2/4     # job 2 of 4 sharing runs/ (SLURM)
    python experiments/ablate.py --rm harmless=runs/tiny-gpt2/harmless/seed0/rm \\
        --rm helpful=runs/tiny-gpt2/helpful/seed0/rm --model own --tau 10 --data-dir data/demo/hh-rlhf \\
        --bench demo                                                               # RMs given by path (any folder)
    python experiments/ablate.py --model smollm2-135m-instruct-q4 --data-dir ../shared/data/hh-rlhf \\
        --train-split test --eval-fraction 0.2 --bench ../shared/data/xstest/converted --max-items 50 --tau 10

For every trained RM (each objective and seed under --runs-dir), every --method and every --tau, the RM's OWN
top-τ % neurons of that method (its neuron file; made with neurons.py's pass when missing, or when it was made in
another RM or at another site) are switched off at --site at every token position: set to 0 (--ablation zero, the
paper's) or to each neuron's mean activation over the RM's training pairs (--ablation mean). The RM is evaluated
before and after on its held-out HH-RLHF pairs (the helpful RM on helpful-base, the harmless RM on harmless-base,
the mixed RM on both; the data options default to what its train.json records) and on every --bench item. An item
is correct under the paper rule (min chosen > max rejected, strict).

Each RM is loaded once and its texts tokenised once; the plain scores are cached beside the RM (shared with
behaviour.py), the ablated ones per configuration (runs/.../ablate/[<site>/]<ablation>-<method>-tau<τ>/), so a
sweep of K configurations costs about K plain evaluations and an interrupted sweep resumes from the configurations
already scored (--force rescores the ablated ones).

Writes <results-dir>/<model>/ablate/ (ablate/<site>/ for a site other than act): sweep.csv (one row per RM,
ablation, method, τ and task), Tables 2–3 (per task baseline and Δ at τ = 10, magnitude, with paired bootstrap
intervals), heldout (held-out accuracy per τ), fig5_tau.png, fig7_scores.png, report_section.md and run.json; then
<results-dir>/<model>/report.md. Formats: docs/artifacts.md; definitions: docs/methods.md.
"""
import dataclasses
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy

import common
import rmt_kernels as rk

SWEEP_COLUMNS = ("objective", "seed", "ablation", "method", "tau", "task", "group", "items", "accuracy",
                 "base_accuracy", "delta")
# Tables 2 and 3 of the paper: harmlessness tasks, then helpfulness tasks; tasks in no group get their own table.
TABLES = (("table2_harmless", "harmless", "Harmlessness-oriented tasks"),
          ("table3_helpful", "helpful", "Helpfulness-oriented tasks"),
          ("table_other", None, "Tasks not in data/tasks.json"))


@common.step()
@common.rm_options
@common.reading_options
@common.ablation_step_options(methods=common.PAPER_METHODS)
@click.option("--force", is_flag=True, help="Rescore the ablated RMs even where cached ablated scores exist.")
def main(**cfg):
    cfg, runs, _, device, dtype = common.start_analysis(cfg)
    out = common.step_dir(cfg["results_dir"], cfg["model"], "ablate", cfg["site"])

    # load
    tasks, bench = common.load_bench(cfg)
    pairs = functools.cache(lambda: common.training_pairs(cfg, [o for o, _ in runs]))  # only for missing files

    # run
    results = common.shard_map(lambda key: sweep_rm(cfg, key, runs[key], bench.items, tasks, pairs, device, dtype),
                               runs, cfg["shard"])
    if common.shard_done(cfg, "ablate.py"):
        return

    # analyse and save
    rows = [{"objective": objective, "seed": seed, "ablation": cfg["ablation"], "method": method, "tau": tau, **row}
            for (objective, seed), result in results.items() for (method, tau), rm_rows in result["rows"].items()
            for row in rm_rows]
    common.write_csv(out / "sweep.csv", SWEEP_COLUMNS,
                     [[f"{row[c]:g}" if c == "tau" else row[c] for c in SWEEP_COLUMNS] for row in rows])
    method, tau = common.headline(cfg)
    objectives = [o for o in cfg["objective"] if any(key[0] == o for key in runs)]
    tables = write_task_tables(cfg, rows, tasks, objectives, method, tau, out)
    heldout = heldout_table(rows, cfg, objectives, tasks)
    common.write_table(out / "heldout", heldout["header"], heldout["rows"],
                       common.markdown_table(heldout["md_header"], heldout["md_rows"]))
    fig5_tau(heldout["stats"], cfg, objectives, out / "fig5_tau.png")
    fig7_scores(results, objectives, method, tau, cfg, out / "fig7_scores.png")
    common.write_text(out / "report_section.md", report_section(cfg, runs, bench, tables, heldout,
                                                                method, tau, objectives))
    common.write_json(out / "run.json", {
        **common.run_record({**cfg, "device": str(device), "dtype": str(dtype), "backend": rk.backend(device)}),
        "rms": {f"{o}/seed{s}": {"run": str(runs[o, s]), **r["timing"]} for (o, s), r in results.items()},
        "bench": {"sources": bench.sources, "excluded": bench.excluded, "notes": bench.notes},
        "headline": {"method": method, "tau": tau}})
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"ablation sweep of {len(runs)} RMs × {len(cfg['method'])} methods × {len(cfg['tau'])} τ → {out}; "
               f"report: {report}")


# ---------------------------------------------------------------------------------------------
# The sweep of one RM: neuron sets first (a bad τ or file is refused before any scoring), then one plain and one
# ablated evaluation per configuration, each cached on its own.
# ---------------------------------------------------------------------------------------------
def sweep_rm(cfg, key, run: Path, bench_items, tasks, pairs, device, dtype) -> dict | None:
    objective, seed = key
    tag = f"{objective} seed {seed}"
    folder = common.neuron_dir(run, cfg["site"])
    if "left" in common.compute_neuron_files({**cfg, "force": False}, run / "rm", objective, seed, cfg["method"],
                                             folder, pairs, device, dtype, keys=common.NEURON_IDENTITY):
        return None  # --shard: another job is making the neuron files this RM's sets come from
    model, tokenizer = common.load_reward_model(run / "rm", device, common.reading_of(cfg))
    if cfg["ablation"] == "mean" and cfg["site"] == "act" and common.arch_of(model).gated:
        common.say(f"note: {common.MEAN_AT_ACT_NOTE}")
    tokenizer = common.MemoTokenizer(tokenizer)  # every configuration scores the same texts: tokenise them once
    sets = {}
    for method in cfg["method"]:
        neurons = common.read_neurons(folder / f"{method}.h5", common.neurons_command(cfg, objective, seed, [method]),
                                      common.mlp_shape(model))
        values = neurons.mean_activation if cfg["ablation"] == "mean" else None
        for tau in cfg["tau"]:
            sets[method, tau] = (cfg["ablation"], common.select_top(neurons.score, tau), values)
    items = common.cap_items(common.held_out_items(objective, cfg), cfg["max_items"]) + list(bench_items)

    started = time.perf_counter()
    base = common.evaluate_rm(run / "rm", model, tokenizer, items, cfg, device, dtype,
                              common.own_scores_home(run), desc=f"{tag} plain")
    timing = {"items": len(items), "plain_seconds": round(time.perf_counter() - started, 2), "configs": {}}
    ablated, rows = {}, {}
    for (method, tau), intervention in sets.items():
        label = f"{cfg['ablation']}-{method}-tau{tau:g}"
        started = time.perf_counter()
        ablated[method, tau] = common.evaluate_rm(
            run / "rm", model, tokenizer, items, cfg, device, dtype,
            common.intervention_dir(run, "ablate", cfg["site"], label), ablated=intervention,
            desc=f"{tag} {cfg['ablation']} {method} τ={tau:g}", force=cfg["force"])
        if base is not None and ablated[method, tau] is not None:  # None: --shard left it to another job
            rows[method, tau] = common.accuracy_rows(items, ablated[method, tau], tasks, base=base)
        timing["configs"][f"{method}-tau{tau:g}"] = {"neurons": int(intervention[1].sum()),
                                                     "seconds": round(time.perf_counter() - started, 2)}
    timing["texts_tokenised"] = tokenizer.calls
    return {"items": items, "base": base, "ablated": ablated, "rows": rows, "timing": timing}


# ---------------------------------------------------------------------------------------------
# Tables 2–3 (per task baseline and Δ, group averages) and the held-out accuracy per τ (Fig. 5's numbers)
# ---------------------------------------------------------------------------------------------
def write_task_tables(cfg, rows, tasks, objectives, method, tau, out) -> dict:
    """Tables 2 and 3 (and the table of tasks in no group) at the headline configuration: {stem: table or None},
    written as <stem>.csv + .md (None removes an earlier run's)."""
    tables = {}
    for stem, group, title in TABLES:
        tables[stem] = task_table(rows, tasks, objectives, method, tau, group)
        if tables[stem] is None:
            common.remove_table(out / stem)
        else:
            common.write_table(out / stem, tables[stem]["header"], tables[stem]["rows"],
                               f"{title}: accuracy before ablation and Δ after ({method}, τ = {tau:g}, "
                               f"{cfg['ablation']}-ablation; percentage points, mean ± std over seeds; Δ [low, high]: "
                               f"{common.BOOTSTRAP_NOTE})\n\n"
                               + common.markdown_table(tables[stem]["md_header"], tables[stem]["md_rows"]))
    return tables


def task_table(rows, tasks, objectives, method, tau, group):
    """Per benchmark task of `group` (held-out HH-RLHF pairs excluded): baseline and Δ of each RM type, mean ± std
    over seeds, Δ with its paired bootstrap interval; then the group average (per seed the unweighted mean over the
    group's tasks, as behaviour.py)."""
    picked = [r for r in rows if r["method"] == method and r["tau"] == tau
              and not common.task_for(r["task"], tasks).held_out and (r["group"] or None) == group]
    members = list(dict.fromkeys(r["task"] for r in picked))
    if not members:
        return None
    items = {r["task"]: r["items"] for r in picked}
    lines = [(t, common.task_for(t, tasks).display, items[t], [t]) for t in members]
    if group is not None:
        lines.append((f"average-{group}", "Average", sum(items.values()), members))
    header = ["task", "display", "items"] + [f"{o}_{k}" for o in objectives
                                             for k in ("base_mean", "base_std", "delta_mean", "delta_std", "seeds",
                                                       "delta_ci_low", "delta_ci_high")]
    csv_rows, md_rows, cells = [], [], {}
    for task, display, n, names in lines:
        for o in objectives:
            mine = [r for r in picked if r["objective"] == o and r["task"] in names]
            cells[o] = common.summarise(mine, "base_accuracy"), common.summarise(mine, "delta", interval="delta")
        csv_rows.append([task, display, n] + [v for o in objectives for v in (
            cells[o][0].mean, cells[o][0].std, cells[o][1].mean, cells[o][1].std, cells[o][1].seeds, cells[o][1].low,
            cells[o][1].high)])
        md_rows.append([f"**{display}**" if task.startswith("average-") else display, n]
                       + [c for o in objectives for c in (common.cell(cells[o][0]), common.cell(cells[o][1], sign=True))])
    return {"header": header, "rows": csv_rows, "members": members, "average": cells,  # the last line's (base, Δ)
            "md_header": ["Task", "Items"] + [c for o in objectives for c in (f"{o.title()} RM base", "Δ")],
            "md_rows": md_rows}


def heldout_table(rows, cfg, objectives, tasks):
    """Accuracy on the held-out HH-RLHF pairs (all hh-* tasks of the RM pooled, item-weighted) per RM type,
    method and τ, mean ± std over seeds, Δ with its paired bootstrap interval."""
    pooled = {}  # (objective, method, tau) -> [one pooled row per seed]
    for objective, seed, method, tau in dict.fromkeys((r["objective"], r["seed"], r["method"], r["tau"]) for r in rows):
        mine = [r for r in rows if (r["objective"], r["seed"], r["method"], r["tau"]) == (objective, seed, method, tau)
                and common.task_for(r["task"], tasks).held_out]
        if mine:
            pooled.setdefault((objective, method, tau), []).append(common.pool_tasks(mine, "hh-pooled"))
    stats = {key: {"accuracy": common.summarise(per_seed, "accuracy"), "base": common.summarise(per_seed, "base_accuracy"),
                   "delta": common.summarise(per_seed, "delta", interval="delta"),
                   "items": round(statistics.fmean(r["items"] for r in per_seed))}
             for key, per_seed in pooled.items()}
    keys = [(o, m, t) for o in objectives for m in cfg["method"] for t in cfg["tau"] if (o, m, t) in stats]
    header = ["objective", "method", "tau", "items", "base_mean", "base_std", "accuracy_mean", "accuracy_std",
              "delta_mean", "delta_std", "seeds", "delta_ci_low", "delta_ci_high"]
    csv_rows = [[o, m, f"{t:g}", stats[o, m, t]["items"], stats[o, m, t]["base"].mean, stats[o, m, t]["base"].std,
                 stats[o, m, t]["accuracy"].mean, stats[o, m, t]["accuracy"].std,
                 *dataclasses.astuple(stats[o, m, t]["delta"])] for o, m, t in keys]
    md_rows = []  # one row per RM type and method, one column per τ: ablated accuracy (Δ), means over seeds
    for o in objectives:
        for m in cfg["method"]:
            present = [t for t in cfg["tau"] if (o, m, t) in stats]
            if present:
                first = stats[o, m, present[0]]
                md_rows.append([f"{o} RM", m, first["items"], f"{100 * first['base'].mean:.2f}"]
                               + [f"{100 * stats[o, m, t]['accuracy'].mean:.2f} "
                                  f"({common.cell(stats[o, m, t]['delta'], sign=True, std=False)})"
                                  if (o, m, t) in stats else "–" for t in cfg["tau"]])
    return {"header": header, "rows": csv_rows, "stats": stats, "md_rows": md_rows,
            "md_header": ["RM", "Method", "Pairs", "Not ablated"] + [f"τ = {t:g} %" for t in cfg["tau"]]}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def fig5_tau(stats, cfg, objectives, path: Path):
    """Fig. 5: held-out HH-RLHF accuracy after the ablation, per method, one panel per RM type: against τ where
    several were swept (a line per method), as dots per method where there is one τ; the dashed line is the RM
    before ablation; error bars: the paired 95 % bootstrap interval of Δ (the held-out table's), placed at the
    baseline + Δ."""
    plt = common.pyplot()
    taus = sorted(cfg["tau"])
    fig, axes = plt.subplots(1, len(objectives), figsize=(4.2 * len(objectives), 3.6), sharey=True, squeeze=False)
    for ax, objective in zip(axes[0], objectives):
        for k, method in enumerate(cfg["method"]):
            points = [(t, stats[objective, method, t]) for t in taus if (objective, method, t) in stats]
            color, marker = common.METHOD_STYLE[method]
            base = numpy.array([100 * p["base"].mean for _, p in points])
            common.plot_estimates(ax, [t for t, _ in points] if len(taus) > 1 else [k],
                                  [100 * p["accuracy"].mean for _, p in points],
                                  base + [100 * p["delta"].low for _, p in points],
                                  base + [100 * p["delta"].high for _, p in points], color=color, marker=marker,
                                  label=method)
        base = [stats[objective, m, t]["base"].mean for m in cfg["method"] for t in taus if (objective, m, t) in stats]
        if base:
            ax.axhline(100 * base[0], color=common.RM_COLORS[objective], linestyle="--", label="not ablated")
        if len(taus) == 1:
            ax.set_xticks(range(len(cfg["method"])), cfg["method"])
            ax.set_xlim(-0.5, len(cfg["method"]) - 0.5)
            ax.set_xlabel(f"neurons by (τ = {taus[0]:g} % of MLP neurons ablated)")
        else:
            if taus[-1] / taus[0] >= 10:
                ax.set_xscale("log")
                ax.set_xticks(taus, [f"{t:g}" for t in taus])
                ax.minorticks_off()
            ax.set_xlabel("τ: % of MLP neurons ablated")
        ax.set_ylim(0, 100)
        ax.axhline(50, color="black", linewidth=0.5, alpha=0.3)
        ax.set_title(f"{objective} RM", color=common.RM_COLORS[objective])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out HH-RLHF accuracy (%)")
    axes[0][-1].legend(fontsize="small", title="neurons by")
    fig.suptitle(f"{cfg['model']}: {cfg['ablation']}-ablation of each RM's own top-τ neurons (site {cfg['site']}; "
                 "bars: paired 95 % bootstrap interval of Δ over pairs)", fontsize="medium")
    common.save_figure(fig, path)


def fig7_scores(results, objectives, method, tau, cfg, path: Path):
    """Fig. 7: per item, the min chosen and the max rejected score, before (left) and after (right) ablation, pooled
    over every evaluated item and seed; one row per RM type."""
    plt = common.pyplot()
    fig, axes = plt.subplots(len(objectives), 2, figsize=(10, 2.8 * len(objectives)), sharey="row", squeeze=False)
    for row, objective in zip(axes, objectives):
        before = [s for (o, _), r in results.items() if o == objective for s in r["base"]]
        after = [s for (o, _), r in results.items() if o == objective for s in r["ablated"][method, tau]]
        values = [v for s in before + after for v in (min(s.chosen), max(s.rejected))]
        bins = numpy.histogram_bin_edges(values, bins=40)
        for ax, scores, when in ((row[0], before, "before"), (row[1], after, "after")):
            accuracy = common.paper_accuracy(scores)
            ax.hist([min(s.chosen) for s in scores], bins=bins, alpha=0.55, color="tab:green", label="min chosen")
            ax.hist([max(s.rejected) for s in scores], bins=bins, alpha=0.55, color="tab:orange",
                    label="max rejected")
            ax.set_title(f"{objective} RM, {when} ablation ({len(scores)} items, accuracy {100 * accuracy:.1f} %)",
                         fontsize="medium", color=common.RM_COLORS[objective])
            ax.set_xlabel("reward")
            ax.set_ylabel("items")
            ax.legend(fontsize="small")
    fig.suptitle(f"{cfg['model']}: scores before and after {cfg['ablation']}-ablating the top {tau:g} % by {method} "
                 "(held-out pairs and benchmark items, all seeds)", fontsize="medium")
    common.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The ablation section of report.md
# ---------------------------------------------------------------------------------------------
def beside_the_paper(tables, objectives) -> str:
    """The group averages of Tables 2–3 (baseline / Δ) beside the paper's, as a Markdown table."""
    ours = {}
    for stem, group, _ in TABLES[:2]:
        if tables[stem] is not None:
            for objective, (base, delta) in tables[stem]["average"].items():
                ours[objective, group] = f"{common.cell(base, std=False)} / {common.cell(delta, sign=True, std=False)}"
    return common.markdown_table(["RM", "Tasks", "Ours", "Paper"],
                                 [[f"{o} RM", f"{g} tasks", ours.get((o, g), "–"), f"{b:.2f} / {d:+.2f}"]
                                  for o in objectives for g in ("harmless", "helpful")
                                  for b, d in [common.PAPER_ABLATION[o, g]]])


def report_section(cfg, runs, bench, tables, heldout, method, tau, objectives) -> str:
    folder = common.step_folder("ablate", cfg["site"])
    sampled = f" (at most {cfg['max_items']} per task, a seeded subsample)" if cfg["max_items"] else ""
    chosen = "the paper's" if (method, tau) == ("magnitude", 10.0) else \
        "τ = 10 and magnitude were not both swept, so the first asked for"
    lines = ["## Ablation (paper §4)\n",
             f"{common.rms_sentence(cfg, runs, objectives)}. Each RM ablates its OWN top-τ % MLP neurons "
             f"(site `{cfg['site']}`, "
             f"{cfg['ablation']}-ablation at every token position) for each method ({', '.join(cfg['method'])}) and "
             f"τ ∈ {{{', '.join(f'{t:g}' for t in cfg['tau'])}}} %, and is evaluated before and after on its held-out "
             f"HH-RLHF pairs and on {len(bench.items)} benchmark items{sampled} "
             f"({', '.join(f'`{b}`' for b in cfg['bench'])}). Accuracy: min chosen > max rejected (strict); "
             "Δ = ablated − not ablated, percentage points; ± is the population std over seeds; [low, high] is the "
             f"paired interval of Δ ({common.BOOTSTRAP_NOTE}; with several seeds, of the seed-mean Δ, each task's "
             f"items drawn once for every seed). Every row is in `{folder}/sweep.csv`.\n"]
    if cfg["ablation"] == "mean" and cfg["site"] == "act":
        lines.append("Mean-ablation at `act`: on a gated MLP (Llama: act(gate)·up) the up factor still multiplies "
                     "the replaced value, so the neuron's output is not its mean there; `--site down_in` is the true "
                     "per-neuron mean.\n")
    lines += [f"### Tables 2–3: Δ accuracy per task ({method}, τ = {tau:g}: {chosen})\n"]
    for stem, group, title in TABLES:
        if tables[stem] is not None:
            lines += [f"**{title}** (`{folder}/{stem}.md`): baseline accuracy of each RM type and its change when it "
                      "ablates its own neurons; the bold row is the unweighted mean over the group's tasks.\n",
                      common.markdown_table(tables[stem]["md_header"], tables[stem]["md_rows"])]
    lines += ["### Beside the paper\n",
              f"Group averages here ({method}, τ = {tau:g}) and the paper's (τ = 10, magnitude, mean of 6 backbones "
              "× 3 seeds), baseline / Δ in percentage points.\n", beside_the_paper(tables, objectives)]
    lines += ["### Held-out HH-RLHF accuracy against τ (Fig. 5)\n",
              "Accuracy on each RM's own held-out pairs (the mixed RM: helpful-base and harmless-base pooled) after "
              "ablating its top-τ % neurons of each method; the dashed line is the RM before ablation. "
              "The paper sees magnitude and change drop far below random. Table: ablated accuracy (Δ [95 % interval]), "
              f"%, mean over seeds (± in `{folder}/heldout.csv`).\n",
              f"![Fig. 5]({folder}/fig5_tau.png)\n",
              common.markdown_table(heldout["md_header"], heldout["md_rows"]),
              f"### Score distributions before and after (Fig. 7; {method}, τ = {tau:g})\n",
              "Per item, the lowest chosen and the highest rejected score, before and after the ablation: where "
              "the two distributions move together the RM no longer separates chosen from rejected.\n",
              f"![Fig. 7]({folder}/fig7_scores.png)\n"]
    lines += [f"- note: {note}" for note in bench.notes]
    lines += [f"- excluded as in the paper: {key} ({n} items)" for key, n in bench.excluded.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
