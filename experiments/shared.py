"""Neurons the helpful and harmless objectives share, and what ablating them does to the mixed RM (paper §5,
Table 4, Tables 17–19).

    python experiments/shared.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256
    python experiments/shared.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256 --tau 5 --tau 10 \\
        --ablation mean
    python experiments/shared.py --model smollm2-135m-instruct-q4 --data-dir ../shared/data/hh-rlhf \\
        --train-split test --eval-fraction 0.2 --max-pairs 600 --bench ../shared/data/xstest/converted --max-items 50
    python experiments/shared.py --model gpt2-medium --seed 0 --seed 1 --seed 2
    python experiments/shared.py --model tiny-gpt2 --within mixed --data-dir data/demo/hh-rlhf --max-length 256
    python experiments/shared.py --rm mixed=runs/tiny-gpt2/mixed/seed0/rm --model own --within mixed \\
        --data-dir data/demo/hh-rlhf --max-length 256                              # an RM given by path

Needs the helpful, harmless and mixed RMs of every --seed (a missing one is named with its train.py command; with
--within, that one RM), so it has no --objective. Per seed, H, A and M are the top-τ % neurons (exact count, global
over layers) of the helpful, harmless and mixed RMs by --method (runs/.../neurons/<method>.h5; made with
neurons.py's pass when missing).

Overlaps (SPEC §1 "Shared neurons"), each beside its exact chance level for independent uniformly random sets of
the same sizes among all N neurons (hypergeometric expectations, summed exactly in log space where the ratio's
denominator is random; see chance_levels):
  retention |M∩(H∪A)|/|H∪A|, retention_authors |M∩(H∪A)|/|H∪A∪M| (the authors' variant, the paper's 0.549),
  HA_over_H |H∩A|/|H|, HA_over_A |H∩A|/|A|, jaccard_HA, jaccard_MH, jaccard_MA, shared_share |H∩A|/N.
Partitions of H∪A: helpful-only H\\A, harmless-only A\\H and shared H∩A exactly (not the authors' code, which also
adds whole layers of one set where the other has none), each with a size-matched control random-<partition>: the
same number of neurons drawn uniformly from all N by a generator seeded with the seed and the partition name. Each
of the six sets is ablated in the MIXED RM (--ablation zero or mean, at --site, every token) and the RM evaluated
on its held-out HH-RLHF pairs (hh-helpful-base, hh-harmless-base) and every --bench item (--max-items caps each
task). An empty partition (and its empty control) is not scored: its rows repeat the baseline (Δ 0), noted in the
report and run.json.

Ablated scores are cached per set in <run of the mixed RM>/shared/[<site>/]<ablation>-<partition>-<method>-tau<τ>/
(--force rescores them); plain scores beside the RM (shared with behaviour.py and ablate.py); the data options
default to what the RMs' train.json records. The partitions' Δs also go to <run of the mixed RM>/shared/[<site>/]
<ablation>-partitions.json with the neuron sets they came from: conflict.py's input.

--within OBJECTIVE asks the same question inside ONE RM (beyond the paper): H and A are that RM's top-τ neurons
scored on the helpful and on the harmless training pairs (neurons/[<site>/]on-<objective>/, made here when
missing), M on its own pairs, and the partitions and their controls are ablated in that RM (cached under
within-<partition>); it writes <results-dir>/<model>/shared/[<site>/]within-<objective>/: within.csv/.md (the
overlaps beside chance, each partition's Δ beside its control), partitions.csv, fig_within.png, report_section.md
and run.json.

Writes <results-dir>/<model>/shared/ (shared/<site>/ for a site other than act): overlap (beside chance and the
paper), overlap_tau and its figure, layers_shared and its figure, partitions.csv, Table 4 (Δ per objective group
beside the size-matched control, with paired bootstrap intervals), Tables 17–18 (Δ per task), Table 19 (change of
the mean reward), report_section.md and run.json; then <results-dir>/<model>/report.md. Formats:
docs/artifacts.md; definitions (chance levels, controls, the verdict): docs/methods.md.
"""
import functools
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy
import torch

import common
import rmt_kernels as rk

PARTITIONS = common.PARTITIONS
CONTROLS = tuple(f"random-{p}" for p in PARTITIONS)
GROUPS = ("harmless", "helpful")
OVERLAP_COLUMNS = ("seed", "method", "tau", "measure", "value", "chance")
PARTITION_COLUMNS = ("seed", "method", "tau", "partition", "neurons", "task", "group", "items", "accuracy",
                     "base_accuracy", "delta")
TAU_CURVE = tuple(float(t) for t in range(1, 31))


@common.step()
@common.backbone_options
@common.reading_options
@common.ablation_step_options(methods=("magnitude",))
@click.option("--within", type=click.Choice(common.OBJECTIVES), default=None,
              help="The tension inside ONE RM (beyond the paper): H and A are this RM's top-τ neurons scored on the "
                   "helpful and on the harmless training pairs, M on its own pairs, and the partitions are ablated "
                   "in it. Writes shared/within-<objective>/.")
@click.option("--force", is_flag=True, help="Rescore the partition ablations even where cached scores exist.")
def main(**cfg):
    cfg, runs, _, device, dtype = common.start_analysis(cfg, (cfg["within"],) if cfg["within"] else common.OBJECTIVES)
    out = common.step_dir(cfg["results_dir"], cfg["model"], "shared", cfg["site"])
    if cfg["within"]:
        out = out / f"within-{cfg['within']}"

    # load
    tasks, bench = common.load_bench(cfg)
    ablated_rm = cfg["within"] or "mixed"
    items = common.cap_items(common.held_out_items(ablated_rm, cfg), cfg["max_items"]) + bench.items
    pairs = functools.cache(lambda: common.training_pairs(cfg, common.OBJECTIVES))  # only for missing files
    scored = common.shard_map(lambda seed: [
        common.compute_neuron_files({**cfg, "force": False}, run / "rm", objective, seed, cfg["method"], folder, pairs,
                                    device, dtype, keys=common.NEURON_IDENTITY, tag=tag)
        for tag, run, objective, folder in neuron_sources(cfg, runs, seed).values()], cfg["seed"], cfg["shard"])

    # run (with --shard, only the seeds whose neuron files no other job is making)
    seeds = [seed for seed, lines in scored.items() if not any("left" in line for line in lines)]
    results = common.shard_map(lambda seed: run_seed(cfg, seed, runs, items, tasks, device, dtype), seeds,
                               cfg["shard"])
    if common.shard_done(cfg, "shared.py"):
        return

    # analyse and save
    (write_within if cfg["within"] else write_results)(cfg, results, tasks, out)
    notes = [note for result in results.values() for note in result["notes"]]
    common.write_json(out / "run.json", {
        **common.run_record({**cfg, "device": str(device), "dtype": str(dtype), "backend": rk.backend(device)}),
        "neuron_files": [line for lines in scored.values() for line in lines], "items": len(items), "notes": notes,
        "bench": {"sources": bench.sources, "excluded": bench.excluded, "notes": bench.notes},
        "timing": {f"seed{seed}": result["timing"] for seed, result in results.items()}})
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"shared neurons of {len(cfg['seed'])} seed(s) × {len(cfg['method'])} method(s) × {len(cfg['tau'])} "
               f"τ → {out}; report: {report}")


# ---------------------------------------------------------------------------------------------
# Set algebra on [layers, d_mlp] bool masks
# ---------------------------------------------------------------------------------------------
def ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def overlaps(H: torch.Tensor, A: torch.Tensor, M: torch.Tensor) -> dict[str, float]:
    """Every SPEC §1 overlap measure of the helpful (H), harmless (A) and mixed (M) neuron sets."""
    size = lambda mask: int(mask.sum())  # noqa: E731
    union = H | A
    ha = size(H & A)
    return {"retention": ratio(size(M & union), size(union)),
            "retention_authors": ratio(size(M & union), size(union | M)),
            "HA_over_H": ratio(ha, size(H)), "HA_over_A": ratio(ha, size(A)),
            "jaccard_HA": ratio(ha, size(union)), "jaccard_MH": ratio(size(M & H), size(M | H)),
            "jaccard_MA": ratio(size(M & A), size(M | A)), "shared_share": ratio(ha, H.numel())}


def control_mask(shape, size: int, seed: int, partition: str) -> torch.Tensor:
    """`size` neurons drawn uniformly without replacement from all of them, by a generator seeded with the run seed
    and the partition's name (so each partition of each seed has its own reproducible control)."""
    generator = torch.Generator().manual_seed(common.pair_hash(str(seed), partition) % (1 << 63))
    mask = torch.zeros(math.prod(shape), dtype=torch.bool)
    mask[torch.randperm(mask.numel(), generator=generator)[:size]] = True
    return mask.view(*shape)


# ---------------------------------------------------------------------------------------------
# Chance levels: expectations for independent uniformly random sets of sizes h, a, m among N neurons
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def log_factorials(n: int) -> numpy.ndarray:
    return numpy.array([math.lgamma(i + 1) for i in range(n + 1)])


def hypergeom(N: int, K: int, n: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(k, P(k)) of |X ∩ Y| for |X| = K fixed and Y a uniform n-subset of N, on the whole support, from log
    factorials (normalised, so the rounding of the logs does not shift the total)."""
    lf = log_factorials(N)
    k = numpy.arange(max(0, K + n - N), min(K, n) + 1)
    log_p = lf[K] - lf[k] - lf[K - k] + lf[N - K] - lf[n - k] - lf[N - K - n + k] - (lf[N] - lf[n] - lf[N - n])
    p = numpy.exp(log_p - log_p.max())
    return k, p / p.sum()


def expected_jaccard(N: int, x: int, y: int) -> float:
    """E[k / (x + y − k)] with k = |X ∩ Y| hypergeometric."""
    k, p = hypergeom(N, x, y)
    union = x + y - k
    return float(numpy.sum(p * numpy.where(union > 0, k / numpy.maximum(union, 1), numpy.nan)))


def chance_levels(N: int, h: int, a: int, m: int) -> dict[str, float]:
    """Exact expectations of every overlap measure for independent uniform random sets of sizes h, a, m.

    Fixed denominators are linear: E|X∩Y| = |X||Y|/N. retention: given U = H ∪ A (any size u ≥ 1), M is independent,
    so E|M∩U|/u = m/N exactly. retention_authors: with k = |H∩A| (hypergeometric), u = h + a − k and j = |M∩U|
    (hypergeometric given u), E = Σ_k P(k) Σ_j P(j|u) j / (u + m − j). Jaccard: E[k / (x + y − k)] summed over k."""
    k, p = hypergeom(N, h, a)
    authors = 0.0
    for k_value, p_k in zip(k, p):
        if p_k < 1e-20:  # terms this small cannot move a float64 result
            continue
        u = h + a - int(k_value)
        j, q = hypergeom(N, u, m)
        denominator = u + m - j
        authors += p_k * float(numpy.sum(q * j / numpy.maximum(denominator, 1)))
    return {"retention": ratio(m, N) if h + a else math.nan, "retention_authors": authors if h + a + m else math.nan,
            "HA_over_H": ratio(a, N) if h else math.nan, "HA_over_A": ratio(h, N) if a else math.nan,
            "jaccard_HA": expected_jaccard(N, h, a), "jaccard_MH": expected_jaccard(N, m, h),
            "jaccard_MA": expected_jaccard(N, m, a), "shared_share": h * a / N / N}


# ---------------------------------------------------------------------------------------------
# Per seed: the neuron sets, their overlaps (cheap, scores only), then the partition ablations in the mixed RM
# ---------------------------------------------------------------------------------------------
def selectable(taus, n: int) -> list[float]:
    """The τ values that select at least one of n neurons (select_top refuses the others)."""
    return [t for t in taus if math.floor(t / 100 * n + 0.5) >= 1]


def neuron_sources(cfg, runs, seed) -> dict[str, tuple[str, Path, str, Path]]:
    """Where a seed's H, A and M come from, {"helpful" | "harmless" | "mixed" (the role): (tag, RM run, the
    objective whose training pairs score it, neuron folder)}: the paper's are the helpful, harmless and mixed RMs,
    each on its own pairs; --within X has RM X on the helpful pairs, on the harmless pairs and on its own pairs
    (the first two in neurons/[<site>/]on-<objective>/ unless they are its own)."""
    if not cfg["within"]:
        return {o: (f"[{o} seed {seed}]", runs[o, seed], o, common.neuron_dir(runs[o, seed], cfg["site"]))
                for o in common.OBJECTIVES}
    rm_type = cfg["within"]
    run, own = runs[rm_type, seed], common.neuron_dir(runs[rm_type, seed], cfg["site"])
    pairs_of = {"helpful": "helpful", "harmless": "harmless", "mixed": rm_type}
    return {role: (f"[{rm_type} seed {seed}, on {o} pairs]", run, o, own if o == rm_type else own / f"on-{o}")
            for role, o in pairs_of.items()}


def this_command(cfg) -> str:
    """shared.py --within as it was run: it remakes a damaged or stale neuron file of its own."""
    return " ".join(["python experiments/shared.py", f"--model {cfg['model']}", f"--within {cfg['within']}",
                     *[f"--seed {s}" for s in cfg["seed"]], f"--site {cfg['site']}", f"--runs-dir {cfg['runs_dir']}"])


def run_seed(cfg, seed, runs, items, tasks, device, dtype) -> dict:
    """One seed: the H, A, M sets of each method and τ, their overlaps (cheap, scores only), then every partition
    and its control ablated in the mixed RM, or the --within RM (each cached on its own)."""
    rm_type = cfg["within"] or "mixed"
    run = runs[rm_type, seed]
    model, tokenizer = common.load_reward_model(run / "rm", device, common.reading_of(cfg))
    if cfg["ablation"] == "mean" and cfg["site"] == "act" and common.arch_of(model).gated:
        common.say(f"note: {common.MEAN_AT_ACT_NOTE}")
    tokenizer = common.MemoTokenizer(tokenizer)  # every set scores the same texts: tokenise them once
    files = {(role, m): common.read_neurons(folder / f"{m}.h5", this_command(cfg) if cfg["within"]
                                            else common.neurons_command(cfg, role, seed, [m]), common.mlp_shape(model))
             for role, (_, _, _, folder) in neuron_sources(cfg, runs, seed).items() for m in cfg["method"]}
    overlap_rows, curve_rows, layer_rows, sets, set_hashes = neuron_sets(cfg, seed, files)

    started = time.perf_counter()
    base = common.evaluate_rm(run / "rm", model, tokenizer, items, cfg, device, dtype, common.own_scores_home(run),
                              desc=f"{rm_type} seed {seed} plain")
    timing = {"items": len(items), "plain_seconds": round(time.perf_counter() - started, 2), "sets": {}}
    partition_rows, notes = [], []
    for (method, tau, name), mask in sets.items():
        size = int(mask.sum())
        # within one RM the sets differ from the paper's, so they are cached apart
        label = f"{cfg['ablation']}-{'within-' * bool(cfg['within'])}{name}-{method}-tau{tau:g}"
        if size == 0:
            scores = base
            notes.append(f"seed {seed}: {name} ({method}, τ = {tau:g}) is empty: not scored, its rows repeat the "
                         "baseline (Δ 0)")
        else:
            values = files["mixed", method].mean_activation if cfg["ablation"] == "mean" else None
            started = time.perf_counter()
            scores = common.evaluate_rm(run / "rm", model, tokenizer, items, cfg, device, dtype,
                                        common.intervention_dir(run, "shared", cfg["site"], label),
                                        ablated=(cfg["ablation"], mask, values), desc=f"{rm_type} seed {seed} {label}",
                                        force=cfg["force"])
            timing["sets"][label] = {"neurons": size, "seconds": round(time.perf_counter() - started, 2)}
        if base is None or scores is None:  # --shard left it to another job
            continue
        partition_rows += [{"seed": seed, "method": method, "tau": tau, "partition": name, "neurons": size, **row}
                           for row in common.accuracy_rows(items, scores, tasks, base=base)]
    for note in notes:
        common.say(f"note: {note}")
    if not cfg["within"] and not cfg["shard"]:  # conflict.py's input is the paper's partitions, whole
        save_partitions(cfg, run, model, items, dtype, partition_rows, set_hashes)
    return {"overlap": overlap_rows, "curve": curve_rows, "layers": layer_rows, "partitions": partition_rows,
            "notes": notes, "timing": timing, "shape": tuple(files["mixed", cfg["method"][0]].score.shape)}


def neuron_sets(cfg, seed, files):
    """(overlap rows, τ-curve rows, per-layer rows, {(method, τ, partition or control): mask}, {(method, τ): the
    content hashes of H and A}) of one seed from its neuron files {(objective, method)}."""
    shape = tuple(files["mixed", cfg["method"][0]].score.shape)
    n = math.prod(shape)
    overlap_rows, curve_rows, layer_rows, sets, set_hashes = [], [], [], {}, {}
    for method in cfg["method"]:
        for tau in dict.fromkeys((*cfg["tau"], *selectable(TAU_CURVE, n))):
            H, A, M = (common.select_top(files[o, method].score, tau) for o in common.OBJECTIVES)
            value = overlaps(H, A, M)
            if tau in cfg["tau"]:
                chance = chance_levels(n, int(H.sum()), int(A.sum()), int(M.sum()))
                overlap_rows += [{"seed": seed, "method": method, "tau": tau, "measure": k, "value": value[k],
                                  "chance": chance[k]} for k in common.OVERLAP_MEASURES]
                parts = common.partitions(H, A)
                layer_rows += [{"seed": seed, "method": method, "tau": tau, "layer": layer,
                                **{p: int(parts[p][layer].sum()) for p in PARTITIONS}} for layer in range(shape[0])]
                for p in PARTITIONS:
                    sets[method, tau, p] = parts[p]
                    sets[method, tau, f"random-{p}"] = control_mask(shape, int(parts[p].sum()), seed, f"random-{p}")
                set_hashes[method, tau] = {"helpful_set": common.mask_fingerprint(H),
                                           "harmless_set": common.mask_fingerprint(A)}
            if tau in TAU_CURVE:
                curve_rows += [{"seed": seed, "method": method, "tau": tau, "measure": k, "value": value[k],
                                "chance": ratio(int(A.sum()), n) if k == "HA_over_H"
                                else expected_jaccard(n, int(H.sum()), int(A.sum()))}
                               for k in ("HA_over_H", "jaccard_HA")]
    return overlap_rows, curve_rows, layer_rows, sets, set_hashes


# What conflict.py reads: the partitions' Δs per task with the sets they come from, merged with the file's other
# configurations (other methods and τ) while the mixed RM, the site and the items are the same.
PARTITION_FIELDS = ("partition", "neurons", "task", "group", "items", "accuracy", "base_accuracy", "delta")


def save_partitions(cfg, run, model, items, dtype, rows, set_hashes):
    path = common.partitions_path(run, cfg["site"], cfg["ablation"])
    settings = {"rm_weights": common.rm_fingerprint(run / "rm"), "reading": common.rm_reading(cfg, run / "rm"),
                "site": cfg["site"], "ablation": cfg["ablation"],
                "max_length": min(cfg["max_length"], common.context_length(model)), "dtype": str(dtype),
                "items": hashlib.sha256("".join(f"{i.subset}\x00{i.id}\x00{common.item_hash(i)}\x00"
                                                for i in items).encode("utf-8")).hexdigest()[:16]}
    try:
        stored = common.read_json(path) if path.exists() else {}
        kept = stored.get("configurations", {}) if not common.stale_reason(stored.get("settings"), settings) else {}
    except (common.Unreadable, AttributeError):
        stored, kept = {}, {}
    configurations = {**kept, **{f"{method}-tau{tau:g}": {**hashes, "rows": [
        {k: r[k] for k in PARTITION_FIELDS} for r in rows if (r["method"], r["tau"]) == (method, tau)]}
        for (method, tau), hashes in set_hashes.items()}}
    content = {"settings": settings, "configurations": configurations}
    if json.loads(json.dumps(content)) != stored:  # unchanged: left as it is, like every other finished unit
        common.write_json(path, content)


# ---------------------------------------------------------------------------------------------
# Tables, figures and the report section
# ---------------------------------------------------------------------------------------------
def overlap_table(cfg, rows):
    header = ["method", "tau", "measure", "value_mean", "value_std", "seeds", "chance", "paper"]
    csv_rows, md_rows = [], []
    for method in cfg["method"]:
        for tau in cfg["tau"]:
            for measure in common.OVERLAP_MEASURES:
                picked = [r for r in rows if (r["method"], r["tau"], r["measure"]) == (method, tau, measure)]
                stats = common.mean_std(r["value"] for r in picked)
                chance = common.mean_std(r["chance"] for r in picked)[0]
                ref = common.paper_overlap(cfg["model"], measure) if (method, tau) == ("magnitude", 10.0) else None
                csv_rows.append([method, f"{tau:g}", measure, stats[0], stats[1], stats[2], chance, ref])
                md_rows.append([method, f"{tau:g}", common.OVERLAP_MEASURES[measure],
                                common.cell(common.Summary(*stats), 1, 3), common.number(chance), common.number(ref)])
    md = common.markdown_table(["Method", "τ %", "Measure", "Ours (mean ± std over seeds)", "Chance", "Paper"],
                               md_rows)
    return header, csv_rows, md


def group_summary(rows, tasks, method, tau, partition, group, field="delta", interval=None) -> common.Summary:
    """Per seed the unweighted mean of `field` over the group's benchmark tasks (held-out HH-RLHF pairs excluded);
    then mean ± std over seeds, with the paired interval of Δ over items when asked."""
    return common.summarise([r for r in rows if (r["method"], r["tau"], r["partition"], r["group"])
                             == (method, tau, partition, group) and not common.task_for(r["task"], tasks).held_out],
                            field, interval)


def table4(cfg, rows, tasks):
    header = ["method", "tau", "partition", "neurons"] + [f"{g}_{k}" for g in GROUPS for k in
                                                          ("delta_mean", "delta_std", "control_mean", "control_std",
                                                           "delta_ci_low", "delta_ci_high", "control_ci_low",
                                                           "control_ci_high")]
    csv_rows, md_rows = [], []
    for method in cfg["method"]:
        for tau in cfg["tau"]:
            base = {g: group_summary(rows, tasks, method, tau, "shared", g, "base_accuracy") for g in GROUPS}
            paper = [f"{v:.2f}" for v in common.PAPER_TABLE4["baseline"]] if (method, tau) == ("magnitude", 10.0) \
                else ["–", "–"]
            md_rows.append([method, f"{tau:g}", "baseline (not ablated)", "–",
                            common.cell(base["harmless"]), "", common.cell(base["helpful"]), "", *paper])
            for p in PARTITIONS:
                neurons = common.mean_std(r["neurons"] for r in rows if (r["method"], r["tau"], r["partition"])
                                          == (method, tau, p) and r["task"] == rows[0]["task"])[0]
                own = {g: group_summary(rows, tasks, method, tau, p, g, interval="delta") for g in GROUPS}
                ctl = {g: group_summary(rows, tasks, method, tau, f"random-{p}", g, interval="delta") for g in GROUPS}
                csv_rows.append([method, f"{tau:g}", p, neurons] + [v for g in GROUPS for v in (
                    own[g].mean, own[g].std, ctl[g].mean, ctl[g].std, own[g].low, own[g].high, ctl[g].low,
                    ctl[g].high)])
                paper = [f"{v:+.2f}" for v in common.PAPER_TABLE4[p]] if (method, tau) == ("magnitude", 10.0) \
                    else ["–", "–"]
                md_rows.append([method, f"{tau:g}", p, f"{neurons:.0f}",
                                *[common.cell(x, sign=True) for g in GROUPS for x in (own[g], ctl[g])], *paper])
    md = common.markdown_table(["Method", "τ %", "Ablated in the mixed RM", "Neurons", "Δ harmless", "Δ harmless, "
                                "size-matched control", "Δ helpful", "Δ helpful, size-matched control",
                                "Paper Δ harmless", "Paper Δ helpful"], md_rows)
    return header, csv_rows, md


def task_table(cfg, rows, tasks, group, field="delta", scale=100.0, digits=2):
    """Per task of `group` at the headline configuration: the baseline and, per partition and control, the change
    `field` (delta: of the accuracy; reward_delta: of the mean reward), mean ± std over seeds."""
    method, tau = common.headline(cfg)
    picked = [r for r in rows if r["method"] == method and r["tau"] == tau and (group is None or r["group"] == group)]
    names = list(dict.fromkeys(r["task"] for r in picked))
    if not names:
        return None
    columns = (*PARTITIONS, *CONTROLS)
    base_field = "base_accuracy" if field == "delta" else "base_reward"
    header = ["task", "group", "items", "base_mean"] + [f"{c}_mean" for c in columns] + [f"{c}_std" for c in columns]
    csv_rows, md_rows = [], []
    for task in names:
        mine = [r for r in picked if r["task"] == task]
        change = {c: common.summarise([r for r in mine if r["partition"] == c], field) for c in columns}
        base = common.summarise([r for r in mine if r["partition"] == "shared"], base_field)
        display = common.task_for(task, tasks).display
        csv_rows.append([task, mine[0]["group"], mine[0]["items"], base.mean] + [change[c].mean for c in columns]
                        + [change[c].std for c in columns])
        md_rows.append([display, mine[0]["items"], common.cell(base, scale, digits)]
                       + [common.cell(change[c], scale, digits, sign=True) for c in columns])
    md = common.markdown_table(["Task", "Items", "Base" + (" %" if field == "delta" else " mean reward")]
                               + [f"Δ {c}" for c in columns], md_rows)
    return header, csv_rows, md


def verdict(cfg, rows, tasks) -> str:
    """One line: does shared ≫ objective-only survive the size-matched control? Per group, each partition's excess
    Δ over its own control; 'yes' only when the shared excess is below 0 and below both objective-only excesses by
    more than the sampling noise of a group accuracy (2 binomial standard errors at p = 1/2 over the group's
    items, per seed), so a one-item difference on a small sample is not read as an effect."""
    method, tau = common.headline(cfg)
    parts = []
    for g in GROUPS:
        excess = {}
        for p in PARTITIONS:
            own, ctl = group_summary(rows, tasks, method, tau, p, g).mean, \
                group_summary(rows, tasks, method, tau, f"random-{p}", g).mean
            excess[p] = own - ctl
        raw = {p: group_summary(rows, tasks, method, tau, p, g).mean for p in PARTITIONS}
        if any(math.isnan(v) for v in (*excess.values(), *raw.values())):
            parts.append(f"{g} tasks: no benchmark task")
            continue
        items = sum(r["items"] for r in rows if (r["method"], r["tau"], r["partition"], r["group"], r["seed"])
                    == (method, tau, "shared", g, cfg["seed"][0]) and not common.task_for(r["task"], tasks).held_out)
        noise = 2 * math.sqrt(0.25 / items)
        margin = min(excess["helpful-only"], excess["harmless-only"]) - excess["shared"]
        raw_holds = min(raw["helpful-only"], raw["harmless-only"]) - raw["shared"] > noise
        survives = -excess["shared"] > noise and margin > noise
        parts.append(f"{g} tasks: raw {'yes' if raw_holds else 'no'}, beyond the control "
                     f"{'yes' if survives else 'no'} (Δ − control: shared {100 * excess['shared']:+.2f}, helpful-only "
                     f"{100 * excess['helpful-only']:+.2f}, harmless-only {100 * excess['harmless-only']:+.2f} pp; "
                     f"noise ±{100 * noise:.1f} pp over {items} items)")
    return (f"**Does shared ≫ objective-only survive the size-matched control on this run** ({method}, τ = {tau:g}, "
            f"{len(cfg['seed'])} seed(s))? " + "; ".join(parts) + ".")


def plot_layers(cfg, layer_rows, path):
    method_list, (_, tau) = list(cfg["method"]), common.headline(cfg)
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(method_list), figsize=(max(6.5, 4.5 * len(method_list)), 3.8), squeeze=False)
    colours = {"helpful-only": common.RM_COLORS["helpful"], "shared": "tab:olive",
               "harmless-only": common.RM_COLORS["harmless"]}
    for ax, method in zip(axes[0], method_list):
        picked = [r for r in layer_rows if r["method"] == method and r["tau"] == tau]
        layers = sorted({r["layer"] for r in picked})
        bottom = [0.0] * len(layers)
        for p in ("helpful-only", "shared", "harmless-only"):
            heights = [statistics.fmean(r[p] for r in picked if r["layer"] == layer) for layer in layers]
            ax.bar(layers, heights, bottom=bottom, color=colours[p], label=p, width=0.8)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_xlabel("layer")
        ax.set_title(f"{method} (top {tau:g} %)")
        if len(layers) <= 12:
            ax.set_xticks(layers)
    axes[0][0].set_ylabel("neurons (mean over seeds)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{cfg['model']}: the helpful ∪ harmless neurons per layer")
    common.save_figure(fig, path)


def plot_tau(cfg, curve_rows, path):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, measure in zip(axes, ("HA_over_H", "jaccard_HA")):
        for method in cfg["method"]:
            picked = [r for r in curve_rows if r["method"] == method and r["measure"] == measure]
            taus = sorted({r["tau"] for r in picked})
            stats = [common.mean_std(r["value"] for r in picked if r["tau"] == t) for t in taus]
            mean, std = numpy.array([s[0] for s in stats]), numpy.array([s[1] for s in stats])
            spread = (mean - std, mean + std) if len(cfg["seed"]) > 1 else (None, None)
            common.plot_estimates(ax, taus, mean, *spread, style="band", color=common.METHOD_STYLE[method][0],
                                  label=method)
        chance = {r["tau"]: r["chance"] for r in curve_rows if r["measure"] == measure}
        ax.plot(sorted(chance), [chance[t] for t in sorted(chance)], "k--", label="chance")
        if common.paper_overlap(cfg["model"], measure) is not None:
            ax.plot([10], [common.paper_overlap(cfg["model"], measure)], "k*", markersize=10,
                    label=f"paper ({common.PAPER_BACKBONE[cfg['model']]})")
        ax.set_xlabel("τ (% of all neurons)")
        ax.set_ylabel(common.OVERLAP_MEASURES[measure])
        ax.set_ylim(0, 1.02)
        ax.set_title(common.OVERLAP_MEASURES[measure])
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{cfg['model']}: helpful (H) vs harmless (A) top-τ neurons"
                 + (f" (± std over {len(cfg['seed'])} seeds)" if len(cfg["seed"]) > 1 else " (one seed)"))
    common.save_figure(fig, path)


def write_results(cfg, results, tasks, out: Path):
    overlap = [r for result in results.values() for r in result["overlap"]]
    curve = [r for result in results.values() for r in result["curve"]]
    layer_rows = [r for result in results.values() for r in result["layers"]]
    rows = [r for result in results.values() for r in result["partitions"]]
    seeds_shape = next(iter(results.values()))["shape"]
    method, tau = common.headline(cfg)

    def tau_cells(row, columns):
        return [f"{row[c]:g}" if c == "tau" else row[c] for c in columns]

    common.write_csv(out / "overlap.csv", OVERLAP_COLUMNS, [tau_cells(r, OVERLAP_COLUMNS) for r in overlap])
    common.write_csv(out / "overlap_tau.csv", OVERLAP_COLUMNS, [tau_cells(r, OVERLAP_COLUMNS) for r in curve])
    _, _, overlap_md = overlap_table(cfg, overlap)
    common.write_text(out / "overlap.md", overlap_md)
    layer_columns = ("seed", "method", "tau", "layer", *PARTITIONS)
    common.write_csv(out / "layers_shared.csv", layer_columns, [tau_cells(r, layer_columns) for r in layer_rows])
    common.write_csv(out / "partitions.csv", PARTITION_COLUMNS, [tau_cells(r, PARTITION_COLUMNS) for r in rows])
    header, csv_rows, t4_md = table4(cfg, rows, tasks)
    common.write_table(out / "table4", header, csv_rows, t4_md)
    per_task = {}
    for stem, group, field in (("tasks_harmless", "harmless", "delta"), ("tasks_helpful", "helpful", "delta"),
                               ("table19_reward", None, "reward_delta")):
        table = task_table(cfg, rows, tasks, group, field, *((100.0, 2) if field == "delta" else (1.0, 4)))
        per_task[stem] = table
        if table is None:
            common.remove_table(out / stem)
        else:
            common.write_table(out / stem, table[0], table[1], table[2])
    plot_layers(cfg, layer_rows, out / "fig_layers_shared.png")
    plot_tau(cfg, curve, out / "fig_overlap_tau.png")

    notes = [note for result in results.values() for note in result["notes"]]
    common.write_text(out / "report_section.md", report_section(cfg, rows, tasks, seeds_shape, overlap_md, t4_md,
                                                                per_task, notes))


# ---------------------------------------------------------------------------------------------
# --within: the tension inside one RM, in one table, one figure and one report section
# ---------------------------------------------------------------------------------------------
WITHIN_COLUMNS = ("section", "name", "group", "mean", "std", "seeds", "ci_low", "ci_high", "reference",
                  "reference_ci_low", "reference_ci_high")
WITHIN_MEASURES = ("HA_over_H", "HA_over_A", "jaccard_HA", "jaccard_MH", "jaccard_MA", "shared_share")


def write_within(cfg, results, tasks, out: Path):
    """within.csv/.md: the overlaps of H and A inside the RM beside their exact chance levels (mean ± std over
    seeds), then its baseline and each partition's Δ beside its size-matched control, with the paired intervals;
    fig_within.png; partitions.csv (every per-task row); report_section.md."""
    overlap = [r for result in results.values() for r in result["overlap"]]
    rows = [r for result in results.values() for r in result["partitions"]]
    method, tau = common.headline(cfg)
    table, md_rows = [], []
    for measure in WITHIN_MEASURES:
        picked = [r for r in overlap if (r["method"], r["tau"], r["measure"]) == (method, tau, measure)]
        value = common.Summary(*common.mean_std(r["value"] for r in picked))
        chance = common.mean_std(r["chance"] for r in picked)[0]
        table.append(["overlap", measure, "", value.mean, value.std, value.seeds, math.nan, math.nan, chance,
                      math.nan, math.nan])
        md_rows.append([common.OVERLAP_MEASURES[measure], "", common.cell(value, 1.0, 3),
                        f"chance {common.number(chance)}"])
    for group in GROUPS:
        base = group_summary(rows, tasks, method, tau, "shared", group, "base_accuracy")
        table.append(["baseline", "not ablated", group, base.mean, base.std, base.seeds, math.nan, math.nan, math.nan,
                      math.nan, math.nan])
        md_rows.append(["accuracy, not ablated (%)", f"{group} tasks", common.cell(base), ""])
    for partition in PARTITIONS:
        for group in GROUPS:
            own, control = (group_summary(rows, tasks, method, tau, name, group, interval="delta")
                            for name in (partition, f"random-{partition}"))
            table.append(["ablation", partition, group, own.mean, own.std, own.seeds, own.low, own.high, control.mean,
                          control.low, control.high])
            md_rows.append([f"Δ ablating {partition} (pp)", f"{group} tasks", common.cell(own, sign=True),
                            f"control {common.cell(control, sign=True)}"])
    common.write_table(out / "within", WITHIN_COLUMNS, table, common.markdown_table(
        ["Measure", "Tasks", "This RM (mean ± std over seeds [interval])", "Chance / size-matched control"],
        md_rows))
    common.write_csv(out / "partitions.csv", PARTITION_COLUMNS,
                     [[f"{r[c]:g}" if c == "tau" else r[c] for c in PARTITION_COLUMNS] for r in rows])
    plot_within(cfg, table, method, tau, out / "fig_within.png")
    folder = f"{common.step_folder('shared', cfg['site'])}/within-{cfg['within']}"
    notes = [note for result in results.values() for note in result["notes"]]
    common.write_text(out / "report_section.md", "\n".join([
        f"## The tension inside the {cfg['within']} RM (beyond the paper's §5)\n",
        f"The paper's question asked of ONE RM: H and A are its top-τ % neurons ({method}, τ = {tau:g}, site "
        f"`{cfg['site']}`) scored on the helpful and on the harmless training pairs, M on its own pairs; seeds "
        f"{', '.join(map(str, cfg['seed']))}. Chance = the exact expectation for independent uniform random sets of "
        f"the same sizes. The partitions H \\ A, A \\ H and H ∩ A are {cfg['ablation']}-ablated in this RM beside "
        f"size-matched random sets; Δ in percentage points (per seed the mean over the group's benchmark tasks), "
        f"[low, high] the paired interval ({common.BOOTSTRAP_NOTE}). Table: `{folder}/within.md`.\n",
        common.markdown_table(["Measure", "Tasks", "This RM (mean ± std over seeds [interval])",
                               "Chance / size-matched control"], md_rows),
        f"![inside one RM]({folder}/fig_within.png)\n",
        verdict(cfg, rows, tasks) + "\n",
        *(["Notes: " + "; ".join(notes) + ".\n"] if notes else [])]))


def plot_within(cfg, table, method, tau, path):
    """Left: each overlap of H and A inside the RM against its chance level. Right: each partition's Δ per task
    group against its size-matched control, with the paired intervals."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 1 + len(GROUPS), figsize=(4.2 * (1 + len(GROUPS)), 3.8))
    overlaps = [row for row in table if row[0] == "overlap"]
    positions = numpy.arange(len(overlaps))
    common.plot_estimates(axes[0], positions - 0.2, [row[3] for row in overlaps], style="bars", width=0.4,
                          color="tab:olive", label="this RM")
    common.plot_estimates(axes[0], positions + 0.2, [row[8] for row in overlaps], style="bars", width=0.4,
                          color="tab:gray", label="chance")
    axes[0].set_xticks(positions, [common.OVERLAP_MEASURES[row[1]] for row in overlaps], rotation=30, ha="right",
                       fontsize="small")
    axes[0].set_title("H vs A inside the RM")
    axes[0].legend(fontsize="small")
    for ax, group in zip(axes[1:], GROUPS):
        mine = [row for row in table if row[0] == "ablation" and row[2] == group]
        positions = numpy.arange(len(mine))
        own = numpy.array([row[3] for row in mine]) * 100
        control = numpy.array([row[8] for row in mine]) * 100
        common.plot_estimates(ax, positions - 0.2, own, [100 * row[6] for row in mine], [100 * row[7] for row in mine],
                              style="bars", width=0.4, color="tab:olive", label="partition")
        common.plot_estimates(ax, positions + 0.2, control, [100 * row[9] for row in mine],
                              [100 * row[10] for row in mine], style="bars", width=0.4, color="tab:gray",
                              label="size-matched control")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(positions, [row[1] for row in mine])
        ax.set_title(f"Δ accuracy on {group} tasks (pp)")
    axes[-1].legend(fontsize="small")
    fig.suptitle(f"{cfg['model']}: the tension inside the {cfg['within']} RM ({method}, τ = {tau:g}, "
                 f"{len(cfg['seed'])} seed(s))", fontsize="medium")
    common.save_figure(fig, path)


def report_section(cfg, rows, tasks, seeds_shape, overlap_md, t4_md, per_task, notes) -> str:
    """The section of report.md: the overlaps, the figures, Table 4 with its verdict, Tables 17–19."""
    method, tau = common.headline(cfg)
    n = math.prod(seeds_shape)
    folder = common.step_folder("shared", cfg["site"])
    text = [
        "## Shared neurons (§5, Table 4, Tables 17–19)\n",
        f"H, A, M = top-τ % neurons (exact count of all {n} = {seeds_shape[0]} layers × {seeds_shape[1]} MLP "
        f"neurons, site `{cfg['site']}`) of the helpful, harmless and mixed RMs; seeds {', '.join(map(str, cfg['seed']))}"
        f"; {cfg['ablation']}-ablation in the mixed RM. Chance = exact expectation for independent uniform random sets "
        "of the same sizes.\n",
        "### Overlaps\n",
        overlap_md,
        "Each overlap beside its chance level; the paper's values (τ = 10, magnitude"
        + (f", {common.PAPER_BACKBONE[cfg['model']]}" if cfg["model"] in common.PAPER_BACKBONE
           else ", other backbones than this one")
        + ") are in the last column — SmolLM2-135M 0.826 / 0.703 / 0.830 / 0.741, GPT-2 small 0.583 / 0.412 / 0.493 / "
        "0.407, GPT-2 medium 0.562 / 0.391 / 0.472 / 0.428 for |H∩A|/|H|, J(H,A), J(M,H), J(M,A), the authors' "
        "retention 0.549; chance at τ = 10 is 0.10 for |H∩A|/|H| and ≈ 0.053 for a Jaccard index.\n",
        f"![overlap against τ]({folder}/fig_overlap_tau.png)\n",
        "The overlap of H and A for τ = 1…30 % (mean ± std over seeds), with the chance line; the star is the paper's "
        "value at τ = 10 where this backbone is one of its own.\n",
        f"![per layer]({folder}/fig_layers_shared.png)\n",
        f"Where the helpful-only, shared and harmless-only neurons sit, layer by layer ({method}, τ = {tau:g}; counts "
        "in layers_shared.csv).\n",
        "### Ablating each partition in the mixed RM (Table 4)\n",
        t4_md,
        "Δ accuracy in percentage points (paper rule; per seed the mean over the group's benchmark tasks, then mean ± "
        "std over seeds) of each exact partition beside a random set of the same size; the paper (baseline 61.04 "
        "harmless / 50.47 helpful; shared −10.00 / −4.40, harmless-only −1.18 / −0.76, helpful-only −0.00 / −0.83) has "
        f"no size-matched control. [low, high]: the paired interval of the group Δ ({common.BOOTSTRAP_NOTE}; each "
        "task's items resampled, one draw for every seed).\n",
        verdict(cfg, rows, tasks) + "\n",
    ]
    for stem, title, sentence in (
            ("tasks_harmless", "Per task, harmlessness tasks (Tables 17–18)",
             f"Δ accuracy per harmlessness task ({method}, τ = {tau:g}; pp, mean ± std over seeds)."),
            ("tasks_helpful", "Per task, helpfulness tasks (Tables 17–18)",
             f"Δ accuracy per helpfulness task ({method}, τ = {tau:g}; pp, mean ± std over seeds)."),
            ("table19_reward", "Change of the mean reward (Table 19)",
             f"Mean reward over all chosen and rejected responses of a task, ablated − not ablated ({method}, "
             f"τ = {tau:g}); a shift the paper rule cannot see.")):
        if per_task[stem] is not None:
            text += [f"### {title}\n", per_task[stem][2], sentence + "\n"]
    if notes:
        text.append("Notes: " + "; ".join(notes) + ".\n")
    return "\n".join(text)


if __name__ == "__main__":
    main()
