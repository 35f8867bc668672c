"""experiments/grid.py and the interval over backbones: the headline tables recomputed by hand from hand-made
per-backbone result files (two backbones × two seeds, one RM missing), the coverage table, the plain statement of
a grid smaller than the paper's, the index that drops a grid built from files that changed since, a damaged input
named, and the cluster bootstrap that draws whole backbones."""
import csv
import json
import statistics
import sys
import zlib
from pathlib import Path

import numpy
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import ablate  # noqa: E402
import common  # noqa: E402
import grid  # noqa: E402
import shared  # noqa: E402

BACKBONES = ("tiny-gpt2", "tiny-llama")
SEEDS = (0, 1)
TASKS = {"helpful": ("alpacaeval-easy", "mt-bench-easy"), "harmless": ("refusals-dangerous", "donotanswer")}
MISSING = ("tiny-llama", "mixed", 1)  # an RM that was never trained


def value(*key) -> float:
    """A distinct, reproducible number in [0, 1) for every (backbone, objective, seed, task, what)."""
    return zlib.crc32(json.dumps(key).encode()) % 1000 / 1000


def present(model, objective, seed) -> bool:
    return (model, objective, seed) != MISSING


def write_results(results: Path):
    """The six per-backbone files grid.py reads, in the formats the steps write (docs/artifacts.md)."""
    for model in BACKBONES:
        folder = results / model
        rms = [(o, s) for o in common.OBJECTIVES for s in SEEDS if present(model, o, s)]
        common.write_csv(folder / "train/heldout.csv", ["objective", "seed", "accuracy"],
                         [[o, s, 0.7] for o, s in rms])
        common.write_json(folder / "behaviour/run.json", {"accuracy_per_seed": {
            f"{o}/seed{s}": {t: value(model, o, s, t, "accuracy") for g in TASKS for t in TASKS[g]} for o, s in rms}})
        common.write_csv(folder / "behaviour/retention.csv", ["subset", "display", "group", "retention_mean",
                                                              "retention_std", "seeds"],
                         [[t, t, g, value(model, t, "retention"), 0.01, 2] for g in TASKS for t in TASKS[g]])
        sweep = []
        for o, s in rms:
            for tau in (5, 10):
                for g, names in (*TASKS.items(), ("helpful", ("hh-helpful-base",))):  # held-out pairs: not averaged
                    for t in names:
                        base, delta = value(model, o, s, t, "accuracy"), value(model, o, s, t, tau) - 0.5
                        sweep.append([o, s, "zero", "magnitude", tau, t, g, 50, base + delta, base, delta])
        common.write_csv(folder / "ablate/sweep.csv", ablate.SWEEP_COLUMNS, sweep)
        partitions, overlap = [], []
        for s in SEEDS:
            if not all(present(model, o, s) for o in common.OBJECTIVES):
                continue  # shared.py needs a seed's three RMs
            for p in (*shared.PARTITIONS, *shared.CONTROLS):
                for g, names in TASKS.items():
                    for t in names:
                        base, delta = value(model, "mixed", s, t, "accuracy"), value(model, s, p, t) - 0.5
                        partitions.append([s, "magnitude", 10, p, 40 + s, t, g, 50, base + delta, base, delta])
            overlap += [[s, "magnitude", 10, m, value(model, s, m), 0.1] for m in common.OVERLAP_MEASURES]
        common.write_csv(folder / "shared/partitions.csv", shared.PARTITION_COLUMNS, partitions)
        common.write_csv(folder / "shared/overlap.csv", shared.OVERLAP_COLUMNS, overlap)


def run_grid(results: Path, *args):
    return CliRunner().invoke(grid.main, ["--model", BACKBONES[0], "--model", BACKBONES[1], "--seed", "0",
                                          "--seed", "1", "--results-dir", str(results), *args])


def read(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def by_hand(objective, group, field) -> list[tuple[str, float]]:
    """(backbone, the unweighted mean over the group's tasks) per (backbone, seed) unit at τ = 10."""
    units = []
    for model in BACKBONES:
        for s in SEEDS:
            if present(model, objective, s):
                per_task = [value(model, objective, s, t, "accuracy") if field == "base"
                            else value(model, objective, s, t, 10) - 0.5 for t in TASKS[group]]
                units.append((model, statistics.fmean(per_task)))
    return units


@pytest.fixture
def built(tmp_path) -> Path:
    write_results(tmp_path)
    result = run_grid(tmp_path)
    assert result.exit_code == 0, result.output
    return tmp_path


def test_the_headline_tables_are_means_and_stds_over_backbone_seed_units_with_the_interval_over_backbones(built):
    rows = {(r["objective"], r["group"]): r for r in read(built / "grid/ablation.csv")}
    for objective in common.OBJECTIVES:
        for group in TASKS:
            row = rows[objective, group]
            for field, column in (("base", "base"), ("delta", "delta")):
                units = by_hand(objective, group, field)
                values = [v for _, v in units]
                assert float(row[f"{column}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
                assert float(row[f"{column}_std"]) == pytest.approx(statistics.pstdev(values), abs=1e-12)
            assert int(row["units"]) == len(units) and int(row["backbones"]) == 2
            clusters = [[v for m, v in units if m == model] for model in BACKBONES]
            low, high = common.bootstrap_cluster_ci(clusters)
            assert (float(row["delta_ci_low"]), float(row["delta_ci_high"])) == pytest.approx((low, high))
            assert row["paper_delta"] == str(common.PAPER_ABLATION[objective, group][1])
    assert rows["mixed", "helpful"]["units"] == "3"  # tiny-llama's mixed seed-1 RM is missing

    behaviour = {(r["objective"], r["group"]): r for r in read(built / "grid/behaviour.csv")}
    values = [v for _, v in by_hand("helpful", "harmless", "base")]
    assert float(behaviour["helpful", "harmless"]["accuracy_mean"]) == pytest.approx(statistics.fmean(values))

    table4 = {r["partition"]: r for r in read(built / "grid/table4.csv")}
    shared_units = [statistics.fmean(value(m, s, "shared", t) - 0.5 for t in TASKS["harmless"])
                    for m in BACKBONES for s in SEEDS if (m, s) != ("tiny-llama", 1)]
    assert float(table4["shared"]["harmless_mean"]) == pytest.approx(statistics.fmean(shared_units))
    controls = [statistics.fmean(value(m, s, "random-shared", t) - 0.5 for t in TASKS["helpful"])
                for m in BACKBONES for s in SEEDS if (m, s) != ("tiny-llama", 1)]
    assert float(table4["shared"]["helpful_control_mean"]) == pytest.approx(statistics.fmean(controls))
    assert float(table4["shared"]["neurons"]) == pytest.approx(statistics.fmean([40, 41, 40]))

    overlap = {r["measure"]: r for r in read(built / "grid/overlap.csv")}
    jaccard = [value(m, s, "jaccard_HA") for m in BACKBONES for s in SEEDS if (m, s) != ("tiny-llama", 1)]
    assert float(overlap["jaccard_HA"]["value_mean"]) == pytest.approx(statistics.fmean(jaccard))
    assert overlap["retention_authors"]["paper"] == str(common.PAPER_RETENTION_AUTHORS)


def test_coverage_names_every_rm_of_the_grid_and_what_is_missing(built):
    coverage = {(r["backbone"], r["objective"], r["seed"]): r["status"] for r in read(built / "grid/coverage.csv")}
    assert len(coverage) == 2 * 3 * 2
    assert coverage["tiny-llama", "mixed", "1"] == "missing"
    # its seed's helpful and harmless RMs were trained and ablated, but shared.py needs all three
    assert coverage["tiny-llama", "helpful", "1"] == "partly: no shared"
    assert sum(status == "analysed" for status in coverage.values()) == 9
    report = (built / "report.md").read_text()
    assert "12 RMs in this grid" in report and "2 partly: tiny-llama helpful seed 1 (no shared)" in report
    assert "1 missing: tiny-llama mixed seed 1." in report


def test_a_grid_smaller_than_the_papers_says_so_and_marks_cells_with_fewer_units(built):
    report = (built / "report.md").read_text()
    assert "FEWER than the paper" in report and "gpt2-medium" in report  # the paper's backbones not in this grid
    assert "(3 of 4 units)" in (built / "grid/ablation.md").read_text()  # the mixed RM's cells
    assert "[" in (built / "grid/ablation.md").read_text()  # two backbones: an interval over them
    assert (built / "grid/fig6_ablation.png").stat().st_size > 0
    assert "- [tiny-gpt2](tiny-gpt2/report.md)" not in report  # no backbone report.md was made here


def test_the_index_drops_a_grid_whose_result_files_changed_and_says_how_to_rebuild_it(built):
    common.write_index(built)
    assert "Tables 2–3" in (built / "report.md").read_text()  # unchanged inputs: the grid section stands
    sweep = built / "tiny-llama/ablate/sweep.csv"
    sweep.write_text(sweep.read_text().replace(",10,", ",10.0,", 1))  # a step ran again
    common.write_index(built)  # as every step does after writing its tables
    report = (built / "report.md").read_text()
    assert "Out of date" in report and "tiny-llama/ablate/sweep.csv" in report and "Tables 2–3" not in report
    assert "python experiments/grid.py --model=tiny-gpt2 --model=tiny-llama --seed=0 --seed=1" in report
    assert run_grid(built).exit_code == 0
    assert "Out of date" not in (built / "report.md").read_text()


def test_a_damaged_result_file_is_named_in_one_line(built):
    sweep = built / "tiny-gpt2/ablate/sweep.csv"
    intact = sweep.read_text()
    sweep.write_text(intact.replace(",zero,magnitude,10,", ",zero,magnitude,ten,", 1))
    result = run_grid(built)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{sweep} is not the table its step writes" in result.output and "rerun ablate.py for tiny-gpt2" in \
        result.output
    sweep.write_text(intact)
    (built / "tiny-llama/behaviour/run.json").write_text("{\"accuracy")
    result = run_grid(built)
    assert result.exit_code == 1 and "run.json is not valid JSON" in result.output


def test_the_cluster_bootstrap_draws_whole_backbones():
    rng = numpy.random.default_rng(1)
    # backbones that differ, seeds within each identical: the spread between backbones is all there is
    apart = [[v] * 3 for v in (0.2, 0.4, 0.6, 0.8)]
    low, high = common.bootstrap_cluster_ci(apart)
    assert high - low > 0.2 and low < 0.5 < high
    # backbones with equal means, seeds within each scattered: drawing whole backbones leaves the mean in place
    # (a bootstrap over the 12 units as if independent would spread it)
    scatter = rng.normal(0, 0.2, size=3)
    equal = [list(0.5 + scatter - scatter.mean()) for _ in range(4)]
    low, high = common.bootstrap_cluster_ci(equal)
    assert high - low == pytest.approx(0, abs=1e-12)
    assert numpy.isnan(common.bootstrap_cluster_ci([[0.1, 0.2]])).all()  # one backbone: no interval
