"""run_all.sh's command line: presets, overrides, --force STEP and the message of a failing step. These run the
script with the virtual environment the suite runs in (set up by `bash run_all.sh test`), so no setup happens."""
import os
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
    assert keys == {"MODEL", "SEEDS", "COMMON_ARGS", "DATA_ARGS", "TRAIN_ARGS", "BENCH_ARGS", "ABLATE_ARGS",
                    "NEURON_ARGS", "SHARED_ARGS", "CONFLICT_ARGS"}
