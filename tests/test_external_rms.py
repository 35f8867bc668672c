"""Native-score equality per RM family (issue #19 item 4): a tiny RM of each family is built from a config (seeded
random weights), saved with its tokenizer, loaded BY PATH through common.load_reward_model, and our score of every
response equals what the RM's own users compute, one conversation at a time, with a model loaded independently by
transformers — `model(**tokenizer.apply_chat_template(conversation, return_dict=True, return_tensors="pt"))
.logits[0, index]` for a chat-template RM, `model(**tokenizer(text, return_tensors="pt")).logits[0, index]` for an
HH-format one — to 1e-5 in float32, alone and inside padded batches. Also: a remote-code head (OpenAssistant's
GPTNeoXRewardModel, shipped in the checkpoint), a head of two outputs (--reward-index), an RM trained by TRL's
RewardTrainer, the refusals (no head weights, an unknown head family, an unknown MLP layout) and HH transcripts read
turn by turn by a chat-template RM. Everything is built offline from configs and local folders."""
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, Qwen2Config)

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import common  # noqa: E402

CPU = torch.device("cpu")
TOL = 1e-5
MAX_LENGTH = 512
VOCAB = 257  # common.byte_tokenizer: 256 bytes and <|endoftext|> (eos = pad: every chat text below ends in pad)
EOT = VOCAB - 1
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
BOS_CHAT_TEMPLATE = "{{ bos_token }}" + CHAT_TEMPLATE


def config(family: str, vocab: int = VOCAB, num_labels: int = 1, **extra):
    special = dict(vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=EOT, pad_token_id=EOT,
                   num_labels=num_labels, **extra)
    small = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=256)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=256, **special)
    if family == "gpt_neox":
        return GPTNeoXConfig(**small, **special)
    if family == "gemma2":
        return Gemma2Config(num_key_value_heads=2, head_dim=8, **small, **special)
    if family == "mistral":
        return MistralConfig(num_key_value_heads=2, sliding_window=None, **small, **special)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[family](num_key_value_heads=2, **small, **special)


def tokenizer_with(chat_template: str | None = CHAT_TEMPLATE, adds_bos: bool = False):
    """The byte tokenizer with a chat template; with `adds_bos`, a BOS token of its own (id 257) that the tokenizer
    puts in front of every text it encodes with its special tokens, as Llama's do."""
    tokenizer = common.byte_tokenizer()
    if adds_bos:
        from tokenizers import processors

        tokenizer.add_special_tokens({"bos_token": "<|bos|>"})
        tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", tokenizer.bos_token_id)])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def saved_rm(folder: Path, cfg, tokenizer, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save(AutoModelForSequenceClassification.from_config(cfg), tokenizer, folder)


def reference(path: Path, trust_remote_code: bool = False):
    """The RM and tokenizer as its users load them, independently of common.py. One unpadded conversation at a time,
    so no pad id: transformers then reads the last token (its own pad-id pooling would read one token early on a
    text that ends in eos = pad)."""
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32,
                                                               trust_remote_code=trust_remote_code).eval()
    model.config.get_text_config().pad_token_id = None
    return model, AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def native_chat(ref, conversation: list[dict], index: int = 0) -> float:
    model, tokenizer = ref
    batch = tokenizer.apply_chat_template(conversation, return_dict=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 1
    return model(**batch).logits[0, index].item()


@torch.no_grad()
def native_text(ref, text: str, index: int = 0) -> float:
    model, tokenizer = ref
    return model(**tokenizer(text, return_tensors="pt")).logits[0, index].item()


def exchange(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


# Responses of different lengths, so every batch below is right-padded (with the eos = pad id).
ITEMS = [
    common.Item("short", "demo", "hi", ("hello",), ("go away, and do not come back here again",)),
    common.Item("long", "demo", "a much longer question about cats and their curious habits?",
                ("Cats sleep a lot and groom themselves often.", "ok"), ("no",)),
    common.Item("mid", "other", "2+2?", ("4",), ("5, or maybe 22, it depends who asks",)),
]
CONVERSATIONS = [
    exchange("hi", "hello"),
    [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
     {"role": "user", "content": "and a follow-up, a bit longer than the first one?"},
     {"role": "assistant", "content": "a final answer"}],
    exchange("tell me a long story about a boat and the sea", "once upon a time a boat sailed far away"),
]
OASST_TEXTS = ["<|prompter|>hi<|endoftext|><|assistant|>hello<|endoftext|>",
               "<|prompter|>a longer question about boats?<|endoftext|><|assistant|>boats float on water.<|endoftext|>",
               "<|prompter|>q<|endoftext|><|assistant|>a<|endoftext|>"]
HH_TEXTS = ["\n\nHuman: hi\n\nAssistant: hello", "\n\nHuman: a longer question about cats?\n\nAssistant: sure, cats.",
            "\n\nHuman: x\n\nAssistant: y" + "<|endoftext|>"]


def responses(item: common.Item) -> list[str]:
    return [*item.chosen, *item.rejected]


def assert_items_native(model, tokenizer, items, native) -> None:
    """score_items alone (batch 1) and in one padded batch equals native(item, response) for every response."""
    want = [[native(item, r) for r in responses(item)] for item in items]
    for batch_size in (1, 16):
        got = common.score_items(model, tokenizer, items, None, batch_size, MAX_LENGTH, CPU)
        for item, scores, expected in zip(items, got, want):
            assert [*scores.chosen, *scores.rejected] == pytest.approx(expected, abs=TOL), (item.id, batch_size)


def assert_texts_native(model, tokenizer, texts, want) -> None:
    alone = [common.score_texts(model, tokenizer, [t], 1, MAX_LENGTH, CPU)[0] for t in texts]
    batched = common.score_texts(model, tokenizer, texts, len(texts), MAX_LENGTH, CPU)
    assert alone == pytest.approx(want, abs=TOL)
    assert batched == pytest.approx(want, abs=TOL)


# 1. Every standard decoder family as a *ForSequenceClassification with a chat template -------------------------

FAMILIES = ["gpt2", "llama", "qwen2", "mistral", "gemma2", "gpt_neox"]


@pytest.mark.parametrize("family,adds_bos", [*((f, False) for f in FAMILIES), ("llama", True)],
                         ids=[*FAMILIES, "llama-bos"])
def test_chat_template_rm_scores_are_its_users_own(tmp_path, family, adds_bos):
    tokenizer = tokenizer_with(BOS_CHAT_TEMPLATE if adds_bos else CHAT_TEMPLATE, adds_bos=adds_bos)
    path = saved_rm(tmp_path / "rm", config(family, vocab=len(tokenizer)), tokenizer)
    model, ours = common.load_reward_model(path, CPU, common.Reading(template="auto"))
    assert ours.input_format.name == "chat"
    assert model.rmt_reward == ("score", 0)
    ref = reference(path)

    # the token ids we score are apply_chat_template's, exactly (one BOS, from the template, never a second one)
    for conversation in CONVERSATIONS:
        want_ids = ref[1].apply_chat_template(conversation)["input_ids"]
        assert common.encode(ours, [ours.input_format.render(conversation)], MAX_LENGTH)[0] == want_ids
        assert want_ids[-1] == EOT
        if adds_bos:
            assert ref[1]("x")["input_ids"][0] == ref[1].bos_token_id  # the tokenizer adds a BOS by itself ...
            assert want_ids.count(ref[1].bos_token_id) == 1 and want_ids[0] == ref[1].bos_token_id  # ... once here

    assert_items_native(model, ours, ITEMS, lambda item, r: native_chat(ref, exchange(item.prompt, r)))
    assert_texts_native(model, ours, [ours.input_format.render(c) for c in CONVERSATIONS],
                        [native_chat(ref, c) for c in CONVERSATIONS])


# 2. A remote-code head: OpenAssistant's GPTNeoXRewardModel, shipped in the checkpoint (auto_map) -------------------
# The class as rewardbench/models/openassistant.py (from OpenAssistant's model_training) writes it, for transformers 5:
# its __init__ calls post_init() (without it transformers 5's from_pretrained fails with AttributeError
# 'all_tied_weights_keys'), GPTNeoXModel takes no head_mask, and mean pooling broadcasts the mask.

CONFIGURATION_OASST = '''
from typing import Literal

from transformers import GPTNeoXConfig


class GPTNeoXRewardModelConfig(GPTNeoXConfig):
    model_type = "gpt_neox_reward_model"

    pooling: Literal["mean", "last"]

    def __init__(self, pooling: Literal["mean", "last"] = "last", **kwargs):
        super().__init__(**kwargs)
        self.pooling = pooling or "last"
'''

MODELING_OASST = '''
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXModel, GPTNeoXPreTrainedModel
from transformers.utils import ModelOutput

from .configuration_oasst import GPTNeoXRewardModelConfig


@dataclass
class GPTNeoXRewardModelOutput(ModelOutput):
    logits: torch.FloatTensor = None


class GPTNeoXRewardModel(GPTNeoXPreTrainedModel):
    config_class = GPTNeoXRewardModelConfig

    def __init__(self, config):
        if type(config) == GPTNeoXConfig:
            config = GPTNeoXRewardModelConfig.from_dict(config.to_dict())
        super().__init__(config)
        self.gpt_neox = GPTNeoXModel(config)
        self.out_proj = nn.Linear(config.hidden_size, 1)
        self.pooling = config.pooling
        self.post_init()

    def forward(self, input_ids, attention_mask=None, inputs_embeds=None, head_mask=None, use_cache=None,
                return_dict=True):
        outputs = self.gpt_neox(input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                use_cache=use_cache, return_dict=return_dict)
        hidden_states = outputs[0]
        if self.pooling == "mean":
            if attention_mask is None:
                pooled = hidden_states.mean(dim=1)
            else:
                mask = attention_mask.unsqueeze(-1)
                pooled = (hidden_states * mask).sum(dim=1) / mask.sum(dim=1)
        elif self.pooling == "last":
            if attention_mask is None:
                pooled = hidden_states[:, -1]
            else:
                last_idx = attention_mask.cumsum(dim=1).argmax(dim=1)
                index = last_idx.view(-1, 1, 1).expand(-1, 1, hidden_states.size(-1))
                pooled = hidden_states.gather(1, index).squeeze(1)
        else:
            raise ValueError(f"Unknown pooling method: {self.pooling}")
        logits = self.out_proj(pooled)
        if not return_dict:
            return (logits,) + outputs[1:]
        return GPTNeoXRewardModelOutput(logits=logits)
'''


@pytest.fixture(scope="module")
def oasst_rm(tmp_path_factory) -> Path:
    """A tiny OpenAssistant-style RM with its modelling code in the folder (auto_map for AutoConfig and
    AutoModelForSequenceClassification), built through that code as transformers runs it, and saved; no chat
    template (OpenAssistant's RMs read "<|prompter|>…<|endoftext|><|assistant|>…<|endoftext|>" strings)."""
    from transformers import AutoConfig

    path = tmp_path_factory.mktemp("oasst") / "oasst-rm"
    path.mkdir()
    (path / "configuration_oasst.py").write_text(CONFIGURATION_OASST)
    (path / "modeling_oasst.py").write_text(MODELING_OASST)
    backbone = config("gpt_neox").to_dict()
    backbone.pop("num_labels", None), backbone.pop("id2label", None), backbone.pop("label2id", None)
    (path / "config.json").write_text(json.dumps({
        **backbone, "model_type": "gpt_neox_reward_model", "pooling": "last", "architectures": ["GPTNeoXRewardModel"],
        "auto_map": {"AutoConfig": "configuration_oasst.GPTNeoXRewardModelConfig",
                     "AutoModelForSequenceClassification": "modeling_oasst.GPTNeoXRewardModel"}}))
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=True)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg, trust_remote_code=True)
    with torch.no_grad():
        model.out_proj.bias.fill_(0.3)  # a bias that is not zero, so it is seen to be read too
    save(model, tokenizer_with(None), path)
    written = json.loads((path / "config.json").read_text())
    assert written["architectures"] == ["GPTNeoXRewardModel"] and "AutoModelForSequenceClassification" in \
        written["auto_map"] and written["model_type"] == "gpt_neox_reward_model"
    return path


def test_remote_code_head_is_refused_without_trust_remote_code(oasst_rm):
    with pytest.raises(common.RMTError, match="--trust-remote-code") as err:
        common.load_reward_model(oasst_rm, CPU, common.Reading(template="auto"))
    assert "auto_map" in str(err.value)


def test_remote_code_head_scores_are_its_users_own(oasst_rm):
    """Its model_type reuses the gpt_neox row of common.ARCHITECTURES."""
    model, ours = common.load_reward_model(oasst_rm, CPU, common.Reading(template="auto", trust_remote_code=True))
    assert type(model).__name__ == "GPTNeoXRewardModel"
    assert model.rmt_reward == ("out_proj", 0)
    assert ours.input_format.name == "hh"  # no chat template: the texts as given, the tokenizer's own specials
    ref = reference(oasst_rm, trust_remote_code=True)
    assert_texts_native(model, ours, OASST_TEXTS, [native_text(ref, t) for t in OASST_TEXTS])
    assert_items_native(model, ours, ITEMS,
                        lambda item, r: native_text(ref, f"{common.HUMAN} {item.prompt}{common.ASSISTANT} {r}"))
    assert common.mlp_shape(model) == (2, 48)  # its backbone's neurons are found (gpt_neox layout)


def test_remote_code_rm_goes_through_a_step_only_with_trust_remote_code(oasst_rm, tmp_path):
    from click.testing import CliRunner
    import neurons

    args = ["--rm", f"mixed={oasst_rm}", "--model", "oasst", "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results"), "--data-dir", str(ROOT / "data" / "demo" / "hh-rlhf"), "--max-pairs", "8",
            "--max-length", "48", "--method", "magnitude", "--device", "cpu"]
    refused = CliRunner().invoke(neurons.main, args)
    assert refused.exit_code == 2 and "--trust-remote-code" in refused.output and "Traceback" not in refused.output
    result = CliRunner().invoke(neurons.main, [*args, "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    assert next((tmp_path / "runs" / "oasst" / "mixed").glob("rm-*/neurons/magnitude.h5"))


# 3. A head of two outputs: --reward-index ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_output_rm(tmp_path_factory) -> Path:
    return saved_rm(tmp_path_factory.mktemp("two") / "rm", config("llama", num_labels=2), tokenizer_with(None))


def test_two_output_head_needs_a_reward_index(two_output_rm):
    with pytest.raises(common.RMTError, match=r"'score' has 2 outputs.*--reward-index 0\.\.1"):
        common.load_reward_model(two_output_rm, CPU, common.Reading(template="auto"))
    with pytest.raises(common.RMTError, match=r"--reward-index 2.*has 2 output"):
        common.load_reward_model(two_output_rm, CPU, common.Reading(template="auto", reward_index=2))


@pytest.mark.parametrize("index", [0, 1])
def test_reward_index_reads_that_output(two_output_rm, index):
    model, ours = common.load_reward_model(two_output_rm, CPU, common.Reading(template="auto", reward_index=index))
    assert model.rmt_reward == ("score", index) and ours.input_format.name == "hh"
    ref = reference(two_output_rm)
    assert_texts_native(model, ours, HH_TEXTS, [native_text(ref, t, index) for t in HH_TEXTS])
    assert_items_native(model, ours, ITEMS[:2],
                        lambda item, r: native_text(ref, f"{common.HUMAN} {item.prompt}{common.ASSISTANT} {r}", index))
    other = common.score_texts(model, ours, HH_TEXTS[:1], 1, MAX_LENGTH, CPU)[0]
    assert abs(other - native_text(ref, HH_TEXTS[0], 1 - index)) > 1e-4  # the other output is another number


# 4. An RM trained by another tool: TRL's RewardTrainer -----------------------------------------------------------


def test_rm_trained_by_trl_reward_trainer_scores_are_its_users_own(tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tokenizer = tokenizer_with(CHAT_TEMPLATE)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config("llama"))
    initial = model.score.weight.detach().clone()
    topics = ["cats", "rain", "tea", "boats", "snow", "bees"]
    rows = [{"chosen": exchange(f"tell me about {t}", f"Sure, a calm note on {t}."),
             "rejected": exchange(f"tell me about {t}", f"NO!!! {t.upper()}")} for t in topics]
    args = RewardConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to=[], save_strategy="no",
                        max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, bf16=False,
                        activation_checkpointing=False, logging_strategy="no", disable_tqdm=True, seed=0,
                        dataloader_num_workers=0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    path = tmp_path / "rm"
    trainer.save_model(str(path))
    tokenizer.save_pretrained(path)
    assert not torch.equal(trainer.model.score.weight.detach().cpu(), initial)  # it did train

    model, ours = common.load_reward_model(path, CPU, common.Reading(template="auto"))
    assert ours.input_format.name == "chat"
    ref = reference(path)
    conversations = [rows[0]["chosen"], rows[1]["rejected"], *CONVERSATIONS]
    assert_texts_native(model, ours, [ours.input_format.render(c) for c in conversations],
                        [native_chat(ref, c) for c in conversations])
    assert_items_native(model, ours, ITEMS, lambda item, r: native_chat(ref, exchange(item.prompt, r)))


# 5. Refusals --------------------------------------------------------------------------------------------------


def test_checkpoint_without_head_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = saved_rm(tmp_path / "rm", config("llama"), tokenizer_with())
    weights = load_file(path / "model.safetensors")
    assert "score.weight" in weights
    del weights["score.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(common.RMTError, match="no weights for its reward head 'score'"):
        common.load_reward_model(path, CPU, common.Reading(template="auto"))


def test_class_of_no_head_family_is_refused_naming_the_table(tmp_path):
    torch.manual_seed(0)
    path = save(LlamaForCausalLM(config("llama")), tokenizer_with(), tmp_path / "lm")
    with pytest.raises(common.RMTError, match=r"LlamaForCausalLM.*data/reward_heads\.json"):
        common.load_reward_model(path, CPU, common.Reading(template="auto"))


def test_unknown_mlp_layout_is_refused_naming_architectures(tmp_path):
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=48, num_labels=1,
                                                    max_position_embeddings=64, pad_token_id=EOT))
    path = save(bert, tokenizer_with(), tmp_path / "bert")
    with pytest.raises(common.RMTError, match=r"'bert' is not in common\.ARCHITECTURES"):
        common.load_reward_model(path, CPU, common.Reading(template="auto"))


# 6. HH-RLHF transcripts read turn by turn by a chat-template RM --------------------------------------------------

TRANSCRIPT = ("\n\nHuman:  hi there  \n\nHuman: and a second line \n\nAssistant:  hello!  "
              "\n\nHuman: more?\n\nAssistant: ok ")
TURNS = [{"role": "user", "content": "hi there\n\nand a second line"}, {"role": "assistant", "content": "hello!"},
         {"role": "user", "content": "more?"}, {"role": "assistant", "content": "ok"}]


def test_hh_turns_splits_strips_and_joins_one_speakers_turns():
    assert common.hh_turns(TRANSCRIPT) == TURNS
    assert common.hh_turns("\n\nHuman: q\n\nAssistant: a\n\nAssistant: b") == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a\n\nb"}]
    assert common.hh_turns("\n\nHuman: q\n\nAssistant:") == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]


def test_chat_rm_reads_a_held_out_hh_pair_turn_by_turn(tmp_path):
    path = saved_rm(tmp_path / "rm", config("llama"), tokenizer_with())
    model, ours = common.load_reward_model(path, CPU, common.Reading(template="auto"))
    ref = reference(path)
    rejected = "\n\nHuman: hi there\n\nAssistant: go away, and do not come back here again"
    pair = common.Item("0123abcd", "hh-helpful-base", "", (TRANSCRIPT,), (rejected,), transcripts=True)
    want = [TURNS, exchange("hi there", "go away, and do not come back here again")]
    assert pair.texts(ours.input_format) == [ref[1].apply_chat_template(c, tokenize=False) for c in want]
    assert pair.texts(ours.input_format)[0].startswith("<|user|>hi there\n\nand a second line<|endoftext|>"
                                                       "<|assistant|>hello!<|endoftext|><|user|>more?")
    pair_natives = dict(zip(responses(pair), [native_chat(ref, c) for c in want]))
    assert_items_native(model, ours, [pair, *ITEMS],  # in one padded batch with benchmark items too
                        lambda item, r: pair_natives[r] if item.transcripts
                        else native_chat(ref, exchange(item.prompt, r)))
    # what the score cache records the RM saw is the chat rendering
    common.score_items(model, ours, [pair], tmp_path / "scores", 4, MAX_LENGTH, CPU)
    seen = (tmp_path / "scores" / "hh-helpful-base.rendered.txt").read_text()
    assert seen.startswith("format: chat (chat:") and "<|assistant|>hello!<|endoftext|>" in seen
