"""Ablation (experiments/ablate.py, common.ablation_hooks) on tiny random reward models: zero-ablation equals zeroing
the down projection's input weights, an empty set and mean-ablation at the neurons' own values change nothing, hooks
never outlive their block; sweep.csv equals the paper rule recomputed from the score files; an interrupted sweep
resumes without rescoring what it finished and ends with the same files."""
import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import ablate  # noqa: E402
import common  # noqa: E402
from conftest import save_tiny_rm  # noqa: E402

DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")
CPU = torch.device("cpu")
TEXTS = ["\n\nHuman: hi\n\nAssistant: hello there, how can I help?", "\n\nHuman: a b c\n\nAssistant: no.",
         "short", "\n\nHuman: tell me about tea\n\nAssistant: Tea is a drink made from leaves of a plant."]
OBJECTIVES = ("helpful", "harmless")
TAUS = ("10", "50")
METHODS = ("magnitude", "random")


def tiny_rm(name):
    """A random RM whose reward head is scaled up, so that a wrong ablation shows far above float32 noise."""
    model, tokenizer = common.new_reward_model(name, 0)
    with torch.no_grad():
        model.score.weight.mul_(100)
    return model.eval(), tokenizer


def score(model, tokenizer, texts=TEXTS, hooks=None):
    return torch.tensor(common.score_texts(model, tokenizer, texts, 3, 64, CPU, hooks=hooks))


def random_mask(model, share=0.2, seed=0):
    return torch.rand(common.mlp_shape(model), generator=torch.Generator().manual_seed(seed)) < share


def leftover_hooks(model):
    return [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


@pytest.mark.parametrize("site", common.NEURON_SITES)
@pytest.mark.parametrize("name", common.TINY_BACKBONES)
def test_zero_ablation_equals_zeroing_the_down_projection_inputs(name, site):
    model, tokenizer = tiny_rm(name)
    mask = random_mask(model)
    plain = score(model, tokenizer)
    ablated = score(model, tokenizer, hooks=common.ablation_hooks(model, site, mask))
    with torch.no_grad():
        for layer, row in enumerate(mask):
            if model.config.model_type == "gpt2":  # Conv1D: weight [d_mlp, d_model], the inputs are rows
                model.transformer.h[layer].mlp.c_proj.weight[row] = 0
            else:  # nn.Linear: weight [d_model, d_mlp], the inputs are columns
                model.model.layers[layer].mlp.down_proj.weight[:, row] = 0
    zeroed = score(model, tokenizer)
    assert (ablated - plain).abs().max() > 1e-3  # the ablation does something
    torch.testing.assert_close(ablated, zeroed, rtol=0, atol=1e-5)


def test_an_empty_set_changes_nothing_and_hooks_are_removed_when_the_body_raises():
    model, tokenizer = tiny_rm("tiny-llama")
    empty = torch.zeros(common.mlp_shape(model), dtype=torch.bool)
    assert torch.equal(score(model, tokenizer, hooks=common.ablation_hooks(model, "act", empty)),
                       score(model, tokenizer))
    for site in common.NEURON_SITES:
        with pytest.raises(RuntimeError, match="boom"):
            with common.ablation_hooks(model, site, random_mask(model)):
                assert leftover_hooks(model)  # the hooks were there
                raise RuntimeError("boom")
        assert leftover_hooks(model) == []


@pytest.mark.parametrize("site", common.NEURON_SITES)
@pytest.mark.parametrize("name", common.TINY_BACKBONES)
def test_mean_ablation_at_the_neurons_own_values_changes_nothing(name, site):
    """On a one-token input every neuron has exactly one activation: its mean. Replacing the neurons by the values
    recorded there must leave the score as it was; replacing them by other values must not."""
    model, tokenizer = tiny_rm(name)
    one_token = ["a"]
    assert len(tokenizer("a")["input_ids"]) == 1
    recorded = torch.zeros(common.mlp_shape(model))

    def record(layer, acts):
        recorded[layer] = acts[0, 0].detach()

    plain = score(model, tokenizer, one_token, hooks=common.mlp_hooks(model, site, record))
    mask = random_mask(model, share=0.5)
    same = score(model, tokenizer, one_token, hooks=common.ablation_hooks(model, site, mask, recorded))
    assert torch.equal(same, plain)
    shifted = score(model, tokenizer, one_token, hooks=common.ablation_hooks(model, site, mask, recorded + 1))
    assert (shifted - plain).abs().max() > 1e-3


def test_memo_tokenizer_gives_the_same_ids_and_tokenises_once():
    _, tokenizer = tiny_rm("tiny-gpt2")
    memo = common.MemoTokenizer(tokenizer)
    assert common.encode(memo, TEXTS * 2, 16) == common.encode(tokenizer, TEXTS * 2, 16)
    common.encode(memo, TEXTS, 16)
    assert memo.calls == len(TEXTS) and memo.pad_token_id == tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------------
# The command: RMs saved where train.py puts them; neuron files made on the first run (they are missing)
# ---------------------------------------------------------------------------------------------
def run_ablate(root: Path, *extra):
    args = ["--model", "tiny-gpt2", "--runs-dir", str(root / "runs"), "--results-dir", str(root / "results"),
            "--data-dir", DEMO, "--max-pairs", "5", "--max-length", "48", "--batch-size", "4", "--device", "cpu",
            "--max-items", "3", *[w for o in OBJECTIVES for w in ("--objective", o)],
            *[w for m in METHODS for w in ("--method", m)], *[w for t in TAUS for w in ("--tau", t)], *extra]
    return CliRunner().invoke(ablate.main, args)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One complete sweep: 2 RMs × 2 methods × 2 τ, neuron files computed on the way."""
    root = tmp_path_factory.mktemp("swept")
    for objective in OBJECTIVES:
        save_tiny_rm(root / "runs", objective, perturb_seed=len(objective))
    result = run_ablate(root)
    assert result.exit_code == 0, result.output
    assert "scoring the neurons first" in result.output
    return root


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def paper_rule(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["id"]: common.ItemScores(row["chosen_scores"], row["rejected_scores"]).correct for row in rows}


def test_sweep_csv_is_the_paper_rule_on_the_score_files(swept):
    out = swept / "results" / "tiny-gpt2" / "ablate"
    rows = read_csv(out / "sweep.csv")
    assert list(rows[0]) == list(ablate.SWEEP_COLUMNS)
    tasks = common.load_tasks()
    for objective in OBJECTIVES:
        mine = [r for r in rows if r["objective"] == objective]
        held_out = {f"hh-{s}" for s in common.HELD_OUT_SUBSETS[objective]}
        assert {r["task"] for r in mine} == held_out | {p.stem for p in common.DEMO_BENCH_DIR.glob("*.jsonl")}
        assert len(mine) == len(METHODS) * len(TAUS) * (len(held_out) + 4)
    for r in rows:
        run = common.rm_dir(swept / "runs", "tiny-gpt2", r["objective"], int(r["seed"]))
        label = f"zero-{r['method']}-tau{float(r['tau']):g}"
        after = paper_rule(common.intervention_dir(run, "ablate", "act", label) / "scores" / "len48"
                           / f"{r['task']}.jsonl")
        before = paper_rule(run / "scores" / "len48" / f"{r['task']}.jsonl")
        assert int(r["items"]) == len(after) == len(before) == 3
        assert float(r["accuracy"]) == pytest.approx(sum(after.values()) / len(after), abs=1e-12)
        assert float(r["base_accuracy"]) == pytest.approx(sum(before.values()) / len(before), abs=1e-12)
        assert float(r["delta"]) == pytest.approx(float(r["accuracy"]) - float(r["base_accuracy"]), abs=1e-12)
        assert r["group"] == (common.task_for(r["task"], tasks).objective or "") and r["ablation"] == "zero"
    for name in ("table2_harmless.md", "table3_helpful.md", "heldout.csv", "fig5_tau.png", "fig7_scores.png",
                 "report_section.md", "run.json"):
        assert (out / name).exists(), name
    assert "magnitude, τ = 10" in (out / "table2_harmless.md").read_text()
    assert "## Ablation" in (swept / "results" / "tiny-gpt2" / "report.md").read_text()


def test_an_interrupted_sweep_resumes_without_rescoring_and_ends_with_the_same_files(swept, tmp_path, monkeypatch):
    shutil.copytree(swept / "runs", tmp_path / "runs",
                    ignore=lambda folder, names: [n for n in names if n in ("scores", "ablate")])
    evaluate = common.evaluate_rm
    ablated_calls = []

    def crash_on_the_second_configuration(*args, **kwargs):
        if kwargs.get("ablated") is not None:
            ablated_calls.append(1)
            if len(ablated_calls) == 2:
                raise RuntimeError("killed")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(common, "evaluate_rm", crash_on_the_second_configuration)
    result = run_ablate(tmp_path)
    assert result.exit_code != 0 and isinstance(result.exception, RuntimeError)
    monkeypatch.setattr(common, "evaluate_rm", evaluate)

    score_texts, scored = common.score_texts, []
    monkeypatch.setattr(common, "score_texts", lambda *a, **k: scored.append(1) or score_texts(*a, **k))
    result = run_ablate(tmp_path)
    assert result.exit_code == 0, result.output
    configs = len(METHODS) * len(TAUS)
    # first RM: its plain scores and first configuration were done; the second RM: everything
    assert len(scored) == (configs - 1) + (1 + configs)

    def files(root):
        found = {p.relative_to(root): p.read_bytes() for p in (root / "runs").rglob("*.jsonl")}
        found.update({p.relative_to(root): p.read_bytes()
                      for p in (root / "results" / "tiny-gpt2" / "ablate").glob("*.csv")})
        return found

    assert files(tmp_path) == files(swept)

    scored.clear()
    assert run_ablate(tmp_path).exit_code == 0 and scored == []  # all done: nothing is scored again


def test_missing_rm_names_the_train_command(tmp_path):
    result = run_ablate(tmp_path)
    assert result.exit_code == 1 and "missing RM: helpful seed 0" in result.output
    assert "python experiments/train.py --model tiny-gpt2 --objective helpful --seed 0" in result.output
    assert "Traceback" not in result.output


def test_a_tau_that_selects_no_neuron_is_refused_before_scoring(swept, tmp_path):
    shutil.copytree(swept / "runs", tmp_path / "runs",
                    ignore=lambda folder, names: [n for n in names if n in ("scores", "ablate")])
    result = run_ablate(tmp_path, "--tau", "0.01")
    assert result.exit_code == 2 and "--tau 0.01 selects no neuron of 576" in result.output
    assert "smallest τ that selects one is 0.0869" in result.output
    assert not list((tmp_path / "runs").rglob("scores"))


def test_mean_ablation_reads_the_neurons_mean_from_the_h5(swept, tmp_path):
    shutil.copytree(swept / "runs", tmp_path / "runs",
                    ignore=lambda folder, names: [n for n in names if n == "ablate"])
    result = run_ablate(tmp_path, "--ablation", "mean")
    assert result.exit_code == 0, result.output
    run = common.rm_dir(tmp_path / "runs", "tiny-gpt2", "helpful", 0)
    meta = json.loads((common.intervention_dir(run, "ablate", "act", "mean-magnitude-tau10") / "scores" / "len48"
                       / "hh-helpful-base.meta.json").read_text())
    neurons = common.read_neurons(common.neuron_dir(run, "act") / "magnitude.h5", "(remake)")
    selected = common.select_top(neurons.score, 10)
    assert meta["intervention"] == common.intervention("act", "mean", selected, neurons.mean_activation)
    rows = read_csv(tmp_path / "results" / "tiny-gpt2" / "ablate" / "sweep.csv")
    assert {r["ablation"] for r in rows} == {"mean"}


def test_tables_carry_a_paired_bootstrap_interval_that_contains_the_point_delta(swept):
    out = swept / "results" / "tiny-gpt2" / "ablate"
    checked = 0
    for name in ("table2_harmless.csv", "table3_helpful.csv"):
        for row in read_csv(out / name):
            for objective in OBJECTIVES:
                low, high = float(row[f"{objective}_delta_ci_low"]), float(row[f"{objective}_delta_ci_high"])
                assert low - 1e-12 <= float(row[f"{objective}_delta_mean"]) <= high + 1e-12
                checked += 1
    for row in read_csv(out / "heldout.csv"):
        assert float(row["delta_ci_low"]) - 1e-12 <= float(row["delta_mean"]) <= float(row["delta_ci_high"]) + 1e-12
        checked += 1
    assert checked
    assert "Δ [low, high]" in (out / "table2_harmless.md").read_text()
    assert common.BOOTSTRAP_NOTE in (out / "report_section.md").read_text()
