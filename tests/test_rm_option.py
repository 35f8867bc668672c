"""RMs trained elsewhere through every analysis step (--rm OBJECTIVE=SOURCE), and conversations as the RM expects
them (--template, train.py included): run folders named by the weights' hash that link to the user's folder and
never write into it, one RM under two roles or from two paths scored once, the change method only with the
backbone, every misuse refused in one line, the template an RM was trained with used by every step."""
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import ablate  # noqa: E402
import behaviour  # noqa: E402
import common  # noqa: E402
import conflict  # noqa: E402
import neurons  # noqa: E402
import shared  # noqa: E402
import train  # noqa: E402
from conftest import save_tiny_rm  # noqa: E402

DEMO = str(ROOT / "data" / "demo" / "hh-rlhf")
CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
SMALL = ["--max-pairs", "20", "--max-length", "48", "--batch-size", "4", "--device", "cpu"]
BENCH = ["--bench", "demo", "--max-items", "4"]


def elsewhere(tmp_path, objective, name=None, seed=None) -> Path:
    """A tiny RM saved with save_pretrained outside runs/, in a folder named like a user's."""
    seed = {"helpful": 1, "harmless": 2, "mixed": 3}[objective] if seed is None else seed
    saved = save_tiny_rm(tmp_path / "scratch", objective, perturb_seed=seed)
    target = tmp_path / "own" / (name or f"my-{objective}-rm")
    shutil.move(saved, target)
    return target


def invoke(script, tmp_path, *args):
    return CliRunner().invoke(script.main, ["--runs-dir", str(tmp_path / "runs"), "--results-dir",
                                            str(tmp_path / "results"), *args])


def listing(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_rms_given_by_path_go_through_every_step_and_their_folders_are_never_written(tmp_path):
    rms = {o: elsewhere(tmp_path, o) for o in common.OBJECTIVES}
    before = {o: listing(folder) for o, folder in rms.items()}
    given = [w for o, folder in rms.items() for w in ("--rm", f"{o}={folder}")]
    data = ["--data-dir", DEMO, *SMALL]
    for script, args in ((behaviour, [*BENCH, "--max-length", "48", "--device", "cpu"]),
                         (neurons, [*data, "--method", "magnitude"]),
                         (ablate, [*data, *BENCH, "--method", "magnitude", "--tau", "50"]),
                         (shared, [*data, *BENCH, "--tau", "50"]),
                         (conflict, [*data, "--objective", "mixed", "--tau", "50"])):
        result = invoke(script, tmp_path, *given, *args)
        assert result.exit_code == 0, f"{script.__name__}: {result.output}"
    label = "my-helpful-rm"  # no --model: the first RM's folder name
    for o, folder in rms.items():
        run = common.run_of({"rm": given[1::2], "runs_dir": tmp_path / "runs", "model": label}, o, 0)
        assert run.parent == tmp_path / "runs" / label / o and run.name == f"rm-{common.weights_sha256(folder)[:12]}"
        assert (run / "rm").is_symlink() and (run / "rm").resolve() == folder.resolve()
        assert (run / "neurons" / "magnitude.h5").exists()
        assert listing(folder) == before[o]  # nothing written into the user's folder
    report = (tmp_path / "results" / label / "report.md").read_text()
    assert "RMs trained elsewhere (`--rm`" in report and f"mixed = `{rms['mixed']}`" in report
    for section in ("## Behaviour", "## Ablation", "## Gradient conflict"):
        assert section in report
    assert (tmp_path / "results" / label / "shared" / "partitions.csv").exists()


def test_one_rm_in_two_roles_or_from_two_paths_is_scored_once(tmp_path, monkeypatch):
    rm = elsewhere(tmp_path, "mixed")
    scored = []
    real = common.score_texts
    monkeypatch.setattr(common, "score_texts", lambda model, tok, texts, *a, **k: scored.extend(texts) or
                        real(model, tok, texts, *a, **k))
    args = [*BENCH, "--max-length", "48", "--device", "cpu", "--model", "mine"]
    result = invoke(behaviour, tmp_path, "--rm", f"helpful={rm}", "--rm", f"harmless={rm}", *args)
    assert result.exit_code == 0, result.output
    texts = len(scored)
    assert texts and len(set(scored)) == texts  # the second role read the first one's scores
    copy = tmp_path / "copy-of-it"
    shutil.copytree(rm, copy)
    result = invoke(behaviour, tmp_path, "--rm", f"helpful={copy}", *args)
    assert result.exit_code == 0, result.output
    assert len(scored) == texts and "reused" in result.output
    run = next((tmp_path / "runs" / "mine" / "helpful").glob("rm-*"))
    assert (run / "rm").resolve() == copy.resolve()  # the same weights: the same run, linked to where they are now


def test_changed_weights_in_the_same_folder_are_a_new_run(tmp_path):
    rm = elsewhere(tmp_path, "mixed")
    args = ["--rm", f"mixed={rm}", *BENCH, "--max-length", "48", "--device", "cpu", "--model", "mine"]
    assert invoke(behaviour, tmp_path, *args).exit_code == 0
    other = elsewhere(tmp_path, "mixed", name="other", seed=9)
    shutil.copy(other / "model.safetensors", rm / "model.safetensors")
    result = invoke(behaviour, tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert "hashing the weights" in result.output and "reused" not in result.output
    assert len(list((tmp_path / "runs" / "mine" / "mixed").glob("rm-*"))) == 2


@pytest.mark.parametrize("args, message", [
    (["--rm", "mixed"], "expected OBJECTIVE=SOURCE"),
    (["--rm", "kind={rm}"], "expected OBJECTIVE=SOURCE"),
    (["--rm", "mixed={rm}", "--rm", "mixed={rm}x"], "--rm mixed= is given twice"),
    (["--rm", "mixed={rm}", "--seed", "1"], "--seed: RMs given by --rm have no seed"),
    (["--rm", "mixed={rm}", "--objective", "helpful"], "pick among the RMs it names (mixed)"),
    (["--rm", "mixed={rm}", "--method", "change"], "pass that backbone as --model"),
    (["--rm", "mixed=/no/such/folder"], "no such folder, and not a hub id"),
    (["--rm", "mixed={empty}"], "holds no config.json"),
])
def test_misuse_of_rm_is_one_line(tmp_path, args, message):
    rm = elsewhere(tmp_path, "mixed")
    (tmp_path / "empty").mkdir()
    args = [a.format(rm=rm, empty=tmp_path / "empty") for a in args]
    result = invoke(neurons, tmp_path, *args, "--data-dir", DEMO, *SMALL)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_shared_needs_all_three_or_within_and_the_label_never_shares_a_trained_backbones_folder(tmp_path):
    rm = elsewhere(tmp_path, "mixed", name="tiny-gpt2")  # named like a backbone whose RMs train.py made
    save_tiny_rm(tmp_path / "runs", "helpful")
    result = invoke(shared, tmp_path, "--rm", f"mixed={rm}", "--data-dir", DEMO, *SMALL, *BENCH)
    assert result.exit_code == 2 and "holds RMs train.py made" in result.output
    result = invoke(shared, tmp_path, "--rm", f"mixed={rm}", "--model", "mine", "--data-dir", DEMO, *SMALL, *BENCH)
    assert result.exit_code == 2 and "--rm helpful=SOURCE --rm harmless=SOURCE" in result.output
    result = invoke(shared, tmp_path, "--rm", f"mixed={rm}", "--model", "mine", "--within", "mixed", "--tau", "50",
                    "--data-dir", DEMO, *SMALL, *BENCH)
    assert result.exit_code == 0, result.output
    assert "## The tension inside the mixed RM" in (tmp_path / "results" / "mine" / "report.md").read_text()


def test_the_change_method_runs_with_the_backbone_as_model(tmp_path):
    rm = elsewhere(tmp_path, "helpful")
    result = invoke(neurons, tmp_path, "--rm", f"helpful={rm}", "--model", "tiny-gpt2", "--method", "change",
                    "--data-dir", DEMO, *SMALL)
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs" / "my-helpful-rm" / "helpful").glob("rm-*"))  # a backbone: the folder's name
    assert common.read_neurons(run / "neurons" / "change.h5", "").score.abs().sum() > 0


def chat_backbone(tmp_path) -> Path:
    """A local backbone (tiny-llama's config) whose tokenizer has a chat template."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = common.byte_tokenizer()
    tokenizer.chat_template = CHAT
    model = AutoModelForSequenceClassification.from_config(common.tiny_config("tiny-llama", len(tokenizer)))
    folder = tmp_path / "chat-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_an_rm_trained_in_chat_format_is_analysed_in_it_and_template_hh_is_cached_apart(tmp_path):
    backbone = chat_backbone(tmp_path)
    args = ["--model", str(backbone), "--objective", "helpful", "--data-dir", DEMO, "--train-split", "test",
            "--max-pairs", "8", "--max-eval-pairs", "8", "--max-length", "64", "--batch-size", "4", "--device", "cpu"]
    result = invoke(train, tmp_path, *args, "--template", "chat")
    assert result.exit_code == 0, result.output
    run = common.rm_dir(tmp_path / "runs", str(backbone), "helpful", 0)
    assert common.training_config(run)[0]["template"] == "chat"
    eval_args = ["--model", str(backbone), "--objective", "helpful", *BENCH, "--device", "cpu"]
    assert invoke(behaviour, tmp_path, *eval_args).exit_code == 0
    chat = next((run / "scores").glob("len64-chat-*"))  # beside the HH-format scores, not in their place
    rendered = (chat / "demo-helpful-quality.rendered.txt").read_text()
    assert rendered.startswith("format: chat (chat:") and "<|user|>" in rendered and "<|assistant|>" in rendered
    result = invoke(behaviour, tmp_path, *eval_args, "--template", "hh")
    assert result.exit_code == 0, result.output
    assert "\n\nHuman:" in (run / "scores" / "len64" / "demo-helpful-quality.rendered.txt").read_text()
    assert "reused" in invoke(behaviour, tmp_path, *eval_args).output  # the chat scores are still there


def test_template_chat_without_a_chat_template_is_refused_before_training(tmp_path):
    result = invoke(train, tmp_path, "--model", "tiny-gpt2", "--template", "chat", "--data-dir", DEMO,
                    "--train-split", "test", "--max-pairs", "4", "--device", "cpu")
    assert result.exit_code == 2 and "has no chat template" in result.output


def test_records_from_before_template_read_as_hh(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.json").write_text(json.dumps({"config": {"options": {"lr": 1e-3}}}))
    assert common.training_record(run)["template"] == "hh"


def test_a_hub_id_that_cannot_be_fetched_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as offline as CI, without waiting
    result = invoke(behaviour, tmp_path, "--rm", "mixed=nobody/no-such-rm@v1", *BENCH, "--device", "cpu")
    assert result.exit_code == 1 and "could not fetch the RM nobody/no-such-rm@v1" in result.output
    assert "Traceback" not in result.output
