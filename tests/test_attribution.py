"""Attribution (grad × activation, SPEC §3): the first-order estimate of each neuron's zero-ablation effect on the
reward margin, checked against finite differences, a neuron that cannot matter, and batch-size independence."""
import sys
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import common  # noqa: E402
import neurons  # noqa: E402
from conftest import save_tiny_rm  # noqa: E402

CPU = torch.device("cpu")
DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")


def pairs_and_batches(tokenizer, n=4, batch_size=2):
    train, _ = common.load_hh("harmless", DEMO, "train", "test", 0.2, common.BadRows())
    pairs = common.subsample(train, n, 0)
    return list(common.pair_batches(*common.encode_pairs(tokenizer, pairs, 48), batch_size, tokenizer.pad_token_id))


def margins(model, batches, hooks=None):
    """Sum over pairs of r(chosen) − r(rejected), in the model's float64 (common.rewards returns float32, too coarse
    for a finite difference)."""
    total = 0.0
    with torch.no_grad(), hooks or torch.no_grad():
        for batch, input_ids, mask in batches:
            hidden = model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            reward = model.score(hidden[torch.arange(len(hidden)), mask.sum(1) - 1]).squeeze(-1)
            total += float((reward[:len(batch)] - reward[len(batch):]).sum())
    return total


def scaled(model, site, layer, unit, factor):
    def fn(index, acts):
        if index != layer:
            return None
        out = acts.clone()
        out[..., unit] *= factor
        return out
    return common.mlp_hooks(model, site, fn)


# Llama's RMSNorm computes in float32 even in a float64 model, which puts a floor of ~1e-7 under any difference of
# margins; GPT-2 runs wholly in float64. So the step ε and the tolerance differ.
@pytest.mark.parametrize("name,site,eps,rel", [("tiny-gpt2", "act", 1e-4, 1e-3), ("tiny-llama", "act", 3e-2, 3e-2),
                                               ("tiny-llama", "down_in", 3e-2, 3e-2)])
def test_attribution_equals_a_finite_difference_of_the_margin(name, site, eps, rel):
    model, tokenizer = common.new_reward_model(name, 0)
    model = model.double().eval()
    batches = pairs_and_batches(tokenizer)
    attribution = common.AttributionPass(model, site)
    attribution.run(batches, CPU, torch.float32)
    base = margins(model, batches)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        layer = int(torch.randint(common.mlp_shape(model)[0], (1,), generator=generator))
        unit = int(torch.randint(common.mlp_shape(model)[1], (1,), generator=generator))
        # a → (1 − ε) a changes the margin by ε times the first-order zero-ablation estimate
        moved = margins(model, batches, scaled(model, site, layer, unit, 1 - eps))
        predicted = attribution.delta_sum[layer, unit].item()
        assert (moved - base) / eps == pytest.approx(predicted, rel=rel, abs=1e-7)


def test_a_neuron_without_output_weights_has_zero_attribution():
    model, tokenizer = common.new_reward_model("tiny-llama", 0)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 7] = 0
    attribution = common.AttributionPass(model.eval(), "act")
    attribution.run(pairs_and_batches(tokenizer), CPU, torch.float32)
    assert attribution.signed()[1, 7] == 0 and attribution.signed().abs().sum() > 0


def test_accumulating_over_batches_equals_one_big_batch():
    model, tokenizer = common.new_reward_model("tiny-gpt2", 0)
    results = []
    for batch_size in (1, 6):
        attribution = common.AttributionPass(model.eval(), "act")
        attribution.run(pairs_and_batches(tokenizer, n=6, batch_size=batch_size), CPU, torch.float32)
        results.append(attribution.signed())
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-8)


def test_neurons_py_writes_the_attribution_file_with_its_sign(tmp_path):
    rm_path = save_tiny_rm(tmp_path / "runs", "helpful", perturb_seed=3)
    result = CliRunner().invoke(neurons.main, [
        "--objective", "helpful", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
        "--data-dir", DEMO, "--max-pairs", "4", "--max-length", "48", "--batch-size", "2", "--device", "cpu",
        "--method", "attribution", "--method", "magnitude"])
    assert result.exit_code == 0, result.output
    with h5py.File(rm_path.parent / "neurons" / "attribution.h5", "r") as f:
        signed, score = torch.from_numpy(f["signed"][()]), torch.from_numpy(f["score"][()])
        assert torch.equal(score, signed.abs().float()) and f.attrs["method"] == "attribution"
        assert f["chosen/tokens"][()] > 0  # activation statistics too, as in every neuron file
