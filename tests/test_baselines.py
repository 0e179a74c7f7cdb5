"""Baselines: trainable-parameter accounting, same data and steps, and exact restore."""
import pytest
import torch

from ps_interp.baselines import (full_finetune, layer_neurons, layer_neurons_baseline, lora_baseline,
                                 lora_target_modules, random_neurons_baseline)
from ps_interp.errors import PsInterpError
from ps_interp.models import tiny
from ps_interp.neurons import NeuronSet

from .test_align import make_data, snapshot

RUN = dict(steps=2, batch_size=2, progress=False, lr=1e-2, max_new_tokens=4)


def assert_original(model, before):
    params = dict(model.hf.named_parameters())
    assert set(params) == set(before), "modules were added or removed"
    assert all(torch.equal(p, before[n]) for n, p in params.items())
    assert not hasattr(model.hf, "peft_config")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_counts_merges_and_restores(family):
    model = tiny.build(family)
    before = snapshot(model)
    d, ff, n_layers = model.d_model, model.d_ff, model.n_layers
    per_layer = 8 * (3 * (d + ff)) if model.adapter.gated else 8 * (2 * (d + ff))  # r * (in + out) per module
    result = lora_baseline(model, make_data(), rank=8, target="mlp", **RUN)
    assert result.trainable_params == n_layers * per_layer
    assert result.total_params == sum(p.numel() for p in before.values())
    assert result.trainable_percent == pytest.approx(100 * n_layers * per_layer / result.total_params)
    assert len(result.log) == 2 and result.summary()["method"] == "lora"
    params = dict(model.hf.named_parameters())
    assert set(params) == set(before)  # merged: a plain HF model again
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert changed and all(".mlp." in n for n in changed)
    result.restore()
    assert_original(model, before)


def test_lora_all_targets_attention_and_unmerged_context():
    model = tiny.build("llama")
    before = snapshot(model)
    assert len(lora_target_modules(model, "all")) == 7 * model.n_layers
    with pytest.raises(PsInterpError, match="LoRA target"):
        lora_target_modules(model, "attn")
    result = lora_baseline(model, make_data(), target="all", merge=False, **RUN)
    assert any("lora_A" in n for n, _ in model.hf.named_parameters())  # still injected and active
    assert all(torch.equal(p, before[n]) for n, p in model.hf.named_parameters() if n in before)
    result.restore()
    assert_original(model, before)


def test_full_finetune_trains_everything_and_restores():
    model = tiny.build("llama")
    before = snapshot(model)
    result = full_finetune(model, make_data(), **RUN)
    assert result.trainable_params == result.total_params and result.trainable_fraction == 1.0
    assert all(not torch.equal(p, before[n]) for n, p in model.hf.named_parameters() if "norm" not in n)
    result.restore()
    assert_original(model, before)


def test_neuron_baselines_keep_counts_and_restore():
    model = tiny.build("llama")
    before = snapshot(model)
    safety = NeuronSet({0: [1, 2, 3], 1: [7]}, model.identity)
    random = random_neurons_baseline(model, safety, make_data(), neuron_seed=4, **RUN)
    picked = random.trainer.neurons
    assert picked.per_layer().tolist() == safety.per_layer().tolist() and picked != safety
    assert random.trainable_params == safety.param_count() and len(random.log) == 2
    random.restore()
    assert_original(model, before)
    whole = layer_neurons_baseline(model, NeuronSet({1: [7]}, model.identity), make_data(), **RUN)
    assert whole.trainer.neurons.per_layer().tolist() == [0, model.d_ff]
    assert whole.trainable_params == model.d_ff * 3 * model.d_model
    whole.restore()
    assert_original(model, before)
    assert layer_neurons(safety).per_layer().tolist() == [model.d_ff, model.d_ff]


def test_same_batches_for_every_method():
    """Every method sees the same refusal batches: at step 1 (original weights) the losses agree."""
    model = tiny.build("llama")
    neurons = NeuronSet({0: [1]}, model.identity)
    first = []
    for run in (lambda: lora_baseline(model, make_data(), **RUN),
                lambda: full_finetune(model, make_data(), **RUN),
                lambda: random_neurons_baseline(model, neurons, make_data(), **RUN)):
        result = run()
        first.append(result.log.loss.iloc[0])
        result.restore()
    assert first[0] == pytest.approx(first[1], abs=1e-6) and first[1] == pytest.approx(first[2], abs=1e-6)


def test_reference_context_is_the_original_model():
    """The KL reference of every trainer is the original model, without keeping a copy of it."""
    from ps_interp.align import Shield
    from ps_interp.baselines import FullFinetune, LoraTrainer

    model = tiny.build("llama")
    ids = torch.tensor([[4, 8, 15, 16, 23]])
    with torch.no_grad():
        original = model.hf(ids).logits
    makers = (lambda: LoraTrainer(model, lr=5e-2, merge=False, max_new_tokens=4),
              lambda: FullFinetune(model, lr=1e-2, max_new_tokens=4),
              lambda: Shield(model, NeuronSet({0: [1, 2], 1: [3]}, model.identity), lr=5e-2, max_new_tokens=4))
    for make in makers:
        trainer = make()
        trainer.fit(make_data(), steps=2, batch_size=2, progress=False)
        with torch.no_grad():
            trained = model.hf(ids).logits
            with trainer._reference():
                reference = model.hf(ids).logits
            after = model.hf(ids).logits
        assert not torch.equal(trained, original) and torch.equal(after, trained)
        assert torch.equal(reference, original), type(trainer).__name__
        trainer.restore()
