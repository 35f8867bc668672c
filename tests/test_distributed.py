"""Every analysis step under torchrun with 2 processes (gloo, CPU) gives what one process gives: per-item scores and
every CSV / Markdown table identical, the .h5 sums to 1e-9 relative; each file written once, by rank 0, and the run
record names the processes; and training under accelerate launch with 2 processes follows the one-process run.
Run as a script (under torchrun), this file runs the analysis steps one after another in one process group, so the
suite pays for one launch."""
import os
import shutil
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-addr", "127.0.0.1", "--master-port", str(free_port()), __file__,
                             str(root / "two" / "runs"), str(root / "two" / "results")],
                            capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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


def test_two_processes_sum_the_neuron_and_conflict_files_to_float_precision(one_and_two):
    import h5py
    import numpy

    one, two, _ = one_and_two
    names = files(one / "runs", "*.h5")
    assert len(names) == 3 * 5 and names == files(two / "runs", "*.h5")  # 4 methods and conflict.h5 per RM
    for name in names:
        with h5py.File(one / "runs" / name) as a, h5py.File(two / "runs" / name) as b:
            def compare(key, dataset):
                if isinstance(dataset, h5py.Dataset):
                    x, y = dataset[()], b[key][()]
                    numpy.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-12, err_msg=f"{name}:{key}")
            a.visititems(compare)


def test_rank_zero_alone_writes_and_the_run_record_names_the_processes(one_and_two):
    import json

    _, two, result = one_and_two
    assert not list(two.rglob("*.tmp"))
    record = json.loads((two / "results" / "tiny-gpt2" / "ablate" / "run.json").read_text())
    assert record["processes"]["world_size"] == 2 and record["processes"]["backend"] == "gloo"
    assert "processes" not in json.loads((two.parent / "one" / "results" / "tiny-gpt2" / "ablate" /
                                         "run.json").read_text())
    assert result.stdout.count("ablation sweep of 3 RMs") == 1  # one report line, not one per rank


if __name__ == "__main__":
    run_steps(sys.argv[1], sys.argv[2])


def test_training_in_two_processes_follows_the_same_loss_curve(tmp_path):
    """accelerate launch with 2 CPU processes and the same global batch: the same optimizer steps and loss curve
    (to float tolerance: the two halves' gradients are averaged in another order), the same held-out accuracy, and
    weights within what AdamW's normalisation makes of that rounding (1e-3 after 8 steps at lr 1e-3)."""
    import json

    import torch
    from safetensors.torch import load_file

    args = [str(ROOT / "experiments" / "train.py"), "--model", "tiny-gpt2", "--objective", "helpful", "--data-dir",
            DEMO, "--train-split", "test", "--max-pairs", "32", "--max-eval-pairs", "16", "--max-length", "64",
            "--batch-size", "8", "--device", "cpu", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--main_process_port", str(free_port())]
    for command, name in (([sys.executable], "one"), (launch, "two")):
        result = subprocess.run([*command, *args, "--runs-dir", str(tmp_path / name), "--results-dir",
                                 str(tmp_path / f"{name}-results")], capture_output=True, text=True, timeout=300,
                                env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = Path("tiny-gpt2") / "helpful" / "seed0"
    one, two = (json.loads((tmp_path / name / run / "train.json").read_text())["metrics"] for name in ("one", "two"))
    assert one["steps"] == two["steps"] == 8
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], abs=1e-5)
    assert two["eval_accuracy"] == one["eval_accuracy"]
    a, b = (load_file(tmp_path / name / run / "rm" / "model.safetensors") for name in ("one", "two"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3
    assert all(torch.isfinite(t).all() for t in b.values())
