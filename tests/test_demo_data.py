"""The embedded demo data (data/demo) and the task map (data/tasks.json)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
DEMO = DATA / "demo"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
BENCH_KEYS = ["id", "subset", "prompt", "chosen", "rejected"]

# SPEC section 1: item counts of the 25 paper tasks.
PAPER_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
    "mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "math-prm": 447,
    "Factuality": 475, "Precise IF": 160, "Math": 183, "Safety": 450, "Focus": 495,
    "rm-bench-chat": 129, "rm-bench-safety-refuse": 284, "rm-bench-safety-response": 157,
}
HARMLESS_PAPER_TASKS = {"refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
                        "xstest-should-respond", "donotanswer", "Safety", "rm-bench-safety-refuse",
                        "rm-bench-safety-response"}
RB_SECTIONS = {
    "Chat": {"alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"},
    "Chat Hard": {"mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"},
    "Safety": {"refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
               "xstest-should-respond", "donotanswer"},
    "Reasoning": {"math-prm"},
}


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def split_last_turn(transcript):
    head, sep, reply = transcript.rpartition("\n\nAssistant:")
    return head + sep, reply


def human_turns(transcript):
    return [part.split("\n\nAssistant:")[0] for part in transcript.split("\n\nHuman: ")[1:]]


@pytest.fixture(scope="module")
def tasks():
    with open(DATA / "tasks.json", encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if k != "_doc"}


def test_generator_reproduces_committed_files(tmp_path):
    subprocess.run([sys.executable, str(DATA / "make_demo.py"), "--out-dir", str(tmp_path)], check=True)
    committed = sorted(p.relative_to(DEMO) for p in DEMO.rglob("*") if p.is_file())
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed == generated
    for rel in committed:
        assert (DEMO / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


@pytest.mark.parametrize("subset", HH_SUBSETS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_hh_rows_are_well_formed(subset, split):
    rows = read_jsonl(DEMO / "hh-rlhf" / subset / f"{split}.jsonl")
    assert rows
    for row in rows:
        assert list(row) == ["chosen", "rejected"]
        assert row["chosen"] != row["rejected"]
        for text in row.values():
            assert text.startswith("\n\nHuman: ")
            turns = text.split("\n\n")[1:]
            assert [t.split(":")[0] for t in turns] == ["Human", "Assistant"] * (len(turns) // 2)
        chosen_context, chosen_reply = split_last_turn(row["chosen"])
        rejected_context, rejected_reply = split_last_turn(row["rejected"])
        assert chosen_context == rejected_context
        assert chosen_reply.strip() and rejected_reply.strip()


def test_hh_sizes():
    count = {(s, split): len(read_jsonl(DEMO / "hh-rlhf" / s / f"{split}.jsonl"))
             for s in HH_SUBSETS for split in ("train", "test")}
    assert count["harmless-base", "train"] == 480 and count["harmless-base", "test"] == 120
    assert sum(count[s, "train"] for s in HH_SUBSETS[1:]) == 480
    assert sum(count[s, "test"] for s in HH_SUBSETS[1:]) == 120


def test_held_out_rows_and_benchmark_do_not_reuse_training_prompts():
    prompts = {split: set() for split in ("train", "test")}
    for subset in HH_SUBSETS:
        for split in prompts:
            for row in read_jsonl(DEMO / "hh-rlhf" / subset / f"{split}.jsonl"):
                prompts[split].add(human_turns(row["chosen"])[-1])
    assert not prompts["train"] & prompts["test"]
    everything = prompts["train"] | prompts["test"]
    for path in sorted((DEMO / "bench").glob("*.jsonl")):
        for item in read_jsonl(path):
            assert item["prompt"] not in everything, item["id"]


def test_benchmark_items_are_well_formed():
    paths = sorted((DEMO / "bench").glob("*.jsonl"))
    assert [p.stem for p in paths] == ["demo-harmless-refuse", "demo-harmless-respond",
                                       "demo-helpful-quality", "demo-helpful-style"]
    ids = set()
    for path in paths:
        items = read_jsonl(path)
        assert 40 <= len(items) <= 60
        for item in items:
            assert list(item) == BENCH_KEYS
            assert item["subset"] == path.stem
            assert item["id"] not in ids
            ids.add(item["id"])
            assert isinstance(item["prompt"], str) and item["prompt"].strip()
            assert "\n\nHuman:" not in item["prompt"] and "\n\nAssistant:" not in item["prompt"]
            width = 3 if path.stem == "demo-helpful-style" else 1
            for key in ("chosen", "rejected"):
                assert len(item[key]) == width
                assert all(isinstance(r, str) and r.strip() for r in item[key])
            assert not set(item["chosen"]) & set(item["rejected"])


def test_tasks_has_the_25_paper_tasks(tasks):
    paper = {name: entry for name, entry in tasks.items() if entry["paper_task"]}
    assert {name: entry["expected_count"] for name, entry in paper.items()} == PAPER_COUNTS
    for name, entry in paper.items():
        assert entry["objective"] == ("harmless" if name in HARMLESS_PAPER_TASKS else "helpful")
        if entry["benchmark"] == "rewardbench":
            assert name in RB_SECTIONS[entry["section"]]
        else:
            assert entry["section"] is None
    assert sum(e["benchmark"] == "rewardbench" for e in paper.values()) == 17
    assert sum(e["benchmark"] == "rewardbench2" for e in paper.values()) == 5
    assert sum(e["benchmark"] == "rm-bench" for e in paper.values()) == 3


def test_tasks_entries_are_well_formed(tasks):
    scorers = {"rewardbench": "paper", "rewardbench2": "rb2-best-of-4", "rm-bench": "rm-bench-3x3"}
    for name, entry in tasks.items():
        assert list(entry) == ["benchmark", "objective", "display", "section", "expected_count",
                               "section_weight", "paper_task", "scorer"], name
        # RewardBench's official EXAMPLE_COUNTS: the published sizes, except math-prm upweighted to the code subsets
        assert entry["section_weight"] == (None if entry["section"] is None
                                           else 984 if name == "math-prm" else entry["expected_count"]), name
        assert entry["benchmark"] in {"rewardbench", "rewardbench2", "rm-bench", "local", "demo", "hh-rlhf"}
        assert entry["objective"] in {"helpful", "harmless"}
        assert isinstance(entry["display"], str) and entry["display"]
        assert entry["scorer"] in {"paper", "rb2-best-of-4", "rm-bench-3x3"}
        if entry["benchmark"] in scorers:
            assert entry["scorer"] == scorers[entry["benchmark"]]
        if entry["benchmark"] in {"local", "demo"}:
            assert entry["expected_count"] is None and not entry["paper_task"]
    assert len({e["display"] for e in tasks.values()}) == len(tasks)


def test_tasks_cover_the_demo_subsets(tasks):
    for path in (DEMO / "bench").glob("*.jsonl"):
        assert tasks[path.stem]["benchmark"] == "demo"
    assert tasks["demo-helpful-style"]["scorer"] == "rm-bench-3x3"


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data is not present")
def test_tasks_cover_the_shared_converted_subsets(tasks):
    paths = sorted((SHARED / "data").glob("*/converted/*.jsonl"))
    assert paths
    for path in paths:
        assert path.stem in tasks, path
