"""experiments/neurons.py end to end on tiny random reward models: the HDF5 scores and the chosen-vs-rejected
RMSD equal a direct computation from full activations collected with plain hooks (one text at a time, no
padding), for both kernel backends and both neuron sites; a crash leaves no half-written .h5."""
import json
import shutil
import sys
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import common  # noqa: E402
from conftest import save_tiny_rm  # noqa: E402
import neurons  # noqa: E402
import rmt_kernels as rk  # noqa: E402
from rmt_kernels import ops  # noqa: E402

DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")
PAIRS, MAX_LENGTH = 5, 48
BACKENDS = ["torch"] + (["ext"] if ops._C is not None else [])


@pytest.fixture(autouse=True)
def _auto_backend():
    yield
    rk.set_backend("auto")


def save_rm(runs, name, perturb=False):
    return save_tiny_rm(runs, "helpful", name, perturb_seed=1 if perturb else None, scale=0.02)


def run_neurons(tmp_path, name, *args):
    return CliRunner().invoke(neurons.main, [
        "--model", name, "--objective", "helpful", "--runs-dir", str(tmp_path / "runs"),
        "--results-dir", str(tmp_path / "results"), "--data-dir", DEMO, "--max-pairs", str(PAIRS),
        "--max-length", str(MAX_LENGTH), "--batch-size", "2", "--device", "cpu", *args])


def scored_pairs():
    train, _ = common.load_hh("helpful", DEMO, "train", "test", 0.2, common.BadRows())
    return common.subsample(train, PAIRS, 0)


def full_activations(model, tokenizer, text, site):
    """[layers, tokens, d_mlp] float64 of one unpadded text, from hooks written out per architecture."""
    blocks = model.transformer.h if model.config.model_type == "gpt2" else model.model.layers
    acts, handles = {}, []
    for i, block in enumerate(blocks):
        if site == "act":
            module = block.mlp.act if model.config.model_type == "gpt2" else block.mlp.act_fn
            handles.append(module.register_forward_hook(lambda m, a, out, i=i: acts.__setitem__(i, out[0].double())))
        else:
            module = block.mlp.c_proj if model.config.model_type == "gpt2" else block.mlp.down_proj
            handles.append(module.register_forward_pre_hook(lambda m, a, i=i: acts.__setitem__(i, a[0][0].double())))
    ids = tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return torch.stack([acts[i] for i in range(len(blocks))])


def direct(model, tokenizer, site, base=None):
    """Per side: the concatenated activations over all tokens (and trained − base when `base` is given)."""
    out = {"chosen": [], "rejected": []}
    for pair in scored_pairs():
        for side in out:
            a = full_activations(model, tokenizer, getattr(pair, side), site)
            out[side].append(a if base is None else a - full_activations(base, tokenizer, getattr(pair, side), site))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_and_rmsd_equal_direct_computation(tmp_path, backend):
    rm_path = save_rm(tmp_path / "runs", "tiny-gpt2", perturb=True)
    result = run_neurons(tmp_path, "tiny-gpt2", "--backend", backend)
    assert result.exit_code == 0, result.output
    model, tokenizer = common.load_reward_model(rm_path, torch.device("cpu"))
    acts = direct(model, tokenizer, "act")
    folder = rm_path.parent / "neurons"

    with h5py.File(folder / "magnitude.h5", "r") as f:
        means = {side: torch.cat(acts[side], dim=1).mean(1) for side in acts}
        torch.testing.assert_close(torch.from_numpy(f["score"][()]), ((means["chosen"] + means["rejected"]) / 2).float(),
                                   rtol=1e-5, atol=1e-6)
        for side in acts:
            flat = torch.cat(acts[side], dim=1)
            assert f[side]["tokens"][()] == flat.shape[1]
            for name, value in (("sum", flat.sum(1)), ("abs_sum", flat.abs().sum(1)), ("sq_sum", flat.square().sum(1))):
                torch.testing.assert_close(torch.from_numpy(f[side][name][()]), value, rtol=1e-5, atol=1e-4)
            assert (torch.from_numpy(f[side]["pos_count"][()]) - (flat > 0).sum(1)).abs().max() <= 1
        rmsd = [(c.mean(1) - r.mean(1)).square().mean().sqrt() for c, r in zip(acts["chosen"], acts["rejected"])]
        torch.testing.assert_close(torch.from_numpy(f["pair_rmsd"][()]), torch.stack(rmsd), rtol=1e-4, atol=1e-7)
        assert f.attrs["backend"] == rk.backend(torch.device("cpu")) and f.attrs["pairs"] == PAIRS
        assert f.attrs["site"] == "act" and json.loads(f.attrs["config"])["objective"] == "helpful"
        assert json.loads(f.attrs["settings"])["max_pairs"] == PAIRS

    base, _ = common.new_reward_model("tiny-gpt2", 0)
    diffs = direct(model, tokenizer, "act", base=base.eval())
    with h5py.File(folder / "change.h5", "r") as f:
        # SPEC §4: chosen/ and rejected/ hold activation statistics in every file; the differences have their own
        with h5py.File(folder / "magnitude.h5", "r") as g:
            assert all(torch.equal(torch.from_numpy(f[side]["sum"][()]), torch.from_numpy(g[side]["sum"][()]))
                       for side in ("chosen", "rejected"))
        assert f["sq_diff/chosen/tokens"][()] + f["sq_diff/rejected/tokens"][()] == \
            f["chosen/tokens"][()] + f["rejected/tokens"][()]
        flat = torch.cat(diffs["chosen"] + diffs["rejected"], dim=1)
        torch.testing.assert_close(torch.from_numpy(f["score"][()]), flat.square().mean(1).sqrt().float(),
                                   rtol=1e-4, atol=1e-6)
    with h5py.File(folder / "random.h5", "r") as f:
        torch.testing.assert_close(torch.from_numpy(f["score"][()]),
                                   torch.rand(f["score"].shape, generator=common.random_generator("helpful", 0)))
        assert not torch.equal(torch.from_numpy(f["score"][()]),
                               torch.rand(f["score"].shape, generator=common.random_generator("harmless", 0)))

    out = tmp_path / "results" / "tiny-gpt2" / "neurons"
    for name in ("layers.csv", "layers.md", "fig4_layers.png", "rmsd.csv", "rmsd.md", "report_section.md", "run.json"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "layers.csv").read_text().splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        assert sum(float(values[t]) for t in neurons.THIRDS) == pytest.approx(1.0)


def test_down_in_site_on_gated_mlp(tmp_path):
    rm_path = save_rm(tmp_path / "runs", "tiny-llama")
    result = run_neurons(tmp_path, "tiny-llama", "--site", "down_in", "--method", "magnitude")
    assert result.exit_code == 0, result.output
    model, tokenizer = common.load_reward_model(rm_path, torch.device("cpu"))
    acts = direct(model, tokenizer, "down_in")
    means = {side: torch.cat(acts[side], dim=1).mean(1) for side in acts}
    with h5py.File(rm_path.parent / "neurons" / "down_in" / "magnitude.h5", "r") as f:
        assert f.attrs["site"] == "down_in" and f["score"].shape == common.mlp_shape(model)
        torch.testing.assert_close(torch.from_numpy(f["score"][()]), ((means["chosen"] + means["rejected"]) / 2).float(),
                                   rtol=1e-5, atol=1e-6)
    assert not (rm_path.parent / "neurons" / "down_in" / "change.h5").exists()


def test_crash_leaves_no_half_written_file_then_skips_when_done(tmp_path, monkeypatch):
    rm_path = save_rm(tmp_path / "runs", "tiny-gpt2")
    folder = rm_path.parent / "neurons"
    create_dataset = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        if name == "pos_count":  # the file is open and partly written
            raise OSError("disk full")
        return create_dataset(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    result = run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude")
    assert isinstance(result.exception, OSError)
    assert not folder.exists() or list(folder.iterdir()) == []  # neither magnitude.h5 nor its temporary file

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    assert run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude").exit_code == 0
    assert [p.name for p in folder.iterdir()] == ["magnitude.h5"]
    again = run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude")
    assert again.exit_code == 0 and "up to date" in again.output


def test_files_made_with_other_settings_are_rescored_not_reused(tmp_path):
    """Issue #9: a rerun with another site or pair count must not be served the old files, and the report says
    what the files record."""
    rm_path = save_rm(tmp_path / "runs", "tiny-gpt2")
    assert run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude").exit_code == 0
    act_file = rm_path.parent / "neurons" / "magnitude.h5"
    before = act_file.read_bytes()

    result = run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude", "--site", "down_in", "--max-pairs", "3")
    assert result.exit_code == 0, result.output
    with h5py.File(rm_path.parent / "neurons" / "down_in" / "magnitude.h5", "r") as f:
        assert f.attrs["site"] == "down_in" and f.attrs["pairs"] == 3
    assert act_file.read_bytes() == before  # both sites live side by side
    report = (tmp_path / "results" / "tiny-gpt2" / "neurons" / "down_in" / "report_section.md").read_text()
    assert "`down_in`" in report and "helpful seed 0: 3" in report

    result = run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude", "--max-pairs", "3")
    assert "--max-pairs 5 (now 3)" in result.output and "recomputing" in result.output
    with h5py.File(act_file, "r") as f:
        assert f.attrs["pairs"] == 3


def test_a_copied_data_folder_keeps_the_files_and_an_edited_one_does_not(tmp_path):
    """The files record the scored pairs' content, not the data folder's path: a moved or copied checkout (with
    a relative --data-dir) reuses them, and an edited data file does not (issue #12)."""
    save_rm(tmp_path / "runs", "tiny-gpt2")
    copy = shutil.copytree(DEMO, tmp_path / "hh-rlhf")
    assert run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude").exit_code == 0
    again = run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude", "--data-dir", str(copy))
    assert again.exit_code == 0 and "up to date" in again.output, again.output

    for path in copy.glob("helpful-*/train.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**row, "chosen": row["chosen"] + " Thanks!"}) + "\n" for row in rows))
    edited = run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude", "--data-dir", str(copy))
    assert edited.exit_code == 0 and "pairs_sha256" in edited.output and "recomputing" in edited.output, edited.output


def test_read_neurons_refuses_another_site_rm_or_backbone(tmp_path):
    rm_path = save_rm(tmp_path / "runs", "tiny-gpt2")
    assert run_neurons(tmp_path, "tiny-gpt2", "--method", "magnitude").exit_code == 0
    model, _ = common.load_reward_model(rm_path, torch.device("cpu"))
    cfg = {"model": "tiny-gpt2", "runs_dir": str(tmp_path / "runs"), "results_dir": "results", "data_dir": DEMO,
           "max_pairs": PAIRS, "site": "act"}
    path = rm_path.parent / "neurons" / "magnitude.h5"
    remake = common.neurons_command(cfg, "helpful", 0, ["magnitude"])
    read = common.read_neurons(path, remake, common.mlp_shape(model))
    assert read.score.shape == common.mlp_shape(model) and read.attrs["site"] == "act"
    with h5py.File(path, "r") as f:
        pooled = (f["chosen/sum"][()] + f["rejected/sum"][()]) / (f["chosen/tokens"][()] + f["rejected/tokens"][()])
    torch.testing.assert_close(read.mean_activation, torch.from_numpy(pooled))
    identity = common.neuron_identity(cfg, rm_path)
    assert common.reuse(path, common.h5_settings, identity, keys=common.NEURON_IDENTITY, remake=remake)
    for key, value in (("site", "down_in"), ("rm_weights", "0" * 64), ("model", "tiny-llama")):
        with pytest.raises(common.RMTError, match=f"(?s){key} .*neurons.py --model tiny-gpt2"):
            common.reuse(path, common.h5_settings, {**identity, key: value}, keys=common.NEURON_IDENTITY,
                         remake=remake)
    llama, _ = common.new_reward_model("tiny-llama", 0)
    with pytest.raises(common.RMTError, match="neuron grid"):
        common.read_neurons(path, remake, common.mlp_shape(llama))


def test_tau_that_selects_no_neuron_is_refused_with_the_smallest_that_does():
    score = torch.rand(3, 192)
    with pytest.raises(common.RMTError, match="smallest τ that selects one is 0.0869"):
        common.select_top(score, 0.01)
    assert int(common.select_top(score, 0.0869).sum()) == 1


def test_missing_rm_names_the_train_command(tmp_path):
    result = run_neurons(tmp_path, "tiny-gpt2")
    assert result.exit_code != 0
    assert "python experiments/train.py --model tiny-gpt2 --objective helpful --seed 0" in result.output
