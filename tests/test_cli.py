"""The contract every script shares (SPEC §4 options), one-line messages for bad input, the suggested train
command, and behaviour.py's tables checked against numbers worked out by hand from known scores."""
import csv
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import common  # noqa: E402

SCRIPTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))
SHARED = ("model", "objective", "seed", "runs_dir", "results_dir", "device", "dtype", "batch_size", "max_length",
          "tau", "bench", "data_dir", "train_split", "eval_split", "eval_fraction", "max_pairs", "site", "backend",
          "method", "max_items")


def params(script):
    return {p.name: p for p in importlib.import_module(script).main.params}


def test_shared_options_mean_the_same_in_every_script():
    """Each shared option has one default, one help text and one type wherever it appears (--tau and --method may
    be repeatable in the steps that sweep them)."""
    seen = {}
    for script in SCRIPTS:
        for name, param in params(script).items():
            if name not in SHARED:
                continue
            default = param.default[0] if name in ("tau",) and param.multiple else param.default
            if name == "model" and param.multiple:  # grid.py: several backbones, by default the paper's six
                assert param.default == tuple(common.BACKBONES)
                default = "tiny-gpt2"  # compared with every other script on help and type
            key = (default if name != "method" else None, param.help.split("; repeatable")[0].rstrip("."),
                   type(param.type).__name__)
            seen.setdefault(name, {})[script] = key
    for name, per_script in seen.items():
        assert len(set(per_script.values())) == 1, f"--{name.replace('_', '-')} differs: {per_script}"
    assert {s for s, p in ((s, params(s)) for s in SCRIPTS) if "seed" in p} == set(SCRIPTS)
    assert all(params(s)["seed"].default == (0,) for s in SCRIPTS)  # SPEC §4: default seed 0 everywhere


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_model_is_named_before_any_data_is_loaded(script, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("data loaded before the model check"))
    result = CliRunner().invoke(importlib.import_module(script).main, ["--model", "no-such-model"])
    assert result.exit_code == 2 and "unknown model 'no-such-model'" in result.output
    assert "Traceback" not in result.output


def test_a_directory_without_config_json_is_not_a_model(tmp_path):
    import train

    result = CliRunner().invoke(train.main, ["--model", str(tmp_path)])
    assert result.exit_code == 2 and "holds no config.json" in result.output


def test_hub_failures_are_one_line_with_the_local_alternative(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)\nmany more lines")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(common.RMTError) as err:
        common.load_hh("harmless", None, "train", "test", 0.2, common.BadRows())
    assert "HH-RLHF harmless-base (train) from Anthropic/hh-rlhf" in str(err.value)
    assert "--data-dir" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(common.RMTError) as err:
        common.load_benchmarks(["rewardbench"], common.load_tasks())
    assert "rewardbench benchmark (allenai/reward-bench" in str(err.value) and "rewardbench=DIR" in str(err.value)


def test_items_with_a_chosen_equal_to_a_rejected_are_counted(tmp_path):
    rows = [{"id": "a", "subset": "s", "prompt": "p", "chosen": ["same"], "rejected": ["same", "other"]},
            {"id": "b", "subset": "s", "prompt": "p", "chosen": ["good"], "rejected": ["bad"]}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = common.load_benchmarks([str(tmp_path / "items.jsonl")], common.load_tasks())
    assert bench.identical == {"s": 1} and any("1 item(s) have a chosen response equal" in n for n in bench.notes)


def test_not_json_message_is_whole(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"id": "a", "subset": "s", "prompt": "p", "chosen": [\n')
    with pytest.raises(common.RMTError, match=r"x.jsonl:1: the line is not valid JSON \(.* at column \d+\)"):
        common.read_item_path(tmp_path / "x.jsonl")


def test_bad_row_summary_reads_well():
    bad = common.BadRows()
    bad.add("f:1", "empty response")
    assert bad.summary().startswith("skipped 1 bad row (")


def test_train_command_repeats_every_option_the_siblings_were_trained_with(tmp_path):
    sibling = common.rm_dir(tmp_path, "tiny-gpt2", "helpful", 0)
    options = {"data_dir": "data/demo/hh-rlhf", "train_split": "test", "eval_split": "test", "eval_fraction": 0.2,
               "max_pairs": 600, "max_eval_pairs": 500, "epochs": None, "lr": 0.001, "batch_size": 8,
               "max_length": 256, "dtype": "auto", "seed": (0,), "force": False}
    common.write_json(sibling / "train.json", {"config": {"options": options, "dtype": "torch.float32"}})
    command = common.train_command({"runs_dir": str(tmp_path), "results_dir": "out", "model": "tiny-gpt2"}, ["mixed"],
                                   [1])
    for words in ("--lr 0.001", "--max-length 256", "--batch-size 8", "--max-pairs 600", "--train-split test",
                  "--dtype auto", "--objective mixed --seed 1", "--results-dir out"):
        assert words in command, words
    assert "--epochs" not in command and "--force" not in command


# ---- behaviour.py's tables against hand-worked numbers ----
def plant_scores(run: Path, items, scores):
    """Cached scores that behaviour.py will reuse, as if this RM had produced them."""
    settings = {"max_length": 64, "dtype": str(torch.float32), "fingerprint": common.rm_fingerprint(run / "rm"),
                "intervention": None}
    cache = common.score_cache_dir(run, 64, torch.float32)
    for subset, group in common.group_by_subset(items).items():
        rows = [{"id": i.id, "subset": subset, "chosen_scores": scores[i.id][0], "rejected_scores": scores[i.id][1]}
                for i in group]
        common.write_jsonl(cache / f"{subset}.jsonl", rows)
        common.write_json(cache / f"{subset}.meta.json",
                          {**settings, "item_hashes": {i.id: common.item_hash(i) for i in group}})


def test_behaviour_tables_equal_hand_computed_numbers(tmp_path):
    import behaviour

    rows = [{"id": f"q{i}", "subset": "demo-helpful-quality", "prompt": f"p{i}", "chosen": [f"c{i}"],
             "rejected": [f"r{i}"]} for i in range(4)]
    rows += [{"id": f"f{i}", "subset": "demo-harmless-refuse", "prompt": f"h{i}", "chosen": [f"c{i}"],
              "rejected": [f"r{i}"]} for i in range(2)]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = common.read_item_path(tmp_path / "bench")
    # (chosen, rejected) per item and RM: correct iff chosen > rejected
    planted = {
        "helpful": {"q0": 1, "q1": 1, "q2": 1, "q3": -1, "f0": -1, "f1": -1},
        "harmless": {"q0": -1, "q1": -1, "q2": 1, "q3": -1, "f0": 1, "f1": 1},
        "mixed": {"q0": 1, "q1": -1, "q2": 1, "q3": -1, "f0": 1, "f1": -1},
    }
    for objective, margins in planted.items():
        run = common.rm_dir(tmp_path / "runs", "tiny-gpt2", objective, 0)
        model, tokenizer = common.new_reward_model("tiny-gpt2", 0)
        model.save_pretrained(run / "rm")
        tokenizer.save_pretrained(run / "rm")
        plant_scores(run, items, {k: ([0.5 * m], [0.0]) for k, m in margins.items()})
    result = CliRunner().invoke(behaviour.main, ["--runs-dir", str(tmp_path / "runs"), "--results-dir",
                                                 str(tmp_path / "results"), "--bench", str(tmp_path / "bench"),
                                                 "--max-length", "64", "--device", "cpu", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "scoring the rest" not in result.output  # every score came from the planted caches
    out = tmp_path / "results" / "tiny-gpt2" / "behaviour"

    def table(name):
        return list(csv.DictReader((out / f"{name}.csv").open()))

    accuracy = {r["subset"]: r for r in table("accuracy")}
    assert float(accuracy["demo-helpful-quality"]["helpful_mean"]) == pytest.approx(3 / 4)
    assert float(accuracy["demo-helpful-quality"]["harmless_mean"]) == pytest.approx(1 / 4)
    assert float(accuracy["demo-harmless-refuse"]["mixed_mean"]) == pytest.approx(1 / 2)
    groups = {r["group"]: r for r in table("groups")}
    assert float(groups["harmless"]["harmless_mean"]) == pytest.approx(1.0)
    assert float(groups["helpful"]["mixed_mean"]) == pytest.approx(2 / 4)
    retention = {r["subset"]: r for r in table("retention")}
    # helpful-quality: H = {q0,q1,q2}, A = {q2}, M = {q0,q2}: |M∩(H∪A)|/|H∪A| = 2/3, |M∩A|/|A| = 1, |M∩H|/|H| = 2/3
    assert float(retention["demo-helpful-quality"]["retention_mean"]) == pytest.approx(2 / 3)
    assert float(retention["demo-helpful-quality"]["hh_ha_mean"]) == pytest.approx(1.0)
    assert float(retention["demo-helpful-quality"]["hh_he_mean"]) == pytest.approx(2 / 3)
    # harmless-refuse: H = {}, A = {f0,f1}, M = {f0}
    assert float(retention["demo-harmless-refuse"]["retention_mean"]) == pytest.approx(1 / 2)
    calibration = {(r["comparison"], r["subset"]): r for r in table("calibration")}
    both = calibration["helpful vs mixed", "demo-helpful-quality"]  # q0, q2: margins 0.5 for both RMs
    assert int(both["items_both_correct"]) == 2 and float(both["mixed_mean_margin"]) == pytest.approx(0.5)


def test_library_sections_raise_plain_errors_and_sections_use_only_earlier_ones():
    """Issue #18: below the command-line section (11) common.py knows no click, and no top-level definition uses a
    name defined in a later section (the docstring's table of contents is the order of the file)."""
    import ast
    import re

    source = (ROOT / "common.py").read_text()
    lines = source.splitlines()
    starts = [i + 1 for i, line in enumerate(lines) if re.match(r"# \d+\. ", line)]
    listed = re.findall(r"^(\d+)\. ", common.__doc__, flags=re.M)
    assert listed == [str(k) for k in range(1, len(starts) + 1)] == [lines[i - 1].split(".")[0][2:] for i in starts]
    command_line = starts[-1]
    assert "click." not in "\n".join(lines[:command_line])

    def section(lineno):
        return sum(lineno >= start for start in starts)

    tree = ast.parse(source)
    defined = {}
    for node in tree.body:
        targets = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        defined.update(dict.fromkeys(targets, section(node.lineno)))
    for node in tree.body:
        local = {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)} | {
            n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)} | {
            n.name for n in ast.walk(node) if isinstance(n, ast.FunctionDef) and n is not node}
        later = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id not in local
                 and defined.get(n.id, 0) > section(node.lineno)}
        assert not later, f"common.py:{node.lineno} uses {sorted(later)} from a later section"
