"""Every row of common.ARCHITECTURES on a tiny random model built from a config and saved to a folder: our score of
a text is transformers' own (`model(**tokenizer(text)).logits[0, 0]`), alone and inside a padded batch, to 1e-5
in float32; both neuron sites expose d_mlp units on every layer; and zeroing every neuron at either site equals
zeroing the down projection's weights (the site paths point at the real MLP); and conflict.py finds each neuron's
own parameters."""
import copy
import sys
from pathlib import Path

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          MistralConfig, Qwen2Config)

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import common  # noqa: E402
import conflict  # noqa: E402

CPU = torch.device("cpu")
VOCAB = 257  # common.byte_tokenizer: 256 bytes and <|endoftext|> (pad = eos, the Llama trap)
SPECIAL = dict(vocab_size=VOCAB, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1, num_labels=1)
SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128)
CONFIGS = {
    "gpt2": GPT2Config(n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=128, **SPECIAL),
    "llama": LlamaConfig(num_key_value_heads=2, **SMALL, **SPECIAL),
    "qwen2": Qwen2Config(num_key_value_heads=2, **SMALL, **SPECIAL),
    "mistral": MistralConfig(num_key_value_heads=2, sliding_window=None, **SMALL, **SPECIAL),
    "gpt_neox": GPTNeoXConfig(**SMALL, **SPECIAL),
    "gemma2": Gemma2Config(num_key_value_heads=2, head_dim=8, **SMALL, **SPECIAL),
}
TEXTS = ["\n\nHuman: hi\n\nAssistant: hello", "\n\nHuman: a longer question about cats?\n\nAssistant: sure, cats."]


# Rows that reuse another's layout under a reward-model family's own model_type (data/reward_heads.json), tested
# with that family in tests/test_external_rms.py
ALIASES = {"gpt_neox_reward_model": "gpt_neox"}


def test_every_architecture_row_has_a_config_here_and_its_neurons_own_parameters():
    assert set(CONFIGS) | set(ALIASES) == set(common.ARCHITECTURES) == set(conflict.NEURON_PARAMETERS)
    for alias, layout in ALIASES.items():
        assert common.ARCHITECTURES[alias] is common.ARCHITECTURES[layout]
        assert conflict.NEURON_PARAMETERS[alias] is conflict.NEURON_PARAMETERS[layout]


@pytest.fixture(params=sorted(CONFIGS))
def saved(request, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(CONFIGS[request.param])
    model.save_pretrained(tmp_path / "rm")
    common.byte_tokenizer().save_pretrained(tmp_path / "rm")
    return common.load_reward_model(tmp_path / "rm", CPU)


def native(model, tokenizer, text: str) -> float:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()


def test_scores_are_transformers_own_alone_and_in_a_padded_batch(saved):
    model, tokenizer = saved
    alone = [common.score_texts(model, tokenizer, [t], 1, 128, CPU)[0] for t in TEXTS]
    batched = common.score_texts(model, tokenizer, TEXTS, len(TEXTS), 128, CPU)  # the short one right-padded
    assert alone == pytest.approx([native(model, tokenizer, t) for t in TEXTS], abs=1e-5)
    assert batched == pytest.approx(alone, abs=1e-5)


def test_both_sites_expose_every_neuron_and_zeroing_them_is_zeroing_the_down_projection(saved):
    model, tokenizer = saved
    layers, d_mlp = common.mlp_shape(model)
    assert (layers, d_mlp) == (2, 48)
    for site in common.NEURON_SITES:
        seen = {}
        with common.mlp_hooks(model, site, lambda layer, a: seen.__setitem__(layer, a.shape[-1])):
            common.score_texts(model, tokenizer, TEXTS[:1], 1, 128, CPU)
        assert seen == {layer: d_mlp for layer in range(layers)}, site

    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for block in common.transformer_layers(zeroed):
            block.get_submodule(common.arch_of(zeroed).down).weight.zero_()
    want = common.score_texts(zeroed, tokenizer, TEXTS, 2, 128, CPU)
    everything = torch.ones(layers, d_mlp, dtype=torch.bool)
    for site in common.NEURON_SITES:
        with common.ablation_hooks(model, site, everything):
            assert common.score_texts(model, tokenizer, TEXTS, 2, 128, CPU) == pytest.approx(want, abs=1e-5), site


def test_each_neuron_has_its_own_parameter_slices_for_the_gradient_conflict(saved):
    model, _ = saved
    layers, d_mlp = common.mlp_shape(model)
    per_layer = conflict.neuron_parameters(model)
    assert len(per_layer) == layers
    assert all(params and all(p.shape[axis] == d_mlp for p, axis in params) for params in per_layer)
