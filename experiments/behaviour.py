"""Behaviour of helpful-only, harmless-only and mixed RMs on the evaluation tasks (paper §3: Fig. 2–3,
Tables 1, 11, 12, 15): accuracy per task and objective group, behavioural retention, reward calibration.

    python experiments/behaviour.py --model tiny-gpt2 --bench demo
    python experiments/behaviour.py --model tiny-gpt2 --bench demo --bench ../shared/data/xstest/converted \\
        --bench ../shared/data/rm-bench/converted
    python experiments/behaviour.py --model gpt2-medium --bench rewardbench --bench rewardbench2 --bench rm-bench
    python experiments/behaviour.py --rm mixed=runs/tiny-gpt2/mixed/seed0/rm --model own --bench demo   # by path

Scores every trained RM of the backbone (each objective and seed under --runs-dir, or those named) on the items
of every --bench, reusing the RM's score cache where it still fits; --max-length defaults to what the RMs'
train.json records. Writes <results-dir>/<model>/behaviour/: accuracy, groups, retention, calibration and official
tables (.csv + .md), each RM's per-item scores in RewardBench's and RM-Bench's own result formats (official/),
fig2_accuracy.png, fig3_calibration.png, report_section.md and run.json; then
<results-dir>/<model>/report.md. Every file's format: docs/artifacts.md; the definitions: docs/methods.md.
"""
import dataclasses
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy

import common

GROUPS = ("helpful", "harmless", None)  # None: subsets data/tasks.json does not know, grouped nowhere
GROUP_TITLES = {"helpful": "Helpfulness-oriented tasks", "harmless": "Harmlessness-oriented tasks",
                None: "Tasks not in data/tasks.json"}
SINGLE = ("helpful", "harmless")


@common.step()
@common.rm_options
@common.reading_options
@common.results_option
@common.bench_option
@common.max_items_option
@common.compute_options
@click.option("--force", is_flag=True, help="Rescore every item even where cached scores exist.")
def main(**cfg):
    # RMs that are missing are named; the tables go on without them and say what is skipped
    cfg, runs, missing, device, dtype = common.start_analysis(cfg, missing_ok=True)
    out = common.step_dir(cfg["results_dir"], cfg["model"], "behaviour")

    # load
    tasks, bench = common.load_bench(cfg)

    # run
    scores = common.shard_map(lambda key: score_run(cfg, runs[key], bench.items, device, dtype), runs, cfg["shard"])
    if common.shard_done(cfg, "behaviour.py"):
        return

    # analyse
    subsets = ordered_subsets(bench, tasks)
    per = {key: common.group_by_subset(bench.items, values) for key, values in scores.items()}
    objectives = [o for o in cfg["objective"] if any(key[0] == o for key in runs)]
    rows = [{**row, "objective": o, "seed": s} for (o, s), values in scores.items()
            for row in common.accuracy_rows(bench.items, values, tasks)]
    counts = {s: sum(item.subset == s for item in bench.items) for s in subsets}
    tables = {
        "accuracy": accuracy_table(rows, subsets, objectives, tasks, bench, counts),
        "groups": groups_table(rows, subsets, objectives, tasks),
        "retention": retention_table(per, subsets, tasks),
        "calibration": calibration_table(per, subsets, tasks),
        "official": official_table(per, objectives, tasks),
    }

    # save
    write_tables(out, tables)
    fig2_accuracy(rows, subsets, objectives, tasks, out / "fig2_accuracy.png", cfg["objective"])
    fig3_calibration(tables["calibration"], subsets, tasks, out / "fig3_calibration.png")
    write_official_files(out / "official", cfg, bench.items, scores, tasks)
    common.write_text(out / "report_section.md", report_section(cfg, runs, missing, bench, counts, tables))
    common.write_json(out / "run.json", {
        **common.run_record({**cfg, "device": str(device), "dtype": str(dtype)}),
        "rms": {f"{o}/seed{s}": str(run) for (o, s), run in runs.items()}, "missing": missing,
        "bench": {"sources": bench.sources, "items": counts, "excluded": bench.excluded, "notes": bench.notes},
        "accuracy_per_seed": {f"{o}/seed{s}": {r["task"]: r["accuracy"] for r in rows
                                                if (r["objective"], r["seed"]) == (o, s)} for o, s in scores},
    })
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"behaviour of {len(runs)} RMs on {len(subsets)} tasks → {out}; report: {report}")


def write_official_files(folder: Path, cfg, items, scores, tasks):
    """official/<objective>-seed<k>-<tool>.json for every RM; files of an earlier run that this one did not make
    are removed, so none looks current."""
    made = set()
    for (objective, seed), values in scores.items():
        for name, content in official_files(cfg, items, values, tasks).items():
            made.add(f"{objective}-seed{seed}-{name}")
            common.write_json(folder / f"{objective}-seed{seed}-{name}", content)
    for stale in folder.glob("*.json") if folder.is_dir() else ():
        if stale.name not in made:
            stale.unlink()


def write_tables(out: Path, tables: dict):
    """<name>.csv + .md of every table; one that could not be made (None) removes an earlier run's."""
    for name, table in tables.items():
        if table is not None:
            common.write_table(out / name, table["header"], table["rows"],
                               common.markdown_table(table["md_header"], table["md_rows"]))
        else:
            common.remove_table(out / name)


def score_run(cfg, run: Path, items, device, dtype):
    model, tokenizer = common.load_reward_model(run / "rm", device, common.reading_of(cfg))
    return common.evaluate_rm(run / "rm", model, tokenizer, items, cfg, device, dtype,
                              cache_parent=common.own_scores_home(run),
                              desc=f"{run.parent.name} {run.name}", force=cfg["force"])


def ordered_subsets(bench, tasks) -> list[str]:
    """Helpful tasks, then harmless ones (each in data/tasks.json order), then subsets it does not know."""
    present = set(bench.subsets())
    known = [s for group in GROUPS[:2] for s, t in tasks.items() if t.objective == group and s in present]
    return known + [s for s in bench.subsets() if s not in tasks]


def seeds_of(keys, objective) -> list[int]:
    return sorted(s for o, s in keys if o == objective)


def members_of(subsets, tasks, group) -> list[str]:
    return [s for s in subsets if common.task_for(s, tasks).objective == group]


def group_rows(subsets, tasks, width, row_of, average_of=None):
    """Markdown rows grouped like the paper's tables: a title row per group, its tasks, then its average."""
    rows = []
    for group in GROUPS:
        members = members_of(subsets, tasks, group)
        if members:
            rows.append([f"**{GROUP_TITLES[group]}**"] + [""] * (width - 1))
            rows += [row_of(s) for s in members]
            if average_of is not None and group is not None:
                rows.append(average_of(members))
    return rows


def accuracy_over(rows, objective, members, interval=None) -> common.Summary:
    """Accuracy of the `objective` RMs over the tasks `members`: per seed the mean over them, then over seeds."""
    return common.summarise([r for r in rows if r["objective"] == objective and r["task"] in members], "accuracy",
                            interval)


def accuracy_table(rows, subsets, objectives, tasks, bench, counts):
    """Per task, accuracy mean ± std over seeds with the 95 % bootstrap interval over items of the seed mean (every
    seed scores the same items, so one draw of items per resample serves all seeds)."""
    stats = {(s, o): accuracy_over(rows, o, [s], "accuracy") for s in subsets for o in objectives}
    header = ["subset", "display", "group", "source", "items"] + [f"{o}_{k}" for o in objectives
                                                                   for k in ("mean", "std", "seeds", "ci_low",
                                                                             "ci_high")]
    csv_rows = [[s, common.task_for(s, tasks).display, common.task_for(s, tasks).objective or "", bench.sources[s],
                 counts[s]] + [v for o in objectives for v in dataclasses.astuple(stats[s, o])] for s in subsets]
    md_rows = group_rows(subsets, tasks, 2 + len(objectives), lambda s: [common.task_for(s, tasks).display, counts[s]]
                         + [common.cell(stats[s, o]) for o in objectives])
    return {"header": header, "rows": csv_rows, "md_header": ["Task", "Items"] + [o.title() for o in objectives],
            "md_rows": md_rows}


def groups_table(rows, subsets, objectives, tasks):
    """Per objective group, per seed the unweighted mean over its tasks (as the paper averages tasks), then mean ±
    std over seeds."""
    groups = [g for g in GROUPS[:2] if members_of(subsets, tasks, g)]
    stats = {(g, o): accuracy_over(rows, o, members_of(subsets, tasks, g)) for g in groups for o in objectives}
    header = ["group", "tasks"] + [f"{o}_{k}" for o in objectives for k in ("mean", "std", "seeds")]
    tasks_in = {g: len(members_of(subsets, tasks, g)) for g in groups}
    csv_rows = [[g, tasks_in[g]] + [v for o in objectives for v in dataclasses.astuple(stats[g, o])[:3]]
                for g in groups]
    md_rows = [[GROUP_TITLES[g], tasks_in[g]] + [common.cell(stats[g, o]) for o in objectives] for g in groups]
    return {"header": header, "rows": csv_rows, "md_header": ["Group", "Tasks"] + [o.title() for o in objectives],
            "md_rows": md_rows}


def ratio(numerator: set, denominator: set) -> float:
    return len(numerator) / len(denominator) if denominator else math.nan


def retention_table(per, subsets, tasks):
    """Retention |M ∩ (H ∪ A)| / |H ∪ A| and the pairwise HH–HA |M ∩ A| / |A| and HH–HE |M ∩ H| / |H|, per task
    and seed (seeds with all three RMs only), then mean ± std over seeds. None when no seed has all three."""
    seeds = [s for s in seeds_of(per, "mixed") if all((o, s) in per for o in SINGLE)]
    if not seeds:
        return None
    measures = ("retention", "hh_ha", "hh_he")
    values = {}  # (subset, measure) -> [value per seed]
    for subset in subsets:
        for seed in seeds:
            h, a, m = ({i for i, v in enumerate(per[o, seed][subset]) if v.correct}
                       for o in ("helpful", "harmless", "mixed"))
            for measure, value in zip(measures, (ratio(m & (h | a), h | a), ratio(m & a, a), ratio(m & h, h))):
                values.setdefault((subset, measure), []).append(value)
    stats = {key: common.mean_std(v) for key, v in values.items()}

    def average(members, measure):
        per_seed = [[values[s, measure][k] for s in members] for k in range(len(seeds))]
        return common.mean_std([common.mean_std(v)[0] for v in per_seed])

    header = ["subset", "display", "group"] + [f"{m}_{k}" for m in measures for k in ("mean", "std")] + ["seeds"]
    rows = [[s, common.task_for(s, tasks).display, common.task_for(s, tasks).objective or ""]
            + [v for m in measures for v in stats[s, m][:2]] + [len(seeds)] for s in subsets]
    for group in GROUPS[:2]:
        members = members_of(subsets, tasks, group)
        if members:
            rows.append([f"average-{group}", "Average", group] + [v for m in measures for v in average(members, m)[:2]]
                        + [len(seeds)])
    md_rows = group_rows(subsets, tasks, 1 + len(measures),
                         lambda s: [common.task_for(s, tasks).display] + [common.cell(common.Summary(*stats[s, m]), 1, 4)
                                                                          for m in measures],
                         lambda members: ["Average"] + [common.cell(common.Summary(*average(members, m)), 1, 4)
                                                        for m in measures])
    return {"header": header, "rows": rows, "seeds": seeds, "md_rows": md_rows,
            "md_header": ["Task", "Retention M∩(H∪A)/(H∪A)", "HH–HA M∩A/A", "HH–HE M∩H/H"]}


def calibration_table(per, subsets, tasks):
    """On items both a single-objective RM and the mixed RM of the same seed get right: their reward margins
    (min chosen − max rejected) and mean |reward|, pooled over seeds, per task and over all tasks."""
    margins = {}  # (single, subset) -> {"single": [...], "mixed": [...], "single_abs": [...], "mixed_abs": [...]}
    for single in SINGLE:
        seeds = [s for s in seeds_of(per, "mixed") if (single, s) in per]
        for subset in subsets:
            pooled = {"single": [], "mixed": [], "single_abs": [], "mixed_abs": []}
            for seed in seeds:
                for one, mix in zip(per[single, seed][subset], per["mixed", seed][subset]):
                    if one.correct and mix.correct:
                        for name, value in (("single", one), ("mixed", mix)):
                            pooled[name].append(value.margin)
                            pooled[f"{name}_abs"] += [abs(r) for r in value.chosen + value.rejected]
            if seeds:
                margins[single, subset] = pooled
    if not margins:
        return None

    def summary(pooled):
        return [len(pooled["single"])] + [f(pooled[k]) if pooled[k] else math.nan for k in ("single", "mixed")
                                          for f in (statistics.fmean, statistics.median)] \
            + [statistics.fmean(pooled[k]) if pooled[k] else math.nan for k in ("single_abs", "mixed_abs")]

    header = ["comparison", "subset", "display", "group", "items_both_correct", "single_mean_margin",
              "single_median_margin", "mixed_mean_margin", "mixed_median_margin", "single_mean_abs_reward",
              "mixed_mean_abs_reward"]
    rows, md_rows = [], []
    for single in SINGLE:
        members = [s for s in subsets if (single, s) in margins]
        if not members:
            continue
        everything = {k: [v for s in members for v in margins[single, s][k]] for k in margins[single, members[0]]}
        for subset, pooled in [(s, margins[single, s]) for s in members] + [("all", everything)]:
            task = common.task_for(subset, tasks)
            display = "All tasks" if subset == "all" else task.display
            values = summary(pooled)
            rows.append([f"{single} vs mixed", subset, display, "" if subset == "all" else task.objective or ""]
                        + values)
            md_rows.append([f"{single} vs mixed", display, values[0]]
                           + ["–" if math.isnan(v) else f"{v:.4g}" for v in values[1:5]])
    return {"header": header, "rows": rows, "margins": margins, "md_rows": md_rows,
            "md_header": ["Comparison", "Task", "Items both right", "Single mean margin", "Single median margin",
                          "Mixed mean margin", "Mixed median margin"]}


# ---------------------------------------------------------------------------------------------
# The official scorers (SPEC §1), beside the paper rule
# ---------------------------------------------------------------------------------------------
def rb2_best_of_4(scores) -> float:
    """RewardBench 2: credit 1 when the chosen response scores highest, 1/k when it ties with k-1 others at the
    top, 0 otherwise; averaged over items."""
    credit = []
    for s in scores:
        if len(s.chosen) != 1:
            raise common.RMTError("the RewardBench 2 best-of-4 scorer needs exactly one chosen response per item; got "
                                  f"{len(s.chosen)}")
        top = max(s.chosen + s.rejected)
        credit.append(1 / (s.chosen + s.rejected).count(top) if s.chosen[0] == top else 0.0)
    return sum(credit) / len(credit) if credit else float("nan")


def rm_bench_accuracy(scores) -> dict[str, float]:
    """RM-Bench from M[i][j] = mean over items of (chosen_i > rejected_j), responses ordered by style (concise,
    detailed, markdown): hard = upper triangle (chosen less styled than rejected), normal = diagonal, easy =
    lower triangle."""
    if not scores:
        return {"easy": float("nan"), "normal": float("nan"), "hard": float("nan")}
    n = len(scores[0].chosen)
    if n < 2 or any(len(s.chosen) != n or len(s.rejected) != n for s in scores):
        raise common.RMTError(f"the RM-Bench scorer needs n x n style variants (n >= 2, the same for every item); got "
                              f"{sorted({(len(s.chosen), len(s.rejected)) for s in scores})}")
    m = [[sum(s.chosen[i] > s.rejected[j] for s in scores) / len(scores) for j in range(n)] for i in range(n)]
    off = n * (n - 1) / 2
    return {"easy": sum(m[i][j] for i in range(n) for j in range(i)) / off,
            "normal": sum(m[i][i] for i in range(n)) / n,
            "hard": sum(m[i][j] for i in range(n) for j in range(i + 1, n)) / off}


REWARDBENCH_SECTIONS = ("Chat", "Chat Hard", "Safety", "Reasoning")
# Reasoning is math-prm (weight 984) with the six hep-* code subsets (164 each) in the official code; the paper
# excludes the code subsets, so this section is math-prm alone here, and labelled so.
REASONING_VARIANT = "Reasoning (math-prm only: hep-* excluded)"


def rewardbench_sections(accuracy: dict[str, float], tasks) -> dict[str, float]:
    """RewardBench's section scores as its own code computes them (rewardbench/utils.py
    calculate_scores_per_section with rewardbench/constants.py EXAMPLE_COUNTS): the accuracies of the section's
    scored subsets weighted by the official FIXED example counts (data/tasks.json section_weight), however many
    items were scored. A section with no scored subset is NaN here (absent; the official code writes 0)."""
    weighted = {name: [] for name in REWARDBENCH_SECTIONS}
    for subset, value in accuracy.items():
        task = common.task_for(subset, tasks)
        if task.section is not None:
            weighted[task.section].append((value, task.section_weight))
    return {REASONING_VARIANT if name == "Reasoning" else name:
            sum(v * w for v, w in parts) / sum(w for _, w in parts) if parts else math.nan
            for name, parts in weighted.items()}


RM_BENCH_DOMAINS = ("chat", "math", "code", "safety")


def rm_bench_domain(subset: str, tasks) -> str | None:
    """RM-Bench's domain of a subset, matched by prefix as its code does (safety-refuse and safety-response are
    both "safety"); None outside RM-Bench."""
    if common.task_for(subset, tasks).benchmark != "rm-bench":
        return None
    name = subset.removeprefix("rm-bench-")
    return next((d for d in RM_BENCH_DOMAINS if name.startswith(d)), name)


def official_scores(by_subset, tasks) -> list[tuple[str, str, float]]:
    """(scorer, name, value) rows: RewardBench sections (all four as soon as one RewardBench subset was scored),
    RewardBench 2 best-of-4 per subset, RM-Bench easy / normal / hard per subset, and RM-Bench's own scores
    (THU-KEG/RM-Bench scripts/utils.py compute_accuracy): per domain the mean of easy, normal and hard over the
    domain's items pooled, and their mean over the domains scored."""
    rows = []
    if any(common.task_for(s, tasks).section for s in by_subset):
        sections = rewardbench_sections({s: common.paper_accuracy(v) for s, v in by_subset.items()}, tasks)
        rows += [("rewardbench-section", name, value) for name, value in sections.items()]
    domains: dict[str, list] = {}
    for subset, scores in by_subset.items():
        scorer = common.task_for(subset, tasks).scorer
        if scorer == "rb2-best-of-4":
            rows.append((scorer, subset, rb2_best_of_4(scores)))
        elif scorer == "rm-bench-3x3":
            rows += [(scorer, f"{subset} {level}", value) for level, value in rm_bench_accuracy(scores).items()]
            domain = rm_bench_domain(subset, tasks)
            if domain:
                domains.setdefault(domain, []).extend(scores)
    own = {domain: statistics.fmean(rm_bench_accuracy(scores).values()) for domain, scores in domains.items()}
    rows += [("rm-bench-domain", f"{domain} (mean of easy, normal, hard)", value) for domain, value in own.items()]
    if own:
        absent = [d for d in RM_BENCH_DOMAINS if d not in own]
        rows.append(("rm-bench-domain", f"average over {', '.join(own)}" + (f" ({', '.join(absent)} not scored)"
                                                                            if absent else ""),
                     statistics.fmean(own.values())))
    return rows


def official_files(cfg, items, scores, tasks) -> dict[str, object]:
    """One RM's per-item scores in the official tools' result formats, {file name: content}: RewardBench's
    eval-set-scores record (columns id, subset, results, scores_chosen, scores_rejected; results = chosen >
    rejected) for its subsets, and the list of {id, domain, score_chosen, score_rejected} that RM-Bench's
    compute_accuracy reads (domain: the subset without its rm-bench- prefix, matched by prefix there)."""
    files = {}
    reward_bench = [(item, s) for item, s in zip(items, scores) if common.task_for(item.subset, tasks).section]
    if reward_bench:
        files["rewardbench.json"] = {
            "model": cfg["model"], "model_type": "Seq. Classifier", "chat_template": None,
            "id": [item.id for item, _ in reward_bench], "subset": [item.subset for item, _ in reward_bench],
            "results": [int(s.correct) for _, s in reward_bench],
            "scores_chosen": [s.chosen[0] for _, s in reward_bench],
            "scores_rejected": [s.rejected[0] for _, s in reward_bench]}
    rm_bench = [{"id": item.id, "domain": item.subset.removeprefix("rm-bench-"), "score_chosen": s.chosen,
                 "score_rejected": s.rejected} for item, s in zip(items, scores) if rm_bench_domain(item.subset, tasks)]
    if rm_bench:
        files["rm-bench.json"] = rm_bench
    return files


def official_table(per, objectives, tasks):
    """RewardBench sections, RewardBench 2 best-of-4 and RM-Bench easy / normal / hard, mean ± std over seeds."""
    values = {}  # (scorer, name, objective) -> [value per seed]
    for (objective, seed), subset_scores in per.items():
        for scorer, name, value in official_scores(subset_scores, tasks):
            values.setdefault((scorer, name, objective), []).append(value)
    names = list(dict.fromkeys((scorer, name) for scorer, name, _ in values))
    if not names:
        return None
    stats = {key: common.mean_std(v) for key, v in values.items()}
    empty = (math.nan, math.nan, 0)
    header = ["scorer", "name"] + [f"{o}_{k}" for o in objectives for k in ("mean", "std", "seeds")]
    rows = [[scorer, name] + [v for o in objectives for v in stats.get((scorer, name, o), empty)]
            for scorer, name in names]
    md_rows = [[scorer, name] + [common.cell(common.Summary(*stats.get((scorer, name, o), empty)))
                                 if stats.get((scorer, name, o), empty)[2] or scorer != "rewardbench-section"
                                 else "absent (official code: 0)" for o in objectives]
               for scorer, name in names]
    return {"header": header, "rows": rows, "md_rows": md_rows,
            "md_header": ["Scorer", "Score"] + [o.title() for o in objectives]}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def fig2_accuracy(rows, subsets, objectives, tasks, path: Path, asked=common.OBJECTIVES):
    """Fig. 2: accuracy per task and RM type (mean over seeds, with the accuracy table's 95 % bootstrap interval),
    one panel per objective group, its average last. A 0 % bar is labelled "0", an RM type that was asked for but
    not trained "not run", so neither reads as the other."""
    plt = common.pyplot()
    panels = [(g, members_of(subsets, tasks, g)) for g in GROUPS if members_of(subsets, tasks, g)]
    heights = [len(members) + (g is not None) for g, members in panels]
    shown = [o for o in asked if o in objectives] + [o for o in asked if o not in objectives]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1 + 0.6 * len(panels) + 0.15 * sum(heights) * len(shown)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    width = 0.8 / len(shown)
    for ax, (group, members) in zip(axes[:, 0], panels):
        labels = [common.task_for(s, tasks).display for s in members] + (["Average"] if group else [])
        for k, objective in enumerate(shown):
            positions = [i + (k - (len(shown) - 1) / 2) * width for i in range(len(labels))]
            if objective not in objectives:
                for y in positions:
                    ax.text(1, y, f"{objective}: not run", va="center", fontsize=6, color="grey")
                continue
            stats = [accuracy_over(rows, objective, [s], "accuracy") for s in members]
            if group is not None:
                stats.append(accuracy_over(rows, objective, members, "accuracy"))
            common.plot_estimates(ax, positions, [100 * st.mean for st in stats], [100 * st.low for st in stats],
                                  [100 * st.high for st in stats], style="bars", horizontal=True, width=width,
                                  color=common.RM_COLORS[objective], label=objective)
            for y, st in zip(positions, stats):
                if st.mean == 0:
                    ax.text(1, y, "0", va="center", fontsize=6, color=common.RM_COLORS[objective])
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_title(GROUP_TITLES[group])
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("accuracy (%), min chosen > max rejected; bars: 95 % bootstrap interval over items")
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", title="RM")
    common.save_figure(fig, path)


def fig3_calibration(calibration, subsets, tasks, path: Path):
    """Fig. 3: on items both RMs get right, the margin distribution of the single-objective RM beside the mixed
    one (left), and the mean (bar) and median (dot) margin per task (right). Without a calibration table (no seed
    with the mixed and a single-objective RM) an earlier run's figure is removed."""
    if calibration is None:
        path.unlink(missing_ok=True)
        return
    margins = calibration["margins"]
    plt = common.pyplot()
    singles = [o for o in SINGLE if any((o, s) in margins for s in subsets)]
    fig, axes = plt.subplots(len(singles), 2, figsize=(13, 1.8 + 0.35 * len(subsets) * len(singles)),
                             squeeze=False)
    for row, single in zip(axes, singles):
        members = [s for s in subsets if (single, s) in margins]
        bins = numpy.histogram_bin_edges([v for s in members for k in ("single", "mixed")
                                          for v in margins[single, s][k]] or [0.0], bins=30)
        for name, color in ((single, common.RM_COLORS[single]), ("mixed", common.RM_COLORS["mixed"])):
            key = "mixed" if name == "mixed" else "single"
            pooled = [v for s in members for v in margins[single, s][key]]
            row[0].hist(pooled, bins=bins, alpha=0.5, color=color, label=f"{name} RM ({len(pooled)} items)")
            offset = -0.2 if key == "single" else 0.2
            means = [statistics.fmean(margins[single, s][key]) if margins[single, s][key] else 0 for s in members]
            medians = [statistics.median(margins[single, s][key]) if margins[single, s][key] else math.nan
                       for s in members]
            positions = [i + offset for i in range(len(members))]
            row[1].barh(positions, means, height=0.4, color=color, alpha=0.7, label=f"{name} RM mean")
            row[1].plot(medians, positions, "o", color="black", markersize=3)
        row[0].set_title(f"{single} vs mixed: margins on items both get right")
        row[0].set_xlabel("reward margin (min chosen − max rejected)")
        row[0].set_ylabel("items")
        row[0].legend(fontsize="small")
        row[1].set_yticks(range(len(members)), [common.task_for(s, tasks).display for s in members])
        row[1].invert_yaxis()
        row[1].set_xlabel("reward margin")
        row[1].set_title("mean (bars) and median (dots) margin per task")
        row[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    common.save_figure(fig, path)


def report_section(cfg, runs, missing, bench, counts, tables) -> str:
    sampled = f" (at most {cfg['max_items']} per task, a seeded subsample)" if cfg["max_items"] else ""
    lines = ["## Behaviour (paper §3)\n",
             f"{common.rms_sentence(cfg, runs, cfg['objective'])}. "
             f"Benchmarks: {', '.join(f'`{b}`' for b in cfg['bench'])} — "
             f"{len(counts)} tasks, {sum(counts.values())} items{sampled}. An item is correct when every chosen "
             "response scores strictly above every rejected one (for RM-Bench's 3 × 3 style variants that is "
             "stricter than RM-Bench's own metric: the paper's RM-Bench numbers are the `normal` official scores "
             "below); ± is the population std over seeds. In the per-task accuracy table, [low, high] is the "
             f"{common.BOOTSTRAP_NOTE}, of the accuracy averaged over seeds (every seed scores the same items, so "
             "one draw of items per resample serves all seeds).\n"]
    sources = {}
    for subset, source in bench.sources.items():
        sources.setdefault(source, []).append(f"{subset} ({counts[subset]})")
    lines += [f"- `{source}`: {', '.join(subsets)}" for source, subsets in sources.items()]
    lines += [f"- excluded as in the paper: {key} ({n} items)" for key, n in bench.excluded.items()]
    lines += [f"- note: {note}" for note in bench.notes]
    lines += [f"- missing RM: {what}; train it with `{command}`" for what, command in missing.items()]
    lines += ["", "### Accuracy per objective group (Fig. 2)\n", "![Fig. 2](behaviour/fig2_accuracy.png)\n",
              common.markdown_table(tables["groups"]["md_header"], tables["groups"]["md_rows"]),
              "### Accuracy per task (%)\n",
              common.markdown_table(tables["accuracy"]["md_header"], tables["accuracy"]["md_rows"]),
              "### Behavioural retention (Tables 1, 11, 12, 15)\n"]
    retention = tables["retention"]
    if retention is None:
        lines.append("Skipped: retention needs the helpful, harmless and mixed RMs of the same seed, and no seed "
                     "has all three (see the missing RMs above).\n")
    else:
        lines += [f"Computed over the seeds with all three RMs: {', '.join(f'seed {s}' for s in retention['seeds'])}."
                  "\n",
                  common.markdown_table(retention["md_header"], retention["md_rows"])]
    lines.append("### Reward calibration (Fig. 3)\n")
    if tables["calibration"] is None:
        lines.append("Skipped: it needs the mixed RM and a single-objective RM of the same seed.\n")
    else:
        lines += ["![Fig. 3](behaviour/fig3_calibration.png)\n",
                  common.markdown_table(tables["calibration"]["md_header"], tables["calibration"]["md_rows"])]
    if tables["official"] is not None:
        lines += ["### Official scorers (%)\n", "As the benchmarks' own code computes them from our per-item scores: "
                  "RewardBench sections (subset accuracies weighted by the official fixed example counts, whatever "
                  "was scored; a section with no scored subset is absent, which the official code prints as 0; "
                  "Reasoning is math-prm alone, the paper excluding the code subsets), RewardBench 2 best-of-4 (1/k "
                  "credit on ties), RM-Bench easy / normal / hard per subset (the paper's RM-Bench number is "
                  "normal) and RM-Bench's own score per domain (the mean of easy, normal and hard, safety-refuse "
                  "and safety-response pooled as its code does) with their average. Per-item scores in the "
                  "official tools' formats: `behaviour/official/`.\n",
                  common.markdown_table(tables["official"]["md_header"], tables["official"]["md_rows"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
