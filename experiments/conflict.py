"""Per-neuron gradient conflict between the helpful and the harmless objective (SPEC §3, issue #13): in the mixed
RM (and, as references, in the helpful-only and harmless-only RMs), do the two objectives pull each neuron's own
parameters in opposite directions?

    python experiments/conflict.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256
    python experiments/conflict.py --model tiny-gpt2 --objective mixed --data-dir data/demo/hh-rlhf --max-pairs 8 \\
        --batch-size 1 --max-length 48 --tau 20
    python experiments/conflict.py --model smollm2-135m-instruct-q4 --data-dir ../shared/data/hh-rlhf \\
        --train-split test --eval-fraction 0.2 --max-pairs 600

Per RM (--objective, default all three: the mixed RM is the measurement, the single-objective RMs the reference)
and --seed: g_harm = the mean over the harmless training pairs (common.scoring_pairs: the training part of
objective harmless, subsampled to --max-pairs with the run seed, as neurons.py) of the gradient of the
Bradley–Terry loss −log σ(r(chosen) − r(rejected)); g_help the same over the helpful training pairs. Gradients are
summed over batches of --batch-size pairs (one backward of the summed loss per batch) in float64 and divided by the
pair count. They are taken with respect to each neuron's OWN parameters (NEURON_PARAMETERS, beside
common.ARCHITECTURES): its input row(s) / column (GPT-2 c_fc column j and bias j; Llama gate_proj and up_proj
rows j) and its output slice of the down projection (GPT-2 c_proj row j; Llama down_proj column j). Per neuron:
cosine(g_help_j, g_harm_j) over the concatenation of those slices, and both norms.

Test (batch sign-flip randomisation, per neuron): the harmless pass comes first, so during the helpful pass each
helpful batch b = 1..B (B = ⌈helpful pairs / --batch-size⌉) leaves d_bj = ⟨h_bj, g_harm_j / |g_harm_j|⟩, h_bj the
batch's summed helpful-loss gradient on neuron j's parameters. The observed statistic D_j = Σ_b d_bj has the sign of
the cosine; its null is Σ_b s_b d_bj with random signs s_b = ±1, the same sign vector for every neuron of a draw
(all 2^B patterns when B ≤ 12, else --draws seeded draws): symmetric about 0 by construction, whatever the RM's
margins, under the hypothesis that a helpful batch is as likely to pull along the harmless direction as against
it. One-sided p_j = #{patterns with null ≤ D_j} / 2^B (exact) or (1 + #{draws with null ≤ D_j}) / (draws + 1).
No p can fall below 2^−B, so fewer than 5 helpful batches (α = 0.05) are refused before any work. Rule: a neuron
is "clearly conflicting" when p_j < α = 0.05 and its cosine < 0 (α of the neurons by chance); "conflicting after
FDR" when Benjamini–Hochberg at q = 0.05 over all neurons of the RM rejects it and its cosine < 0.

Writes <runs-dir>/<model>/<objective>/seed<k>/neurons/conflict.h5 (reused while the settings it records equal the
request, unless --force) and, under <results-dir>/<model>/conflict/: layers (per RM and layer), sets (shared H∩A,
helpful-only H\\A, harmless-only A\\H and rest; H and A the top-τ % neurons of the helpful and harmless RMs' neuron
files of the same seed, site act, which must have been made in those RMs), partitions and partition_correlation
(each partition's mean conflict beside its ablation Δ, from shared.py's partition file beside the mixed RM, which
must have been made from the same H and A), figures, report_section.md and run.json; then
<results-dir>/<model>/report.md. The data options default to what the RMs' train.json records. Formats:
docs/artifacts.md; definitions (the test, its null, the rules): docs/methods.md.
"""
import json
import math
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy
import torch

import common

SETS = ("shared", "helpful-only", "harmless-only", "rest")
PARTITIONS = common.PARTITIONS
GROUPS = ("harmless", "helpful")
ALPHA = 0.05
FDR_Q = 0.05
# 2^12 = 4096 patterns: enumerating them is exact and cheaper than the default draws
EXACT_MAX_BATCHES = 12
NULL = "batch-sign-flip-v1"  # in the settings: files made with another null are recomputed
NULL_DESCRIPTION = ("per neuron, Σ_b s_b·d_bj: the helpful batches' gradients projected on the neuron's unit harmless "
                    "direction, each times a sign s_b = ±1 that is the same for every neuron of a pattern; all 2^B "
                    f"patterns when B ≤ {EXACT_MAX_BATCHES}, else seeded random draws; one-sided (conflict = negative)")
RULE = f"one-sided sign-flip p < {ALPHA:g} and cosine < 0"
FDR_RULE = f"rejected by Benjamini–Hochberg at q = {FDR_Q:g} over all neurons of the RM, and cosine < 0"


@common.step()
@common.rm_options
@common.reading_options
@common.results_option
@common.hh_data_options
@common.method_option(default=("magnitude",))
@common.tau_option(multiple=False)
@common.compute_options
@common.micro_batch_option
@click.option("--draws", type=click.IntRange(min=100), default=10_000,
              help=f"Random sign patterns of the sign-flip test when there are more than {EXACT_MAX_BATCHES} helpful "
                   "batches (fewer are enumerated exactly). The smallest p is 1/(draws + 1), which bounds what "
                   "Benjamini–Hochberg over all neurons can find.")
@click.option("--force", is_flag=True, help="Recompute conflict.h5 even where an up-to-date one exists.")
def main(**cfg):
    cfg, runs, _, device, dtype = common.start_analysis(cfg)
    pairs = common.training_pairs(cfg, GROUPS)
    for seed in cfg["seed"]:  # the helpful batches are the test's units: too few can never reach α, so say it now
        check_batches(len(common.scoring_pairs(pairs, cfg, "helpful", seed)), cfg["batch_size"])
    out = common.step_dir(cfg["results_dir"], cfg["model"], "conflict")

    computed = list(common.shard_map(lambda key: compute_conflict(cfg, *key, runs[key], pairs, device, dtype), runs,
                                     cfg["shard"]).values())
    if common.shard_done(cfg, "conflict.py"):
        return
    notes = write_results(cfg, runs, out)
    for note in notes:
        common.say(f"note: {note}")
    common.write_json(out / "run.json", {**common.run_record({**cfg, "device": str(device), "dtype": str(dtype)}),
                                         "rms": computed, "notes": notes})
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"gradient conflict of {len(runs)} RM(s) → {out}; report: {report}")


# ---------------------------------------------------------------------------------------------
# Each neuron's own parameters: which slices of which weights are neuron j's (an architecture's row here, beside
# common.ARCHITECTURES): row or column j of each input projection (and element j of its bias), and row or column j
# of the down projection's weight (its bias is shared by all neurons).
# ---------------------------------------------------------------------------------------------
# model_type -> (MLP input projection(s) inside a block, the weight axis indexing neurons there (GPT-2's Conv1D
# [d_model, d_mlp] → 1; nn.Linear [d_mlp, d_model] → 0), the down projection's (Conv1D [d_mlp, d_model] → 0;
# nn.Linear [d_model, d_mlp] → 1))
_GATED_PARAMETERS = (("mlp.gate_proj", "mlp.up_proj"), 0, 1)
NEURON_PARAMETERS = {"gpt2": (("mlp.c_fc",), 1, 0), "llama": _GATED_PARAMETERS, "qwen2": _GATED_PARAMETERS,
                     "mistral": _GATED_PARAMETERS, "gemma2": _GATED_PARAMETERS,
                     "gpt_neox": (("mlp.dense_h_to_4h",), 0, 1)}
NEURON_PARAMETERS["gpt_neox_reward_model"] = NEURON_PARAMETERS["gpt_neox"]  # OpenAssistant's RMs


def neuron_parameters(model) -> list[list[tuple[torch.nn.Parameter, int]]]:
    """Per layer, (parameter, the axis indexing its neurons) for every parameter that holds one slice per MLP neuron:
    the input projections' weights and biases (a bias has one element per neuron) and the down projection's weight.
    Index j along that axis of each is neuron j's own parameters."""
    arch = common.arch_of(model)
    if model.config.model_type not in NEURON_PARAMETERS:
        raise common.RMTError(f"architecture '{model.config.model_type}' has no row in conflict.NEURON_PARAMETERS: "
                              "add its MLP input projection(s) and the axes that index neurons")
    inputs, in_axis, down_axis = NEURON_PARAMETERS[model.config.model_type]
    layers = []
    for layer in common.transformer_layers(model):
        params = []
        for path in inputs:
            module = layer.get_submodule(path)
            params.append((module.weight, in_axis))
            if getattr(module, "bias", None) is not None:
                params.append((module.bias, 0))
        params.append((layer.get_submodule(arch.down).weight, down_axis))
        layers.append(params)
    return layers


# ---------------------------------------------------------------------------------------------
# Gradients with respect to each neuron's own parameters
# ---------------------------------------------------------------------------------------------
def neuron_axes(model) -> list[list[int]]:
    return [[axis for _, axis in layer] for layer in neuron_parameters(model)]


def neuron_dots(a, b, axes) -> torch.Tensor:
    """⟨a_j, b_j⟩ [layers, d_mlp] over the concatenation of each neuron j's slices, a and b per layer and parameter
    as neuron_gradients returns them."""
    def reduce(x, y, axis):
        dims = [d for d in range(x.ndim) if d != axis]
        return (x * y).sum(dim=dims) if dims else x * y  # sum(dim=[]) would sum over everything (a bias)

    home = a[0][0].device  # the layers may sit on several devices (--device-map)
    return torch.stack([sum(reduce(x, y, axis) for x, y, axis in zip(ga, gb, ax)).to(home)
                        for ga, gb, ax in zip(a, b, axes)])


def unit_directions(grads, axes):
    """`grads` with each neuron's concatenated slices scaled to norm 1 (left at 0 where the neuron's norm is 0)."""
    norms = neuron_dots(grads, grads, axes).sqrt()
    scale = torch.where(norms > 0, 1 / norms.clamp_min(1e-300), 0.0)
    return [[x * scale[layer].to(x.device).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
             for x, axis in zip(g, ax)]
            for layer, (g, ax) in enumerate(zip(grads, axes))]


def neuron_gradients(model, batches, device, dtype, direction=None, desc="gradients", total=None,
                     token_budget: int | None = None):
    """Mean over pairs of the Bradley–Terry loss gradient w.r.t. neuron_parameters, as float64 tensors per
    layer in that order, batches as common.pair_batches makes them (each in forwards of at most `token_budget`
    tokens). With `direction` (unit_directions of another objective's gradients), also every batch's SUMMED
    gradient projected on it per neuron, from the same backward: [batches, layers, d_mlp] float64 on the CPU.
    Returns (grads, projections or None, pairs). With several ranks each takes its share of the batches; the sums
    are added and the projections gathered in batch order, so every rank returns what one process would."""
    layout = neuron_parameters(model)
    params = [p for layer in layout for p, _ in layer]
    axes = neuron_axes(model)

    def per_layer(flat):
        flat = iter(flat)
        return [[next(flat) for _ in layer] for layer in layout]

    sums = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in params]
    projections = []
    pairs = 0
    inputs = common.input_device(model)
    model.eval()
    with torch.enable_grad():
        for index, (batch, batch_ids, batch_mask) in common.progress(
                common.my_share(enumerate(batches)), total=common.share_count(total), desc=desc, unit="batch"):
            grads = [torch.zeros_like(s) for s in sums]
            for input_ids, mask, n in common.pair_micro_batches(batch_ids, batch_mask, len(batch), token_budget):
                input_ids, mask = input_ids.to(inputs), mask.to(inputs)
                with common.autocast(device, dtype):
                    reward = common.rewards(model, input_ids, mask)
                loss = common.bradley_terry_loss(reward[:n], reward[n:])
                for total_grad, grad in zip(grads, torch.autograd.grad(loss, params)):
                    total_grad += grad.double()
            for running, grad in zip(sums, grads):
                running += grad
            if direction is not None:
                projections.append((index, neuron_dots(per_layer(grads), direction, axes).cpu()))
            pairs += len(batch)
    counted = torch.tensor([pairs], dtype=torch.float64, device=sums[0].device)
    common.sum_over_ranks(*sums, counted)
    pairs = int(counted.item())
    projections = [p for _, p in sorted((entry for part in common.gather_over_ranks(projections) for entry in part),
                                        key=lambda entry: entry[0])]
    if not pairs:
        raise common.RMTError("no pairs to take gradients on")
    return per_layer(s / pairs for s in sums), torch.stack(projections) if projections else None, pairs


def per_neuron(a, b, axes):
    """(cosine(a_j, b_j), |a_j|, |b_j|) [layers, d_mlp] over the concatenation of neuron j's slices; cosine NaN where
    a norm is 0."""
    dot = neuron_dots(a, b, axes).cpu()
    norm_a, norm_b = (neuron_dots(x, x, axes).sqrt().cpu() for x in (a, b))
    denominator = norm_a * norm_b
    cosine = torch.where(denominator > 0, dot / denominator.clamp_min(1e-300), torch.nan)
    return cosine, norm_a, norm_b


def neuron_vector(grads, axes, layer: int, unit: int) -> torch.Tensor:
    """Neuron `unit`'s concatenated slices of one layer's gradients (for checks and reading)."""
    return torch.cat([g.select(axis, unit).reshape(-1) for g, axis in zip(grads[layer], axes[layer])])


# ---------------------------------------------------------------------------------------------
# The batch sign-flip test
# ---------------------------------------------------------------------------------------------
def min_batches(alpha: float = ALPHA) -> int:
    """The fewest batches B whose 2^B sign patterns let a p-value fall below alpha (2^−B < α)."""
    return math.floor(math.log2(1 / alpha)) + 1


def check_batches(pairs: int, batch_size: int, alpha: float = ALPHA) -> int:
    """The helpful batch count B; an RMTError that says how to get enough batches where no p could fall
    below α."""
    batches = math.ceil(pairs / batch_size)
    need = min_batches(alpha)
    if batches >= need:
        return batches
    fix = (f"--batch-size {(pairs - 1) // (need - 1)} or less" if pairs >= need
           else f"--max-pairs {need} or more (and enough helpful training pairs) at --batch-size 1")
    raise common.RMTError(
        f"the sign-flip test's units are the helpful batches, and {pairs} helpful pairs at --batch-size {batch_size} "
        f"make only {batches}: 2^{batches} = {2 ** batches} sign patterns, so no p-value can fall below "
        f"{2.0 ** -batches:.3g} (≥ α = {alpha:g}) and no neuron could ever count as clearly conflicting. "
        f"It needs {need} batches or more: use {fix}.")


def sign_patterns(batches: int, draws: int, generator: torch.Generator) -> tuple[numpy.ndarray, bool]:
    """([patterns, batches] float64 ±1 sign vectors, exact): all 2^B patterns when B ≤ EXACT_MAX_BATCHES (exact),
    else `draws` independent uniform ones from `generator`."""
    if batches <= EXACT_MAX_BATCHES:
        bits = (numpy.arange(2 ** batches)[:, None] >> numpy.arange(batches)) & 1
        return 2.0 * bits - 1, True
    bits = torch.randint(0, 2, (draws, batches), generator=generator).numpy()
    return 2.0 * bits - 1, False


def null_sums(projections: numpy.ndarray, signs: numpy.ndarray) -> numpy.ndarray:
    """Σ_b s_b d_b [patterns, ...] of projections [batches, ...]: the null statistic of every neuron under every
    pattern (the same pattern for all neurons, so their null values stay comparable)."""
    d = numpy.asarray(projections, dtype=numpy.float64)
    return (signs @ d.reshape(len(d), -1)).reshape(len(signs), *d.shape[1:])


def sign_flip_p_values(projections: numpy.ndarray, signs: numpy.ndarray, exact: bool,
                       chunk_bytes: int = 2 ** 26) -> numpy.ndarray:
    """One-sided p of D = Σ_b d_b against the null sums: #{patterns ≤ D} / 2^B when `signs` are all patterns (the
    identity is one of them), else (1 + #{draws ≤ D}) / (draws + 1). A null sum within 1e-9 · Σ_b |d_b| of D counts
    as ≤ D: the identity pattern's sum is D only up to rounding. The null sums are made `chunk_bytes` at a time
    (10,000 patterns × 46k neurons would be 3.7 GB)."""
    d = numpy.asarray(projections, dtype=numpy.float64)
    flat = d.reshape(len(d), -1)
    limit = flat.sum(0) + 1e-9 * numpy.abs(flat).sum(0)
    count = numpy.zeros(flat.shape[1], dtype=numpy.int64)
    rows = max(1, chunk_bytes // (8 * max(1, flat.shape[1])))
    for start in range(0, len(signs), rows):
        count += (null_sums(flat, signs[start:start + rows]) <= limit).sum(0)
    p = count / len(signs) if exact else (count + 1) / (len(signs) + 1)
    return p.reshape(d.shape[1:])


def sign_flip_test(projections: numpy.ndarray, draws: int,
                   generator: torch.Generator) -> tuple[numpy.ndarray, bool, int]:
    """(p-values [...] of projections [batches, ...], exact, patterns used): the whole test, as compute_conflict
    runs it."""
    signs, exact = sign_patterns(len(projections), draws, generator)
    return sign_flip_p_values(projections, signs, exact), exact, len(signs)


def smallest_p(patterns: int, exact: bool) -> float:
    return 1 / patterns if exact else 1 / (patterns + 1)


def benjamini_hochberg(p: numpy.ndarray, q: float = FDR_Q) -> numpy.ndarray:
    """Bool mask (p's shape) of the p-values Benjamini–Hochberg rejects at false discovery rate q: the k smallest,
    k the largest rank with p_(k) ≤ k q / m. NaN (no test) is neither rejected nor counted in m."""
    flat = numpy.asarray(p, dtype=numpy.float64).ravel()
    tested = numpy.flatnonzero(~numpy.isnan(flat))
    rejected = numpy.zeros(flat.shape, dtype=bool)
    order = tested[numpy.argsort(flat[tested], kind="stable")]
    below = numpy.flatnonzero(flat[order] <= q * numpy.arange(1, len(order) + 1) / max(1, len(order)))
    if below.size:
        rejected[order[:below[-1] + 1]] = True  # ties at p_(k) all pass too: the threshold only grows with the rank
    return rejected.reshape(numpy.shape(p))


# ---------------------------------------------------------------------------------------------
# One RM's conflict.h5
# ---------------------------------------------------------------------------------------------
def conflict_settings(cfg, run: Path, pairs: dict, max_length: int, dtype, batches: int) -> dict:
    return {"model": cfg["model"], "rm_weights": common.rm_fingerprint(run / "rm"),
            "reading": common.rm_reading(cfg, run / "rm"), **common.pair_settings(cfg, *pairs.values()),
            "max_length": max_length, "dtype": str(dtype),
            # the batches are the test's units, so the batch size shapes the p-values; the draws only matter
            # where the patterns are sampled
            "batch_size": cfg["batch_size"], "draws": "exact" if batches <= EXACT_MAX_BATCHES else cfg["draws"],
            "null": NULL}


def conflict_path(run: Path) -> Path:
    return common.neuron_dir(run, "act") / "conflict.h5"


def compute_conflict(cfg, objective: str, seed: int, run: Path, training: dict, device, dtype) -> dict:
    """Write (or reuse) one RM's conflict.h5, on the helpful and harmless pairs of `training` (as
    common.training_pairs gives them); returns a line for run.json (with "left" where --shard left it to another
    job)."""
    tag = f"[{objective} seed {seed}]"
    max_length = min(cfg["max_length"], common.saved_context_length(run / "rm", cfg["trust_remote_code"]))
    pairs = {name: common.scoring_pairs(training, cfg, name, seed) for name in GROUPS}
    helpful_batches = math.ceil(len(pairs["helpful"]) / cfg["batch_size"])
    settings = conflict_settings(cfg, run, pairs, max_length, dtype, helpful_batches)
    path = conflict_path(run)
    with common.unit_lock(path, cfg["shard"], f"{objective} seed {seed} conflict") as mine:
        if not mine:
            return {"objective": objective, "seed": seed, "left": "to another job (--shard)"}
        if common.reuse(path, common.h5_settings, settings, force=cfg["force"], tag=f"{tag} "):
            common.say(f"{tag} {path} up to date")
            return {"objective": objective, "seed": seed, "reused": True}
        model, tokenizer = common.load_reward_model(run / "rm", device, common.reading_of(cfg))
        if any(p.device.type == "meta" for p in model.parameters()):
            raise common.RMTError(f"{tag} the gradient conflict differentiates the RM's weights, which accelerate "
                                  "keeps off the model between forwards where it offloads them (to the CPU or the "
                                  "disk): give the GPUs room for the whole RM (--max-memory), or drop --device-map",
                                  usage=True)

        def gradients(name, direction=None):
            if not pairs[name]:
                raise common.RMTError(f"{tag} no {name} training pairs")
            batches = common.pair_batches(*common.encode_pairs(tokenizer, pairs[name], max_length), cfg["batch_size"],
                                          tokenizer.pad_token_id)
            return neuron_gradients(model, batches, device, dtype, direction, desc=f"{name} gradients in {objective}",
                                    total=math.ceil(len(pairs[name]) / cfg["batch_size"]),
                                    token_budget=common.token_budget(cfg["micro_batch_tokens"], device))

        started = time.perf_counter()
        axes = neuron_axes(model)
        # harmless first: the helpful pass projects each batch on its direction, so no pass is needed twice
        harmless, _, pairs_harmless = gradients("harmless")
        helpful, projections, pairs_helpful = gradients("helpful", unit_directions(harmless, axes))
        cosine, help_norm, harm_norm = per_neuron(helpful, harmless, axes)
        del helpful, harmless
        p_value, exact, patterns = sign_flip_test(projections.numpy(), cfg["draws"],
                                                  common.random_generator(objective, seed, "conflict-sign-flip"))
        p_value[numpy.isnan(cosine.numpy())] = math.nan  # a zero gradient is no test (its p would read 1)
        seconds = time.perf_counter() - started

        write_conflict(path, cfg, objective, seed, settings, cosine, help_norm, harm_norm, p_value, projections,
                       exact, patterns, pairs_helpful, pairs_harmless)
        common.say(f"{tag} conflict from {pairs_helpful} helpful ({len(projections)} batches) + {pairs_harmless} "
                   f"harmless pairs in {seconds:.1f} s → {path}")
        return {"objective": objective, "seed": seed, "pairs_helpful": pairs_helpful, "pairs_harmless": pairs_harmless,
                "batches": len(projections), "exact": exact, "seconds": round(seconds, 2)}


def write_conflict(path, cfg, objective, seed, settings, cosine, help_norm, harm_norm, p_value, projections, exact,
                   patterns, pairs_helpful, pairs_harmless):
    """conflict.h5 (docs/artifacts.md): the per-neuron arrays, the batch projections, the test and its settings."""
    def fill(f):
        for name, value in (("cosine", cosine.numpy()), ("help_norm", help_norm.numpy()),
                            ("harm_norm", harm_norm.numpy()), ("p_value", p_value),
                            ("batch_projection", projections.numpy())):
            f.create_dataset(name, data=value)
        f.attrs.update({"model": cfg["model"], "objective": objective, "seed": seed, "null": NULL,
                        "null_description": NULL_DESCRIPTION, "rule": RULE, "fdr_rule": FDR_RULE, "alpha": ALPHA,
                        "fdr_q": FDR_Q, "batches": len(projections), "exact": exact, "draws": patterns,
                        "p_min": smallest_p(patterns, exact), "pairs_helpful": pairs_helpful,
                        "pairs_harmless": pairs_harmless, "layers": cosine.shape[0], "d_mlp": cosine.shape[1],
                        "settings": json.dumps(settings),
                        "config": json.dumps({**cfg, "objective": objective, "seed": seed}, default=str)})

    common.write_h5(path, fill)


# ---------------------------------------------------------------------------------------------
# Tables, figures and the report section, from the conflict.h5 files
# ---------------------------------------------------------------------------------------------
def read_conflict(run: Path) -> dict:
    """The file's per-neuron arrays and test attributes, with the masks `conflicting` (RULE) and `fdr` (FDR_RULE)."""
    def read(f):
        data = {name: f[name][()] for name in ("cosine", "help_norm", "harm_norm", "p_value")}
        return data | {k: f.attrs[k] for k in ("pairs_helpful", "pairs_harmless", "batches", "exact", "draws", "p_min")}

    data = common.read_h5(conflict_path(run), read)
    negative = data["cosine"] < 0  # p < α already implies D < 0, which has the cosine's sign: this guards rounding
    data["conflicting"] = (data["p_value"] < ALPHA) & negative
    data["fdr"] = benjamini_hochberg(data["p_value"], FDR_Q) & negative
    return data


def distribution(cosine: numpy.ndarray, conflicting: numpy.ndarray, fdr: numpy.ndarray) -> dict:
    """Summary of the cosines of some neurons (those with one) and the shares of them the two rules flag."""
    tested = ~numpy.isnan(cosine)
    v = cosine[tested]
    if not v.size:
        return {"neurons": 0, "mean": math.nan, "q25": math.nan, "median": math.nan, "q75": math.nan,
                "share_negative": math.nan, "share_conflicting": math.nan, "share_fdr": math.nan, "chance": ALPHA}
    q25, median, q75 = numpy.percentile(v, [25, 50, 75])
    return {"neurons": int(v.size), "mean": float(v.mean()), "q25": float(q25), "median": float(median),
            "q75": float(q75), "share_negative": float((v < 0).mean()),
            "share_conflicting": float(conflicting[tested].mean()), "share_fdr": float(fdr[tested].mean()),
            "chance": ALPHA}


def neuron_sets(cfg, seed, method) -> tuple[dict[str, numpy.ndarray] | None, dict, str]:
    """({set: bool mask}, the content hashes of H and A, "") from the helpful and harmless RMs' neuron files of this
    seed (site act), or (None, {}, why not, with the command that makes what is missing or stale)."""
    masks, problems = {}, []
    for objective in ("helpful", "harmless"):
        remake = common.neurons_command({**cfg, "site": "act"}, objective, seed, [method])
        try:
            run = common.run_of(cfg, objective, seed)
            path = common.neuron_dir(run, "act") / f"{method}.h5"
            problem = common.rm_problem(run)
            if problem:
                raise common.RMTError(problem)
            identity = common.neuron_identity({**cfg, "site": "act"}, run / "rm")
            common.reuse(path, common.h5_settings, identity, keys=common.NEURON_IDENTITY, remake=remake)
            masks[objective] = common.select_top(common.read_neurons(path, remake).score, cfg["tau"]).numpy()
        except common.RMTError as err:
            problems.append(str(err))
    if problems:
        return None, {}, "\n".join(problems)
    H, A = masks["helpful"], masks["harmless"]
    hashes = {"helpful_set": common.mask_fingerprint(H), "harmless_set": common.mask_fingerprint(A)}
    return {**common.partitions(H, A), "rest": ~(H | A)}, hashes, ""


def group_deltas(cfg, run: Path, seed: int, method: str, hashes: dict) -> tuple[dict | None, str]:
    """({(partition, group): Δ}, "") from shared.py's partition file beside the mixed RM `run` (zero-ablation, site
    act) for this method and τ — per group the mean over its benchmark tasks (held-out HH-RLHF pairs excluded, as
    shared.py's Table 4) — when it was made in this RM from the same H and A; else (None, why, with the shared.py
    command that remakes it)."""
    path = common.partitions_path(run, "act", "zero")
    configuration = f"{method}-tau{cfg['tau']:g}"
    remake = shlex.join(["python", "experiments/shared.py", "--model", cfg["model"],
                         *common.rm_words(cfg, None, seed),
                         "--runs-dir", str(cfg["runs_dir"]), "--results-dir", str(cfg["results_dir"]),
                         "--method", method, "--tau", f"{cfg['tau']:g}"])

    stored = {}

    def recorded(path):
        stored.update(common.read_json(path))  # read once: the rows come from the same read
        return {**stored["settings"], **{k: v for k, v in stored["configurations"].get(configuration, {}).items()
                                         if k != "rows"}}

    wanted = {"rm_weights": common.rm_fingerprint(run / "rm"), "reading": common.rm_reading(cfg, run / "rm"),
              "site": "act", **hashes}
    try:
        common.reuse(path, recorded, wanted, keys=wanted, remake=remake)
        rows = stored["configurations"][configuration]["rows"]
    except (common.RMTError, KeyError, TypeError, AttributeError) as err:
        return None, str(err) if isinstance(err, common.RMTError) else f"{path} is damaged; remake it with:\n  {remake}"
    tasks = common.load_tasks()
    rows = [{**r, "seed": seed} for r in rows if not common.task_for(r["task"], tasks).held_out]
    return {(p, g): common.summarise([r for r in rows if (r["partition"], r["group"]) == (p, g)], "delta").mean
            for p in PARTITIONS for g in GROUPS if any((r["partition"], r["group"]) == (p, g) for r in rows)}, ""


def pearson(x, y) -> float:
    x, y = numpy.asarray(x, dtype=float), numpy.asarray(y, dtype=float)
    ok = ~(numpy.isnan(x) | numpy.isnan(y))
    if ok.sum() < 3 or x[ok].std() == 0 or y[ok].std() == 0:
        return math.nan
    return float(numpy.corrcoef(x[ok], y[ok])[0, 1])


def write_results(cfg, runs, out: Path) -> list[str]:
    """Every table, figure and the report section from the conflict.h5 files of `runs`; returns the notes (tables
    skipped, and why)."""
    data = {key: read_conflict(run) for key, run in runs.items()}
    layer_rows = []
    for (objective, seed), d in data.items():
        for layer in range(d["cosine"].shape[0]):
            layer_rows.append({"seed": seed, "objective": objective, "layer": layer,
                               **distribution(*(d[k][layer] for k in ("cosine", "conflicting", "fdr")))})
        layer_rows.append({"seed": seed, "objective": objective, "layer": "all",
                           **distribution(*(d[k].ravel() for k in ("cosine", "conflicting", "fdr")))})
    common.write_rows(out / "layers", layer_rows, 3)

    notes, set_rows, partition_rows, correlation_rows, sets_for_plot = [], [], [], [], {}
    for seed in cfg["seed"]:
        for method in cfg["method"]:
            sets, hashes, why = neuron_sets(cfg, seed, method)
            if sets is None:
                notes.append(f"seed {seed}, {method}: neuron-set tables skipped: {why}")
                continue
            set_rows += set_table(cfg, data, seed, method, sets, sets_for_plot)
            if ("mixed", seed) not in data:
                continue
            deltas, why = group_deltas(cfg, runs["mixed", seed], seed, method, hashes)
            if deltas is None:
                notes.append(f"seed {seed}, {method}: the partition table is skipped: {why}")
                continue
            rows, correlations = partition_table(cfg, data["mixed", seed]["cosine"], seed, method, sets, deltas)
            partition_rows += rows
            correlation_rows += correlations
    common.write_rows(out / "sets", set_rows, 3)
    common.write_rows(out / "partitions", partition_rows, 3)
    common.write_rows(out / "partition_correlation", correlation_rows, 3)
    plot_layers(cfg, data, layer_rows, out / "fig_layers.png")
    plot_sets(cfg, data, sets_for_plot, out / "fig_sets.png")
    common.write_text(out / "report_section.md", report_section(cfg, data, layer_rows, set_rows, partition_rows,
                                                                correlation_rows, notes))
    return notes


def set_table(cfg, data, seed, method, sets, sets_for_plot) -> list[dict]:
    """Per RM of this seed and per neuron set: mean cosine with a bootstrap interval over neurons and the shares
    the rules flag. Fills `sets_for_plot` for the RM fig_sets.png shows (the mixed one, first seed and method)."""
    plot_rm = "mixed" if "mixed" in cfg["objective"] else cfg["objective"][0]
    rows = []
    for objective in cfg["objective"]:
        d = data[objective, seed]
        for name in SETS:
            tested = sets[name] & ~numpy.isnan(d["cosine"])
            values = d["cosine"][tested]
            low, high = common.bootstrap_mean_ci(values)
            share = {k: float(d[k][tested].mean()) if values.size else math.nan for k in ("conflicting", "fdr")}
            rows.append({"seed": seed, "objective": objective, "method": method, "tau": cfg["tau"], "set": name,
                         "neurons": int(values.size), "mean_cosine": float(values.mean()) if values.size else math.nan,
                         "ci_low": low, "ci_high": high,
                         "share_negative": float((values < 0).mean()) if values.size else math.nan,
                         "share_conflicting": share["conflicting"], "share_fdr": share["fdr"]})
            if (objective, seed, method) == (plot_rm, cfg["seed"][0], cfg["method"][0]):
                sets_for_plot[name] = (values, d["p_value"][tested])
                sets_for_plot["_rm"] = objective
    return rows


def partition_table(cfg, cosine, seed, method, sets, deltas) -> tuple[list[dict], list[dict]]:
    """Each partition's mean conflict in the mixed RM (`cosine`) beside its ablation Δ per group, and their Pearson r
    over the partitions per group."""
    rows, means = [], {}
    for partition in PARTITIONS:
        values = cosine[sets[partition]]
        means[partition] = float(numpy.nanmean(values)) if (~numpy.isnan(values)).any() else math.nan
        rows.append({"seed": seed, "method": method, "tau": cfg["tau"], "partition": partition,
                     "neurons": int(sets[partition].sum()), "mean_cosine": means[partition],
                     **{f"delta_{g}": deltas.get((partition, g), math.nan) for g in GROUPS}})
    correlations = [{"seed": seed, "method": method, "tau": cfg["tau"], "group": group, "partitions": len(PARTITIONS),
                     "pearson_r": pearson([means[p] for p in PARTITIONS],
                                          [deltas.get((p, group), math.nan) for p in PARTITIONS])}
                    for group in GROUPS]
    return rows, correlations


def plot_layers(cfg, data, layer_rows, path):
    """A column per RM (first seed): the cosines per layer as boxplots above, and below the share of each layer's
    neurons that is clearly conflicting (bars) and conflicting after FDR (dots), against α, the share expected by
    chance."""
    plt = common.pyplot()
    seed = cfg["seed"][0]
    objectives = [o for o in cfg["objective"] if (o, seed) in data]
    fig, axes = plt.subplots(2, len(objectives), figsize=(4.2 * len(objectives), 6.4), sharex="col", sharey="row",
                             squeeze=False)
    for column, objective in enumerate(objectives):
        top, bottom = axes[0][column], axes[1][column]
        columns = [row[~numpy.isnan(row)] for row in data[objective, seed]["cosine"]]
        box = top.boxplot(columns, positions=range(len(columns)), patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(common.RM_COLORS[objective])
            patch.set_alpha(0.5)
        top.axhline(0, color="gray", linewidth=0.5)
        top.set_title(f"{objective} RM")
        rows = [r for r in layer_rows if (r["seed"], r["objective"]) == (seed, objective) and r["layer"] != "all"]
        layers = [r["layer"] for r in rows]
        bottom.bar(layers, [r["share_conflicting"] for r in rows], color=common.RM_COLORS[objective], alpha=0.7,
                   label=f"p < {ALPHA:g}, cos < 0")
        bottom.plot(layers, [r["share_fdr"] for r in rows], "k.", label=f"after BH, q = {FDR_Q:g}")
        bottom.axhline(ALPHA, color="black", linestyle="--", linewidth=1, label=f"chance (α = {ALPHA:g})")
        ticks = layers[::math.ceil(len(layers) / 12)]  # a label per layer runs together past a dozen layers
        bottom.set_xticks(ticks, [str(layer) for layer in ticks])
        bottom.set_xlabel("layer")
        bottom.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("cos(g_help, g_harm) per neuron")
    axes[1][0].set_ylabel("share of the layer's neurons")
    fig.suptitle(f"{cfg['model']} seed {seed}: per-neuron gradient conflict by layer")
    common.save_figure(fig, path)


def plot_sets(cfg, data, sets_for_plot, path):
    """A column per neuron set (or all neurons when the sets are missing): the cosine histogram with its clearly
    conflicting neurons dark, and the p-value histogram beside the flat level of a set without consistent conflict
    (exact p-values lie on a grid of 1/2^B, so the bars are lumpy for few batches)."""
    plt = common.pyplot()
    if sets_for_plot:
        rm = sets_for_plot["_rm"]
        groups = {name: sets_for_plot[name] for name in SETS}
        title = f"top {cfg['tau']:g} % by {cfg['method'][0]}"
    else:
        seed = cfg["seed"][0]
        rm = "mixed" if ("mixed", seed) in data else cfg["objective"][0]
        d = data[rm, seed]
        tested = ~numpy.isnan(d["cosine"])
        groups = {"all neurons": (d["cosine"][tested], d["p_value"][tested])}
        title = "neuron sets unavailable"
    fig, axes = plt.subplots(2, len(groups), figsize=(3.3 * len(groups), 6.0), sharex="row", squeeze=False)
    cosine_bins, p_bins = numpy.linspace(-1, 1, 41), numpy.linspace(0, 1, 21)
    for column, (name, (cosine, p)) in enumerate(groups.items()):
        top, bottom = axes[0][column], axes[1][column]
        conflicting = (p < ALPHA) & (cosine < 0)
        share = f"{conflicting.mean():.1%}" if cosine.size else "–"
        top.hist(cosine, bins=cosine_bins, color=common.RM_COLORS[rm], alpha=0.4, label=f"{name} (n={cosine.size})")
        top.hist(cosine[conflicting], bins=cosine_bins, color=common.RM_COLORS[rm],
                 label=f"p < {ALPHA:g}, cos < 0: {share} (chance {ALPHA:.0%})")
        top.set_xlabel("cos(g_help, g_harm)")
        top.set_title(name)
        top.legend(fontsize=7)
        bottom.hist(p, bins=p_bins, color=common.RM_COLORS[rm], alpha=0.7)
        bottom.axhline(p.size / (len(p_bins) - 1), color="black", linestyle="--", linewidth=1,
                       label="no consistent conflict (uniform)")
        bottom.axvline(ALPHA, color="gray", linewidth=0.8, label=f"α = {ALPHA:g}")
        bottom.set_xlabel("one-sided sign-flip p")
        bottom.legend(fontsize=7)
    axes[0][0].set_ylabel("neurons")
    axes[1][0].set_ylabel("neurons")
    fig.suptitle(f"{cfg['model']}, {rm} RM seed {cfg['seed'][0]}: conflict per neuron set ({title})")
    common.save_figure(fig, path)


def report_section(cfg, data, layer_rows, set_rows, partition_rows, correlation_rows, notes):
    pairs = ", ".join(f"{o} seed {s}: {int(d['pairs_helpful'])} helpful in {int(d['batches'])} batches + "
                      f"{int(d['pairs_harmless'])} harmless" for (o, s), d in data.items())
    resolutions = {}  # the same for every RM of a run, as a rule: said once
    for (objective, seed), d in data.items():
        tested = int((~numpy.isnan(d["p_value"])).sum())
        how = f"all {int(d['draws'])} patterns" if d["exact"] else f"{int(d['draws'])} random patterns"
        # BH's k-th threshold is k q / m and no p is below p_min: it flags nothing unless m p_min / q neurons reach it
        resolutions.setdefault(f"{how}, smallest p {float(d['p_min']):.2g}, so BH can flag neurons only when at "
                               f"least {math.ceil(tested * float(d['p_min']) / FDR_Q)} of the {tested} reach it",
                               []).append(f"{objective} seed {seed}")
    overall = [r for r in layer_rows if r["layer"] == "all"]
    text = [
        "## Gradient conflict between the objectives (ours, SPEC §3)\n",
        "Per neuron, the cosine between the mean gradients of the helpful and of the harmless Bradley–Terry loss "
        "with respect to the neuron's own parameters (input row(s) and bias, output slice of the down projection); "
        f"pairs: {pairs}. Test: each helpful batch's gradient is projected on the neuron's unit harmless direction, "
        "and the sum of those projections (the sign of the cosine) is compared with its sign-flip randomisation "
        "distribution (every batch's projection times a random ±1, the same signs for all neurons), which is "
        f"centred on 0 whatever the RM; one-sided p. Clearly conflicting (`share_conflicting`): {RULE}; by chance "
        f"a share α = {ALPHA:g} (`chance`). `share_fdr`: {FDR_RULE}. "
        + "; ".join(f"{', '.join(rms)}: {line}" for line, rms in resolutions.items())
        + ". The mixed RM is the measurement; the single-objective RMs are references.\n",
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
