"""experiments/conflict.py: the per-neuron cosine of a loss with itself (1) and with its negation (−1), the slices
being exactly each neuron's own parameters (against autograd on the full weights, GPT-2 and Llama), batch
accumulation equal to one big batch (gradients and the batches' projections), the batch sign-flip test (exact =
sampled, centred whatever the margins, uniform p without a consistent conflict, every neuron under a negated
objective, too few batches refused), Benjamini–Hochberg, and the whole step on three tiny RMs."""
import csv
import json
import sys
from pathlib import Path

import h5py
import numpy
import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import common  # noqa: E402
import conflict  # noqa: E402
from conftest import save_tiny_rm  # noqa: E402

CPU = torch.device("cpu")
DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")


def demo_pairs(objective="harmless", n=4):
    train, _ = common.load_hh(objective, DEMO, "train", "test", 0.2, common.BadRows())
    return common.subsample(train, n, 0)


def batches(tokenizer, pairs, batch_size=2, swap=False):
    chosen, rejected = common.encode_pairs(tokenizer, pairs, 48)
    if swap:
        chosen, rejected = rejected, chosen
    return list(common.pair_batches(chosen, rejected, batch_size, tokenizer.pad_token_id))


def tiny(name):
    model, tokenizer = common.new_reward_model(name, 0)
    return model.double().eval(), tokenizer


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_cosine_with_itself_is_one_and_with_the_swapped_loss_minus_one(name):
    model, tokenizer = tiny(name)
    pairs = demo_pairs()
    axes = conflict.neuron_axes(model)
    grads, _, _ = conflict.neuron_gradients(model, batches(tokenizer, pairs), CPU, torch.float32)
    cosine, norm_a, norm_b = conflict.per_neuron(grads, grads, axes)
    assert torch.allclose(cosine, torch.ones_like(cosine), atol=1e-9)
    assert torch.equal(norm_a, norm_b) and (norm_a > 0).all()
    # swapping chosen and rejected turns −log σ(m) into −log σ(−m), whose gradient is −σ(m) m' instead of −σ(−m) m':
    # at the untrained RM's margins (≈ 0) that is the negated gradient only up to σ(m)/σ(−m) per pair, so compare
    # with a one-pair batch, where the factor is a positive scalar and the cosine exactly −1.
    one = batches(tokenizer, pairs[:1], batch_size=1)
    swapped = batches(tokenizer, pairs[:1], batch_size=1, swap=True)
    g1, _, _ = conflict.neuron_gradients(model, one, CPU, torch.float32)
    g2, _, _ = conflict.neuron_gradients(model, swapped, CPU, torch.float32)
    cosine = conflict.per_neuron(g1, g2, axes)[0]
    assert torch.allclose(cosine, -torch.ones_like(cosine), atol=1e-9)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_slices_are_the_neurons_own_parameters(name):
    """Against autograd on the full weights, sliced by hand (not through the registry)."""
    model, tokenizer = tiny(name)
    pairs = demo_pairs(n=3)
    data = batches(tokenizer, pairs, batch_size=3)
    grads, _, n = conflict.neuron_gradients(model, data, CPU, torch.float32)
    model.zero_grad()
    for batch, input_ids, mask in data:
        common.bradley_terry_loss(*common.rewards(model, input_ids, mask).split(len(batch))).backward()
    axes = conflict.neuron_axes(model)
    for index, layer in enumerate(common.transformer_layers(model)):
        mlp = layer.mlp
        for unit in (0, 7, common.mlp_shape(model)[1] - 1):
            if name == "tiny-gpt2":  # Conv1D: c_fc [d_model, d_mlp], c_proj [d_mlp, d_model]
                parts = [mlp.c_fc.weight.grad[:, unit], mlp.c_fc.bias.grad[unit:unit + 1], mlp.c_proj.weight.grad[unit]]
            else:  # Linear: gate/up [d_mlp, d_model], down [d_model, d_mlp]; no biases
                assert mlp.gate_proj.bias is None
                parts = [mlp.gate_proj.weight.grad[unit], mlp.up_proj.weight.grad[unit],
                         mlp.down_proj.weight.grad[:, unit]]
            expected = torch.cat([p.reshape(-1) for p in parts]) / n
            assert torch.allclose(conflict.neuron_vector(grads, axes, index, unit), expected, rtol=1e-9, atol=1e-15)
    # the per-neuron cosine is the cosine of those vectors
    other, _, _ = conflict.neuron_gradients(model, batches(tokenizer, demo_pairs("helpful", 3)), CPU, torch.float32)
    cosine = conflict.per_neuron(grads, other, axes)[0]
    a, b = conflict.neuron_vector(grads, axes, 1, 5), conflict.neuron_vector(other, axes, 1, 5)
    assert float(cosine[1, 5]) == pytest.approx(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), abs=1e-12)


def test_accumulation_over_batches_equals_one_batch():
    model, tokenizer = tiny("tiny-gpt2")
    axes = conflict.neuron_axes(model)
    pairs = demo_pairs(n=5)
    unit = conflict.unit_directions(conflict.neuron_gradients(model, batches(tokenizer, demo_pairs("helpful", 4)),
                                                              CPU, torch.float32)[0], axes)
    small, parts, n_small = conflict.neuron_gradients(model, batches(tokenizer, pairs, batch_size=2), CPU,
                                                      torch.float32, unit)
    big, whole, n_big = conflict.neuron_gradients(model, batches(tokenizer, pairs, batch_size=5), CPU, torch.float32,
                                                  unit)
    assert n_small == n_big == 5
    for a, b in zip(small, big):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=1e-8, atol=1e-14)
    # the batches' projections add up to the big batch's, which is n⟨g_j, ĝ_j⟩ = n |g_j| cos_j: D has the cosine's sign
    assert parts.shape == (3, 3, 192) and whole.shape == (1, 3, 192)
    assert torch.allclose(parts.sum(0), whole[0], rtol=1e-8, atol=1e-14)
    cosine, norm, _ = conflict.per_neuron(small, unit, axes)
    assert torch.allclose(whole[0], 5 * norm * cosine, rtol=1e-8, atol=1e-14)
    # and each is that batch's summed gradient on the unit direction, per neuron
    for index, one in enumerate(batches(tokenizer, pairs, batch_size=2)):
        grads, _, n = conflict.neuron_gradients(model, [one], CPU, torch.float32)
        for layer, unit_index in ((0, 3), (2, 191)):
            expected = n * conflict.neuron_vector(grads, axes, layer, unit_index) @ \
                conflict.neuron_vector(unit, axes, layer, unit_index)
            assert float(parts[index, layer, unit_index]) == pytest.approx(float(expected), rel=1e-9, abs=1e-15)


def test_cutting_batches_into_micro_batches_changes_no_number():
    """--micro-batch-tokens bounds a backward's memory (a 16-pair batch of SmolLM2 at 512 tokens needs > 20 GB
    whole); the gradients and every batch's projection are sums over pairs, so they are the same cut."""
    model, tokenizer = tiny("tiny-gpt2")
    axes = conflict.neuron_axes(model)
    unit = conflict.unit_directions(conflict.neuron_gradients(model, batches(tokenizer, demo_pairs("helpful", 4)),
                                                              CPU, torch.float32)[0], axes)
    pairs = demo_pairs(n=5)
    whole = conflict.neuron_gradients(model, batches(tokenizer, pairs, batch_size=5), CPU, torch.float32, unit)
    cut = conflict.neuron_gradients(model, batches(tokenizer, pairs, batch_size=5), CPU, torch.float32, unit,
                                    token_budget=1)  # one pair per forward
    assert whole[2] == cut[2] == 5
    for a, b in zip(whole[0], cut[0]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(whole[1], cut[1], rtol=1e-5, atol=1e-9)


def test_benjamini_hochberg_steps_up_and_skips_nan():
    p = numpy.array([0.001, 0.03, 0.031, 0.2])  # thresholds 0.0125, 0.025, 0.0375, 0.05: p(2) fails, p(3) passes
    assert conflict.benjamini_hochberg(p, 0.05).tolist() == [True, True, True, False]
    grid = numpy.array([[0.04, numpy.nan], [0.5, 0.01]])  # NaN is no test: m = 3
    assert conflict.benjamini_hochberg(grid, 0.05).tolist() == [[False, False], [False, True]]
    assert not conflict.benjamini_hochberg(numpy.full(100, 0.01), 0.005).any()
    assert conflict.benjamini_hochberg(numpy.full(100, 0.01), 0.05).all()  # ties at p(k) pass together


def test_too_few_batches_are_refused_with_the_fix():
    assert conflict.min_batches(0.05) == 5 and conflict.min_batches(1 / 32) == 6 and conflict.min_batches(0.01) == 7
    assert conflict.check_batches(5, 1) == 5 and conflict.check_batches(480, 16) == 30
    with pytest.raises(common.RMTError, match=r"2\^2 = 4 sign patterns.*--batch-size 1 or less"):
        conflict.check_batches(6, 4)
    with pytest.raises(common.RMTError, match=r"--batch-size 119 or less"):
        conflict.check_batches(480, 120)
    assert conflict.check_batches(480, 119) == 5
    with pytest.raises(common.RMTError, match="--max-pairs 5 or more"):
        conflict.check_batches(3, 1)


def test_sign_patterns_exact_and_sampled_agree(monkeypatch):
    signs, exact = conflict.sign_patterns(5, 100, torch.Generator().manual_seed(0))
    assert exact and signs.shape == (32, 5) and len({tuple(r) for r in signs}) == 32 and set(signs.ravel()) == {-1, 1}
    d = numpy.random.default_rng(0).normal(0.3, 1, size=(5, 2, 100))  # [batches, layers, d_mlp]
    p_exact = conflict.sign_flip_p_values(d, signs, exact)
    # p is the rank of D among the 32 pattern sums (the identity counts): by hand for one neuron
    sums = sorted(float(s @ d[:, 1, 7]) for s in signs)
    assert p_exact[1, 7] == pytest.approx(sum(v <= d[:, 1, 7].sum() + 1e-12 for v in sums) / 32)
    monkeypatch.setattr(conflict, "EXACT_MAX_BATCHES", 2)
    sampled, exact = conflict.sign_patterns(5, 20000, torch.Generator().manual_seed(1))
    assert not exact and sampled.shape == (20000, 5)
    again, _ = conflict.sign_patterns(5, 20000, torch.Generator().manual_seed(1))
    assert numpy.array_equal(sampled, again)  # seeded
    # each of the 32 patterns about 1/32 of the draws (625, sd 24.6), so the sampled p estimates the exact one
    counts = numpy.unique(sampled, axis=0, return_counts=True)[1]
    assert len(counts) == 32 and abs(counts - 625).max() < 5 * 24.6
    p_sampled = conflict.sign_flip_p_values(d, sampled, exact)
    assert numpy.abs(p_sampled - p_exact).max() < 0.015  # sd ≤ 0.0036
    assert p_sampled.min() >= 1 / 20001


def scaled_head_rm(scale=1.0):
    """A tiny RM with its reward head scaled: the margins grow with it (a trained RM's are far from 0)."""
    model, tokenizer = tiny("tiny-gpt2")
    with torch.no_grad():
        model.score.weight.mul_(scale)
    return model, tokenizer


def test_null_is_centred_on_zero_whatever_the_margins(monkeypatch):
    """The flipped-half null leaned anti-harmless where margins are large; the sign-flip null cannot."""
    model, tokenizer = scaled_head_rm(scale=300.0)
    with torch.no_grad():
        _, input_ids, mask = batches(tokenizer, demo_pairs(n=8), batch_size=8)[0]
        reward = common.rewards(model, input_ids, mask)
    assert (reward[:8] - reward[8:]).abs().median() > 1  # σ(m) and σ(−m) differ a lot
    axes = conflict.neuron_axes(model)
    harm, _, _ = conflict.neuron_gradients(model, batches(tokenizer, demo_pairs(n=8), 2), CPU, torch.float32)
    _, projections, _ = conflict.neuron_gradients(model, batches(tokenizer, demo_pairs("helpful", 8), 1), CPU,
                                                  torch.float32, conflict.unit_directions(harm, axes))
    d = projections.numpy()
    scale = numpy.abs(d).sum(0)
    assert (scale > 0).all()
    signs, exact = conflict.sign_patterns(len(d), 1000, torch.Generator().manual_seed(0))
    assert exact  # 8 batches: all 256 patterns, each with its negation, so the mean is 0 exactly
    assert numpy.abs(conflict.null_sums(d, signs).mean(0)).max() <= 1e-12 * scale.max()
    monkeypatch.setattr(conflict, "EXACT_MAX_BATCHES", 2)
    signs, exact = conflict.sign_patterns(len(d), 4000, torch.Generator().manual_seed(0))
    null = conflict.null_sums(d, signs)
    standard_error = numpy.sqrt((d ** 2).sum(0) / len(signs))  # of the mean of Σ_b s_b d_b, s_b = ±1 uniform
    assert not exact and (numpy.abs(null.mean(0)) < 4 * standard_error).all()
    assert numpy.allclose(null.var(0), (d ** 2).sum(0), rtol=0.1)  # and its spread is the projections'


def test_random_label_signs_give_uniform_p_values():
    """Helpful pairs = the harmless pairs with their labels swapped at random: no neuron has a consistent conflict,
    so each neuron's p is (up to σ(m) ≠ σ(−m)) uniform on the grid k / 2^B, and about α of them fall below α."""
    model, tokenizer = tiny("tiny-gpt2")
    axes = conflict.neuron_axes(model)
    pairs = demo_pairs(n=8)
    harm, _, _ = conflict.neuron_gradients(model, batches(tokenizer, pairs), CPU, torch.float32)
    unit = conflict.unit_directions(harm, axes)
    kept = conflict.neuron_gradients(model, batches(tokenizer, pairs, 1), CPU, torch.float32, unit)[1].numpy()
    swapped = conflict.neuron_gradients(model, batches(tokenizer, pairs, 1, swap=True), CPU, torch.float32,
                                        unit)[1].numpy()
    assert (kept.sum(0) > 0).mean() > 0.99  # the harmless pairs as they are agree with their own direction
    order = [b[0] for b, _, _ in batches(tokenizer, pairs, 1)]  # pair_batches sorts by length
    generator = numpy.random.default_rng(0)
    shares, means = [], []
    for realisation in range(300):
        swap = generator.random(len(pairs)) < 0.5
        d = numpy.where(swap[order][:, None, None], swapped, kept)
        if realisation == 0:  # the same as taking those batches through the pass
            mixed = [common.Pair(p.rejected, p.chosen, p.subset) if s else p for p, s in zip(pairs, swap)]
            direct = conflict.neuron_gradients(model, batches(tokenizer, mixed, 1), CPU, torch.float32, unit)[1]
            assert numpy.allclose(direct.numpy(), d, rtol=1e-9, atol=1e-15)
        p, exact, patterns = conflict.sign_flip_test(d, 1000, torch.Generator().manual_seed(realisation))
        assert exact and patterns == 256
        shares.append(((p < conflict.ALPHA) & (d.sum(0) < 0)).mean())
        means.append(p.mean())
    # p < 0.05 on the grid k / 256 is k ≤ 12: 4.7 % of the patterns
    assert 0.02 < numpy.mean(shares) < 0.08, numpy.mean(shares)
    assert abs(numpy.mean(means) - 0.5) < 0.05, numpy.mean(means)
    # the test has power: with EVERY label swapped (8 distinct pairs against their own harmless direction) most
    # neurons conflict clearly (not all: a pair can pull a neuron against the others' mean)
    p, _, _ = conflict.sign_flip_test(swapped, 1000, torch.Generator().manual_seed(0))
    assert ((p < conflict.ALPHA) & (swapped.sum(0) < 0)).mean() > 0.5


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_the_negated_objective_conflicts_in_every_neuron(name):
    """Helpful = the harmless pair with chosen and rejected swapped, in each of 6 batches: its gradient is a negative
    multiple of the harmless one in every neuron (cosine −1, every d_b < 0), so D is the most negative of the 64
    pattern sums: p = 1/64 < α everywhere, and BH keeps them all."""
    model, tokenizer = tiny(name)
    axes = conflict.neuron_axes(model)
    pair = demo_pairs(n=1)
    harm, _, _ = conflict.neuron_gradients(model, batches(tokenizer, pair, 1), CPU, torch.float32)
    helpful, projections, _ = conflict.neuron_gradients(model, batches(tokenizer, pair * 6, 1, swap=True), CPU,
                                                        torch.float32, conflict.unit_directions(harm, axes))
    cosine = conflict.per_neuron(helpful, harm, axes)[0]
    assert torch.allclose(cosine, -torch.ones_like(cosine), atol=1e-9) and (projections < 0).all()
    p, exact, patterns = conflict.sign_flip_test(projections.numpy(), 1000, torch.Generator().manual_seed(0))
    assert exact and patterns == 64 and numpy.allclose(p, 1 / 64)
    assert conflict.benjamini_hochberg(p).all()
    # with 4 batches the same conflict could never be significant (p ≥ 1/16): refused, not silently reported
    with pytest.raises(common.RMTError, match="needs 5 batches"):
        conflict.check_batches(4, 1)


def make_runs(tmp_path):
    runs = tmp_path / "runs"
    for index, objective in enumerate(common.OBJECTIVES):
        save_tiny_rm(runs, objective, perturb_seed=10 + index)
    return runs


def invoke(tmp_path, runs, *args):
    # batch size 1: 6 helpful pairs make 6 batches, the fewest that are allowed plus one
    return CliRunner().invoke(conflict.main, [
        "--model", "tiny-gpt2", "--runs-dir", str(runs), "--results-dir", str(tmp_path / "results"),
        "--data-dir", DEMO, "--max-pairs", "6", "--max-length", "48", "--batch-size", "1", "--device", "cpu",
        *args], catch_exceptions=False)


def conflict_file(runs, objective):
    return common.rm_dir(runs, "tiny-gpt2", objective, 0) / "neurons" / "conflict.h5"


def test_end_to_end_on_three_tiny_rms(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "results" / "tiny-gpt2" / "conflict"
    refused = invoke(tmp_path, runs, "--batch-size", "4")  # 2 batches: refused before any work, with the fix
    assert refused.exit_code != 0 and "--batch-size 1 or less" in refused.output
    assert not conflict_file(runs, "mixed").exists()
    result = invoke(tmp_path, runs)  # no neuron files yet: the set tables are skipped with the command
    assert result.exit_code == 0, result.output
    assert not (out / "sets.csv").exists()
    assert "experiments/neurons.py" in (out / "report_section.md").read_text()
    for objective in common.OBJECTIVES:
        with h5py.File(conflict_file(runs, objective), "r") as f:
            shape = f["cosine"].shape
            assert shape == (3, 192) and f["p_value"].shape == shape and f["help_norm"].shape == shape
            assert f["batch_projection"].shape == (6, *shape)
            cosine, p = f["cosine"][()], f["p_value"][()]
            assert ((cosine >= -1 - 1e-9) & (cosine <= 1 + 1e-9)).all()
            assert ((p >= 1 / 64) & (p <= 1)).all() and numpy.allclose(p * 64, numpy.round(p * 64))  # exact grid
            assert numpy.array_equal(numpy.sign(f["batch_projection"][()].sum(0)), numpy.sign(cosine))
            assert f.attrs["pairs_helpful"] == 6 and f.attrs["pairs_harmless"] == 6 and f.attrs["batches"] == 6
            assert f.attrs["exact"] and f.attrs["draws"] == 64 and f.attrs["p_min"] == 1 / 64
            assert f.attrs["alpha"] == 0.05 and "sign" in f.attrs["null_description"]
    with open(out / "layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 4 and (out / "layers.md").exists()
    assert {"share_conflicting", "share_fdr", "chance"} <= set(rows[0])
    assert (out / "fig_layers.png").stat().st_size > 0 and (out / "fig_sets.png").exists()
    assert "centred on 0" in (out / "report_section.md").read_text()

    # neuron files (magnitude) for the sets; the conflict files are reused
    from neurons import main as neurons_main
    done = CliRunner().invoke(neurons_main, ["--model", "tiny-gpt2", "--runs-dir", str(runs), "--results-dir",
                                             str(tmp_path / "results"), "--data-dir", DEMO, "--max-pairs", "6",
                                             "--max-length", "48", "--method", "magnitude", "--device", "cpu"],
                              catch_exceptions=False)
    assert done.exit_code == 0, done.output
    # a file made with the old flipped-half null is rescored
    with h5py.File(conflict_file(runs, "mixed"), "r+") as f:
        f.attrs["settings"] = json.dumps({**json.loads(f.attrs["settings"]), "null": "flip-half-v1"})
    again = invoke(tmp_path, runs, "--tau", "20")
    assert again.exit_code == 0, again.output
    assert again.output.count("up to date") == 2  # --tau changes the tables, not the gradients
    assert "null flip-half-v1 (now batch-sign-flip-v1)" in again.output
    with open(out / "sets.csv") as f:
        sets = list(csv.DictReader(f))
    assert {r["set"] for r in sets} == set(conflict.SETS) and len(sets) == 3 * 4
    for objective in common.OBJECTIVES:  # the sets partition all neurons
        assert sum(int(r["neurons"]) for r in sets if r["objective"] == objective) == 3 * 192
    assert "conflict" in (tmp_path / "results" / "tiny-gpt2" / "report.md").read_text().lower()
