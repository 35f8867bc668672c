"""RMs larger than one device (--device-map, --max-memory): an RM that accelerate spreads over several places gives
the numbers of the same RM loaded whole — rewards, the neuron statistics (hooks on every layer), ablated scores,
and a step's files end to end — and every misuse is refused in one line. On this CPU-only machine the split is the
nearest one that runs: --max-memory cpu=<less than the RM>, so the first layers stay in RAM and the rest are
offloaded to the disk (accelerate's hooks load each offloaded layer for its forward)."""
import gc
import json
import shutil
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

import behaviour  # noqa: E402
import common  # noqa: E402
import conflict  # noqa: E402
import neurons  # noqa: E402
import train  # noqa: E402
from conftest import save_tiny_rm  # noqa: E402

CPU = torch.device("cpu")
DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")
TEXTS = ["\n\nHuman: hi\n\nAssistant: hello there", "\n\nHuman: tell me about tea\n\nAssistant: it is a drink",
         "\n\nHuman: and cats?\n\nAssistant: NO!!!", "\n\nHuman: a longer question about trains and boats and snow"
         "\n\nAssistant: a longer answer, calm and on topic, about all three"]


def cpu_share(rm: Path) -> int:
    """Bytes of RAM that hold the first layers of the tiny RM and leave the others to the disk."""
    return int(0.8 * sum(f.stat().st_size for f in common.weight_files(rm)))


@pytest.fixture(scope="module", params=common.TINY_BACKBONES)
def rm(request, tmp_path_factory) -> Path:
    return save_tiny_rm(tmp_path_factory.mktemp(request.param) / "runs", "mixed", request.param, perturb_seed=3)


def spread(rm: Path):
    model, tokenizer = common.load_reward_model(rm, CPU, common.Reading(device_map="auto",
                                                                        max_memory={"cpu": cpu_share(rm)}))
    places = [{p.device.type for p in layer.parameters()} for layer in common.transformer_layers(model)]
    # accelerate really split it: layers in RAM and layers on the disk (their weights on 'meta' between forwards)
    assert {"cpu", "disk"} <= set(model.hf_device_map.values())
    assert {"cpu"} in places and {"meta"} in places, places
    return model, tokenizer


def plain(rm: Path):
    return common.load_reward_model(rm, CPU)


def test_rewards_of_a_spread_rm_equal_the_whole_rm(rm):
    (whole, tokenizer), (split, _) = plain(rm), spread(rm)
    assert common.input_device(split) == CPU
    expected = common.score_texts(whole, tokenizer, TEXTS, 2, 64, CPU)
    assert common.score_texts(split, tokenizer, TEXTS, 2, 64, CPU) == pytest.approx(expected, abs=1e-6)


def test_an_rm_that_fits_stays_whole(rm):
    model, tokenizer = common.load_reward_model(rm, CPU, common.Reading(device_map="auto"))
    assert not hasattr(model, "hf_device_map") and common.input_device(model) == CPU
    assert common.score_texts(model, tokenizer, TEXTS, 2, 64, CPU) == \
        common.score_texts(*plain(rm), TEXTS, 2, 64, CPU)


def test_the_offload_folder_lives_in_the_run_folder_and_goes_with_the_model(rm):
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = rm.parent / f".offload.{socket.gethostname().replace('.', '_')}-{dead.pid}.x1y2.tmp"  # a killed run's
    (left / "weights").mkdir(parents=True)
    model, _ = spread(rm)
    folder = model.rmt_offload.path
    assert folder.parent == rm.parent and folder.name.startswith(".offload.") and folder.is_dir()
    assert not left.exists()
    del model
    gc.collect()
    assert not folder.exists()


class CountingPass(common.ScoringPass):
    def record(self, layer, acts):
        self.seen = getattr(self, "seen", [])
        self.seen.append(layer)
        super().record(layer, acts)


def neuron_passes(model, tokenizer, base):
    pairs = common.subsample(common.load_hh("mixed", DEMO, "train", "test", 0.2, common.BadRows())[0], 6, 0)
    ids = common.encode_pairs(tokenizer, pairs, 48)
    scoring = CountingPass(model, base)
    scoring.run(common.pair_batches(*ids, 2, tokenizer.pad_token_id), CPU, torch.float32)
    attribution = common.AttributionPass(model)
    attribution.run(common.pair_batches(*ids, 2, tokenizer.pad_token_id), CPU, torch.float32)
    return scoring, attribution


def test_neuron_statistics_of_a_spread_rm_equal_the_whole_rm_with_hooks_on_every_layer(rm):
    (whole, tokenizer), (split, _) = plain(rm), spread(rm)
    backbone = rm.parents[2].name  # runs/<model>/mixed/seed0/rm
    base = common.place_like(common.new_reward_model(backbone, 0)[0], split, rm.parent)
    assert base.hf_device_map == split.hf_device_map  # the change method's backbone sits where the RM does
    expected, expected_attribution = neuron_passes(whole, tokenizer, common.new_reward_model(backbone, 0)[0])
    scoring, attribution = neuron_passes(split, tokenizer, base)
    layers = common.mlp_shape(whole)[0]
    assert scoring.seen == expected.seen == list(range(layers)) * 3  # every layer of every batch (3 batches)
    for side in common.SIDES:
        for name in (*common.ACT_STATS, "tokens"):
            torch.testing.assert_close(scoring.act[side][name], expected.act[side][name], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scoring.change(), expected.change(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scoring.pair_rmsd(), expected.pair_rmsd(), rtol=1e-12, atol=1e-12)
    assert scoring.magnitude().abs().sum() > 0 and scoring.change().abs().sum() > 0
    torch.testing.assert_close(attribution.signed(), expected_attribution.signed(), rtol=1e-9, atol=1e-12)
    assert attribution.pairs == expected_attribution.pairs == 6


@pytest.mark.parametrize("site", common.NEURON_SITES)
def test_ablated_scores_of_a_spread_rm_equal_the_whole_rm(rm, site):
    (whole, tokenizer), (split, _) = plain(rm), spread(rm)
    shape = common.mlp_shape(whole)
    selected = torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.3
    values = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for mean in (None, values):
        expected = common.score_texts(whole, tokenizer, TEXTS, 2, 64, CPU,
                                      hooks=common.ablation_hooks(whole, site, selected, mean))
        ablated = common.score_texts(split, tokenizer, TEXTS, 2, 64, CPU,
                                     hooks=common.ablation_hooks(split, site, selected, mean))
        assert ablated == pytest.approx(expected, abs=1e-6)
        assert ablated != pytest.approx(common.score_texts(split, tokenizer, TEXTS, 2, 64, CPU), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_layers_computed_on_a_gpu_and_on_the_cpu_give_the_numbers_of_the_whole_rm(rm):
    """The split a CPU cannot make: the first layer computes on the GPU and the others on the CPU (accelerate's hooks
    move the hidden states between them), so every hook sees activations on the device of its layer. The numbers
    are those of the whole RM on the CPU up to float32 rounding on the GPU."""
    from accelerate import dispatch_model

    (whole, tokenizer), (split, _) = plain(rm), plain(rm)
    layers, norm = common.arch_of(whole).layers, "ln_f" if whole.config.model_type == "gpt2" else "norm"
    prefix = split.base_model_prefix
    # the embeddings and layer 0 on the GPU; the other layers, the final norm and the head on the CPU
    device_map = {f"{prefix}.{name}": 0 for name, _ in split.base_model.named_children() if name not in (layers, norm)}
    device_map.update({f"{prefix}.{layers}.{i}": 0 if i == 0 else "cpu" for i in range(common.mlp_shape(whole)[0])})
    device_map.update({f"{prefix}.{norm}": "cpu", "score": "cpu"})
    split = dispatch_model(split, device_map, main_device="cpu")  # "cpu" modules compute there, not offloaded
    assert common.input_device(split).type == "cuda"
    close = dict(rtol=1e-4, atol=1e-5)
    assert common.score_texts(split, tokenizer, TEXTS, 2, 64, CPU) == \
        pytest.approx(common.score_texts(whole, tokenizer, TEXTS, 2, 64, CPU), rel=1e-4, abs=1e-5)
    selected = torch.rand(common.mlp_shape(whole), generator=torch.Generator().manual_seed(0)) < 0.3
    ablated = [common.score_texts(m, tokenizer, TEXTS, 2, 64, CPU, hooks=common.ablation_hooks(m, "act", selected))
               for m in (whole, split)]
    assert ablated[1] == pytest.approx(ablated[0], rel=1e-4, abs=1e-5)
    (expected, expected_attribution), (scoring, attribution) = (neuron_passes(m, tokenizer, None)
                                                                for m in (whole, split))
    assert scoring.seen == expected.seen
    for side in common.SIDES:
        for name in (*common.ACT_STATS, "tokens"):
            torch.testing.assert_close(scoring.act[side][name].cpu(), expected.act[side][name], **close)
    torch.testing.assert_close(scoring.pair_rmsd(), expected.pair_rmsd(), **close)
    torch.testing.assert_close(attribution.signed().cpu(), expected_attribution.signed(), **close)
    pairs = common.subsample(common.load_hh("mixed", DEMO, "train", "test", 0.2, common.BadRows())[0], 6, 0)
    gradients = []
    for model in (whole, split):
        batches = list(common.pair_batches(*common.encode_pairs(tokenizer, pairs, 48), 2, tokenizer.pad_token_id))
        grads, _, _ = conflict.neuron_gradients(model, batches, CPU, torch.float32)
        direction = conflict.unit_directions(grads, conflict.neuron_axes(model))
        gradients.append((grads, conflict.neuron_gradients(model, batches, CPU, torch.float32, direction)[1]))
    for a, b in zip(*(sum(grads, []) for grads, _ in gradients)):
        torch.testing.assert_close(b.cpu(), a, **close)
    torch.testing.assert_close(gradients[1][1], gradients[0][1], **close)


def invoke(script, runs: Path, *args):
    result = CliRunner().invoke(script.main, ["--runs-dir", str(runs), "--results-dir", str(runs.parent / "results"),
                                              "--objective", "mixed", "--device", "cpu", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_steps_with_a_device_map_write_the_numbers_of_the_whole_rm_and_share_its_caches(tmp_path):
    rm = save_tiny_rm(tmp_path / "whole" / "runs", "mixed", perturb_seed=3)
    shutil.copytree(tmp_path / "whole", tmp_path / "split")
    placed = ["--device-map", "auto", "--max-memory", f"cpu={cpu_share(rm)}"]
    steps = ((behaviour, ["--bench", "demo", "--max-items", "2", "--max-length", "64"]),
             (neurons, ["--data-dir", DEMO, "--max-pairs", "4", "--max-length", "48", "--batch-size", "2",
                        "--method", "magnitude", "--method", "change", "--method", "attribution"]))
    for script, args in steps:
        invoke(script, tmp_path / "whole" / "runs", *args)
        said = invoke(script, tmp_path / "split" / "runs", *args, *placed)
        assert "--device-map auto: " in said and "disk: " in said
    run = Path("runs") / "tiny-gpt2" / "mixed" / "seed0"
    scores = sorted((tmp_path / "whole" / run / "scores").rglob("*.jsonl"))
    assert scores
    for path in scores:
        whole = [json.loads(line) for line in path.read_text().splitlines()]
        split = [json.loads(line) for line in (tmp_path / "split" / path.relative_to(tmp_path / "whole")).read_text()
                 .splitlines()]
        assert [r["id"] for r in split] == [r["id"] for r in whole]
        for a, b in zip(whole, split):
            assert b["chosen_scores"] == pytest.approx(a["chosen_scores"], abs=1e-6)
            assert b["rejected_scores"] == pytest.approx(a["rejected_scores"], abs=1e-6)
    for method in ("magnitude", "change", "attribution"):
        with h5py.File(tmp_path / "whole" / run / "neurons" / f"{method}.h5") as a, \
                h5py.File(tmp_path / "split" / run / "neurons" / f"{method}.h5") as b:
            assert json.loads(a.attrs["settings"]) == json.loads(b.attrs["settings"])  # no part of a key
            names = []
            a.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            for name in names:
                torch.testing.assert_close(torch.as_tensor(b[name][()]), torch.as_tensor(a[name][()]),
                                           rtol=1e-9, atol=1e-12)
    assert (tmp_path / "whole" / "results" / "tiny-gpt2" / "behaviour" / "accuracy.csv").read_text() == \
        (tmp_path / "split" / "results" / "tiny-gpt2" / "behaviour" / "accuracy.csv").read_text()
    assert not list((tmp_path / "split" / run).glob(".offload.*"))  # each step's offload folders are gone
    # the placement is no part of a cache key: the whole RM's caches stand for the spread one
    said = invoke(neurons, tmp_path / "whole" / "runs", *steps[1][1], *placed)
    assert "neuron files up to date" in said


def refused(script, *args, env=None):
    result = CliRunner().invoke(script.main, ["--device", "cpu", *args], env=env)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


def test_misuses_are_refused_in_one_line(tmp_path):
    assert "expected DEVICE=SIZE" in refused(behaviour, "--device-map", "auto", "--max-memory", "cpu=lots")
    assert "expected DEVICE=SIZE" in refused(behaviour, "--device-map", "auto", "--max-memory", "gpu0=1GiB")
    assert "cpu is given twice" in refused(behaviour, "--device-map", "auto", "--max-memory", "cpu=1GiB,cpu=2GiB")
    assert "pass --device-map auto" in refused(behaviour, "--max-memory", "cpu=1GiB")
    assert "with --device cpu" in refused(behaviour, "--device-map", "auto", "--max-memory", "0=1GiB,cpu=1GiB")
    assert "use one or the other" in refused(neurons, "--device-map", "auto", env={"WORLD_SIZE": "2"})
    cuda = torch.device("cuda")  # what --device cuda resolves to where there is one
    for memory, refusal in (({"cpu": 1}, "names no GPU"), ({torch.cuda.device_count(): 1}, "numbered from 0")):
        with pytest.raises(common.RMTError, match=refusal):
            common.placement(common.Reading(device_map="auto", max_memory=memory), cuda)
    assert "device_map" not in {p.name for p in train.main.params}  # training is not asked for
    assert common.parse_max_memory("0=20GiB, 1=500MB,cpu=1000") == {0: 20 * 2**30, 1: 500 * 10**6, "cpu": 1000}
    assert common.Reading(device_map="auto", max_memory={"cpu": 1}).key(common.HH_FORMAT) is None
    # the conflict differentiates the weights, which an offloaded layer does not hold between forwards
    rm = save_tiny_rm(tmp_path / "runs", "mixed", perturb_seed=3)
    result = CliRunner().invoke(conflict.main, [
        "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--objective", "mixed",
        "--data-dir", DEMO, "--max-pairs", "20", "--max-length", "48", "--batch-size", "4", "--device", "cpu",
        "--tau", "50", "--device-map", "auto", "--max-memory", f"cpu={cpu_share(rm)}"])
    assert result.exit_code == 2 and "differentiates the RM's weights" in result.output, result.output
