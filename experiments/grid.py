"""The paper's grid over backbones: its headline numbers are means over 6 backbones × 3 seeds (Fig. 2, Tables 2–4)
and its appendix sets the backbones side by side (Tables 13–15, 17–18, 20–21, Fig. 6). This builds both from the
per-backbone result files of behaviour.py, ablate.py and shared.py, and says which of the grid's RMs are missing.

    python experiments/grid.py --model tiny-gpt2 --model tiny-llama --seed 0 --seed 1
    python experiments/grid.py --seed 0 --seed 1 --seed 2          # the paper's six backbones

Nothing is recomputed: it reads <results-dir>/<model>/{train/heldout.csv, behaviour/run.json, behaviour/retention.csv,
ablate/sweep.csv, shared/partitions.csv, shared/overlap.csv} of every --model (site act, each step's latest run),
at most the --seed values, so it takes seconds; run_all.sh runs it after the backbones of MODELS. A backbone or RM
without results is listed as missing, never guessed. Writes <results-dir>/grid/: coverage, behaviour (Fig. 2),
ablation (Tables 2–3), table4, overlap (means ± std over backbones × seeds beside the paper) and the model-wise
accuracy (Tables 13–14), retention (Table 15), ablation_models (Tables 20–21), shared_models (Tables 17–18),
overlap_models (.csv + .md), fig6_ablation.png, report_section.md and run.json (the sha256 of every file read);
then <results-dir>/report.md, whose grid section stands only while those files are unchanged. Formats:
docs/artifacts.md; the intervals over backbones: docs/methods.md.
"""
import csv
import dataclasses
import math
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy

import common

GROUPS = ("harmless", "helpful")  # the paper's order: Table 2 (harmlessness tasks), then Table 3
INPUTS = {"trained": "train/heldout.csv", "behaviour": "behaviour/run.json", "retention": "behaviour/retention.csv",
          "sweep": "ablate/sweep.csv", "partitions": "shared/partitions.csv", "overlap": "shared/overlap.csv"}
NUMBERS = {"seed": int, "items": int, "tau": float, "neurons": float, "accuracy": float, "base_accuracy": float,
           "delta": float, "value": float, "chance": float, "retention_mean": float, "retention_std": float,
           "seeds": int}
INTERVAL_NOTE = ("[low, high]: 95 % bootstrap interval over backbones (whole backbones drawn with replacement, each "
                 f"with its own seeds; {common.BOOTSTRAP_RESAMPLES} resamples, seed 0); none with one backbone")


@common.step()
@common.models_option
@common.seed_option
@common.results_option
def main(**cfg):
    for model in cfg["model"]:
        common.check_model(model)
    results = Path(cfg["results_dir"])
    out = results / common.GRID_FOLDER

    # load: each backbone's result files, as they are (absent ones count as missing)
    tasks = common.load_tasks()
    backbones = [read_backbone(results, model, cfg["seed"], tasks) for model in cfg["model"]]

    # aggregate
    swept = {(r["method"], r["tau"]) for b in backbones for r in b.sweep + b.partitions}
    method, tau = common.headline({"method": sorted({m for m, _ in swept}), "tau": sorted({t for _, t in swept})}) \
        if swept else ("magnitude", 10.0)
    for backbone in backbones:
        backbone.keep_headline(method, tau, tasks)
    paper = (method, tau) == ("magnitude", 10.0)
    full = len(backbones) * len(cfg["seed"])  # (backbone, seed) units of a complete grid
    tables = {"coverage": coverage_table(backbones, cfg["seed"]), "behaviour": behaviour_table(backbones, full),
              "ablation": ablation_table(backbones, full, paper), "table4": table4(backbones, full, paper),
              "overlap": overlap_table(backbones, full, paper), "accuracy": accuracy_models(backbones, tasks),
              "retention": retention_models(backbones, tasks), "ablation_models": ablation_models(backbones),
              "shared_models": shared_models(backbones), "overlap_models": overlap_models(backbones, paper)}

    # save
    for name, table in tables.items():
        if table is None:
            common.remove_table(out / name)
        else:
            common.write_table(out / name, *table)
    drawn = fig6_ablation(backbones, method, tau, out / "fig6_ablation.png")
    common.write_text(out / "report_section.md", report_section(cfg, backbones, tables, method, tau, drawn))
    names = [f"{common.model_slug(m)}/{name}" for m in cfg["model"] for name in INPUTS.values()]
    common.write_json(out / "run.json", {
        **common.run_record(cfg), "headline": {"method": method, "tau": tau},
        "rebuild": shlex.join(["python", "experiments/grid.py", *[f"--model={m}" for m in cfg["model"]],
                               *[f"--seed={s}" for s in cfg["seed"]], f"--results-dir={results}"]),
        "inputs": common.file_hashes(results, names)})
    index = common.write_index(results)
    click.echo(f"grid of {len(backbones)} backbone(s) × {len(cfg['seed'])} seed(s) → {out}; report: {index}")


# ---------------------------------------------------------------------------------------------
# One backbone's result files as rows, each with its backbone, at most the asked seeds
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Backbone:
    model: str
    trained: list[dict]      # train/heldout.csv: one row per trained RM
    behaviour: list[dict]    # per RM and task: objective, seed, task, group, accuracy (behaviour/run.json)
    retention: list[dict]    # behaviour/retention.csv: per task, over the seeds behaviour.py was run with
    sweep: list[dict]        # ablate/sweep.csv
    partitions: list[dict]   # shared/partitions.csv
    overlap: list[dict]      # shared/overlap.csv

    def keep_headline(self, method: str, tau: float, tasks):
        """Keep the ablation rows of the headline configuration on benchmark tasks (the held-out HH-RLHF pairs
        are each RM's own; the paper's group means are over benchmark tasks)."""
        def keep(rows):
            return [r for r in rows if (r["method"], r["tau"]) == (method, tau)
                    and not common.task_for(r["task"], tasks).held_out]
        self.sweep, self.partitions = keep(self.sweep), keep(self.partitions)
        self.overlap = [r for r in self.overlap if (r["method"], r["tau"]) == (method, tau)]


def read_csv(path: Path, model: str, seeds) -> list[dict]:
    """A per-backbone CSV as dicts (numbers converted), tagged with its backbone; [] when there is none."""
    if not path.exists():
        return []
    try:
        rows = list(csv.DictReader(common.read_text(path).splitlines()))
        rows = [{k: NUMBERS[k](v) if k in NUMBERS and v != "" else v for k, v in row.items()} for row in rows]
    except (ValueError, TypeError) as err:
        raise common.Unreadable(f"{path} is not the table its step writes ({err}): damaged? rerun "
                                f"{path.parent.name}.py for {model}") from None
    return [{**row, "backbone": model} for row in rows if "seed" not in row or row["seed"] in seeds]


def read_backbone(results: Path, model: str, seeds, tasks) -> Backbone:
    folder = results / common.model_slug(model)
    behaviour = []
    if (folder / INPUTS["behaviour"]).exists():
        record = common.read_json(folder / INPUTS["behaviour"])
        try:
            per_seed = record["accuracy_per_seed"]
            for rm, accuracies in per_seed.items():
                objective, seed = rm.split("/seed")
                behaviour += [{"backbone": model, "objective": objective, "seed": int(seed), "task": task,
                               "group": common.task_for(task, tasks).objective or "", "accuracy": float(value)}
                              for task, value in accuracies.items() if int(seed) in seeds]
        except (KeyError, AttributeError, ValueError, TypeError):
            raise common.Unreadable(f"{folder / INPUTS['behaviour']} lacks its accuracy_per_seed record (made by an "
                                    f"older version?): rerun behaviour.py for {model}") from None
    retention = [{**r, "task": r["subset"]} for r in read_csv(folder / INPUTS["retention"], model, seeds)]
    return Backbone(model, read_csv(folder / INPUTS["trained"], model, seeds), behaviour, retention,
                    *(read_csv(folder / INPUTS[name], model, seeds) for name in ("sweep", "partitions", "overlap")))


def rms_in(rows) -> set[tuple[str, int]]:
    return {(r["objective"], r["seed"]) for r in rows}


# ---------------------------------------------------------------------------------------------
# The headline tables: means ± std over backbones × seeds, beside the paper
# ---------------------------------------------------------------------------------------------
def over_grid(rows, field, **match) -> tuple[common.Summary, int]:
    """(summarise over backbone × seed units with the interval over backbones, how many backbones it averages)."""
    picked = [r for r in rows if all(r[k] == v for k, v in match.items())]
    summary = common.summarise(picked, field, interval="backbones")
    return summary, len({r["backbone"] for r in picked})


def grid_cell(summary: common.Summary, full: int, sign=False, scale=100.0, digits=2) -> str:
    """A cell over the grid, marked "(k of N units)" where it averages fewer (backbone, seed) units than the grid."""
    return common.cell(summary, scale, digits, sign=sign) + (f" ({summary.seeds} of {full} units)"
                                                             if 0 < summary.seeds < full else "")


def coverage_table(backbones, seeds):
    """Every RM of the grid (backbone × objective × seed): trained (train.py's held-out row), and analysed by
    behaviour.py, ablate.py (its own neurons at the headline τ) and shared.py (its seed's three RMs together)."""
    header = ["backbone", "objective", "seed", "trained", "behaviour", "ablate", "shared", "status"]
    rows, md_rows = [], []
    for b in backbones:
        done = {"trained": rms_in(b.trained), "behaviour": rms_in(b.behaviour), "ablate": rms_in(b.sweep),
                "shared": {(o, r["seed"]) for r in b.overlap for o in common.OBJECTIVES}}
        cells = []
        for objective in common.OBJECTIVES:
            state = {}
            for seed in seeds:
                have = [step for step, rms in done.items() if (objective, seed) in rms]
                status = "analysed" if len(have) == len(done) else "missing" if not have else \
                    "partly: no " + ", ".join(step for step in done if step not in have)
                rows.append([b.model, objective, seed, *[int(step in have) for step in done], status])
                state.setdefault(status.split(":")[0], []).append(seed)
            cells.append("; ".join(f"{status} {len(found)}/{len(seeds)}" +
                                   (f" (seed {', '.join(map(str, found))})" if status != "analysed" else "")
                                   for status, found in state.items()))
        md_rows.append([b.model, *cells])
    return header, rows, common.markdown_table(["Backbone", *[f"{o} RMs" for o in common.OBJECTIVES]], md_rows)


def behaviour_table(backbones, full: int):
    rows = [r for b in backbones for r in b.behaviour]
    if not rows:
        return None
    header = ["objective", "group", "accuracy_mean", "accuracy_std", "units", "backbones", "ci_low", "ci_high",
              "paper"]
    csv_rows, md_rows = [], []
    for objective in common.OBJECTIVES:
        for group in GROUPS:
            summary, n = over_grid(rows, "accuracy", objective=objective, group=group)
            paper = common.PAPER_ABLATION[objective, group][0]
            csv_rows.append([objective, group, summary.mean, summary.std, summary.seeds, n, summary.low, summary.high,
                             paper])
            md_rows.append([f"{objective} RM", f"{group} tasks", grid_cell(summary, full), f"{paper:.2f}"])
    return header, csv_rows, common.markdown_table(["RM", "Tasks", "Accuracy % (backbones × seeds)", "Paper"],
                                                   md_rows)


def ablation_table(backbones, full: int, paper: bool):
    rows = [r for b in backbones for r in b.sweep]
    if not rows:
        return None
    header = ["objective", "group", "base_mean", "base_std", "delta_mean", "delta_std", "units", "backbones",
              "delta_ci_low", "delta_ci_high", "paper_base", "paper_delta"]
    csv_rows, md_rows = [], []
    for objective in common.OBJECTIVES:
        for group in GROUPS:
            base, n = over_grid(rows, "base_accuracy", objective=objective, group=group)
            delta, _ = over_grid(rows, "delta", objective=objective, group=group)
            ref = common.PAPER_ABLATION[objective, group] if paper else (None, None)
            csv_rows.append([objective, group, base.mean, base.std, delta.mean, delta.std, delta.seeds, n,
                             delta.low, delta.high, *ref])
            md_rows.append([f"{objective} RM", f"{group} tasks", grid_cell(base, full),
                            grid_cell(delta, full, sign=True),
                            "–" if ref[0] is None else f"{ref[0]:.2f} / {ref[1]:+.2f}"])
    return header, csv_rows, common.markdown_table(["RM", "Tasks", "Baseline %", "Δ (pp)", "Paper baseline / Δ"],
                                                   md_rows)


def table4(backbones, full: int, paper: bool):
    rows = [r for b in backbones for r in b.partitions]
    if not rows:
        return None
    header = ["partition", "neurons"] + [f"{g}_{k}" for g in GROUPS for k in (
        "mean", "std", "ci_low", "ci_high", "control_mean", "control_std", "control_ci_low", "control_ci_high")] \
        + ["units", "backbones", "paper_harmless", "paper_helpful"]
    csv_rows, md_rows = [], []
    none = common.Summary(math.nan, math.nan, 0)
    for partition in ("baseline", *common.PARTITIONS):
        if partition == "baseline":  # the mixed RM before ablation, the same in every partition's rows
            own = {g: over_grid(rows, "base_accuracy", partition="shared", group=g) for g in GROUPS}
            control, neurons = {g: (none, 0) for g in GROUPS}, math.nan
        else:
            own = {g: over_grid(rows, "delta", partition=partition, group=g) for g in GROUPS}
            control = {g: over_grid(rows, "delta", partition=f"random-{partition}", group=g) for g in GROUPS}
            neurons = common.mean_std({(r["backbone"], r["seed"]): r["neurons"] for r in rows
                                       if r["partition"] == partition}.values())[0]
        ref = common.PAPER_TABLE4[partition] if paper else (None, None)
        summary, n = own[GROUPS[0]]
        csv_rows.append([partition, neurons] + [v for g in GROUPS for s in (own[g][0], control[g][0])
                                                for v in (s.mean, s.std, s.low, s.high)] + [summary.seeds, n, *ref])
        ablated = partition != "baseline"
        md_rows.append([partition if ablated else "baseline (not ablated)", f"{neurons:.0f}" if ablated else "–",
                        *[c for g in GROUPS for c in (grid_cell(own[g][0], full, sign=ablated),
                                                      grid_cell(control[g][0], full, sign=True) if ablated else "")],
                        *["–" if v is None else f"{v:+.2f}" if ablated else f"{v:.2f}" for v in ref]])
    return header, csv_rows, common.markdown_table(
        ["Ablated in the mixed RM", "Neurons", "Harmless tasks", "Harmless, size-matched control", "Helpful tasks",
         "Helpful, size-matched control", "Paper harmless", "Paper helpful"], md_rows)


def overlap_table(backbones, full: int, paper: bool):
    rows = [{**r, "task": r["measure"]} for b in backbones for r in b.overlap]  # one "task" per measure
    if not rows:
        return None
    header = ["measure", "value_mean", "value_std", "units", "backbones", "ci_low", "ci_high", "chance", "paper"]
    csv_rows, md_rows = [], []
    for measure, label in common.OVERLAP_MEASURES.items():
        summary, n = over_grid(rows, "value", measure=measure)
        chance = common.mean_std(r["chance"] for r in rows if r["measure"] == measure)[0]
        # only the authors' retention is a grid-wide number in the paper; its other overlaps are per backbone
        ref = common.PAPER_RETENTION_AUTHORS if paper and measure == "retention_authors" else None
        csv_rows.append([measure, summary.mean, summary.std, summary.seeds, n, summary.low, summary.high, chance, ref])
        md_rows.append([label, grid_cell(summary, full, scale=1.0, digits=3), common.number(chance),
                        common.number(ref)])
    return header, csv_rows, common.markdown_table(["Measure", "Ours (backbones × seeds)", "Chance", "Paper"],
                                                   md_rows)


# ---------------------------------------------------------------------------------------------
# The model-wise tables: one column (or row) per backbone, mean ± std over its seeds
# ---------------------------------------------------------------------------------------------
def ordered_tasks(rows, tasks) -> list[str]:
    """The tasks of `rows`, helpfulness tasks first (the appendix's order), each group by display name and its
    average (a row of behaviour.py's retention table) last."""
    order = {"helpful": 0, "harmless": 1}
    groups = {r["task"]: r["group"] for r in rows}
    return sorted(groups, key=lambda t: (order.get(groups[t], 2), t.startswith("average-"), display(t, tasks)))


def display(task: str, tasks) -> str:
    return f"**Average, {task.removeprefix('average-')} tasks**" if task.startswith("average-") \
        else common.task_for(task, tasks).display


def by_backbone(backbones, rows_of, tasks, field, title, scale=100.0, digits=2, sign=False):
    """(CSV rows: backbone, task, group, mean, std, seeds; Markdown: a task per row, a backbone per column)."""
    models = [b.model for b in backbones if rows_of(b)]
    names = ordered_tasks([r for b in backbones for r in rows_of(b)], tasks)
    csv_rows, cells = [], {}
    for b in backbones:
        for task in names:
            mine = [r for r in rows_of(b) if r["task"] == task]
            if mine:
                cells[b.model, task] = summary = common.summarise(mine, field)
                csv_rows.append([b.model, task, mine[0]["group"], summary.mean, summary.std, summary.seeds])
    md = common.markdown_table([title, *models], [
        [display(t, tasks)] + [common.cell(cells[m, t], scale, digits, sign=sign) if (m, t) in cells
                                               else "–" for m in models] for t in names])
    return csv_rows, md


def accuracy_models(backbones, tasks):
    """Tables 13–14: each RM type's accuracy per task and backbone."""
    header = ["objective", "backbone", "task", "group", "accuracy_mean", "accuracy_std", "seeds"]
    csv_rows, parts = [], []
    for objective in common.OBJECTIVES:
        rows, md = by_backbone(backbones, lambda b: [r for r in b.behaviour if r["objective"] == objective], tasks,
                               "accuracy", f"{objective} RM: task")
        if rows:
            csv_rows += [[objective, *row] for row in rows]
            parts.append(md)
    return (header, csv_rows, "\n".join(parts)) if csv_rows else None


def retention_models(backbones, tasks):
    """Table 15: retention |M ∩ (H ∪ A)| / |H ∪ A| per task and backbone (behaviour.py's, over its seeds)."""
    header = ["backbone", "task", "group", "retention_mean", "retention_std", "seeds"]
    models = [b.model for b in backbones if b.retention]
    if not models:
        return None
    names = ordered_tasks([r for b in backbones for r in b.retention], tasks)
    found = {(r["backbone"], r["task"]): r for b in backbones for r in b.retention}
    csv_rows = [[m, t, found[m, t]["group"], found[m, t]["retention_mean"], found[m, t]["retention_std"],
                 found[m, t]["seeds"]] for m in models for t in names if (m, t) in found]
    md = common.markdown_table(["Task", *models], [
        [display(t, tasks)] + [
            common.cell(common.Summary(found[m, t]["retention_mean"], found[m, t]["retention_std"],
                                       int(found[m, t]["seeds"])), 1.0, 3) if (m, t) in found else "–"
            for m in models] for t in names])
    return header, csv_rows, md


def ablation_models(backbones):
    """Tables 20–21 (their group means; the per-task Δs are in each backbone's ablate tables): baseline and Δ of
    every RM type on each task group, per backbone, mean ± std over its seeds."""
    header = ["backbone", "objective", "group", "base_mean", "base_std", "delta_mean", "delta_std", "seeds"]
    csv_rows, md_rows = [], []
    for b in backbones:
        if not b.sweep:
            continue
        for objective in common.OBJECTIVES:
            line = [b.model, f"{objective} RM"]
            for group in GROUPS:
                mine = [r for r in b.sweep if (r["objective"], r["group"]) == (objective, group)]
                base, delta = common.summarise(mine, "base_accuracy"), common.summarise(mine, "delta")
                csv_rows.append([b.model, objective, group, base.mean, base.std, delta.mean, delta.std, delta.seeds])
                line += [common.cell(base, std=False), common.cell(delta, sign=True)]
            md_rows.append(line)
    if not csv_rows:
        return None
    return header, csv_rows, common.markdown_table(
        ["Backbone", "RM", "Harmless tasks: baseline %", "Δ", "Helpful tasks: baseline %", "Δ"], md_rows)


def shared_models(backbones):
    """Tables 17–18 (their group means): Δ of each partition and its size-matched control in the mixed RM, per
    backbone, mean ± std over its seeds."""
    header = ["backbone", "partition", "group", "delta_mean", "delta_std", "control_mean", "control_std", "seeds"]
    csv_rows, md_rows = [], []
    for b in backbones:
        if not b.partitions:
            continue
        line = [b.model]
        for partition in common.PARTITIONS:
            for group in GROUPS:
                own, control = (common.summarise([r for r in b.partitions if (r["partition"], r["group"])
                                                  == (name, group)], "delta")
                                for name in (partition, f"random-{partition}"))
                csv_rows.append([b.model, partition, group, own.mean, own.std, control.mean, control.std, own.seeds])
                line.append(f"{common.cell(own, sign=True)} (control {common.cell(control, sign=True, std=False)})")
        md_rows.append(line)
    if not csv_rows:
        return None
    return header, csv_rows, common.markdown_table(
        ["Backbone", *[f"{p}: Δ {g}" for p in common.PARTITIONS for g in GROUPS]], md_rows)


def overlap_models(backbones, paper: bool):
    """The paper's overlap measures per backbone, beside its per-backbone values where it gives them."""
    measures = ("HA_over_H", "jaccard_HA", "jaccard_MH", "jaccard_MA")
    header = ["backbone", "measure", "value_mean", "value_std", "seeds", "chance", "paper"]
    csv_rows, md_rows = [], []
    for b in backbones:
        if not b.overlap:
            continue
        line = [b.model]
        for measure in measures:
            picked = [r for r in b.overlap if r["measure"] == measure]
            summary = common.Summary(*common.mean_std(r["value"] for r in picked))
            chance = common.mean_std(r["chance"] for r in picked)[0]
            ref = common.paper_overlap(b.model, measure) if paper else None
            csv_rows.append([b.model, measure, summary.mean, summary.std, summary.seeds, chance, ref])
            line.append(common.cell(summary, 1.0, 3) + (f" (paper {ref:.3f})" if ref is not None else ""))
        md_rows.append(line)
    if not csv_rows:
        return None
    return header, csv_rows, common.markdown_table(
        ["Backbone", *[common.OVERLAP_MEASURES[m] for m in measures]], md_rows)


# ---------------------------------------------------------------------------------------------
# Fig. 6 and the report section
# ---------------------------------------------------------------------------------------------
def fig6_ablation(backbones, method, tau, path: Path) -> bool:
    """Fig. 6: per backbone, the Δ accuracy of each RM type ablating its own top-τ neurons, one panel per task
    group; bars are the mean over seeds, dots the seeds. Whether it was drawn (no ablation rows: no figure)."""
    shown = [b for b in backbones if b.sweep]
    if not shown:
        path.unlink(missing_ok=True)
        return False
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(len(GROUPS) * max(4.5, 1.3 * len(shown) + 1.5), 4.0),
                             sharey=True, squeeze=False)
    width = 0.8 / len(common.OBJECTIVES)
    for ax, group in zip(axes[0], GROUPS):
        for k, objective in enumerate(common.OBJECTIVES):
            positions = numpy.arange(len(shown)) + (k - 1) * width
            per_seed = [{r["seed"]: [] for r in b.sweep} for b in shown]
            for seeds, b in zip(per_seed, shown):
                for r in b.sweep:
                    if (r["objective"], r["group"]) == (objective, group):
                        seeds[r["seed"]].append(100 * r["delta"])
            values = [[numpy.mean(v) for v in seeds.values() if v] for seeds in per_seed]
            common.plot_estimates(ax, positions, [numpy.mean(v) if v else math.nan for v in values], style="bars",
                                  width=width, color=common.RM_COLORS[objective], label=f"{objective} RM")
            for x, v in zip(positions, values):
                ax.plot([x] * len(v), v, "k.", markersize=4)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(shown)), [b.model for b in shown], rotation=20, ha="right")
        ax.set_title(f"{group}-oriented tasks")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("Δ accuracy (pp) after ablation")
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(f"Each RM ablating its own top-τ neurons ({method}, τ = {tau:g})\nbars: mean over seeds, dots: "
                 "seeds", fontsize="medium")
    common.save_figure(fig, path)
    return True


def report_section(cfg, backbones, tables, method, tau, drawn: bool) -> str:
    folder = common.GRID_FOLDER
    paper_backbones, paper_seeds = common.PAPER_GRID
    expected = len(cfg["model"]) * len(common.OBJECTIVES) * len(cfg["seed"])
    status = {f"{row[0]} {row[1]} seed {row[2]}": row[-1] for row in tables["coverage"][1]}
    partly = [f"{rm} ({state.split(': ')[1]})" for rm, state in status.items() if state.startswith("partly")]
    missing = [rm for rm, state in status.items() if state == "missing"]
    absent = [m for m in common.BACKBONES if m not in cfg["model"]]
    scope = (f"These means average at most {len(backbones)} backbone{'s' * (len(backbones) > 1)} × "
             f"{len(cfg['seed'])} seed{'s' * (len(cfg['seed']) > 1)}; the paper's means average {paper_backbones} × "
             f"{paper_seeds}")
    if absent or len(cfg["seed"]) < paper_seeds:
        scope += (" — FEWER than the paper" + (f" (not in this grid: {', '.join(absent)})" if absent else "")
                  + ", so they are not the paper's quantity, only its definition")
    chosen = "the paper's" if (method, tau) == ("magnitude", 10.0) else \
        "not the paper's τ = 10 with magnitude, which was not run: no paper column"
    lines = [
        "## The grid over backbones (paper Fig. 2, Tables 2–4; appendix Tables 13–15, 17–18, 20–21, Fig. 6)\n",
        f"Backbones: {', '.join(f'`{m}`' for m in cfg['model'])}; seeds {', '.join(map(str, cfg['seed']))}. Built by "
        f"`experiments/grid.py` from each backbone's result files (nothing recomputed); every table is in "
        f"`{folder}/` as .csv and .md.\n",
        "### Coverage\n",
        f"{expected} RMs in this grid ({len(cfg['model'])} backbone{'s' * (len(cfg['model']) > 1)} × 3 objectives × "
        f"{len(cfg['seed'])} seed{'s' * (len(cfg['seed']) > 1)}): "
        f"{list(status.values()).count('analysed')} analysed by behaviour, ablate and shared"
        + "".join(f"; {len(rms)} {what}: {', '.join(rms[:12])}{', …' if len(rms) > 12 else ''}"
                  for what, rms in (("partly", partly), ("missing", missing)) if rms)
        + (". Running run_all.sh again with the same MODELS continues where each backbone stopped"
           if partly or missing else "") + ".\n",
        tables["coverage"][2],
        "### Headline tables: mean ± std over backbones × seeds\n",
        f"{scope}. Each cell: mean ± population std over the (backbone, seed) units, in percent or percentage "
        f"points; {INTERVAL_NOTE}; \"(k of N units)\" marks a cell that averages fewer than the grid's N. Per unit a "
        "group value is the unweighted mean over the group's benchmark tasks, as in each backbone's tables. "
        f"Ablation: {method}, τ = {tau:g} ({chosen}).\n",
    ]
    for name, title in (("behaviour", "Fig. 2: accuracy of each RM type per task group (paper: the baselines of "
                                      "Tables 2–3)"),
                        ("ablation", "Tables 2–3: each RM ablating its own top-τ neurons"),
                        ("table4", "Table 4: the partitions of H ∪ A ablated in the mixed RM, beside size-matched "
                                   "random sets (the paper has no control)"),
                        ("overlap", "Overlap of the neuron sets, beside chance (the paper gives the authors' "
                                    "retention over its grid; its other overlaps per backbone are below)")):
        if tables[name] is not None:
            lines += [f"**{title}** (`{folder}/{name}.md`)\n", tables[name][2]]
    lines.append("### Model-wise (appendix)\n")
    if drawn:
        lines += [f"![Fig. 6]({folder}/fig6_ablation.png)\n",
                  "Fig. 6: Δ accuracy of each RM type ablating its own neurons, per backbone.\n"]
    for name, title in (("ablation_models", "Tables 20–21 (group means): baseline and Δ per backbone, mean ± std "
                                            "over its seeds"),
                        ("shared_models", "Tables 17–18 (group means): Δ per partition in the mixed RM"),
                        ("overlap_models", "Overlaps per backbone (the paper's values where it gives them)")):
        if tables[name] is not None:
            lines += [f"**{title}** (`{folder}/{name}.md`)\n", tables[name][2]]
    per_task = [f"{what} in `{folder}/{name}.md`" for name, what in (
        ("accuracy", "accuracy of each RM type (Tables 13–14)"), ("retention", "retention (Table 15)"))
        if tables[name] is not None]
    if per_task:
        lines.append(f"Per task and backbone: {' and '.join(per_task)}.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
