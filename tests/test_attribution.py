"""Attribution (grad × activation, SPEC §3): the first-order estimate of each neuron's zero-ablation effect on the
reward margin, checked against finite differences, a neuron that cannot matter, and batch-size independence; and
neurons.py --validate-attribution, its measured ablations against weights zeroed by hand, its files and its
statistics."""
import csv
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


def test_micro_batches_change_no_number():
    model, tokenizer = common.new_reward_model("tiny-gpt2", 0)
    results = []
    for token_budget in (None, 1):  # the batch whole, one pair per forward
        attribution = common.AttributionPass(model.eval(), "act")
        attribution.run(pairs_and_batches(tokenizer, n=6, batch_size=6), CPU, torch.float32, token_budget=token_budget)
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


# ---- validation against real zero-ablation (neurons.py --validate-attribution) ----
def zero_output_weights(model, layer, unit):
    """Zero by hand the weights through which neuron `unit` of `layer` reaches the residual stream."""
    with torch.no_grad():
        if model.config.model_type == "gpt2":
            model.transformer.h[layer].mlp.c_proj.weight[unit, :] = 0  # Conv1D: [d_mlp, d_model]
        else:
            model.model.layers[layer].mlp.down_proj.weight[:, unit] = 0  # Linear: [d_model, d_mlp]


def validation_run(tmp_path, name, site, n, pairs=3, rm=None):
    rm_path = rm or save_tiny_rm(tmp_path / "runs", "helpful", name, perturb_seed=3)
    result = CliRunner().invoke(neurons.main, [
        "--model", name, "--objective", "helpful", "--runs-dir", str(tmp_path / "runs"), "--results-dir",
        str(tmp_path / "results"), "--data-dir", DEMO, "--max-pairs", "6", "--max-length", "48", "--batch-size", "2",
        "--device", "cpu", "--dtype", "float32", "--site", site, "--method", "magnitude",
        "--validate-attribution", str(n), "--validate-pairs", str(pairs)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "results" / name / "neurons" / ("" if site == "act" else site)
    return rm_path, out, [dict(r) for r in csv.DictReader((out / "attribution_validation.csv").open())]


@pytest.mark.parametrize("name,site", [("tiny-gpt2", "act"), ("tiny-llama", "down_in")])
def test_validation_files_and_a_measured_ablation_equal_to_zeroing_the_weights_by_hand(tmp_path, name, site):
    rm_path, out, rows = validation_run(tmp_path, name, site, n=5)
    assert list(rows[0]) == ["objective", "seed", "kind", "k", "layer", "neuron", "rank", "pairs", "predicted",
                             "measured", "predicted_all_pairs"]
    singles = [r for r in rows if r["kind"] == "single"]
    assert [r["rank"] for r in singles][:2] == ["1", "2"] and len(singles) == 5  # the top 2, then 3 drawn
    assert [(r["kind"], r["k"]) for r in rows[5:]] == [("top-k", "1"), ("top-k", "10"), ("top-k", "100")]
    assert all(r["pairs"] == "3" for r in rows)
    summary = list(csv.DictReader((out / "attribution_validation_summary.csv").open()))
    assert len(summary) == 1 and list(summary[0]) == [
        "objective", "seed", "pairs", "singles", "spearman", "spearman_ci_low", "spearman_ci_high", "top1_share",
        "top5_share", "top10_share"]
    assert (out / "fig_attribution_validation.png").stat().st_size > 0
    assert (out / "attribution_validation.md").exists()
    assert "Does the attribution predict real ablation?" in (out / "report_section.md").read_text()

    # the measured Δm of the first single neuron = the same pairs through the RM with its output weights zeroed
    cfg = {"data_dir": DEMO, "train_split": "train", "eval_split": "test", "eval_fraction": 0.2, "max_pairs": 6}
    pairs = common.subsample(common.scoring_pairs(common.training_pairs(cfg, ["helpful"]), cfg, "helpful", 0), 3, 0)
    model, tokenizer = common.load_reward_model(rm_path, CPU)
    batches = list(common.pair_batches(*common.encode_pairs(tokenizer, pairs, 48), 2, tokenizer.pad_token_id))
    base = neurons.pair_margins(model, batches, CPU, torch.float32)
    zero_output_weights(model, int(singles[0]["layer"]), int(singles[0]["neuron"]))
    by_hand = float((neurons.pair_margins(model, batches, CPU, torch.float32) - base).mean())
    assert float(singles[0]["measured"]) == pytest.approx(by_hand, abs=1e-6) and abs(by_hand) > 1e-4


def test_a_neuron_without_output_weights_is_predicted_and_measured_zero(tmp_path):
    rm_path = save_tiny_rm(tmp_path / "runs", "helpful", "tiny-llama", perturb_seed=3)
    model, tokenizer = common.load_reward_model(rm_path, CPU)
    zero_output_weights(model, 1, 7)
    model.save_pretrained(rm_path)
    # more neurons than the model has: every one is validated once, the zeroed one among them
    _, out, rows = validation_run(tmp_path, "tiny-llama", "act", n=10**6, rm=rm_path)
    singles = {(int(r["layer"]), int(r["neuron"])): r for r in rows if r["kind"] == "single"}
    assert len(singles) == 3 * 176
    assert float(singles[1, 7]["predicted"]) == 0 and float(singles[1, 7]["measured"]) == 0
    assert sum(abs(float(r["measured"])) for r in singles.values()) > 0


def test_spearman_is_one_for_any_increasing_relation_and_counts_ties():
    predicted = numpy.linspace(-1, 1, 21) ** 3
    rows = [{"objective": "mixed", "seed": 0, "kind": "single", "pairs": 4, "predicted": float(p),
             "measured": float(p + 4 * p ** 5)} for p in predicted]  # monotone, not linear: ranks agree exactly
    summary = neurons.validation_summary(rows)[0]
    assert summary["spearman"] == pytest.approx(1) and numpy.corrcoef(predicted, predicted + 4 * predicted ** 5)[0, 1] < 1
    assert (summary["spearman_ci_low"], summary["spearman_ci_high"]) == pytest.approx((1, 1))
    assert summary["top1_share"] == summary["top5_share"] == summary["top10_share"] == 1
    assert neurons.spearman(predicted, -predicted) == pytest.approx(-1)
    # ties share their mean rank: x ranks (1.5, 1.5, 3) against (1, 2, 3) give 1.5 / sqrt(1.5 · 2)
    assert neurons.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / 3 ** 0.5)
    assert neurons.top_k_share([3, 2, 1, 0], [0, 2, 1, 3], 2) == 0.5
