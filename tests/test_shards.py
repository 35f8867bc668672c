"""Several jobs on one runs/ (issue #21 item 3): the lock of a unit (common.unit_lock) — held by one job at a time,
left by a shard to the live job that holds it, waited for without --shard, taken over from a job that died (on
this host at once; on another once it stops refreshing it) — and the --shard option. That two concurrent shards
of every step give the one-run tables is tests/test_pipeline.py's (it reuses the demo run there)."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import common

REPO = Path(__file__).resolve().parents[1]
HOLDER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import common
with common.unit_lock(Path({unit!r}), None, "held by a test"):
    print("held", flush=True)
    if {die!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()
    Path({unit!r} + ".released").write_text("")
"""


def holder(unit: Path, die: bool = False) -> subprocess.Popen:
    """Another job holding `unit`'s lock until its stdin is closed (or, with `die`, SIGKILLed while holding it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), unit=str(unit), die=die)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def lock_of(unit: Path) -> Path:
    return unit.parent / f".{unit.name}.lock"


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(common, "LOCK_POLL", 0.05)


def test_a_shard_leaves_a_unit_that_a_live_job_holds_and_says_which(tmp_path, quick, capsys):
    unit = tmp_path / "scores"
    other = holder(unit)
    try:
        shard = common.Shard(2, 3)
        with common.unit_lock(unit, shard, "helpful seed 0 plain") as mine:
            assert mine is False
        assert shard.left == ["helpful seed 0 plain"]
        assert f"left to {socket.gethostname().replace('.', '_')}-{other.pid}" in capsys.readouterr().err
        assert lock_of(unit).exists()  # still the other job's
    finally:
        other.communicate("\n")


def test_without_a_shard_a_held_unit_is_waited_for_then_taken(tmp_path, quick):
    unit = tmp_path / "neurons"
    other = holder(unit)
    threading.Timer(0.5, lambda: other.stdin.close()).start()
    with common.unit_lock(unit, None, "mixed seed 0 neuron files") as mine:
        assert mine is True
        assert Path(f"{unit}.released").exists()  # only once the other job had finished with it
        assert json.loads(lock_of(unit).read_text())["pid"] == os.getpid()
    other.wait()
    assert not lock_of(unit).exists()


def test_the_lock_of_a_job_killed_on_this_host_is_taken_over_at_once(tmp_path, quick, capsys):
    unit = tmp_path / "seed0"
    dead = holder(unit, die=True)
    dead.wait()
    assert dead.returncode == -signal.SIGKILL and lock_of(unit).exists()
    with common.unit_lock(unit, common.Shard(1, 2), "helpful seed 0 training") as mine:
        assert mine is True
    assert "which is gone" in capsys.readouterr().err
    assert not lock_of(unit).exists()


def test_another_hosts_lock_is_taken_over_only_once_it_stops_being_refreshed(tmp_path, quick):
    unit = tmp_path / "conflict.h5"
    lock_of(unit).write_text(json.dumps({"owner": "node7-4242", "host": "node7", "pid": 4242, "shard": "3/4"}))
    with common.unit_lock(unit, common.Shard(1, 4), "conflict") as mine:
        assert mine is False  # fresh: its owner may well be computing it
    stale = time.time() - common.LOCK_STALE - 5
    os.utime(lock_of(unit), (stale, stale))
    with common.unit_lock(unit, common.Shard(1, 4), "conflict") as mine:
        assert mine is True


def test_a_held_lock_is_refreshed_while_its_unit_is_computed_and_removed_when_the_block_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "LOCK_BEAT", 0.05)
    unit = tmp_path / "scores"
    with pytest.raises(RuntimeError):
        with common.unit_lock(unit, None, "scores"):
            old = time.time() - 1000
            os.utime(lock_of(unit), (old, old))
            deadline = time.monotonic() + 30
            while lock_of(unit).stat().st_mtime < old + 1:
                assert time.monotonic() < deadline, "the lock was never refreshed"
                time.sleep(0.02)
            raise RuntimeError("the unit failed")
    assert not lock_of(unit).exists()


def test_shard_order_starts_each_job_at_its_own_share_of_the_rms():
    rms = [("helpful", 0), ("helpful", 1), ("harmless", 0), ("harmless", 1), ("mixed", 0), ("mixed", 1)]
    assert common.shard_order(rms, None) == rms
    assert common.shard_order(rms, common.Shard(1, 2)) == rms
    assert common.shard_order(rms, common.Shard(2, 2)) == rms[3:] + rms[:3]
    assert sorted(common.shard_order(rms, common.Shard(3, 4))) == sorted(rms)


@pytest.mark.parametrize("value", ["0/2", "3/2", "2", "a/b", "1/0"])
def test_a_bad_shard_is_a_usage_error(tmp_path, value):
    sys.path.insert(0, str(REPO / "experiments"))
    import behaviour

    result = CliRunner().invoke(behaviour.main, ["--shard", value, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--shard" in result.output and "K/N" in result.output


def test_force_with_a_shard_is_refused(tmp_path):
    sys.path.insert(0, str(REPO / "experiments"))
    import neurons

    result = CliRunner().invoke(neurons.main, ["--shard", "1/2", "--force", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--force with --shard" in result.output
