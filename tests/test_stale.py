"""Issue #17, nothing stale and nothing broken: one staleness rule for every stored artifact, a step run alone as safe
as inside run_all.sh, and a one-line message (never a traceback or a crash) for every artifact a user can break.

Each test changes what an artifact was made from (the RM under it, its file) and runs the consuming step alone.
RMs are tiny-gpt2 trained by train.py for a few steps on the demo data, so they carry a real train.json."""
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import ablate  # noqa: E402
import behaviour  # noqa: E402
import common  # noqa: E402
import conflict  # noqa: E402
import neurons  # noqa: E402
import shared  # noqa: E402
import train  # noqa: E402

DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")
CPU = torch.device("cpu")
TRAIN = ["--model", "tiny-gpt2", "--data-dir", DEMO, "--max-pairs", "8", "--max-eval-pairs", "4", "--max-length",
         "48", "--batch-size", "4", "--epochs", "1", "--lr", "1e-3", "--device", "cpu"]
# the analysis steps run ALONE: no data options, so they must come from train.json
SMALL = ["--model", "tiny-gpt2", "--device", "cpu", "--batch-size", "4", "--max-items", "2"]


def invoke(script, root: Path, *args):
    result = CliRunner().invoke(script.main, ["--runs-dir", str(root / "runs"), "--results-dir",
                                              str(root / "results"), *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def ok(script, root, *args):
    result = invoke(script, root, *args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three RMs of seed 0, trained by train.py (each in about a second)."""
    root = tmp_path_factory.mktemp("trained")
    ok(train, root, *TRAIN)
    return root


@pytest.fixture
def root(trained, tmp_path):
    shutil.copytree(trained / "runs", tmp_path / "runs")
    return tmp_path


def rm(root, objective="helpful"):
    return common.rm_dir(root / "runs", "tiny-gpt2", objective, 0) / "rm"


def retrain(root, objective="helpful", seed=1):
    """The RM replaced by another one, saved as train.py saves it (new weights, their hash recorded)."""
    model, tokenizer = common.load_reward_model(rm(root, objective), CPU)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
    train.save_rm(model, tokenizer, rm(root, objective))


def settings(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["settings"])


# ---- the RM itself -------------------------------------------------------------------------------------------------
def test_weights_changed_after_training_are_refused_and_retrained(root):
    weights = rm(root) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:-90] = bytes(10)  # same size: only the content (and the mtime) tells
    weights.write_bytes(bytes(data))
    refused = invoke(behaviour, root, *SMALL, "--objective", "helpful")
    assert refused.exit_code == 1 and "no longer match weights.sha256" in refused.output
    assert f"experiments/train.py --model tiny-gpt2 --objective helpful --seed 0 --runs-dir {root / 'runs'} " \
           f"--results-dir {root / 'results'}" in refused.output
    retrained = ok(train, root, *TRAIN, "--objective", "helpful")
    assert "no longer match" in retrained and "retraining" in retrained and "already trained" not in retrained
    ok(behaviour, root, *SMALL, "--objective", "helpful")


def test_an_unchanged_rm_is_not_hashed_again_and_a_copy_once(root, monkeypatch):
    calls = []
    real = common.weights_sha256
    monkeypatch.setattr(common, "weights_sha256", lambda path: calls.append(path) or real(path))
    recorded = (rm(root) / common.WEIGHTS_HASH).read_text().strip()
    assert common.rm_fingerprint(rm(root)) == recorded and calls == []
    copy = shutil.copytree(rm(root), root / "copy", copy_function=shutil.copy)  # new mtimes
    assert common.rm_fingerprint(copy) == recorded and len(calls) == 1
    assert common.rm_fingerprint(copy) == recorded and len(calls) == 1  # the record was renewed


@pytest.mark.parametrize("damage", ["config.json", "train.json empty", "train.json cut"])
def test_train_retrains_an_rm_whose_folder_or_record_is_broken(root, damage):
    run = rm(root).parent
    if damage == "config.json":
        (run / "rm" / "config.json").unlink()
        told = invoke(behaviour, root, *SMALL, "--objective", "helpful")
        assert told.exit_code == 1 and "rm has no config.json" in told.output and "no " + str(run / "rm") \
            not in told.output
        assert "--results-dir" in told.output  # the command it prints writes where the caller reads
    else:
        text = (run / "train.json").read_text()
        (run / "train.json").write_text("" if damage.endswith("empty") else text[:len(text) // 2])
        # the suggested command of another step reads its siblings' train.json: no traceback either
        (rm(root, "mixed") / "config.json").unlink()
        assert "experiments/train.py" in invoke(behaviour, root, *SMALL).output
    for extra in ((), ("--force",)):
        again = ok(train, root, *TRAIN, "--objective", "helpful", *extra)
        assert "already trained" not in again
    assert "already trained" in ok(train, root, *TRAIN, "--objective", "helpful")


# ---- a step run alone takes its RMs' data options ----------------------------------------------------------------
def test_a_step_alone_takes_the_data_its_rms_were_trained_on(root, tmp_path):
    out = ok(ablate, root, *SMALL, "--objective", "helpful", "--method", "random", "--tau", "10")
    assert "as the RMs' train.json records: --data-dir" in out and "--max-length 48" in out
    # an option given wins
    assert "--max-length" not in ok(ablate, root, *SMALL, "--objective", "helpful", "--method", "random", "--tau",
                                    "10", "--max-length", "48").split("train.json records")[-1].split("\n")[0]
    # RMs of one run trained on different data are refused by name
    other = shutil.copytree(DEMO, tmp_path / "other-data")
    record = rm(root, "harmless").parent / "train.json"
    recorded = json.loads(record.read_text())
    recorded["config"]["options"]["data_dir"] = str(other)
    record.write_text(json.dumps(recorded))
    refused = invoke(ablate, root, *SMALL, "--method", "random", "--tau", "10")
    assert refused.exit_code == 2 and "different data options" in refused.output
    assert "helpful seed 0" in refused.output and "harmless seed 0" in refused.output
    ok(ablate, root, *SMALL, "--method", "random", "--tau", "10", "--data-dir", DEMO)


# ---- neuron files, ablation caches, score caches: change the RM under them -------------------------------------
def test_ablate_alone_never_reuses_the_neuron_files_or_caches_of_a_replaced_rm(root):
    first = ok(ablate, root, *SMALL, "--objective", "helpful", "--method", "magnitude", "--tau", "10")
    assert "scoring the neurons first" in first
    magnitude = rm(root).parent / "neurons" / "magnitude.h5"
    before = settings(magnitude)["rm_weights"]
    assert "scoring the neurons first" not in ok(ablate, root, *SMALL, "--objective", "helpful", "--method",
                                                 "magnitude", "--tau", "10")
    retrain(root)
    again = ok(ablate, root, *SMALL, "--objective", "helpful", "--method", "magnitude", "--tau", "10")
    assert "rm_weights" in again and "recomputing it" in again
    assert settings(magnitude)["rm_weights"] == common.rm_fingerprint(rm(root)) != before
    assert "cache made with fingerprint" in again and "→ scoring the rest" in again  # plain and ablated caches


def test_ablate_attribution_makes_its_missing_file(root):
    ok(ablate, root, *SMALL, "--objective", "helpful", "--method", "attribution", "--tau", "10")
    assert (rm(root).parent / "neurons" / "attribution.h5").exists()


def test_shared_alone_never_reuses_the_neuron_files_of_a_replaced_rm(root):
    ok(shared, root, *SMALL, "--tau", "10")
    helpful_file = rm(root).parent / "neurons" / "magnitude.h5"
    before = helpful_file.read_bytes()
    retrain(root)
    again = ok(shared, root, *SMALL, "--tau", "10")
    assert "rm_weights" in again and helpful_file.read_bytes() != before
    assert settings(helpful_file)["rm_weights"] == common.rm_fingerprint(rm(root))


def test_behaviour_rescores_a_replaced_rm(root):
    ok(behaviour, root, *SMALL, "--objective", "helpful")
    assert "scoring the rest" not in ok(behaviour, root, *SMALL, "--objective", "helpful")
    retrain(root)
    assert "cache made with fingerprint" in ok(behaviour, root, *SMALL, "--objective", "helpful")


def test_conflict_alone_never_reuses_a_replaced_rms_files_or_shareds_partitions(root):
    args = ["--max-pairs", "5", "--batch-size", "1", "--max-length", "48", "--device", "cpu", "--model", "tiny-gpt2",
            "--objective", "mixed"]
    ok(neurons, root, "--model", "tiny-gpt2", "--device", "cpu", "--method", "magnitude")
    ok(shared, root, *SMALL, "--tau", "10")
    first = ok(conflict, root, *args)
    out = root / "results" / "tiny-gpt2" / "conflict"
    assert (out / "partitions.csv").exists() and (out / "sets.csv").exists()
    shutil.rmtree(root / "results" / "tiny-gpt2" / "shared")  # presentation only: conflict does not need it
    assert "up to date" in ok(conflict, root, *args) and (out / "partitions.csv").exists()

    retrain(root, "mixed")  # its conflict file and shared's partitions were made in the old mixed RM
    again = ok(conflict, root, *args)
    assert "rm_weights" in again and "recomputing it" in again and "partition table is skipped" in again
    assert "experiments/shared.py" in again and not (out / "partitions.csv").exists()
    assert first.count("up to date") == 0

    retrain(root, "helpful")  # H changed: its neuron file is refused, naming neurons.py
    refused = ok(conflict, root, *args)
    assert "neuron-set tables skipped" in refused and "experiments/neurons.py" in refused
    assert not (out / "sets.csv").exists()


# ---- variants side by side ---------------------------------------------------------------------------------------
def test_another_site_and_another_max_length_live_beside_the_default(root, monkeypatch):
    ok(ablate, root, *SMALL, "--objective", "helpful", "--method", "random", "--tau", "10")
    run = rm(root).parent
    act = {p: p.read_bytes() for p in (run / "ablate").rglob("*.jsonl")}
    ok(ablate, root, *SMALL, "--objective", "helpful", "--method", "random", "--tau", "10", "--site", "down_in")
    assert (run / "ablate" / "down_in" / "zero-random-tau10").is_dir()
    assert (root / "results" / "tiny-gpt2" / "ablate" / "down_in" / "sweep.csv").exists()
    assert {p: p.read_bytes() for p in act} == act  # the act site's caches untouched
    assert (root / "results" / "tiny-gpt2" / "ablate" / "sweep.csv").exists()

    ok(behaviour, root, *SMALL, "--objective", "helpful", "--max-length", "32")
    assert (run / "scores" / "len32").is_dir() and (run / "scores" / "len48").is_dir()
    scored = []
    real = common.score_texts
    monkeypatch.setattr(common, "score_texts", lambda *a, **k: scored.append(1) or real(*a, **k))
    ok(behaviour, root, *SMALL, "--objective", "helpful")  # the default (48, from train.json) is still there
    assert scored == []


def test_repeated_values_of_a_repeatable_option_count_once(root):
    ok(behaviour, root, *SMALL, "--objective", "helpful", "--objective", "helpful", "--seed", "0", "--seed", "0")
    header = (root / "results" / "tiny-gpt2" / "behaviour" / "accuracy.csv").read_text().splitlines()[0]
    assert header.count("helpful_mean") == 1


# ---- files a user can break --------------------------------------------------------------------------------------
def test_a_truncated_neuron_file_is_named_and_rescored(root):
    ok(neurons, root, "--model", "tiny-gpt2", "--device", "cpu", "--objective", "helpful", "--method", "magnitude")
    path = rm(root).parent / "neurons" / "magnitude.h5"
    path.write_bytes(path.read_bytes()[:600])
    again = ok(neurons, root, "--model", "tiny-gpt2", "--device", "cpu", "--objective", "helpful", "--method",
               "magnitude")
    assert f"{path} cannot be read" in again and "recomputing it" in again and "older version" not in again
    path.write_bytes(b"")
    assert "cannot be read" in ok(ablate, root, *SMALL, "--objective", "helpful", "--method", "magnitude", "--tau",
                                  "10")
    assert settings(path)["rm_weights"] == common.rm_fingerprint(rm(root))


@pytest.mark.parametrize("value", ["not a number", float("nan"), None])
def test_a_damaged_cached_score_is_rescored_not_counted(root, value, monkeypatch):
    ok(behaviour, root, *SMALL, "--objective", "helpful")
    cache = rm(root).parent / "scores" / "len48" / "demo-helpful-quality.jsonl"
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    rows[0]["chosen_scores"] = [value]
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = []
    real = common.score_texts
    monkeypatch.setattr(common, "score_texts", lambda m, t, texts, *a, **k: scored.append(len(texts)) or
                        real(m, t, texts, *a, **k))
    output = ok(behaviour, root, *SMALL, "--objective", "helpful")
    assert scored == [2] and "1/2 items reused" in output  # that item's two responses, nothing else


def test_a_non_finite_reward_stops_the_run_naming_the_item(root, monkeypatch):
    monkeypatch.setattr(common, "score_texts", lambda m, t, texts, *a, **k: [float("nan")] * len(texts))
    refused = invoke(behaviour, root, *SMALL, "--objective", "helpful")
    assert refused.exit_code == 1 and "non-finite reward" in refused.output and "subset 'demo-" in refused.output
    assert not list((rm(root).parent / "scores").rglob("*.jsonl"))  # nothing cached


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(root, monkeypatch):
    real = os.replace

    def full(source, target):
        if str(target).endswith(".jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(source, target)

    monkeypatch.setattr(os, "replace", full)
    refused = invoke(behaviour, root, *SMALL, "--objective", "helpful")
    assert refused.exit_code == 1 and "No space left on device" in refused.output
    assert "run the same command again" in refused.output
    assert not [p for p in root.rglob("*.tmp")]


def test_neurons_on_a_full_disk_says_so_in_one_line_instead_of_crashing(root):
    """A real write limit (RLIMIT_FSIZE: writes past 16 KiB fail with EFBIG, as a full disk fails with ENOSPC);
    h5py writing the file itself used to crash the process (rc 139)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    command = [sys.executable, str(ROOT / "experiments" / "neurons.py"), "--model", "tiny-gpt2", "--device", "cpu",
               "--objective", "helpful", "--method", "magnitude", "--runs-dir", str(root / "runs"), "--results-dir",
               str(root / "results")]
    done = subprocess.run(command, preexec_fn=limit, capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert not list(root.rglob("*.tmp")) and not list((root / "runs").rglob("magnitude.h5"))


def test_a_killed_runs_temporary_file_is_removed_by_the_next_write(root):
    folder = rm(root).parent / "neurons"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    left = folder / f".magnitude.h5.{host}-{dead.pid}.x1y2.tmp"
    live = folder / f".magnitude.h5.{host}-{os.getpid()}.z3w4.tmp"  # a concurrent run's: never touched
    for path in (left, live):
        path.write_bytes(b"half")
    ok(neurons, root, "--model", "tiny-gpt2", "--device", "cpu", "--objective", "helpful", "--method", "magnitude")
    assert not left.exists() and live.exists() and (folder / "magnitude.h5").exists()


# ---- benchmark files ---------------------------------------------------------------------------------------------
def item_line(**change):
    return json.dumps({"id": "a", "subset": "s", "prompt": "p", "chosen": ["good"], "rejected": ["bad"], **change})


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes("\ufeff".encode() + (item_line() + "\n").encode())
    assert [item.id for item in common.read_item_path(path)] == ["a"]


def test_a_malformed_line_is_reported_where_it_ends(tmp_path):
    line = '{"id": "a", "subset": "s", "prompt": "p", "chosen": ['
    (tmp_path / "x.jsonl").write_text(item_line() + "\n" + line + "\n")
    with pytest.raises(common.RMTError, match=rf"x.jsonl:2: the line is not valid JSON \(.* at column {len(line) + 1}\)"):
        common.read_item_path(tmp_path / "x.jsonl")


def test_a_lone_surrogate_is_refused_naming_file_and_line(tmp_path):
    (tmp_path / "x.jsonl").write_text(item_line() + "\n" + item_line(id="b", rejected=["bad \\ud800 text"])
                                      .replace("\\\\ud800", "\\ud800") + "\n")
    with pytest.raises(common.RMTError, match=r"x.jsonl:2: malformed benchmark item \('rejected' is not valid Unicode"):
        common.read_item_path(tmp_path / "x.jsonl")
    bad = common.BadRows()
    hh = tmp_path / "harmless-base" / "test.jsonl"
    hh.parent.mkdir()
    good = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no"}
    hh.write_text(json.dumps(good) + "\n" + json.dumps(good).replace("yes", "\\ud800") + "\n")
    assert len(common.read_hh_file(hh, "harmless-base", bad)) == 1 and bad.counts == {"not valid Unicode": 1}


def test_every_script_is_behind_the_one_line_boundary():
    for script in (train, behaviour, neurons, ablate, shared, conflict):
        assert isinstance(script.main, common.Step), script.__name__


def test_a_cut_short_data_file_or_rm_config_is_one_line(root, tmp_path):
    import gzip

    data = tmp_path / "hh"
    shutil.copytree(DEMO, data)
    for subset in common.HH_SUBSETS["mixed"]:
        raw = (data / subset / "train.jsonl").read_bytes()
        (data / subset / "train.jsonl").unlink()
        (data / subset / "train.jsonl.gz").write_bytes(gzip.compress(raw)[:300])
    with pytest.raises(common.RMTError, match=r"train.jsonl.gz cannot be read .*Fetch it again"):
        common.load_hh("harmless", str(data), "train", "test", 0.2, common.BadRows())
    (rm(root) / "config.json").write_text('{"model_type": "gpt2", ')
    told = invoke(behaviour, root, *SMALL, "--objective", "helpful")
    assert told.exit_code == 1 and "config.json is not valid JSON" in told.output


def test_a_damaged_checkpoint_is_refused_with_force_named(tmp_path):
    args = [*TRAIN, "--objective", "harmless", "--save-every", "1"]
    ok(train, tmp_path, *args, "--max-steps", "1")
    checkpoint = common.rm_dir(tmp_path / "runs", "tiny-gpt2", "harmless", 0) / "checkpoint"
    (checkpoint / "progress.json").write_text("{")
    refused = invoke(train, tmp_path, *args)
    assert refused.exit_code == 1 and "progress.json is not valid JSON" in refused.output and "--force" in refused.output
    assert "already trained" not in ok(train, tmp_path, *args, "--force")
