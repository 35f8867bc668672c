"""experiments/conflict.py: the per-neuron cosine of a loss with itself (1) and with its negation (−1), the slices
being exactly each neuron's own parameters (against autograd on the full weights, GPT-2 and Llama), batch
accumulation equal to one big batch, the sign-flip null, and the whole step on three tiny RMs."""
import csv
import sys
from pathlib import Path

import h5py
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
        conflict.bt_loss(common.rewards(model, input_ids, mask), len(batch)).backward()
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
    pairs = demo_pairs(n=5)
    small, _, n_small = conflict.neuron_gradients(model, batches(tokenizer, pairs, batch_size=2), CPU, torch.float32)
    big, _, n_big = conflict.neuron_gradients(model, batches(tokenizer, pairs, batch_size=5), CPU, torch.float32)
    assert n_small == n_big == 5
    for a, b in zip(small, big):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=1e-8, atol=1e-14)


def test_null_flips_a_seeded_half_and_equals_swapping_those_pairs():
    signs = conflict.flip_signs(6, 0)
    assert sorted(signs) == [-1.0] * 3 + [1.0] * 3 and signs == conflict.flip_signs(6, 0)
    assert signs != conflict.flip_signs(6, 1) or signs != conflict.flip_signs(6, 2)
    model, tokenizer = tiny("tiny-gpt2")
    pairs = demo_pairs(n=6)
    _, null, _ = conflict.neuron_gradients(model, batches(tokenizer, pairs), CPU, torch.float32, signs)
    flipped = [common.Pair(p.rejected, p.chosen, p.subset) if s < 0 else p for p, s in zip(pairs, signs)]
    direct, _, _ = conflict.neuron_gradients(model, batches(tokenizer, flipped), CPU, torch.float32)
    for a, b in zip(null, direct):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=1e-8, atol=1e-14)


def make_runs(tmp_path):
    runs = tmp_path / "runs"
    for index, objective in enumerate(common.OBJECTIVES):
        save_tiny_rm(runs, objective, perturb_seed=10 + index)
    return runs


def invoke(tmp_path, runs, *args):
    return CliRunner().invoke(conflict.main, [
        "--model", "tiny-gpt2", "--runs-dir", str(runs), "--results-dir", str(tmp_path / "results"),
        "--data-dir", DEMO, "--max-pairs", "6", "--max-length", "48", "--batch-size", "4", "--device", "cpu",
        *args], catch_exceptions=False)


def test_end_to_end_on_three_tiny_rms(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "results" / "tiny-gpt2" / "conflict"
    result = invoke(tmp_path, runs)  # no neuron files yet: the set tables are skipped with the command
    assert result.exit_code == 0, result.output
    assert not (out / "sets.csv").exists()
    assert "experiments/neurons.py" in (out / "report_section.md").read_text()
    for objective in common.OBJECTIVES:
        with h5py.File(common.rm_dir(runs, "tiny-gpt2", objective, 0) / "neurons" / "conflict.h5", "r") as f:
            shape = f["cosine"].shape
            assert shape == (3, 192) and f["null_cosine"].shape == shape and f["help_norm"].shape == shape
            cosine = f["cosine"][()]
            assert ((cosine >= -1 - 1e-9) & (cosine <= 1 + 1e-9)).all()
            assert f.attrs["pairs_helpful"] == 6 and f.attrs["pairs_harmless"] == 6 and f.attrs["flipped"] == 3
    with open(out / "layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 4 and (out / "layers.md").exists()
    assert (out / "fig_layers.png").stat().st_size > 0 and (out / "fig_sets.png").exists()

    # neuron files (magnitude) for the sets; the conflict files are reused
    from neurons import main as neurons_main
    done = CliRunner().invoke(neurons_main, ["--model", "tiny-gpt2", "--runs-dir", str(runs), "--results-dir",
                                             str(tmp_path / "results"), "--data-dir", DEMO, "--max-pairs", "6",
                                             "--max-length", "48", "--method", "magnitude", "--device", "cpu"],
                              catch_exceptions=False)
    assert done.exit_code == 0, done.output
    again = invoke(tmp_path, runs, "--tau", "20")
    assert again.exit_code == 0, again.output
    assert again.output.count("up to date") == 3  # --tau changes the tables, not the gradients
    with open(out / "sets.csv") as f:
        sets = list(csv.DictReader(f))
    assert {r["set"] for r in sets} == set(conflict.SETS) and len(sets) == 3 * 4
    for objective in common.OBJECTIVES:  # the sets partition all neurons
        assert sum(int(r["neurons"]) for r in sets if r["objective"] == objective) == 3 * 192
    assert "conflict" in (tmp_path / "results" / "tiny-gpt2" / "report.md").read_text().lower()
