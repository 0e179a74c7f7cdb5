"""Adapters, tiny models, loading: the recorded site is the input of down_proj for every family."""
import pytest
import torch

import ps_interp.models as pm
from ps_interp.errors import MissingDependencyError, PsInterpError
from ps_interp.models import tiny
from ps_interp.record import record

from .conftest import make_probes


def manual_site(model, layer, x):
    """act(gate(x)) * up(x) for gated FFNs, act(c_fc(x)) for GPT-2."""
    mlp = model.mlp(layer)
    if model.adapter.gated:
        return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    return mlp.act(mlp.c_fc(x))


@pytest.mark.parametrize("family", [f for f in tiny.FAMILIES])
def test_recorded_site_equals_manual_ffn(family):
    model = tiny.build(family)
    probes = make_probes(n=1)
    inputs = {}
    hooks = [model.mlp(l).register_forward_pre_hook(lambda m, a, l=l: inputs.__setitem__(l, a[0].detach()))
             for l in range(model.n_layers)]
    try:
        stats = record(model, probes, position="all", progress=False, backend="hooks")
        model.hf(**__import__("ps_interp").data.prompting.encode(model, probes))
    finally:
        for h in hooks:
            h.remove()
    for layer in range(model.n_layers):
        with torch.no_grad():
            expected = manual_site(model, layer, inputs[layer]).double().sum((0, 1))
        got = stats.moments["sum"][0, layer]
        assert got.shape == (model.d_ff,)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    nn_stats = record(model, probes, position="all", progress=False, backend="nnsight")
    assert nn_stats.allclose(stats, tol=1e-6)


def test_sizes_and_identity():
    m = tiny.build("gpt2")
    assert (m.n_layers, m.d_model, m.d_ff) == (2, 64, 256)
    assert m.down_weight(0).shape == (64, 256)
    assert not m.identity.gated
    names = [n for n, _, _ in m.neuron_params(1)]
    assert names == ["transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias", "transformer.h.1.mlp.c_proj.weight"]


def test_vlm_exposes_vision_sites():
    for family in ("llava", "qwen2_vl", "qwen2_5_vl"):
        m = tiny.build(family)
        assert m.is_multimodal and m.image_token_id is not None
        assert m.vision_site_module(0) is not None


def test_unsupported_architecture_lists_supported_and_register_adapter():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hf = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, vocab_size=512))
    tok = tiny.build("llama").tokenizer
    with pytest.raises(PsInterpError, match="unsupported architecture 'GPTNeoXForCausalLM'.*LlamaForCausalLM.*register_adapter"):
        pm.wrap(hf, tok)
    pm.register_adapter("GPTNeoXForCausalLM", pm.Adapter(
        family="neox", layers="gpt_neox.layers", down="dense_4h_to_h", gate=None, up="dense_h_to_4h", gated=False,
        neuron_slices=(("dense_h_to_4h", "weight", 0), ("dense_h_to_4h", "bias", 0), ("dense_4h_to_h", "weight", 1)),
        final_norm="gpt_neox.final_layer_norm"))
    try:
        model = pm.wrap(hf, tok)
        assert model.d_ff == 64 and model.n_layers == 1
    finally:
        pm.ADAPTERS.pop("GPTNeoXForCausalLM")


def test_adapter_validation_catches_wrong_paths():
    m = tiny.build("llama")
    bad = m.adapter.replace(d_ff_attr="hidden_size")
    with pytest.raises(PsInterpError, match="site width"):
        pm.Model(m.hf, m.tokenizer, adapter=bad)


def test_missing_gguf_path(tmp_path):
    with pytest.raises(PsInterpError, match="GGUF file not found"):
        pm.load(tmp_path / "nope.gguf")


def test_gguf_not_installed(monkeypatch, tmp_path):
    import sys

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setenv("PS_INTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail, even if it was imported before
    with pytest.raises(MissingDependencyError, match=r"gguf.*pip install 'ps-interp\[gguf\]'"):
        pm.load(fake)
    converted = tmp_path / "cache" / "converted"
    assert not converted.exists() or not any(converted.iterdir())


def test_unknown_local_model_gives_clear_error(tmp_path):
    with pytest.raises(PsInterpError, match="cannot load"):
        pm.load(str(tmp_path / "no-such-model"))


def test_wrap_roundtrip_save_and_load_dir(tmp_path):
    m = tiny.build("qwen2")
    m.hf.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    loaded = pm.load(str(tmp_path))
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded.forward_logits(ids), m.forward_logits(ids))
