"""Every analysis step under torchrun with 2 processes (gloo, CPU) gives what one process gives: per-item scores and
every CSV / Markdown table identical, the .h5 sums to 1e-9 relative; each file written once, by rank 0, and the run
record names the processes; training under accelerate launch with 2 processes follows the one-process run; and a
rank killed (SIGKILL) mid-step or mid-training leaves nothing under a final name that a rerun would take for done,
while rerunning the same command finishes with the files an uninterrupted run makes.
Run as a script (under torchrun), this file runs the analysis steps one after another in one process group, so the
suite pays for one launch; `… test_distributed.py STEP ARG…` runs one step (or train) alone, with RMT_TEST_KILL
making one rank kill itself at a set point (die_at)."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments"), str(ROOT / "tests")]

DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")
# 20 pairs in batches of 4: the 5 helpful batches conflict.py's test needs at least
DATA = ["--data-dir", DEMO, "--max-pairs", "20", "--max-length", "48", "--batch-size", "4", "--device", "cpu"]
BENCH = ["--bench", "demo", "--max-items", "4"]
STEPS = [("neurons", [*DATA, "--method", "magnitude", "--method", "change", "--method", "attribution"]),
         ("behaviour", [*BENCH, "--max-length", "48", "--batch-size", "4", "--device", "cpu"]),
         ("ablate", [*DATA, *BENCH, "--tau", "50", "--method", "magnitude", "--method", "random"]),
         ("shared", [*DATA, *BENCH, "--tau", "50"]),
         ("conflict", [*DATA, "--tau", "50"])]


def run_steps(runs: str, results: str) -> None:
    import importlib

    for name, args in STEPS:
        importlib.import_module(name).main(["--runs-dir", runs, "--results-dir", results, *args],
                                           standalone_mode=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str | Path, *args, env: dict | None = None, cwd: Path | None = None) \
        -> subprocess.CompletedProcess:
    """`script` with `args` in 2 gloo processes (one thread each: the machine may have 2 cores); --standalone lets
    torchrun take a free port itself, where one picked here could be taken by another run before torchrun binds it."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})})


def accelerate_launch(script: str | Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`script` with `args` under accelerate launch in 2 CPU processes. `--multi_gpu` is accelerate's launcher of
    several processes (torchrun's); with train.py's --device cpu they join over gloo. (`--cpu --num_processes 2`
    would start ONE process: accelerate's plain launcher ignores the count without mpirun.)"""
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(free_port()), str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same three tiny RMs analysed by every step in one process and in two."""
    import torch.distributed

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from conftest import save_tiny_rm

    root = tmp_path_factory.mktemp("distributed")
    for i, objective in enumerate(("helpful", "harmless", "mixed")):
        save_tiny_rm(root / "one" / "runs", objective, perturb_seed=i + 1)
    shutil.copytree(root / "one" / "runs", root / "two" / "runs")
    run_steps(str(root / "one" / "runs"), str(root / "one" / "results"))
    result = torchrun(__file__, root / "two" / "runs", root / "two" / "results", cwd=root)
    assert result.returncode == 0, output(result)
    return root / "one", root / "two", result


def files(root: Path, pattern: str) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob(pattern))


def test_two_processes_write_the_same_scores_and_tables(one_and_two):
    one, two, _ = one_and_two
    for pattern, folder in (("*.jsonl", "runs"), ("*.csv", "results"), ("*.md", "results")):
        names = files(one / folder, pattern)
        assert names and names == files(two / folder, pattern), pattern
        for name in names:
            assert (one / folder / name).read_bytes() == (two / folder / name).read_bytes(), name


def assert_same_h5(one: Path, two: Path) -> None:
    """Every dataset of `two` equals `one`'s to 1e-9 relative (sums taken in another order)."""
    import h5py
    import numpy

    with h5py.File(one) as a, h5py.File(two) as b:
        def compare(key, dataset):
            if isinstance(dataset, h5py.Dataset):
                numpy.testing.assert_allclose(b[key][()], dataset[()], rtol=1e-9, atol=1e-12, err_msg=f"{two}:{key}")
        a.visititems(compare)


def test_two_processes_sum_the_neuron_and_conflict_files_to_float_precision(one_and_two):
    one, two, _ = one_and_two
    names = files(one / "runs", "*.h5")
    assert len(names) == 3 * 5 and names == files(two / "runs", "*.h5")  # 4 methods and conflict.h5 per RM
    for name in names:
        assert_same_h5(one / "runs" / name, two / "runs" / name)


def test_rank_zero_alone_writes_and_the_run_record_names_the_processes(one_and_two):
    _, two, result = one_and_two
    assert not list(two.rglob("*.tmp"))
    record = json.loads((two / "results" / "tiny-gpt2" / "ablate" / "run.json").read_text())
    assert record["processes"]["world_size"] == 2 and record["processes"]["backend"] == "gloo"
    assert "processes" not in json.loads((two.parent / "one" / "results" / "tiny-gpt2" / "ablate" /
                                         "run.json").read_text())
    assert result.stdout.count("ablation sweep of 3 RMs") == 1  # one report line, not one per rank


KILL = "RMT_TEST_KILL"  # "<rank>:<when>:<what>" (die_at), read only by this file run as a script


def die_at(spec: str) -> None:
    """Make rank <rank> of this launch SIGKILL itself (no cleanup, no `finally`, as the OOM killer or a lost node)
    at one set point of its work, so that a kill lands in the same place every run: `batch:<desc>` once its first
    batch of the neuron pass `desc` (ScoringPass.run's, e.g. "neurons harmless") is done; `write:<end of a path>`
    with that file complete under its temporary name, not yet renamed onto its own; `checkpoint:<step>` once
    train.py's checkpoint of that optimizer step is in place."""
    rank, when, what = spec.split(":", 2)
    if int(os.environ.get("RANK", "0")) != int(rank):
        return
    import common

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if when == "batch":
        run, share = common.ScoringPass.run, common.my_share

        def first_batch_then_die(batches):
            for k, batch in enumerate(share(batches)):
                if k == 1:  # the loop asks for its second batch: the first is done
                    die()
                yield batch

        def run_dying(self, batches, *args, **kwargs):
            common.my_share = first_batch_then_die if kwargs.get("desc") == what else share
            try:
                return run(self, batches, *args, **kwargs)
            finally:
                common.my_share = share

        common.ScoringPass.run = run_dying
    elif when == "write":
        atomic_path = common.atomic_path

        @contextlib.contextmanager
        def atomic_path_dying(path):
            with atomic_path(path) as tmp:
                yield tmp
                if str(path).endswith(what):
                    die()

        common.atomic_path = atomic_path_dying
    elif when == "checkpoint":
        import train

        save_checkpoint = train.save_checkpoint

        def save_checkpoint_dying(accelerator, checkpoint, progress, options):
            save_checkpoint(accelerator, checkpoint, progress, options)
            if progress["step"] == int(what):
                die()

        train.save_checkpoint = save_checkpoint_dying
    else:
        raise ValueError(f"{KILL}={spec}: no such point")


KILLED_RMS = ("helpful", "harmless")  # the first done before the kill, the second being scored when it comes
NEURON_ARGS = [arg for objective in KILLED_RMS for arg in ("--objective", objective)] + dict(STEPS)["neurons"]
NEURON_METHODS = ("attribution", "change", "magnitude")


@pytest.mark.parametrize("kill, leaves_a_temporary", [
    ("1:batch:neurons harmless", False),  # rank 1 inside the pass: rank 0 then fails in the sum over the ranks
    ("0:write:harmless/seed0/neurons/magnitude.h5", True)])  # rank 0 inside a write: rank 1 fails at its barrier
def test_a_rank_killed_mid_step_leaves_no_final_named_file_and_the_rerun_gives_the_uninterrupted_files(
        one_and_two, tmp_path, kill, leaves_a_temporary):
    """neurons.py in 2 processes, one rank killed while the second RM is scored: the launch fails, the first RM's
    files are kept, the second's exist under no final name (a dead rank 0's temporary aside, which the next write
    of that file deletes), and the same command run again reuses the first, scores the second and ends with the
    files one uninterrupted process made (the fixture's), every temporary gone."""
    one, _, _ = one_and_two
    runs, results = tmp_path / "runs", tmp_path / "results"
    folder = {objective: runs / "tiny-gpt2" / objective / "seed0" for objective in KILLED_RMS}
    for objective in KILLED_RMS:
        shutil.copytree(one / "runs" / "tiny-gpt2" / objective / "seed0" / "rm", folder[objective] / "rm")
    args = ["--runs-dir", runs, "--results-dir", results, *NEURON_ARGS]

    killed = torchrun(__file__, "neurons", *args, env={KILL: kill}, cwd=tmp_path)
    assert killed.returncode != 0, output(killed)
    h5 = sorted(p.relative_to(runs) for p in runs.rglob("*.h5"))
    assert h5 == [folder["helpful"].relative_to(runs) / "neurons" / f"{m}.h5" for m in NEURON_METHODS], h5
    assert not (results / "tiny-gpt2" / "neurons").exists()  # the tables come once every RM is scored
    left = list(runs.rglob("*.tmp"))
    assert len(left) == leaves_a_temporary and all(p.parent == folder["harmless"] / "neurons" and
                                                   p.name.startswith(".magnitude.h5.") for p in left), left

    rerun = torchrun(ROOT / "experiments" / "neurons.py", *args, cwd=tmp_path)
    assert rerun.returncode == 0, output(rerun)
    assert "[helpful seed 0] neuron files up to date" in rerun.stderr, output(rerun)
    assert not list(tmp_path.rglob("*.tmp")), list(tmp_path.rglob("*.tmp"))
    for objective in KILLED_RMS:
        for method in NEURON_METHODS:
            name = Path("tiny-gpt2") / objective / "seed0" / "neurons" / f"{method}.h5"
            assert_same_h5(one / "runs" / name, runs / name)


TRAIN_SCRIPT = ROOT / "experiments" / "train.py"
TRAIN_ARGS = ["--model", "tiny-gpt2", "--objective", "helpful", "--data-dir", DEMO, "--train-split", "test",
              "--max-pairs", "32", "--max-eval-pairs", "16", "--max-length", "64", "--batch-size", "8", "--device",
              "cpu", "--lr", "1e-3"]  # 2 epochs of 4 batches: 8 optimizer steps
TRAINED_RM = Path("tiny-gpt2") / "helpful" / "seed0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same RM trained in one process and under accelerate launch in two."""
    root = tmp_path_factory.mktemp("train")
    one = subprocess.run([sys.executable, TRAIN_SCRIPT, *TRAIN_ARGS, "--runs-dir", root / "one", "--results-dir",
                          root / "one-results"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, output(one)
    two = accelerate_launch(TRAIN_SCRIPT, *TRAIN_ARGS, "--runs-dir", root / "two", "--results-dir",
                            root / "two-results")
    assert two.returncode == 0, output(two)
    return root / "one" / TRAINED_RM, root / "two" / TRAINED_RM


def metrics(run: Path) -> dict:
    return json.loads((run / "train.json").read_text())["metrics"]


def weights_apart(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = (load_file(run / "rm" / "model.safetensors") for run in (a, b))
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_training_in_two_processes_follows_the_same_loss_curve(trained):
    """accelerate launch with 2 CPU processes and the same global batch: the same optimizer steps and loss curve
    (to float tolerance: the two halves' gradients are averaged in another order), the same held-out accuracy, and
    weights within what AdamW's normalisation makes of that rounding (1e-3 after 8 steps at lr 1e-3)."""
    import torch
    from safetensors.torch import load_file

    one, two = trained
    record = json.loads((two / "train.json").read_text())
    assert record["processes"]["world_size"] == 2 and "processes" not in json.loads((one / "train.json").read_text())
    assert metrics(one)["steps"] == metrics(two)["steps"] == 8
    assert metrics(two)["loss_curve"] == pytest.approx(metrics(one)["loss_curve"], abs=1e-5)
    assert metrics(two)["eval_accuracy"] == metrics(one)["eval_accuracy"]
    assert weights_apart(one, two) < 1e-3
    assert all(torch.isfinite(t).all() for t in load_file(two / "rm" / "model.safetensors").values())


def test_two_process_training_killed_after_a_checkpoint_resumes_from_it_and_ends_as_an_uninterrupted_run(
        trained, tmp_path):
    """Rank 1 killed once the checkpoint of step 3 (of 8) is in place: the launch fails with that checkpoint and
    no RM; the same accelerate launch again resumes from step 3 and ends with the uninterrupted 2-process run's
    loss curve, held-out accuracy and weights (to float tolerance), its checkpoint gone."""
    _, two = trained
    args = [*TRAIN_ARGS, "--save-every", "3", "--runs-dir", tmp_path / "runs", "--results-dir", tmp_path / "results"]
    run = tmp_path / "runs" / TRAINED_RM

    killed = accelerate_launch(__file__, "train", *args, env={KILL: "1:checkpoint:3"})
    assert killed.returncode != 0, output(killed)
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 3
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]  # no RM, no train.json, no .tmp or .old

    resumed = accelerate_launch(TRAIN_SCRIPT, *args)
    assert resumed.returncode == 0, output(resumed)
    assert resumed.stdout.count("resuming from step 3 of 8") == 1
    assert metrics(run)["resumed_from_step"] == 3
    assert metrics(run)["loss_curve"] == pytest.approx(metrics(two)["loss_curve"], abs=1e-5)
    assert metrics(run)["eval_accuracy"] == metrics(two)["eval_accuracy"]
    assert weights_apart(two, run) < 1e-5
    assert sorted(p.name for p in run.iterdir()) == ["rm", "train.json"]


if __name__ == "__main__":
    if os.environ.get(KILL):
        die_at(os.environ[KILL])
    if sys.argv[1] in ("train", *dict(STEPS)):  # one step alone, with its own arguments
        import importlib

        importlib.import_module(sys.argv[1]).main(sys.argv[2:])
    else:
        run_steps(sys.argv[1], sys.argv[2])
