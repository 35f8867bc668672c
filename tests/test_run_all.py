"""run_all.sh's command line: presets, overrides, --force STEP and the message of a failing step. These run the
script with the virtual environment the suite runs in (set up by `bash run_all.sh test`), so no setup happens."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
needs_setup_venv = pytest.mark.skipif(not (VENV / ".rmt-installed").exists(),
                                      reason="not running inside the venv that run_all.sh sets up")


def run_all(*args, **env):
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RMT_VENV": str(VENV), **env})


@needs_setup_venv
def test_an_unknown_preset_or_step_is_refused_with_the_choices():
    result = run_all("--preset", "huge")
    assert result.returncode == 2 and "no preset 'huge'" in result.stderr and "demo" in result.stderr
    result = run_all("--force", "everything")
    assert result.returncode == 2 and "--force everything: no such step" in result.stderr
    result = run_all("STEP=grid")
    assert result.returncode == 2 and "STEP=grid: no such step" in result.stderr
    result = run_all("SHARD=2")
    assert result.returncode == 2 and "SHARD=2: K/N" in result.stderr


@needs_setup_venv
def test_a_failing_step_names_itself_its_log_and_the_command_to_rerun_it():
    result = run_all("DATA_ARGS=--data-dir /nonexistent-folder", "SEEDS=3")
    assert result.returncode == 1
    assert "step 'train' failed; its log is results/logs/tiny-gpt2/train.log" in result.stderr
    assert "experiments/train.py --model tiny-gpt2 --seed 3 --max-length 256 --data-dir /nonexistent-folder" \
        in result.stderr  # the preset's settings with the overrides applied
    assert "'/nonexistent-folder' does not exist" in (REPO / "results/logs/tiny-gpt2/train.log").read_text()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "data" / "presets").glob("*.env")))
def test_every_preset_sets_every_setting_the_pipeline_reads(preset):
    text = (REPO / "data" / "presets" / f"{preset}.env").read_text()
    keys = {line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert keys == {"MODELS", "SEEDS", "COMMON_ARGS", "DATA_ARGS", "TRAIN_ARGS", "BENCH_ARGS", "ABLATE_ARGS",
                    "NEURON_ARGS", "SHARED_ARGS", "CONFLICT_ARGS"}


@needs_setup_venv
def test_model_and_models_together_or_no_backbone_are_refused():
    result = run_all("MODEL=tiny-gpt2", "MODELS=tiny-gpt2 tiny-llama")
    assert result.returncode == 2 and "MODEL and MODELS are both set" in result.stderr
    result = run_all("MODELS=")
    assert result.returncode == 2 and "MODELS is empty" in result.stderr


@needs_setup_venv
def test_a_failing_backbone_is_named_at_the_end_after_the_next_one_ran_and_the_grid_lists_it(tmp_path):
    checkout = tmp_path / "rm-tension"  # a copy: this run writes results/report.md and results/grid/
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "results", "build",
                                                                  "*.egg-info", "__pycache__"))
    result = subprocess.run(["bash", "run_all.sh", "MODELS=tiny-gpt2 tiny-llama", "SEEDS=3",
                             "DATA_ARGS=--data-dir /nonexistent-folder"], cwd=checkout, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "RMT_VENV": str(VENV)})
    assert result.returncode == 1
    assert "== backbone 2/2: tiny-llama ==" in result.stdout  # the first one's failure did not stop the second
    assert "step 'train' failed; its log is results/logs/tiny-llama/train.log" in result.stderr
    assert "2 of 2 backbones failed: tiny-gpt2 tiny-llama" in result.stderr and "none is complete" in result.stderr
    index = (checkout / "results" / "report.md").read_text()
    assert "6 RMs in this grid (2 backbones × 3 objectives × 1 seed): 0 analysed" in index
    assert "tiny-llama mixed seed 3" in index


@needs_setup_venv
def test_rms_analyse_rms_trained_elsewhere_without_training(tmp_path):
    """RMS="mixed=DIR": no training; behaviour, neurons, ablate and shared --within mixed on that RM (NPROC=2: each
    through torchrun in 2 processes); the conflict step, whose sets need the helpful and harmless RMs, says it is
    skipped."""
    from conftest import save_tiny_rm

    rm = save_tiny_rm(tmp_path / "elsewhere", "mixed", perturb_seed=3)
    checkout = tmp_path / "rm-tension"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "results", "build",
                                                                  "*.egg-info", "__pycache__"))
    result = subprocess.run(["bash", "run_all.sh", f"RMS=mixed={rm}", "MODEL=mine", "ABLATE_ARGS=--tau 10",
                             "COMMON_ARGS=--max-length 64", "NEURON_ARGS=--max-pairs 16", "NPROC=2"], cwd=checkout,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "RMT_VENV": str(VENV)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1/6 train" not in result.stdout and "== 5/6 shared" in result.stdout
    assert "6/6 conflict skipped" in result.stdout
    assert "2 processes: the analysis steps through torchrun" in result.stdout
    report = (checkout / "results" / "mine" / "report.md").read_text()
    assert "RMs trained elsewhere (`--rm`" in report and "## The tension inside the mixed RM" in report
    result = subprocess.run(["bash", "run_all.sh", f"RMS=mixed={rm}", "MODELS=a b"], cwd=checkout,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "RMT_VENV": str(VENV)})
    assert result.returncode == 2 and "MODELS does not apply" in result.stderr
