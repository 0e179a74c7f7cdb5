"""Parameter counts from configs alone, checked against published model sizes.

The configs are the public architecture numbers of each model's config.json, written out here
so that the tests do not depend on the bundled copies.
"""
import json

import pytest

from ps_interp import budget
from ps_interp.errors import PsInterpError
from ps_interp.neurons import ModelIdentity, NeuronSet

LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}
LLAMA3_8B = {**LLAMA2_7B, "intermediate_size": 14336, "num_key_value_heads": 8, "vocab_size": 128256}
QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
             "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
LLAVA15_7B = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
              "vision_feature_layer": -2, "tie_word_embeddings": False,
              "text_config": {**LLAMA2_7B, "vocab_size": 32064},
              "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                                "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336,
                                "patch_size": 14}}
QWEN25_VL_7B = {**QWEN25_7B, "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
                "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                                  "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                                  "spatial_merge_size": 2, "temporal_patch_size": 2}}
SMOLLM2_135M = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
                "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}

PUBLISHED = [(LLAMA2_7B, "llama-2-7b", 6.74e9), (LLAMA3_8B, "llama-3-8b", 8.03e9), (QWEN25_7B, "qwen2.5-7b", 7.62e9),
             (LLAVA15_7B, "llava-1.5-7b", 7.06e9), (QWEN25_VL_7B, "qwen2.5-vl-7b", 8.29e9),
             (SMOLLM2_135M, "smollm2-135m", 134.5e6)]


@pytest.mark.parametrize("config,name,published", PUBLISHED, ids=[p[1] for p in PUBLISHED])
def test_totals_match_published_sizes(config, name, published):
    total = budget.count_params(config)
    assert abs(total - published) / published < 0.005
    assert budget.count_params(name) == total  # the bundled config describes the same model
    assert sum(budget.param_breakdown(config).values()) == total


def test_exact_counts():
    # hand-computed: e.g. Llama-3-8B = 32 * (41,943,040 attn + 176,160,768 mlp + 8,192 norms) + 2 * 525,336,576 + 4,096
    assert budget.count_params(LLAMA2_7B) == 6_738_415_616
    assert budget.count_params(LLAMA3_8B) == 8_030_261_248
    assert budget.count_params(QWEN25_7B) == 7_615_616_512  # includes the q/k/v biases
    assert budget.count_params(SMOLLM2_135M) == 134_515_008  # tied embeddings counted once
    parts = budget.param_breakdown(LLAVA15_7B)
    assert parts["vision"] == 303_507_456  # CLIP ViT-L/14-336
    assert parts["projector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096


def test_tied_embeddings_and_qkv_bias_change_the_count():
    untied = budget.count_params({**SMOLLM2_135M, "tie_word_embeddings": False})
    assert untied - budget.count_params(SMOLLM2_135M) == 49152 * 576
    llama_like_qwen = {**QWEN25_7B, "model_type": "llama"}
    assert budget.count_params(QWEN25_7B) - budget.count_params(llama_like_qwen) == 28 * (3584 + 2 * 512)


def test_neuron_params_and_budget_round_trip():
    assert budget.neuron_params(LLAMA3_8B) == 3 * 4096
    assert budget.total_neurons(LLAMA3_8B) == 32 * 14336
    # 0.03% of Llama-3-8B: 0.0003 * 8,030,261,248 / 12,288 = 196.05 -> 196 neurons
    n = budget.neurons_for_budget(LLAMA3_8B, 0.0003)
    assert n == 196
    assert budget.param_budget(LLAMA3_8B, neurons=n) <= 0.0003 < budget.param_budget(LLAMA3_8B, neurons=n + 1)
    for cfg, _, _ in PUBLISHED:
        for frac in (1e-4, 3e-4, 0.01):
            k = budget.neurons_for_budget(cfg, frac)
            assert budget.param_budget(cfg, k) <= frac < budget.param_budget(cfg, k + 1)


def test_param_budget_accepts_neuron_sets():
    ident = budget.identity_from_config("llama-3-8b")
    assert ident == ModelIdentity("LlamaForCausalLM", 32, 14336, 4096, True, "meta-llama/Meta-Llama-3-8B")
    s = NeuronSet({0: range(100), 5: range(96)}, ident)
    assert budget.param_budget("llama-3-8b", s) == pytest.approx(s.param_fraction(8_030_261_248))


def test_config_forms(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_135M))
    assert budget.count_params(tmp_path) == budget.count_params(tmp_path / "config.json") == 134_515_008
    assert set(budget.bundled_configs()) >= {"llama-2-7b", "llama-3-8b", "qwen2.5-7b", "llava-1.5-7b",
                                             "qwen2.5-vl-7b", "smollm2-135m"}
    with pytest.raises(PsInterpError, match="llama-3-8b"):  # the fix lists the bundled names
        budget.count_params("llama-9-1t")
    with pytest.raises(PsInterpError, match="not supported"):
        budget.count_params({"model_type": "mamba", "hidden_size": 8})
    with pytest.raises(PsInterpError, match="fraction"):
        budget.neurons_for_budget(LLAMA3_8B, 3.0)


def test_non_gated_gpt2():
    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 768, "n_layer": 12, "n_head": 12,
            "vocab_size": 50257, "n_positions": 1024}
    assert budget.count_params(gpt2) == 124_439_808  # GPT-2 small, tied head
    assert budget.neuron_params(gpt2) == 2 * 768 + 1
    assert budget.identity_from_config(gpt2).gated is False


def test_transformers_configs_and_defaults_agree_with_instantiated_models():
    """count_params equals the parameters of a meta-device model built from the same config."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tiny_text = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=64)
    cases = [
        ("llama", dict(model_type="llama", attention_bias=True, **tiny_text), transformers.AutoModelForCausalLM),
        ("qwen2", dict(model_type="qwen2", **tiny_text), transformers.AutoModelForCausalLM),
        ("qwen3", dict(model_type="qwen3", head_dim=16, tie_word_embeddings=True, **tiny_text),
         transformers.AutoModelForCausalLM),
        ("llava", dict(model_type="llava", vision_feature_layer=[-2, -1], text_config=dict(model_type="llama", **tiny_text),
                       vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=24,
                                          num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)),
         transformers.AutoModelForImageTextToText),
        ("qwen2_5_vl", dict(model_type="qwen2_5_vl", text_config=dict(**tiny_text),
                            vision_config=dict(depth=2, hidden_size=16, out_hidden_size=32, intermediate_size=24,
                                               num_heads=2, patch_size=14, spatial_merge_size=2,
                                               temporal_patch_size=2, in_channels=3)),
         transformers.AutoModelForImageTextToText),
    ]
    for name, d, auto in cases:
        cfg = transformers.AutoConfig.for_model(**d)
        with torch.device("meta"):
            model = auto.from_config(cfg)
        real = sum(p.numel() for p in model.parameters())
        assert budget.count_params(cfg) == real, name
        assert budget.count_params(d) == real, name  # raw dict: missing keys filled from transformers defaults
    # a raw LLaVA config.json leaves the Vicuna text dims at LlamaConfig's defaults (4096 / 11008 / 32 layers)
    raw_llava = {**LLAVA15_7B, "text_config": {"model_type": "llama", "vocab_size": 32064}}
    assert budget.count_params(raw_llava) == budget.count_params(LLAVA15_7B)
