"""experiments/shared.py: the set algebra on hand-made masks, the exact chance levels against enumeration and a
seeded simulation, the size-matched controls, and the whole step on three tiny RMs (overlap.csv recomputed from
the .h5 scores with plain Python sets, partitions.csv from the per-item score files under the paper rule)."""
import csv
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import common  # noqa: E402
from conftest import save_tiny_rm  # noqa: E402
import shared  # noqa: E402

DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")


def mask(indices, shape=(2, 5)):
    m = torch.zeros(math.prod(shape), dtype=torch.bool)
    m[list(indices)] = True
    return m.view(*shape)


# ---- set algebra ----
def test_disjoint_sets():
    H, A, M = mask({0, 1}), mask({2, 3}), mask({0, 2})
    o = shared.overlaps(H, A, M)
    assert o == {"retention": 2 / 4, "retention_authors": 2 / 4, "HA_over_H": 0.0, "HA_over_A": 0.0,
                 "jaccard_HA": 0.0, "jaccard_MH": 1 / 3, "jaccard_MA": 1 / 3, "shared_share": 0.0}
    parts = common.partitions(H, A)
    assert torch.equal(parts["helpful-only"], H) and torch.equal(parts["harmless-only"], A)
    assert not parts["shared"].any()


def test_identical_sets():
    H = mask({0, 1, 2})
    o = shared.overlaps(H, H.clone(), H.clone())
    assert o == {**{k: 1.0 for k in common.OVERLAP_MEASURES}, "shared_share": 0.3}
    parts = common.partitions(H, H.clone())
    assert torch.equal(parts["shared"], H) and not parts["helpful-only"].any() and not parts["harmless-only"].any()


def test_one_set_inside_another():
    H, A, M = mask({0, 1, 2, 3}), mask({0, 1}), mask({0, 9})
    o = shared.overlaps(H, A, M)
    assert o == {"retention": 1 / 4, "retention_authors": 1 / 5, "HA_over_H": 0.5, "HA_over_A": 1.0,
                 "jaccard_HA": 0.5, "jaccard_MH": 1 / 5, "jaccard_MA": 1 / 3, "shared_share": 0.2}
    parts = common.partitions(H, A)
    assert torch.equal(parts["helpful-only"], mask({2, 3})) and torch.equal(parts["shared"], A)
    assert not parts["harmless-only"].any()


# ---- chance levels ----
def test_chance_equals_full_enumeration():
    """Every triple of subsets of sizes 2, 3, 2 among 6 neurons, equally likely: the exact mean of each measure."""
    N, sizes = 6, (2, 3, 2)
    totals, count = dict.fromkeys(common.OVERLAP_MEASURES, 0.0), 0
    for h, a, m in itertools.product(*(itertools.combinations(range(N), s) for s in sizes)):
        for k, v in shared.overlaps(mask(h, (N,)), mask(a, (N,)), mask(m, (N,))).items():
            totals[k] += v
        count += 1
    chance = shared.chance_levels(N, *sizes)
    for k in common.OVERLAP_MEASURES:
        assert chance[k] == pytest.approx(totals[k] / count, abs=1e-12), k


def test_chance_matches_a_seeded_simulation():
    N, size, draws = 200, 20, 20000
    generator = torch.Generator().manual_seed(0)

    def random_sets():
        order = torch.rand(draws, N, generator=generator).argsort(dim=1)[:, :size]
        return torch.zeros(draws, N, dtype=torch.bool).scatter_(1, order, True)

    H, A, M = random_sets(), random_sets(), random_sets()
    n = lambda x: x.sum(1).double()  # noqa: E731
    union = H | A
    values = {"retention": n(M & union) / n(union), "retention_authors": n(M & union) / n(union | M),
              "HA_over_H": n(H & A) / n(H), "HA_over_A": n(H & A) / n(A), "jaccard_HA": n(H & A) / n(union),
              "jaccard_MH": n(M & H) / n(M | H), "jaccard_MA": n(M & A) / n(M | A), "shared_share": n(H & A) / N}
    chance = shared.chance_levels(N, size, size, size)
    for k, v in values.items():
        se = float(v.std()) / math.sqrt(draws)
        assert abs(float(v.mean()) - chance[k]) < 3 * se, (k, float(v.mean()), chance[k], se)


def test_chance_at_tau_10_is_the_specs():
    """SPEC §1: at τ = 10, |H∩A|/|H| = 0.10 and a Jaccard index ≈ 0.053 (SmolLM2-135M: 30 × 1536 neurons)."""
    N = 30 * 1536
    chance = shared.chance_levels(N, N // 10, N // 10, N // 10)
    assert chance["HA_over_H"] == pytest.approx(0.10) and chance["retention"] == pytest.approx(0.10)
    assert chance["jaccard_HA"] == pytest.approx(0.1 / 1.9, abs=2e-4) and round(chance["jaccard_HA"], 3) == 0.053


# ---- size-matched controls ----
def test_controls_have_the_size_and_come_from_the_seed():
    shape = (3, 192)
    for size in (0, 1, 37, 576):
        assert int(shared.control_mask(shape, size, 0, "random-shared").sum()) == size
    a = shared.control_mask(shape, 40, 0, "random-shared")
    assert a.shape == shape and a.dtype == torch.bool
    assert torch.equal(a, shared.control_mask(shape, 40, 0, "random-shared"))
    assert not torch.equal(a, shared.control_mask(shape, 40, 1, "random-shared"))
    assert not torch.equal(a, shared.control_mask(shape, 40, 0, "random-helpful-only"))


# ---- end to end on tiny RMs ----
def save_rms(runs, objectives=common.OBJECTIVES):
    """Three different untrained tiny-gpt2 RMs (each perturbed by its own generator), saved where train.py would."""
    for index, objective in enumerate(objectives):
        save_tiny_rm(runs, objective, perturb_seed=10 + index)


def invoke(tmp_path, *args):
    return CliRunner().invoke(shared.main, [
        "--model", "tiny-gpt2", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
        "--data-dir", DEMO, "--max-pairs", "5", "--max-length", "48", "--max-items", "4", "--bench", "demo",
        "--batch-size", "4", "--device", "cpu", *args])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def top_set(run, tau, folder="neurons"):
    """The top-τ % neurons of an RM's magnitude.h5 (in <run>/<folder>) as flat indices, by a plain sort."""
    with h5py.File(run / folder / "magnitude.h5", "r") as f:
        score = torch.from_numpy(f["score"][()]).flatten()
    k = math.floor(tau / 100 * score.numel() + 0.5)
    return set(score.argsort(descending=True, stable=True)[:k].tolist()), score.numel()


def paper_rule(path, ids=None):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    rows = [r for r in rows if ids is None or r["id"] in ids]
    return sum(min(r["chosen_scores"]) > max(r["rejected_scores"]) for r in rows) / len(rows), {r["id"] for r in rows}


def test_end_to_end_on_tiny_rms(tmp_path):
    save_rms(tmp_path / "runs")
    result = invoke(tmp_path, "--tau", "10", "--tau", "50")
    assert result.exit_code == 0, result.output
    out = tmp_path / "results" / "tiny-gpt2" / "shared"
    runs = {o: common.rm_dir(tmp_path / "runs", "tiny-gpt2", o, 0) for o in common.OBJECTIVES}

    # overlap.csv against plain Python sets from the .h5 scores
    rows = read_csv(out / "overlap.csv")
    assert list(rows[0]) == ["seed", "method", "tau", "measure", "value", "chance"]
    assert len(rows) == 2 * len(common.OVERLAP_MEASURES)
    by_tau = {}
    for tau in (10, 50):
        (H, N), (A, _), (M, _) = (top_set(runs[o], tau) for o in common.OBJECTIVES)
        by_tau[tau] = H, A
        if tau == 50:
            assert H & A and H - A and A - H  # every partition is scored at τ = 50
        U = H | A
        expected = {"retention": len(M & U) / len(U), "retention_authors": len(M & U) / len(U | M),
                    "HA_over_H": len(H & A) / len(H), "HA_over_A": len(H & A) / len(A),
                    "jaccard_HA": len(H & A) / len(U), "jaccard_MH": len(M & H) / len(M | H),
                    "jaccard_MA": len(M & A) / len(M | A), "shared_share": len(H & A) / N}
        chance = shared.chance_levels(N, len(H), len(A), len(M))
        for row in rows:
            if row["tau"] == str(tau):
                assert float(row["value"]) == pytest.approx(expected[row["measure"]], abs=1e-12), row
                assert float(row["chance"]) == pytest.approx(chance[row["measure"]], abs=1e-12), row

    # partitions.csv against the per-item score files under the paper rule
    rows = read_csv(out / "partitions.csv")
    assert list(rows[0]) == ["seed", "method", "tau", "partition", "neurons", "task", "group", "items", "accuracy",
                             "base_accuracy", "delta"]
    assert {r["partition"] for r in rows} == {*shared.PARTITIONS, *shared.CONTROLS}
    mixed = runs["mixed"]
    for row in rows:
        H, A = by_tau[int(row["tau"])]
        size = {"helpful-only": len(H - A), "harmless-only": len(A - H), "shared": len(H & A)}
        assert int(row["neurons"]) == size[row["partition"].removeprefix("random-")], row
        base, ids = paper_rule(mixed / "scores" / "len48" / f"{row['task']}.jsonl")
        assert len(ids) == int(row["items"]) <= 4
        assert float(row["base_accuracy"]) == pytest.approx(base)
        if int(row["neurons"]):
            folder = mixed / "shared" / f"zero-{row['partition']}-magnitude-tau{row['tau']}" / "scores" / "len48"
            ablated, _ = paper_rule(folder / f"{row['task']}.jsonl", ids)
        else:
            ablated = base  # an empty partition repeats the baseline
        assert float(row["accuracy"]) == pytest.approx(ablated), row
        assert float(row["delta"]) == pytest.approx(ablated - base)
    assert {r["task"] for r in rows} >= {"hh-helpful-base", "hh-harmless-base", "demo-helpful-quality"}

    for name in ("overlap.md", "table4.md", "table4.csv", "tasks_harmless.md", "tasks_helpful.md",
                 "table19_reward.md", "layers_shared.csv", "overlap_tau.csv", "fig_layers_shared.png",
                 "fig_overlap_tau.png", "run.json"):
        assert (out / name).exists(), name
    section = (out / "report_section.md").read_text()
    assert "survive the size-matched control" in section and "authors' variant" in section
    assert "## Shared neurons" in (tmp_path / "results" / "tiny-gpt2" / "report.md").read_text()
    layers = read_csv(out / "layers_shared.csv")
    assert sum(int(r["shared"]) for r in layers if r["tau"] == "10") == len(by_tau[10][0] & by_tau[10][1])

    # a second run reuses every cached score
    again = invoke(tmp_path, "--tau", "10", "--tau", "50")
    assert again.exit_code == 0 and "scoring the rest" not in again.output


def test_a_missing_rm_names_the_train_command(tmp_path):
    save_rms(tmp_path / "runs", ("helpful", "harmless"))
    result = invoke(tmp_path)
    assert result.exit_code == 1 and "missing RM: mixed seed 0" in result.output
    assert "python experiments/train.py --model tiny-gpt2 --objective mixed --seed 0" in result.output


def test_shared_has_no_objective_option(tmp_path):
    """It always compares all three RM types, so an --objective would be an option parsed but unused."""
    result = invoke(tmp_path, "--objective", "helpful")
    assert result.exit_code == 2 and "No such option" in result.output


def test_within_one_rm_takes_h_and_a_from_its_own_neurons_on_each_objectives_pairs(tmp_path):
    """--within mixed with the mixed RM alone: H and A are its top-τ neurons scored on the helpful and on the
    harmless pairs (written under neurons/on-<objective>/), the overlaps equal plain set algebra on those files,
    the partitions are ablated in that RM and cached apart from the paper's, and its report section is in
    report.md."""
    save_rms(tmp_path / "runs", ("mixed",))
    result = invoke(tmp_path, "--within", "mixed", "--tau", "50")
    assert result.exit_code == 0, result.output
    assert "[mixed seed 0, on helpful pairs]" in result.output
    mixed = common.rm_dir(tmp_path / "runs", "tiny-gpt2", "mixed", 0)
    H, N = top_set(mixed, 50, "neurons/on-helpful")
    A, _ = top_set(mixed, 50, "neurons/on-harmless")
    M, _ = top_set(mixed, 50)
    assert H != A and H & A  # the same RM, other pairs: other (overlapping) sets
    out = tmp_path / "results" / "tiny-gpt2" / "shared" / "within-mixed"
    table = {(r["section"], r["name"], r["group"]): r for r in read_csv(out / "within.csv")}
    assert float(table["overlap", "jaccard_HA", ""]["mean"]) == pytest.approx(len(H & A) / len(H | A))
    assert float(table["overlap", "jaccard_MH", ""]["mean"]) == pytest.approx(len(M & H) / len(M | H))
    assert float(table["overlap", "HA_over_H", ""]["reference"]) == \
        pytest.approx(shared.chance_levels(N, len(H), len(A), len(M))["HA_over_H"])
    rows = read_csv(out / "partitions.csv")
    assert {int(r["neurons"]) for r in rows if r["partition"] == "shared"} == {len(H & A)}
    ablation = table["ablation", "shared", "harmless"]
    shared_rows = [r for r in rows if r["partition"] == "shared" and r["group"] == "harmless"
                   and not r["task"].startswith("hh-")]
    assert float(ablation["mean"]) == pytest.approx(statistics.fmean(float(r["delta"]) for r in shared_rows))
    assert (mixed / "shared" / "zero-within-shared-magnitude-tau50").is_dir()
    assert not (mixed / "shared" / "zero-partitions.json").exists()  # conflict.py's input is the paper's
    assert (out / "fig_within.png").stat().st_size > 0
    report = (tmp_path / "results" / "tiny-gpt2" / "report.md").read_text()
    assert "## The tension inside the mixed RM" in report
