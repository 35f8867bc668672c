"""Per-neuron gradient conflict between the helpful and the harmless objective (SPEC §3, issue #13): in the mixed
RM (and, as references, in the helpful-only and harmless-only RMs), do the two objectives pull each neuron's own
parameters in opposite directions?

    python experiments/conflict.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256
    python experiments/conflict.py --model tiny-gpt2 --objective mixed --data-dir data/demo/hh-rlhf --max-pairs 6 \\
        --max-length 48 --tau 20
    python experiments/conflict.py --model smollm2-135m-instruct-q4 --data-dir ../shared/data/hh-rlhf \\
        --train-split test --eval-fraction 0.2 --max-pairs 600

Per RM (--objective, default all three: the mixed RM is the measurement, the single-objective RMs the reference)
and --seed: g_help = the mean over the helpful training pairs (common.load_hh's training part of objective helpful,
subsampled to --max-pairs with the run seed, as neurons.py) of the gradient of the Bradley–Terry loss
−log σ(r(chosen) − r(rejected)); g_harm the same over the harmless training pairs. Gradients are summed over batches
(one backward of the summed loss per batch) in float64 and divided by the pair count. They are taken with respect
to each neuron's OWN parameters, from common.ARCHITECTURES (common.neuron_parameters): its input row(s) / column
(GPT-2 c_fc column j and bias j; Llama gate_proj and up_proj rows j) and its output slice of the down projection
(GPT-2 c_proj row j; Llama down_proj column j). Per neuron: cosine(g_help_j, g_harm_j) over the concatenation of
those slices, and both norms.

Sign-flip null: the same cosine with g_harm replaced by the gradient on the harmless pairs with a seeded random half
(floor(n/2) pairs, random.Random seeded with the seed) of them flipped (chosen and rejected swapped), which has no
consistent harmless direction left. Rule: a neuron is "clearly conflicting" when its cosine is below the 5th
percentile of the null cosines of all neurons of the same RM.

Writes <runs-dir>/<model>/<objective>/seed<k>/neurons/conflict.h5: cosine, help_norm, harm_norm, null_cosine
[layers, d_mlp] float64; attributes null_q05, pairs_helpful, pairs_harmless, flipped, rule, settings (JSON; the
file is reused while they equal the request, unless --force), config (JSON).
Under <results-dir>/<model>/conflict/: layers.{csv,md} (per RM and layer: mean, quartiles, share < 0, share clearly
conflicting), sets.{csv,md} (per RM: shared H∩A, helpful-only H\\A, harmless-only A\\H and rest, H and A the top-τ %
neurons of the helpful and harmless RMs' <method>.h5 of the same seed, site act; mean cosine with a 95 % bootstrap
interval over neurons; skipped with the neurons.py command when a file is missing), partitions.{csv,md} (mean
conflict of each partition in the mixed RM beside its Δ in ../shared/partitions.csv, and their Pearson r over the
partitions: 3 points, descriptive only), fig_layers.png, fig_sets.png, report_section.md and run.json; then
<results-dir>/<model>/report.md.
"""
import csv
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import h5py
import numpy
import torch

import common

SETS = ("shared", "helpful-only", "harmless-only", "rest")
PARTITIONS = ("helpful-only", "harmless-only", "shared")
GROUPS = ("harmless", "helpful")
NULL_PERCENTILE = 5.0
RULE = f"cosine < the {NULL_PERCENTILE:g}th percentile of the sign-flip null's cosines over all neurons of the RM"


@click.command(context_settings={"show_default": True})
@common.rm_options
@common.results_option
@common.hh_data_options
@common.method_option(default=("magnitude",))
@common.tau_option(multiple=False)
@common.compute_options
@click.option("--force", is_flag=True, help="Recompute conflict.h5 even where an up-to-date one exists.")
def main(**cfg):
    common.check_model(cfg["model"])
    cfg["method"] = tuple(dict.fromkeys(cfg["method"]))
    device = common.resolve_device(cfg["device"])
    dtype = common.resolve_dtype(cfg["dtype"], device)
    runs = common.require_runs(cfg["runs_dir"], cfg["model"], cfg["objective"], cfg["seed"])  # before any work
    out = common.step_dir(cfg["results_dir"], cfg["model"], "conflict")

    computed = [compute_conflict(cfg, objective, seed, run, device, dtype) for (objective, seed), run in runs.items()]
    notes = write_results(cfg, runs, out)
    common.write_json(out / "run.json", {**common.run_record({**cfg, "device": str(device), "dtype": str(dtype)}),
                                         "rms": computed, "notes": notes})
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"gradient conflict of {len(runs)} RM(s) → {out}; report: {report}")


# ---------------------------------------------------------------------------------------------
# Gradients with respect to each neuron's own parameters
# ---------------------------------------------------------------------------------------------
def bt_loss(reward: torch.Tensor, n: int, signs: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over the batch's pairs of −log σ(s · (r(chosen) − r(rejected))), s = +1 (or −1 for a flipped pair)."""
    margin = reward[:n] - reward[n:]
    if signs is not None:
        margin = margin * signs
    return torch.nn.functional.softplus(-margin).sum()


def neuron_gradients(model, batches, device, dtype, signs=None, desc="gradients", total=None):
    """Mean over pairs of the Bradley–Terry loss gradient w.r.t. common.neuron_parameters, as float64 tensors per
    layer in that order, batches as common.pair_batches makes them. With `signs` (±1 per pair, by pair index), also
    the mean gradient with those pairs flipped, from the same forward. Returns (grads, flipped grads or None, pairs)."""
    params = [p for layer in common.neuron_parameters(model) for p, _ in layer]
    sums = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in params]
    null = [torch.zeros_like(s) for s in sums] if signs is not None else None
    pairs = 0
    model.eval()
    with torch.enable_grad():
        for batch, input_ids, mask in common.progress(batches, total=total, desc=desc, unit="batch"):
            input_ids, mask = input_ids.to(device), mask.to(device)
            with common.autocast(device, dtype):
                reward = common.rewards(model, input_ids, mask)
            n = len(batch)
            for total, grad in zip(sums, torch.autograd.grad(bt_loss(reward, n), params, retain_graph=null is not None)):
                total += grad.double()
            if null is not None:
                flips = torch.as_tensor([signs[i] for i in batch], dtype=reward.dtype, device=reward.device)
                for total, grad in zip(null, torch.autograd.grad(bt_loss(reward, n, flips), params)):
                    total += grad.double()
            pairs += n
    if not pairs:
        raise click.ClickException("no pairs to take gradients on")

    def per_layer(flat):
        flat = iter(t / pairs for t in flat)
        return [[next(flat) for _ in layer] for layer in common.neuron_parameters(model)]
    return per_layer(sums), None if null is None else per_layer(null), pairs


def neuron_axes(model) -> list[list[int]]:
    return [[axis for _, axis in layer] for layer in common.neuron_parameters(model)]


def per_neuron(a, b, axes):
    """(cosine(a_j, b_j), |a_j|, |b_j|) [layers, d_mlp] over the concatenation of neuron j's slices; cosine NaN where
    a norm is 0."""
    def reduce(x, y, axis):
        dims = [d for d in range(x.ndim) if d != axis]
        return (x * y).sum(dim=dims) if dims else x * y  # sum(dim=[]) would sum over everything (a bias)

    dot, sq_a, sq_b = [], [], []
    for ga, gb, ax in zip(a, b, axes):
        dot.append(sum(reduce(x, y, axis) for x, y, axis in zip(ga, gb, ax)))
        sq_a.append(sum(reduce(x, x, axis) for x, axis in zip(ga, ax)))
        sq_b.append(sum(reduce(y, y, axis) for y, axis in zip(gb, ax)))
    dot, norm_a, norm_b = (torch.stack(v).cpu() for v in (dot, sq_a, sq_b))
    norm_a, norm_b = norm_a.sqrt(), norm_b.sqrt()
    denominator = norm_a * norm_b
    cosine = torch.where(denominator > 0, dot / denominator.clamp_min(1e-300), torch.nan)
    return cosine, norm_a, norm_b


def neuron_vector(grads, axes, layer: int, unit: int) -> torch.Tensor:
    """Neuron `unit`'s concatenated slices of one layer's gradients (for checks and reading)."""
    return torch.cat([g.select(axis, unit).reshape(-1) for g, axis in zip(grads[layer], axes[layer])])


def flip_signs(n: int, seed: int) -> list[float]:
    """−1 for a seeded random half (floor(n/2)) of n pairs, +1 for the rest."""
    flipped = set(random.Random(common.pair_hash("conflict-null", str(seed)) % 2**63).sample(range(n), n // 2))
    return [-1.0 if i in flipped else 1.0 for i in range(n)]


def objective_pairs(cfg, objective: str, seed: int):
    return common.subsample(common.training_pairs(objective, cfg["data_dir"], cfg["train_split"], cfg["eval_split"],
                                                  cfg["eval_fraction"]), cfg["max_pairs"], seed)


def conflict_settings(cfg, run: Path, max_length: int, dtype) -> dict:
    data_dir = None if cfg["data_dir"] is None else str(Path(cfg["data_dir"]).resolve())
    return {"model": cfg["model"], "rm_weights": common.rm_fingerprint(run / "rm"), "data_dir": data_dir,
            "train_split": cfg["train_split"], "eval_split": cfg["eval_split"], "eval_fraction": cfg["eval_fraction"],
            "max_pairs": cfg["max_pairs"], "max_length": max_length, "dtype": str(dtype), "null": "flip-half-v1"}


def conflict_path(run: Path) -> Path:
    return common.neuron_dir(run, "act") / "conflict.h5"


def compute_conflict(cfg, objective: str, seed: int, run: Path, device, dtype) -> dict:
    """Write (or reuse) one RM's conflict.h5; returns a line for run.json."""
    tag = f"[{objective} seed {seed}]"
    model, tokenizer = common.load_reward_model(run / "rm", device)
    max_length = min(cfg["max_length"], common.context_length(model))
    settings = conflict_settings(cfg, run, max_length, dtype)
    path = conflict_path(run)
    differs = "" if not path.exists() else common.settings_difference(common.stored_settings(path), settings)
    if path.exists() and not differs and not cfg["force"]:
        click.echo(f"{tag} {path} up to date", err=True)
        return {"objective": objective, "seed": seed, "reused": True}
    if differs:
        click.echo(f"{tag} {path} was made with {differs}: recomputing", err=True)

    started = time.perf_counter()
    mean, pairs = {}, {}
    null = None
    for name in ("helpful", "harmless"):
        chosen_rejected = objective_pairs(cfg, name, seed)
        if not chosen_rejected:
            raise click.ClickException(f"{tag} no {name} training pairs")
        signs = flip_signs(len(chosen_rejected), seed) if name == "harmless" else None
        batches = common.pair_batches(*common.encode_pairs(tokenizer, chosen_rejected, max_length), cfg["batch_size"],
                                      tokenizer.pad_token_id)
        mean[name], flipped, pairs[name] = neuron_gradients(model, batches, device, dtype, signs,
                                                            desc=f"{name} gradients in {objective}",
                                                            total=math.ceil(len(chosen_rejected) / cfg["batch_size"]))
        null = flipped if flipped is not None else null
    axes = neuron_axes(model)
    cosine, help_norm, harm_norm = per_neuron(mean["helpful"], mean["harmless"], axes)
    null_cosine = per_neuron(mean["helpful"], null, axes)[0]
    null_q05 = float(numpy.nanpercentile(null_cosine.numpy(), NULL_PERCENTILE))
    seconds = time.perf_counter() - started

    with common.atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in (("cosine", cosine), ("help_norm", help_norm), ("harm_norm", harm_norm),
                            ("null_cosine", null_cosine)):
            f.create_dataset(name, data=value.numpy())
        f.attrs.update({"model": cfg["model"], "objective": objective, "seed": seed, "null_q05": null_q05,
                        "pairs_helpful": pairs["helpful"], "pairs_harmless": pairs["harmless"],
                        "flipped": pairs["harmless"] // 2, "rule": RULE, "layers": cosine.shape[0],
                        "d_mlp": cosine.shape[1], "settings": json.dumps(settings),
                        "config": json.dumps({**cfg, "objective": objective, "seed": seed}, default=str)})
    click.echo(f"{tag} conflict from {pairs['helpful']} helpful + {pairs['harmless']} harmless pairs in "
               f"{seconds:.1f} s → {path}", err=True)
    return {"objective": objective, "seed": seed, "pairs_helpful": pairs["helpful"],
            "pairs_harmless": pairs["harmless"], "seconds": round(seconds, 2)}


# ---------------------------------------------------------------------------------------------
# Tables, figures and the report section, from the conflict.h5 files
# ---------------------------------------------------------------------------------------------
def read_conflict(run: Path) -> dict:
    with h5py.File(conflict_path(run), "r") as f:
        data = {name: f[name][()] for name in ("cosine", "help_norm", "harm_norm", "null_cosine")}
        data.update({k: f.attrs[k] for k in ("null_q05", "pairs_helpful", "pairs_harmless")})
    return data


def distribution(values: numpy.ndarray, q05: float) -> dict:
    v = values[~numpy.isnan(values)]
    if not v.size:
        return {"neurons": 0, "mean": math.nan, "q25": math.nan, "median": math.nan, "q75": math.nan,
                "share_negative": math.nan, "share_conflicting": math.nan}
    q25, median, q75 = numpy.percentile(v, [25, 50, 75])
    return {"neurons": int(v.size), "mean": float(v.mean()), "q25": float(q25), "median": float(median),
            "q75": float(q75), "share_negative": float((v < 0).mean()), "share_conflicting": float((v < q05).mean())}


def neuron_sets(cfg, runs, seed, method) -> tuple[dict[str, numpy.ndarray] | None, str]:
    """{set: bool mask} from the helpful and harmless RMs' neuron files of this seed, or (None, why not)."""
    masks, missing = {}, []
    for objective in ("helpful", "harmless"):
        run = common.rm_dir(cfg["runs_dir"], cfg["model"], objective, seed)
        path = common.neuron_dir(run, "act") / f"{method}.h5"
        if not path.exists():
            missing.append(f"no {path}; make it with:\n  "
                           f"{common.neurons_command({**cfg, 'site': 'act'}, objective, seed, [method])}")
            continue
        with h5py.File(path, "r") as f:
            masks[objective] = common.select_top(torch.from_numpy(f["score"][()]), cfg["tau"]).numpy()
    if missing:
        return None, "\n".join(missing)
    H, A = masks["helpful"], masks["harmless"]
    return {"shared": H & A, "helpful-only": H & ~A, "harmless-only": A & ~H, "rest": ~(H | A)}, ""


def group_deltas(cfg, seed, method) -> dict | None:
    """{(partition, group): Δ} from ../shared/partitions.csv for this seed, method and τ: the unweighted mean over
    the group's benchmark tasks (held-out HH-RLHF pairs excluded, as shared.py's Table 4); None without the file."""
    path = common.step_dir(cfg["results_dir"], cfg["model"], "shared") / "partitions.csv"
    if not path.exists():
        return None
    tasks = common.load_tasks()
    per = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if (int(r["seed"]), r["method"], float(r["tau"])) != (seed, method, float(cfg["tau"])) \
                    or r["partition"] not in PARTITIONS or common.task_for(r["task"], tasks).benchmark == "hh-rlhf":
                continue
            per.setdefault((r["partition"], r["group"]), []).append(float(r["delta"]))
    return {key: statistics.fmean(v) for key, v in per.items()}


def pearson(x, y) -> float:
    x, y = numpy.asarray(x, dtype=float), numpy.asarray(y, dtype=float)
    ok = ~(numpy.isnan(x) | numpy.isnan(y))
    if ok.sum() < 3 or x[ok].std() == 0 or y[ok].std() == 0:
        return math.nan
    return float(numpy.corrcoef(x[ok], y[ok])[0, 1])


def write_results(cfg, runs, out: Path) -> list[str]:
    data = {key: read_conflict(run) for key, run in runs.items()}
    notes = []
    layer_rows = []
    for (objective, seed), d in data.items():
        cos = d["cosine"]
        for layer in range(cos.shape[0]):
            layer_rows.append({"seed": seed, "objective": objective, "layer": layer,
                               **distribution(cos[layer], d["null_q05"]), "null_q05": d["null_q05"]})
        layer_rows.append({"seed": seed, "objective": objective, "layer": "all",
                           **distribution(cos.ravel(), d["null_q05"]), "null_q05": d["null_q05"]})
    common.write_rows(out / "layers", layer_rows, 3)

    set_rows, partition_rows, correlation_rows, sets_for_plot = [], [], [], {}
    plot_rm = "mixed" if "mixed" in cfg["objective"] else cfg["objective"][0]
    for seed in cfg["seed"]:
        for method in cfg["method"]:
            sets, why = neuron_sets(cfg, runs, seed, method)
            if sets is None:
                notes.append(f"seed {seed}, {method}: neuron-set tables skipped: {why}")
                continue
            for objective in cfg["objective"]:
                d = data[objective, seed]
                for name in SETS:
                    values = d["cosine"][sets[name]]
                    values = values[~numpy.isnan(values)]
                    low, high = common.bootstrap_mean_ci(values)
                    set_rows.append({"seed": seed, "objective": objective, "method": method, "tau": cfg["tau"],
                                     "set": name, "neurons": int(values.size),
                                     "mean_cosine": float(values.mean()) if values.size else math.nan,
                                     "ci_low": low, "ci_high": high,
                                     "share_negative": float((values < 0).mean()) if values.size else math.nan,
                                     "share_conflicting": float((values < d["null_q05"]).mean()) if values.size
                                     else math.nan})
                    if (objective, seed, method) == (plot_rm, cfg["seed"][0], cfg["method"][0]):
                        sets_for_plot[name] = values
                        sets_for_plot["_rm"], sets_for_plot["_q05"] = objective, d["null_q05"]
            if ("mixed", seed) not in data:
                continue
            deltas = group_deltas(cfg, seed, method)
            if deltas is None:
                note = "no ../shared/partitions.csv: the partition table is skipped (run shared.py)"
                notes += [note] if note not in notes else []
                continue
            means = {}
            for partition in PARTITIONS:
                values = data["mixed", seed]["cosine"][sets[partition]]
                means[partition] = float(numpy.nanmean(values)) if (~numpy.isnan(values)).any() else math.nan
                partition_rows.append({"seed": seed, "method": method, "tau": cfg["tau"], "partition": partition,
                                       "neurons": int(sets[partition].sum()), "mean_cosine": means[partition],
                                       **{f"delta_{g}": deltas.get((partition, g), math.nan) for g in GROUPS}})
            for group in GROUPS:
                correlation_rows.append({"seed": seed, "method": method, "tau": cfg["tau"], "group": group,
                                         "partitions": len(PARTITIONS), "pearson_r": pearson(
                                             [means[p] for p in PARTITIONS],
                                             [deltas.get((p, group), math.nan) for p in PARTITIONS])})
    common.write_rows(out / "sets", set_rows, 3)
    common.write_rows(out / "partitions", partition_rows, 3)
    common.write_rows(out / "partition_correlation", correlation_rows, 3)
    plot_layers(cfg, data, out / "fig_layers.png")
    plot_sets(cfg, data, sets_for_plot, out / "fig_sets.png")
    common.write_text(out / "report_section.md", report_section(cfg, data, layer_rows, set_rows, partition_rows,
                                                                correlation_rows, notes))
    return notes


def plot_layers(cfg, data, path):
    """Per-layer boxplots of the cosines, one panel per RM (first seed), the null's 5th percentile dashed."""
    plt = common.pyplot()
    seed = cfg["seed"][0]
    objectives = [o for o in cfg["objective"] if (o, seed) in data]
    fig, axes = plt.subplots(1, len(objectives), figsize=(4.2 * len(objectives), 3.6), sharey=True, squeeze=False)
    for ax, objective in zip(axes[0], objectives):
        d = data[objective, seed]
        columns = [row[~numpy.isnan(row)] for row in d["cosine"]]
        box = ax.boxplot(columns, positions=range(len(columns)), patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(common.RM_COLORS[objective])
            patch.set_alpha(0.5)
        null = ax.axhline(d["null_q05"], color="black", linestyle="--", linewidth=1)
        ax.axhline(0, color="gray", linewidth=0.5)
        ax.set_xlabel("layer")
        ax.set_title(f"{objective} RM")
        ax.legend([box["boxes"][0], null], [f"{objective} RM neurons", f"null 5th pct. {d['null_q05']:.2f}"],
                  fontsize=7, loc="best")
    axes[0][0].set_ylabel("cos(g_help, g_harm) per neuron")
    fig.suptitle(f"{cfg['model']} seed {seed}: per-neuron gradient conflict by layer")
    common.save_figure(fig, path)


def plot_sets(cfg, data, sets_for_plot, path):
    """Cosine histograms per neuron set (or of all neurons when the sets are missing), the null's q05 marked."""
    plt = common.pyplot()
    if sets_for_plot:
        rm, q05 = sets_for_plot["_rm"], sets_for_plot["_q05"]
        groups = {name: sets_for_plot[name] for name in SETS}
        title = f"top {cfg['tau']:g} % by {cfg['method'][0]}"
    else:
        seed = cfg["seed"][0]
        rm = "mixed" if ("mixed", seed) in data else cfg["objective"][0]
        d = data[rm, seed]
        q05 = d["null_q05"]
        groups = {"all neurons": d["cosine"][~numpy.isnan(d["cosine"])]}
        title = "neuron sets unavailable"
    fig, axes = plt.subplots(1, len(groups), figsize=(3.3 * len(groups), 3.2), sharex=True, squeeze=False)
    bins = numpy.linspace(-1, 1, 41)
    for ax, (name, values) in zip(axes[0], groups.items()):
        ax.hist(values, bins=bins, color=common.RM_COLORS[rm], alpha=0.7, label=f"{name} (n={len(values)})")
        ax.axvline(q05, color="black", linestyle="--", linewidth=1, label=f"null 5th pct. {q05:.2f}")
        ax.set_xlabel("cos(g_help, g_harm)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("neurons")
    fig.suptitle(f"{cfg['model']}, {rm} RM seed {cfg['seed'][0]}: conflict per neuron set ({title})")
    common.save_figure(fig, path)


def report_section(cfg, data, layer_rows, set_rows, partition_rows, correlation_rows, notes):
    pairs = ", ".join(f"{o} seed {s}: {int(d['pairs_helpful'])} helpful + {int(d['pairs_harmless'])} harmless"
                      for (o, s), d in data.items())
    overall = [r for r in layer_rows if r["layer"] == "all"]
    text = [
        "## Gradient conflict between the objectives (ours, SPEC §3)\n",
        "Per neuron, the cosine between the mean gradients of the helpful and of the harmless Bradley–Terry loss "
        "with respect to the neuron's own parameters (input row(s) and bias, output slice of the down projection); "
        f"pairs: {pairs}. Null: the harmless gradient with a seeded random half of its pairs flipped. Clearly "
        f"conflicting: {RULE}. The mixed RM is the measurement; the single-objective RMs are references. Caveat: "
        "the flipped-half null is centred on 0 only where the RM's margins m on the harmless pairs are near 0; a "
        "trained RM weights a flipped pair's gradient by σ(m) and a kept one's by σ(−m), so its null leans towards "
        "the anti-harmless direction and its 5th percentile can lie far below 0 (see `null_q05`).\n",
        "### All neurons, per RM\n",
        common.rows_markdown(overall, 3),
        "Per layer: `conflict/layers.csv`.\n",
        "![cosine per layer](conflict/fig_layers.png)\n",
    ]
    if set_rows:
        text += [f"### By neuron set (top {cfg['tau']:g} % of the helpful (H) and harmless (A) RMs)\n",
                 "shared = H∩A, helpful-only = H\\A, harmless-only = A\\H, rest = neither; "
                 f"mean cosine with its {common.BOOTSTRAP_NOTE.replace('items', 'neurons')}.\n",
                 common.rows_markdown(set_rows, 3), "![cosine per set](conflict/fig_sets.png)\n"]
    if partition_rows:
        text += ["### Conflict vs the partitions' ablation Δ (shared.py, mixed RM)\n", common.rows_markdown(partition_rows, 3),
                 common.rows_markdown(correlation_rows, 3),
                 "With 3 partitions the Pearson r is descriptive only: no test, no interval.\n"]
    if notes:
        text += ["Notes: " + "; ".join(n.replace("\n", " ") for n in notes) + "\n"]
    return "\n".join(text)


if __name__ == "__main__":
    main()
