"""Ablating each RM's own top-τ neurons (paper §4: Tables 2–3 and 20–21, Fig. 5, Fig. 7).

    python experiments/ablate.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256 --tau 2 --tau 10
    python experiments/ablate.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256 --ablation mean \\
        --method magnitude --tau 10
    python experiments/ablate.py --model gpt2-medium --tau 10
    python experiments/ablate.py --model smollm2-135m-instruct-q4 --data-dir ../shared/data/hh-rlhf \\
        --train-split test --eval-fraction 0.2 --bench ../shared/data/xstest/converted --max-items 50 --tau 10

For every trained RM (each objective and seed under --runs-dir), every --method and every --tau, the RM's OWN
top-τ % neurons of that method (runs/.../neurons/<method>.h5; made with neurons.py's pass when missing) are
switched off at --site at every token position: set to 0 (--ablation zero, the paper's) or to each neuron's mean
activation over the RM's training pairs (--ablation mean, read from the same .h5). The RM is evaluated before and
after on its held-out HH-RLHF pairs (tasks hh-<subset>: the helpful RM on helpful-base, the harmless RM on
harmless-base, the mixed RM on both) and on every --bench item. An item is correct under the paper rule (min
chosen > max rejected, strict).

Each RM is loaded once and its texts tokenised once; the plain scores are cached in <run>/scores/ (shared with
behaviour.py), the ablated ones per configuration in <run>/ablate/<ablation>-<method>-tau<τ>/scores/, so a sweep of
K configurations costs about K plain evaluations and an interrupted sweep resumes from the configurations already
scored (--force rescores the ablated ones).

Writes <results-dir>/<model>/ablate/: sweep.csv (objective, seed, ablation, method, tau, task, group, items,
accuracy, base_accuracy, delta: one row per RM, ablation, method, τ and task), table2_harmless.{csv,md} and
table3_helpful.{csv,md} (per task baseline and Δ at τ = 10, magnitude, mean ± std over seeds, group averages),
heldout.{csv,md} (both with delta_ci_low / delta_ci_high: the paired 95 % bootstrap interval of Δ over items, 1000
resamples, seed 0), fig5_tau.png (held-out accuracy against τ), fig7_scores.png (min chosen / max rejected scores
before and after), report_section.md and run.json; then <results-dir>/<model>/report.md.
"""
import math
import shutil
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
# SPEC §1 "Ablation": τ = 10, magnitude, mean of 6 backbones × 3 seeds; (baseline, Δ) in percentage points.
PAPER = {("harmless", "harmless"): (70.82, -12.89), ("harmless", "helpful"): (43.87, 1.06),
         ("helpful", "harmless"): (30.50, 5.45), ("helpful", "helpful"): (51.29, -7.30),
         ("mixed", "harmless"): (60.62, -13.18), ("mixed", "helpful"): (50.35, -5.88)}


@click.command(context_settings={"show_default": True})
@common.rm_options
@common.ablation_step_options(methods=common.PAPER_METHODS)
@click.option("--force", is_flag=True, help="Rescore the ablated RMs even where cached ablated scores exist.")
def main(**cfg):
    device, dtype = common.start_analysis(cfg)
    runs = common.require_runs(cfg["runs_dir"], cfg["model"], cfg["objective"], cfg["seed"])  # before any scoring
    out = common.step_dir(cfg["results_dir"], cfg["model"], "ablate")

    # load
    tasks = common.load_tasks()
    bench = common.load_benchmarks(cfg["bench"], tasks)
    for note in bench.notes:
        click.echo(f"note: {note}", err=True)
    bench_items = common.cap_items(bench.items, cfg["max_items"])

    # run
    results = {key: sweep_rm(cfg, key, run, bench_items, device, dtype) for key, run in runs.items()}

    # analyse and save
    rows = [{"objective": objective, "seed": seed, "ablation": cfg["ablation"], "method": method,
             "tau": tau, **row}
            for (objective, seed), result in results.items() for (method, tau), scores in result["ablated"].items()
            for row in common.accuracy_rows(result["items"], result["base"], scores, tasks)]
    common.write_csv(out / "sweep.csv", SWEEP_COLUMNS,
                     [[f"{row[c]:g}" if c == "tau" else row[c] for c in SWEEP_COLUMNS] for row in rows])
    method, tau = common.headline(cfg)
    objectives = [o for o in cfg["objective"] if any(key[0] == o for key in runs)]
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
    heldout = heldout_table(rows, cfg, objectives)
    common.write_table(out / "heldout", heldout["header"], heldout["rows"],
                       common.markdown_table(heldout["md_header"], heldout["md_rows"]))
    fig5_tau(heldout["stats"], cfg, objectives, out / "fig5_tau.png")
    fig7_scores(results, objectives, method, tau, cfg, out / "fig7_scores.png")
    common.write_text(out / "report_section.md", report_section(cfg, runs, bench, bench_items, tables, heldout,
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
def sweep_rm(cfg, key, run: Path, bench_items, device, dtype) -> dict:
    objective, seed = key
    tag = f"{objective} seed {seed}"
    folder = common.neuron_dir(run, cfg["site"])
    missing = [m for m in cfg["method"] if not (folder / f"{m}.h5").exists()]
    if missing:
        click.echo(f"[{tag}] no {', '.join(f'{m}.h5' for m in missing)} in {folder}: scoring the neurons first "
                   f"(neurons.py's pass)", err=True)
        common.compute_neuron_files({**cfg, "force": False}, objective, seed, missing, device, dtype)
    model, tokenizer = common.load_reward_model(run / "rm", device)
    tokenizer = common.MemoTokenizer(tokenizer)  # every configuration scores the same texts: tokenise them once
    sets = {}
    for method in cfg["method"]:
        neurons = common.read_neurons(run, method, cfg["site"], model, cfg)
        values = neurons.mean_activation if cfg["ablation"] == "mean" else None
        for tau in cfg["tau"]:
            sets[method, tau] = (cfg["ablation"], common.select_top(neurons.score, tau), values)
    held_out = common.cap_items(common.held_out_items(objective, cfg["data_dir"], cfg["train_split"],
                                                      cfg["eval_split"], cfg["eval_fraction"]), cfg["max_items"])
    items = held_out + list(bench_items)

    started = time.perf_counter()
    base = common.evaluate_rm(run, model, tokenizer, items, cfg, device, dtype, desc=f"{tag} plain")
    timing = {"items": len(items), "plain_seconds": round(time.perf_counter() - started, 2), "configs": {}}
    ablated = {}
    for (method, tau), intervention in sets.items():
        cache = common.ablation_dir(run, cfg["ablation"], method, tau) / "scores"
        if cfg["force"] and cache.exists():
            shutil.rmtree(cache)
        started = time.perf_counter()
        ablated[method, tau] = common.evaluate_rm(run, model, tokenizer, items, cfg, device, dtype,
                                                  ablated=intervention, cache_dir=cache,
                                                  desc=f"{tag} {cfg['ablation']} {method} τ={tau:g}")
        timing["configs"][f"{method}-tau{tau:g}"] = {"neurons": int(intervention[1].sum()),
                                                     "seconds": round(time.perf_counter() - started, 2)}
    timing["texts_tokenised"] = tokenizer.calls
    return {"items": items, "base": base, "ablated": ablated, "timing": timing}


# ---------------------------------------------------------------------------------------------
# Tables 2–3 (per task baseline and Δ, group averages) and the held-out accuracy per τ (Fig. 5's numbers)
# ---------------------------------------------------------------------------------------------
def pp(mean: float, std: float | None = None, sign: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    text = f"{100 * mean:+.2f}" if sign else f"{100 * mean:.2f}"
    return text if std is None else f"{text} ± {100 * std:.2f}"


def with_ci(text: str, ci: tuple[float, float]) -> str:
    """`text [low, high]` in percentage points; the text alone where there is no interval."""
    return text if math.isnan(ci[0]) else f"{text} [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def seeds_ci(per_task: list[list[tuple]]) -> tuple[float, float]:
    """Paired bootstrap interval of the seed-mean Δ averaged over tasks; per_task[t] holds each seed's (before, after)
    per-item correctness of task t. Each task's items are resampled with ONE draw for every seed (they are the same
    items: held-out pairs and benchmark items do not depend on the seed); none when a task's seeds differ in items."""
    if not per_task or any(len({len(b) for b, _ in seeds}) != 1 for seeds in per_task):
        return math.nan, math.nan
    return common.bootstrap_paired_delta_ci([numpy.stack([b for b, _ in seeds]) for seeds in per_task],
                                            [numpy.stack([a for _, a in seeds]) for seeds in per_task])


def is_held_out(task: str, tasks) -> bool:
    return common.task_for(task, tasks).benchmark == "hh-rlhf"


def task_table(rows, tasks, objectives, method, tau, group):
    """Per benchmark task of `group` (held-out HH-RLHF pairs excluded): baseline and Δ of each RM type, mean ± std
    over seeds; then the group average (per seed the unweighted mean over the group's tasks, as behaviour.py)."""
    picked = [r for r in rows if r["method"] == method and r["tau"] == tau and not is_held_out(r["task"], tasks)
              and (r["group"] or None) == group]
    members = list(dict.fromkeys(r["task"] for r in picked))
    if not members:
        return None
    value = {(r["objective"], r["seed"], r["task"]): r for r in picked}
    items = {r["task"]: r["items"] for r in picked}

    def complete(objective, names):
        return [s for s in sorted({s for o, s, _ in value if o == objective})
                if all((objective, s, t) in value for t in names)]

    def stats(objective, field, names):
        return common.mean_std([statistics.fmean(value[objective, s, t][field] for t in names)
                                for s in complete(objective, names)])

    def delta_ci(objective, names):
        """Paired bootstrap over items of the seed-mean Δ (mean over `names`): each task's items resampled, the
        same draw for every seed."""
        seeds = complete(objective, names)
        return seeds_ci([[(value[objective, s, t]["base_correct"], value[objective, s, t]["correct"]) for s in seeds]
                         for t in names] if seeds else [])

    lines = [(t, common.task_for(t, tasks).display, items[t], [t]) for t in members]
    if group is not None:
        lines.append((f"average-{group}", "Average", sum(items.values()), members))
    header = ["task", "display", "items"] + [f"{o}_{k}" for o in objectives
                                             for k in ("base_mean", "base_std", "delta_mean", "delta_std", "seeds",
                                                       "delta_ci_low", "delta_ci_high")]
    csv_rows, md_rows = [], []
    for task, display, n, names in lines:
        cells = {o: (stats(o, "base_accuracy", names), stats(o, "delta", names), delta_ci(o, names))
                 for o in objectives}
        csv_rows.append([task, display, n] + [v for o in objectives for v in (*cells[o][0][:2], *cells[o][1],
                                                                               *cells[o][2])])
        md_rows.append([f"**{display}**" if task.startswith("average-") else display, n]
                       + [c for o in objectives for c in (pp(*cells[o][0][:2]),
                                                          with_ci(pp(*cells[o][1][:2], sign=True), cells[o][2]))])
    return {"header": header, "rows": csv_rows, "members": members,
            "md_header": ["Task", "Items"] + [c for o in objectives for c in (f"{o.title()} RM base", "Δ")],
            "md_rows": md_rows}


def heldout_table(rows, cfg, objectives):
    """Accuracy on the held-out HH-RLHF pairs (all hh-* tasks of the RM pooled, item-weighted) per RM type,
    method and τ, mean ± std over seeds."""
    tasks = common.load_tasks()
    pooled = {}  # (objective, method, tau) -> {seed: [correct after, correct before, items, per-item before, after]}
    for r in rows:
        if is_held_out(r["task"], tasks):
            acc = pooled.setdefault((r["objective"], r["method"], r["tau"]), {}).setdefault(r["seed"],
                                                                                           [0, 0, 0, [], []])
            acc[0] += r["accuracy"] * r["items"]
            acc[1] += r["base_accuracy"] * r["items"]
            acc[2] += r["items"]
            acc[3].append(r["base_correct"])
            acc[4].append(r["correct"])
    stats = {key: {"accuracy": common.mean_std([a / n for a, _, n, _, _ in per_seed.values()]),
                   "base": common.mean_std([b / n for _, b, n, _, _ in per_seed.values()]),
                   "delta": common.mean_std([(a - b) / n for a, b, n, _, _ in per_seed.values()]),
                   "delta_ci": seeds_ci([[(numpy.concatenate(b), numpy.concatenate(a))
                                          for _, _, _, b, a in per_seed.values()]]),
                   "items": round(statistics.fmean(n for _, _, n, _, _ in per_seed.values()))}
             for key, per_seed in pooled.items()}
    keys = [(o, m, t) for o in objectives for m in cfg["method"] for t in cfg["tau"] if (o, m, t) in stats]
    header = ["objective", "method", "tau", "items", "base_mean", "base_std", "accuracy_mean", "accuracy_std",
              "delta_mean", "delta_std", "seeds", "delta_ci_low", "delta_ci_high"]
    csv_rows = [[o, m, f"{t:g}", stats[o, m, t]["items"], *stats[o, m, t]["base"][:2],
                 *stats[o, m, t]["accuracy"][:2], *stats[o, m, t]["delta"], *stats[o, m, t]["delta_ci"]]
                for o, m, t in keys]
    md_rows = []  # one row per RM type and method, one column per τ: ablated accuracy (Δ), means over seeds
    for o in objectives:
        for m in cfg["method"]:
            present = [t for t in cfg["tau"] if (o, m, t) in stats]
            if present:
                first = stats[o, m, present[0]]
                md_rows.append([f"{o} RM", m, first["items"], pp(first["base"][0])]
                               + [f"{pp(stats[o, m, t]['accuracy'][0])} "
                                  f"({with_ci(pp(stats[o, m, t]['delta'][0], sign=True), stats[o, m, t]['delta_ci'])})"
                                  if (o, m, t) in stats else "–" for t in cfg["tau"]])
    return {"header": header, "rows": csv_rows, "stats": stats, "md_rows": md_rows,
            "md_header": ["RM", "Method", "Pairs", "Not ablated"] + [f"τ = {t:g} %" for t in cfg["tau"]]}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def fig5_tau(stats, cfg, objectives, path: Path):
    """Fig. 5: held-out HH-RLHF accuracy against τ, one line per method, one panel per RM type; the dashed line is
    the RM before ablation; error bars: ± std over seeds."""
    plt = common.pyplot()
    taus = sorted(cfg["tau"])
    fig, axes = plt.subplots(1, len(objectives), figsize=(4.2 * len(objectives), 3.6), sharey=True, squeeze=False)
    for ax, objective in zip(axes[0], objectives):
        for method in cfg["method"]:
            points = [(t, stats[objective, method, t]["accuracy"]) for t in taus if (objective, method, t) in stats]
            color, marker = common.METHOD_STYLE[method]
            ax.errorbar([t for t, _ in points], [100 * m for _, (m, _, _) in points],
                        yerr=[100 * s for _, (_, s, _) in points], color=color, marker=marker, capsize=3,
                        label=method)
        base = [stats[objective, m, t]["base"][0] for m in cfg["method"] for t in taus
                if (objective, m, t) in stats]
        if base:
            ax.axhline(100 * base[0], color=common.RM_COLORS[objective], linestyle="--", label="not ablated")
        if len(taus) > 1 and taus[-1] / taus[0] >= 10:
            ax.set_xscale("log")
            ax.set_xticks(taus, [f"{t:g}" for t in taus])
            ax.minorticks_off()
        ax.set_ylim(0, 100)
        ax.axhline(50, color="black", linewidth=0.5, alpha=0.3)
        ax.set_xlabel("τ: % of MLP neurons ablated")
        ax.set_title(f"{objective} RM", color=common.RM_COLORS[objective])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out HH-RLHF accuracy (%)")
    axes[0][-1].legend(fontsize="small", title="neurons by")
    fig.suptitle(f"{cfg['model']}: {cfg['ablation']}-ablation of each RM's own top-τ neurons (site {cfg['site']}; "
                 "± std over seeds)", fontsize="medium")
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
def report_section(cfg, runs, bench, bench_items, tables, heldout, method, tau, objectives) -> str:
    rms = ", ".join(f"{o} (seeds {', '.join(str(s) for oo, s in runs if oo == o)})" for o in objectives)
    sampled = f" (at most {cfg['max_items']} per task, a seeded subsample)" if cfg["max_items"] else ""
    chosen = "the paper's" if (method, tau) == ("magnitude", 10.0) else \
        "τ = 10 and magnitude were not both swept, so the first asked for"
    lines = ["## Ablation (paper §4)\n",
             f"RMs of `{cfg['model']}`: {rms}. Each RM ablates its OWN top-τ % MLP neurons (site `{cfg['site']}`, "
             f"{cfg['ablation']}-ablation at every token position) for each method ({', '.join(cfg['method'])}) and "
             f"τ ∈ {{{', '.join(f'{t:g}' for t in cfg['tau'])}}} %, and is evaluated before and after on its held-out "
             f"HH-RLHF pairs and on {len(bench_items)} benchmark items{sampled} "
             f"({', '.join(f'`{b}`' for b in cfg['bench'])}). Accuracy: min chosen > max rejected (strict); "
             "Δ = ablated − not ablated, percentage points; ± is the population std over seeds; [low, high] is the "
             f"paired interval of Δ ({common.BOOTSTRAP_NOTE}; with several seeds, of the seed-mean Δ, each task's "
             "items drawn once for every seed). Every row is in `ablate/sweep.csv`.\n"]
    if cfg["ablation"] == "mean" and cfg["site"] == "act":
        lines.append("Mean-ablation at `act`: on a gated MLP (Llama: act(gate)·up) the up factor still multiplies "
                     "the replaced value, so the neuron's output is not its mean there; `--site down_in` is the true "
                     "per-neuron mean.\n")
    lines += [f"### Tables 2–3: Δ accuracy per task ({method}, τ = {tau:g}: {chosen})\n"]
    for stem, group, title in TABLES:
        if tables[stem] is not None:
            lines += [f"**{title}** (`ablate/{stem}.md`): baseline accuracy of each RM type and its change when it "
                      "ablates its own neurons; the bold row is the unweighted mean over the group's tasks.\n",
                      common.markdown_table(tables[stem]["md_header"], tables[stem]["md_rows"])]
    lines += ["### Beside the paper\n",
              f"Group averages here ({method}, τ = {tau:g}) and the paper's (τ = 10, magnitude, mean of 6 backbones "
              "× 3 seeds), baseline / Δ in percentage points.\n"]
    ours = {}
    for stem, group, _ in TABLES[:2]:
        table = tables[stem]
        if table is not None:
            average = table["rows"][-1]
            for k, objective in enumerate(objectives):
                base, _, delta = average[3 + 7 * k: 6 + 7 * k]
                ours[objective, group] = f"{pp(base)} / {pp(delta, sign=True)}"
    lines.append(common.markdown_table(
        ["RM", "Tasks", "Ours", "Paper"],
        [[f"{o} RM", f"{g} tasks", ours.get((o, g), "–"), f"{b:.2f} / {d:+.2f}"]
         for o in objectives for g in ("harmless", "helpful") for b, d in [PAPER[o, g]]]))
    lines += ["### Held-out HH-RLHF accuracy against τ (Fig. 5)\n",
              "Accuracy on each RM's own held-out pairs (the mixed RM: helpful-base and harmless-base pooled) after "
              "ablating its top-τ % neurons of each method; the dashed line is the RM before ablation. "
              "The paper sees magnitude and change drop far below random. Table: ablated accuracy (Δ [95 % interval]), "
              "%, mean over seeds (± in `ablate/heldout.csv`).\n",
              "![Fig. 5](ablate/fig5_tau.png)\n",
              common.markdown_table(heldout["md_header"], heldout["md_rows"]),
              f"### Score distributions before and after (Fig. 7; {method}, τ = {tau:g})\n",
              "Per item, the lowest chosen and the highest rejected score, before and after the ablation: where "
              "the two distributions move together the RM no longer separates chosen from rejected.\n",
              "![Fig. 7](ablate/fig7_scores.png)\n"]
    lines += [f"- note: {note}" for note in bench.notes]
    lines += [f"- excluded as in the paper: {key} ({n} items)" for key, n in bench.excluded.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
