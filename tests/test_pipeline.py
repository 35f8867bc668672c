"""The whole pipeline through run_all.sh (issue #12): the demo preset in a fresh copy of the repository, a run
killed with SIGKILL and started again, a changed setting with --force STEP together with the demo-grid preset's
second backbone and grid (issue #20), and a second run refused. These are the suite's longest tests, so the demo
runs with one τ instead of six, 96-token transcripts and the conflict of the mixed RM alone (its six steps in well
under half the time; the preset itself is timed in the README); they use the virtual environment the suite runs
in."""
import contextlib
import csv
import fcntl
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
MODEL = "tiny-gpt2"
TAUS = "--tau 10"
# Overrides of data/presets/demo.env: one τ, and the conflict measured in the mixed RM alone (the measurement; the
# single-objective references are conflict.py's tests' business).
SHORTER = (f"ABLATE_ARGS={TAUS}", "COMMON_ARGS=--max-length 96", "CONFLICT_ARGS=--objective mixed")
# What a checkout holds besides its code: outputs, the venv, build products.
NOT_CODE = shutil.ignore_patterns(".git", ".venv", ".gpu", "runs", "results", "build", "*.egg-info", "__pycache__",
                                  ".pytest_cache")

pytestmark = pytest.mark.skipif(not (VENV / ".rmt-installed").exists(),
                                reason="not running inside the venv that run_all.sh sets up")


def start(checkout: Path, *args) -> subprocess.Popen:
    """run_all.sh in the background; its output goes to a file (a pipe nobody reads would fill and stall it)."""
    output = (checkout.parent / "run_all.out").open("w")  # each start begins the file anew
    # A session of its own, so that `kill` reaches the whole pipeline.
    return subprocess.Popen(["bash", "run_all.sh", *SHORTER, *args], cwd=checkout, start_new_session=True,
                            text=True, stdout=output, stderr=subprocess.STDOUT,
                            env={**os.environ, "RMT_VENV": str(VENV)})


def lock_is_free(checkout: Path) -> bool:
    """Whether run_all.sh's lock could be taken now (no run, and no step of a killed one, holds it)."""
    path = checkout / "results" / ".run_all.lock"
    if not path.exists():
        return True
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True


def kill(checkout: Path, process: subprocess.Popen):
    """SIGKILL run_all.sh, its python step and tee at once, as a crash would; return once they are gone."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # The signal is immediate, but a python step with its model mapped takes a moment to exit, and run_all.sh
    # rightly refuses to start while the lock it inherited is held.
    deadline = time.monotonic() + 60
    while not lock_is_free(checkout):
        assert time.monotonic() < deadline, "the killed run still holds the lock after a minute"
        time.sleep(0.05)


def printed(checkout: Path) -> str:
    return (checkout.parent / "run_all.out").read_text()


def run(checkout: Path, *args) -> str:
    process = start(checkout, *args)
    try:
        process.wait(timeout=900)
    finally:  # a timeout must not leave the pipeline running behind the test
        kill(checkout, process)
    assert process.returncode == 0, printed(checkout)
    return printed(checkout)


def kill_when(checkout: Path, process: subprocess.Popen, ready, what: str) -> str:
    """SIGKILL the whole run the moment `ready()` holds; what it printed until then."""
    deadline = time.monotonic() + 600
    try:
        while not ready():
            assert process.poll() is None, f"the run ended before {what}:\n{printed(checkout)}"
            assert time.monotonic() < deadline, f"waited 10 minutes for {what}"
            time.sleep(0.05)
    finally:
        kill(checkout, process)
    return printed(checkout)


def tables(checkout: Path) -> dict[str, str]:
    folder = checkout / "results" / MODEL
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.suffix in (".csv", ".md")}


def assert_same_tables(got: dict[str, str], want: dict[str, str]):
    """Markdown byte for byte; CSV cell by cell, numbers to 1e-9 (a resumed sum may round differently in its last
    bits). No table records a wall-clock time."""
    assert sorted(got) == sorted(want)
    for name, text in want.items():
        if not name.endswith(".csv"):
            assert got[name] == text, name
            continue
        rows, expected = list(csv.DictReader(io.StringIO(got[name]))), list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(expected), name
        for row, reference in zip(rows, expected):
            for column, value in reference.items():
                try:
                    assert float(row[column]) == pytest.approx(float(value), rel=1e-9, abs=1e-9, nan_ok=True), \
                        (name, column)
                except ValueError:
                    assert row[column] == value, (name, column)


def file_times(checkout: Path) -> dict[str, int]:
    return {str(p.relative_to(checkout)): p.stat().st_mtime_ns for p in (checkout / "runs").rglob("*") if p.is_file()}


def leftovers(checkout: Path) -> list[Path]:
    """Files that an interrupted write leaves: atomic_path's temporaries, checkpoints of finished RMs."""
    return [p for folder in ("runs", "results") for p in (checkout / folder).rglob("*")
            if p.name.endswith(".tmp") or p.name.endswith(".old")]


def copy_of(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    return target


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """The demo preset, run once from a copy of the code with nothing made yet."""
    checkout = tmp_path_factory.mktemp("demo") / "rm-tension"
    shutil.copytree(REPO, checkout, ignore=NOT_CODE)
    return checkout, run(checkout)


def test_the_demo_preset_writes_every_step_table_figure_and_the_report(demo):
    checkout, output = demo
    for index, step in enumerate(("train", "behaviour", "neurons", "ablate", "shared", "conflict"), start=1):
        assert f"== {index}/6 {step} (" in output
        assert (checkout / "results" / "logs" / MODEL / f"{step}.log").stat().st_size > 0
    report = (checkout / "results" / MODEL / "report.md").read_text()
    for section in ("train", "behaviour", "neurons", "ablate", "shared", "conflict"):
        assert (checkout / "results" / MODEL / section / "report_section.md").exists()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) >= 9, report  # the loss curves, Figs. 2–7, the conflict figures
    for figure in figures:
        assert (checkout / "results" / MODEL / figure).stat().st_size > 0, figure
    # one backbone: the index links its report and nothing else (no grid section)
    index = (checkout / "results" / "report.md").read_text()
    assert index == f"# rm-tension reports\n\n- [{MODEL}]({MODEL}/report.md)\n"
    assert "±" in report  # seeds 0 and 1: mean ± std over seeds
    assert not leftovers(checkout)


def test_a_run_killed_twice_with_sigkill_ends_with_the_tables_of_an_uninterrupted_one(demo, tmp_path):
    reference, _ = demo
    checkout = copy_of(reference, tmp_path / "rm-tension")
    # The mixed seed-1 RM and every report are gone: the restart redoes them through all six steps.
    shutil.rmtree(checkout / "results" / MODEL)
    seed1 = checkout / "runs" / MODEL / "mixed" / "seed1"
    shutil.rmtree(seed1)
    kill_when(checkout, start(checkout), lambda: (seed1 / "checkpoint").is_dir(),
              "a checkpoint of the mixed seed-1 RM")
    restarted = kill_when(checkout, start(checkout), lambda: any((seed1 / "ablate").rglob("scores/*/*.jsonl")),
                          "the first ablation scores")
    run(checkout)

    # Only the interrupted unit is redone: the RMs finished before the kill are not retrained.
    assert re.search(r"\[mixed seed 1\] resuming from step [1-9]", restarted), restarted
    assert restarted.count("already trained") == 5, restarted
    assert_same_tables(tables(checkout), tables(reference))
    assert not leftovers(checkout)


def test_the_demo_grid_adds_a_backbone_and_a_changed_setting_redoes_only_what_it_touches(demo, tmp_path):
    """The demo-grid preset (issue #20) in the demo's checkout, with one τ more and behaviour forced: tiny-gpt2
    redoes only those, tiny-llama runs all six steps, then the grid over both. One seed and one neuron method (a
    subset of what tiny-gpt2 has, so it reuses its files) keep the second backbone cheap."""
    checkout = copy_of(demo[0], tmp_path / "rm-tension")
    before = file_times(checkout)
    output = run(checkout, "--preset", "demo-grid", "SEEDS=0", f"ABLATE_ARGS={TAUS} --tau 50 --method magnitude",
                 "NEURON_ARGS=--method magnitude", "--force", "behaviour")

    after = file_times(checkout)
    mine = {path for path in set(after) - set(before) if path.startswith(f"runs/{MODEL}/")}
    assert mine and all(re.search(r"/seed0/ablate/zero-magnitude-tau50/", path) for path in mine), sorted(mine)[:5]
    assert ",50," in (checkout / "results" / MODEL / "ablate" / "sweep.csv").read_text()
    assert set(before) <= set(after)
    redone = {path for path in before if after[path] != before[path]}
    # behaviour.py scores the benchmark items; the held-out pairs (hh-*) in the same folder are ablate.py's.
    behaviour_scores = {path for path in before if re.search(r"/seed0/scores/len96/demo-", path)}
    assert redone == behaviour_scores

    assert "== backbone 2/2: tiny-llama ==" in output and "== grid (" in output
    for objective in ("helpful", "harmless", "mixed"):
        assert (checkout / "runs" / "tiny-llama" / objective / "seed0" / "rm").is_dir()
    index = (checkout / "results" / "report.md").read_text()
    assert "- [tiny-gpt2](tiny-gpt2/report.md)\n- [tiny-llama](tiny-llama/report.md)" in index
    assert "6 RMs in this grid (2 backbones × 3 objectives × 1 seed): 6 analysed" in index
    ablation = list(csv.DictReader((checkout / "results" / "grid" / "ablation.csv").open()))
    assert len(ablation) == 6 and all(row["units"] == row["backbones"] == "2" for row in ablation)
    assert (checkout / "results" / "grid" / "fig6_ablation.png").stat().st_size > 0
    assert not leftovers(checkout)


def test_a_second_run_in_the_same_checkout_is_refused_while_the_first_runs(demo, tmp_path):
    checkout = copy_of(demo[0], tmp_path / "rm-tension")
    first = start(checkout, "--force", "train")
    try:
        deadline = time.monotonic() + 120
        while lock_is_free(checkout):  # until the first run holds the lock
            assert first.poll() is None and time.monotonic() < deadline, printed(checkout)
            time.sleep(0.05)
        second = subprocess.run(["bash", "run_all.sh"], cwd=checkout, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "RMT_VENV": str(VENV)})
        assert second.returncode == 1 and "another run_all.sh" in second.stderr
    finally:
        kill(checkout, first)


FAKE_SBATCH = """#!{python}
import json, sys
from pathlib import Path
calls = Path({log!r})
previous = calls.read_text().splitlines() if calls.exists() else []
calls.write_text("".join(line + "\\n" for line in previous + [json.dumps(sys.argv[1:])]))
print(1000 + len(previous))
"""


def test_the_slurm_script_runs_each_step_as_concurrent_shards_and_its_last_job_writes_the_one_run_tables(demo,
                                                                                                        tmp_path):
    """docs/slurm/submit_paper.sh with PRESET=demo and JOBS=2 against a stand-in for sbatch that records each
    submission; the test then runs every array's jobs at once (each step after the previous one, as afterany
    orders them) and the last job. The mixed seed-1 RM is gone: its training is one unit, its ablations and partitions
    several, which the two shards share."""
    reference, _ = demo
    checkout = copy_of(reference, tmp_path / "rm-tension")
    shutil.rmtree(checkout / "results" / MODEL)
    shutil.rmtree(checkout / "runs" / MODEL / "mixed" / "seed1")
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.calls"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable, log=str(log)))
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "RMT_VENV": str(VENV), "PATH": f"{bin_dir}:{os.environ['PATH']}", "PRESET": "demo",
           "JOBS": "2", **dict(override.split("=", 1) for override in SHORTER)}
    submitted = subprocess.run(["bash", "docs/slurm/submit_paper.sh"], cwd=checkout, env=env, capture_output=True,
                               text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 7
    for index, call in enumerate(calls[1:], start=1):  # each after the previous one
        assert f"--dependency=afterany:{1000 + index - 1}" in call

    def jobs(wrap: str, tasks) -> str:
        """Run the job `wrap` once per array task, all at once; what they printed."""
        outputs = [tmp_path / f"job-{len(list(tmp_path.glob('job-*'))):02d}-{task}.out" for task in tasks]
        running = [subprocess.Popen(["bash", "-c", wrap], cwd=checkout, stdout=out.open("w"), text=True,
                                    stderr=subprocess.STDOUT, env={**env, "SLURM_ARRAY_TASK_ID": str(task)})
                   for task, out in zip(tasks, outputs)]
        for process in running:
            assert process.wait(timeout=600) == 0, [out.read_text() for out in outputs]
        return "".join(out.read_text() for out in outputs)

    step_outputs = {}
    for call, step in zip(calls[:6], ("train", "behaviour", "neurons", "ablate", "shared", "conflict")):
        assert "--array=1-2" in call and f"STEP={step}" in call[-1]
        step_outputs[step] = jobs(call[-1], (1, 2))
    assert "--array" not in " ".join(calls[6]) and "SHARD" not in calls[6][-1]
    before = file_times(checkout)
    printed_last = jobs(calls[6][-1], ("",))

    # every unit once, by one of the two shards, and both shards had work
    training = step_outputs["train"].replace("\r", "\n")
    assert training.count("[mixed seed 1] eval_accuracy") == 1 and "[mixed seed 1 training] left to" in training
    for step in ("ablate", "shared"):
        assert step_outputs[step].count("left to") >= 2 and "score cache" in step_outputs[step], step_outputs[step]
    # the last job computes nothing: it reuses every unit and only writes tables (and shared.py's partition file)
    assert printed_last.count("already trained") == 6, printed_last
    changed = {p for p, t in file_times(checkout).items() if before.get(p) != t}
    assert changed and all(p.endswith("partitions.json") for p in changed), sorted(changed)
    assert_same_tables(tables(checkout), tables(reference))
    assert not leftovers(checkout) and not list((checkout / "runs").rglob(".*.lock"))
