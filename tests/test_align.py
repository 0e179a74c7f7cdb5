"""Shield: the slice-only update equals the dense masked update; restore, save, delta, bad input."""
import copy
import json

import pytest
import torch

from ps_interp.align import Shield, batch_losses, target_logits
from ps_interp.delta import apply_delta, load_delta, revert_delta
from ps_interp.errors import PsInterpError
from ps_interp.models import tiny
from ps_interp.models.loading import load
from ps_interp.neurons import NeuronSet
from ps_interp.pairs import training_pairs

from ps_interp.data.probes import ProbeItem, ProbeSet

SHORT = ["Hi", "Tell me a joke.", "Name a color.", "Count to three.", "Say hello."]


def make_data(n=12, langs=("en",)):
    """Short placeholder prompts (benign text under both labels: no harmful text in tests)."""
    items = [ProbeItem(id=f"s{i}", lang=langs[i % len(langs)], label=("harmful", "benign")[i % 2],
                       text=SHORT[i % len(SHORT)], split="train", refusals=("No.", "I can't help with that."))
             for i in range(n)]
    return training_pairs(ProbeSet(items), langs=langs)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.hf.named_parameters()}


def masks_of(model, neurons):
    """Dense 0/1 masks of every parameter (zeros for parameters outside the neurons)."""
    masks = {n: torch.zeros_like(p) for n, p in model.hf.named_parameters()}
    for layer in neurons.layers:
        idx = torch.tensor(neurons.indices(layer).tolist())
        for name, param, axis in model.neuron_params(layer):
            masks[name].index_fill_(axis, idx, 1.0)
    return masks


def dense_masked_training(model, masks, batches, *, lr, weight_decay, retention, mode):
    """Reference: dense AdamW on every weight, gradient times the mask, decoupled decay masked too."""
    hf = model.hf
    original = copy.deepcopy(hf).requires_grad_(False)
    params = dict(hf.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    for batch in batches:
        reference = None
        if mode == "kl" and batch["retain"] is not None:
            with torch.no_grad():
                reference, _ = target_logits(original, batch["retain"])
        opt.zero_grad()
        batch_losses(hf, batch, retention=retention, mode=mode, reference=reference)["loss"].backward()
        with torch.no_grad():
            for name, p in params.items():
                p.grad.mul_(masks[name])
                p.mul_(1 - lr * weight_decay * masks[name])
        opt.step()


@pytest.mark.parametrize("family,mode", [("llama", "kl"), ("gpt2", "greedy"), ("qwen2", "kl")])
def test_slice_update_equals_dense_masked_adamw(family, mode):
    model = tiny.build(family, dtype=torch.float64)
    dense = copy.deepcopy(model)
    neurons = NeuronSet({0: [1, 5, 7, 100], 1: [2, 3]}, model.identity)
    before = snapshot(model)
    shield = Shield(model, neurons, lr=3e-2, weight_decay=0.1, retention=0.7, retention_mode=mode,
                    max_new_tokens=8)
    batches = list(shield.batches(make_data(), steps=4, batch_size=3, seed=1))
    for batch in batches:
        shield.step(batch)
    dense_masked_training(dense, masks_of(model, neurons), batches, lr=3e-2, weight_decay=0.1, retention=0.7,
                          mode=mode)
    masks = masks_of(model, neurons)
    dense_params = dict(dense.hf.named_parameters())
    changed = 0
    for name, p in model.hf.named_parameters():
        torch.testing.assert_close(p, dense_params[name], rtol=0, atol=1e-6)
        keep = masks[name] == 0
        assert torch.equal(p[keep], before[name][keep]), f"unselected entries of {name} changed"
        changed += int((p != before[name]).sum())
    assert changed == sum(int(m.sum()) for m in masks.values())  # every selected entry moved


def test_step_trains_only_slices_and_restores_flags(tiny_llama):
    model = tiny.build("llama")
    model.hf.model.embed_tokens.weight.requires_grad_(False)  # a user's own flag must survive
    neurons = NeuronSet({1: [0, 9]}, model.identity)
    shield = Shield(model, neurons, lr=1e-2, max_new_tokens=8)
    seen = {}

    def spy(module, args):  # runs during the training forward
        seen["trainable"] = [n for n, p in model.hf.named_parameters() if p.requires_grad]

    handle = model.hf.model.norm.register_forward_pre_hook(spy)
    try:
        shield.step(next(shield.batches(make_data(), steps=1, batch_size=2)))
    finally:
        handle.remove()
    assert seen["trainable"] == []  # no weight gradient for any base weight
    assert all(p.grad is None for p in model.hf.parameters())
    assert not model.hf.model.embed_tokens.weight.requires_grad
    assert model.hf.lm_head.weight.requires_grad and model.hf.model.layers[0].mlp.up_proj.weight.requires_grad
    state_ids = {id(p) for p in shield.optimizer.state}
    assert state_ids == {id(p) for p in shield.parameters()}
    assert [tuple(p.shape) for p in shield.parameters()] == [(2, 64), (2, 64), (64, 2)]
    assert shield.optimizer_state_bytes() == 2 * 3 * 128 * 4 + 3 * 4  # exp_avg + exp_avg_sq + step
    assert not any(m._forward_hooks for m in model.hf.modules())  # plain HF model between steps


def test_fit_learns_is_deterministic_and_restore_is_exact():
    model = tiny.build("llama")
    before = snapshot(model)
    probe_ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        logits0 = model.hf(probe_ids).logits
    shield = Shield(model, NeuronSet({0: range(0, 128, 3), 1: [4]}, model.identity), lr=2e-2, max_new_tokens=8)
    log = shield.fit(make_data(), steps=8, batch_size=4, progress=False)
    assert list(log.columns[:4]) == ["step", "loss", "refusal_loss", "retention_loss"] and len(log) == 8
    assert log.refusal_loss.iloc[-1] < log.refusal_loss.iloc[0] - 0.2
    table = shield.changed_parameters()
    assert (table.changed > 0).all() and table.trainable.sum() == shield.trainable_params == 44 * 192
    shield.restore()
    assert all(torch.equal(p, before[n]) for n, p in model.hf.named_parameters())
    with torch.no_grad():
        assert torch.equal(model.hf(probe_ids).logits, logits0)
    again = shield.fit(make_data(), steps=8, batch_size=4, progress=False)
    assert again.loss.tolist() == log.loss.tolist()


def test_save_writes_checkpoint_neurons_and_delta(tmp_path):
    model = tiny.build("llama")
    fresh = tiny.build("llama")  # same seed: the original weights
    neurons = NeuronSet({0: [3, 4], 1: [10]}, model.identity)
    shield = Shield(model, neurons, lr=5e-2, max_new_tokens=8)
    shield.fit(make_data(), steps=3, batch_size=2, progress=False)
    out = shield.save(tmp_path / "aligned")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "neurons.json", "delta.safetensors", "shield.json"} <= names
    assert NeuronSet.load(out / "neurons.json") == neurons
    assert json.loads((out / "shield.json").read_text())["steps"] == 3
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    reloaded = load(out)
    with torch.no_grad():
        assert torch.equal(reloaded.hf(ids).logits, model.hf(ids).logits)
    # the delta holds only the changed slices and turns the original into the aligned model
    got, axes, tensors = load_delta(out)
    assert got == neurons and tensors["model.layers.0.mlp.down_proj.weight.value"].shape == (64, 2)
    assert apply_delta(fresh, out) == neurons
    trained = dict(model.hf.named_parameters())
    assert all(torch.equal(p, trained[n]) for n, p in fresh.hf.named_parameters())
    with pytest.raises(PsInterpError, match="does not hold the original"):
        apply_delta(fresh, out / "delta.safetensors")
    revert_delta(fresh, out)
    original = dict(tiny.build("llama").hf.named_parameters())
    assert all(torch.equal(p, original[n]) for n, p in fresh.hf.named_parameters())
    with pytest.raises(PsInterpError, match="another model"):
        apply_delta(tiny.build("gpt2"), out)


def test_save_refuses_non_empty_dir_and_source_dir(tmp_path):
    model = tiny.build("llama")
    shield = Shield(model, NeuronSet({0: [1]}, model.identity), retention=0)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(PsInterpError, match="not empty"):
        shield.save(target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    shield.save(target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "delta.safetensors").exists()
    source = load(target)  # a model loaded from a directory must never overwrite it
    with pytest.raises(PsInterpError, match="source directory"):
        Shield(source, NeuronSet({0: [1]}, source.identity)).save(target, overwrite=True)
    with pytest.raises(PsInterpError, match="source directory"):
        Shield(source, NeuronSet({0: [1]}, source.identity)).save(tmp_path, overwrite=True)
    assert (target / "delta.safetensors").exists()


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import ps_interp.delta as delta

    model = tiny.build("llama")
    shield = Shield(model, NeuronSet({0: [1]}, model.identity), retention=0)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(delta, "save_delta", boom)
    with pytest.raises(OSError):
        shield.save(tmp_path / "aligned")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_errors():
    model = tiny.build("llama")
    with pytest.raises(PsInterpError, match="empty"):
        Shield(model, NeuronSet({}, model.identity))
    gpt2 = tiny.build("gpt2")
    with pytest.raises(PsInterpError, match="another model"):
        Shield(model, NeuronSet({0: [1]}, gpt2.identity))
    with pytest.raises(PsInterpError, match="NeuronSet"):
        Shield(model, {0: [1]})
    with pytest.raises(PsInterpError, match="retention_mode"):
        Shield(model, NeuronSet({0: [1]}, model.identity), retention_mode="mse")
    shield = Shield(model, NeuronSet({0: [1]}, model.identity))
    with torch.inference_mode():
        with pytest.raises(PsInterpError, match="inference_mode"):
            shield.fit(make_data(), steps=1, progress=False)
    with torch.inference_mode():
        frozen = tiny.build("llama")
    with pytest.raises(PsInterpError, match="inference_mode"):
        Shield(frozen, NeuronSet({0: [1]}, frozen.identity))


def test_nan_loss_stops_and_restores():
    model = tiny.build("llama")
    before = snapshot(model)
    shield = Shield(model, NeuronSet({0: [1, 2]}, model.identity), lr=1e-2, max_new_tokens=8)
    calls = {"n": 0}

    def poison(module, args, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] > 4 else out  # KL reference + 2 forwards per step

    handle = model.hf.model.norm.register_forward_hook(poison)
    try:
        with pytest.raises(PsInterpError, match="nan.*restored"):
            shield.fit(make_data(), steps=5, batch_size=2, progress=False)
    finally:
        handle.remove()
    assert all(torch.equal(p, before[n]) for n, p in model.hf.named_parameters())


def test_exploding_loss_stops_and_restores():
    model = tiny.build("llama")
    before = snapshot(model)
    shield = Shield(model, NeuronSet({0: [1, 2]}, model.identity), lr=1e-2, retention=0, explode_factor=10)
    calls = {"n": 0}

    def blow_up(module, args, out):  # logits x 1e4 from the third step on: a huge but finite loss
        calls["n"] += 1
        return out * 1e4 if calls["n"] > 2 else out

    handle = model.hf.lm_head.register_forward_hook(blow_up)
    try:
        with pytest.raises(PsInterpError, match="exploded.*step 3.*restored"):
            shield.fit(make_data(), steps=5, batch_size=2, progress=False)
    finally:
        handle.remove()
    assert all(torch.equal(p, before[n]) for n, p in model.hf.named_parameters())


@pytest.mark.real
def test_real_model_shield_save_reload_and_delta(tmp_path):
    """SmolLM2-135M-Instruct: a few steps lower the refusal loss; the checkpoint and the delta reproduce it."""
    from ps_interp.data.builtin import probes
    from ps_interp.pairs import TrainingData

    model = load("smollm2-135m-instruct")
    full = training_pairs(probes(langs="en"), split="train")
    data = TrainingData(full.harmful[:4], full.refusals[:4], full.benign[:4])
    neurons = NeuronSet({layer: [layer * 7, layer * 11 + 1] for layer in range(12, 30, 3)}, model.identity)
    shield = Shield(model, neurons, lr=1e-2, max_new_tokens=8)
    log = shield.fit(data, steps=3, batch_size=4, progress=False)
    assert log.refusal_loss.iloc[-1] < log.refusal_loss.iloc[0]
    with pytest.raises(PsInterpError, match="source directory"):
        shield.save(model.hf.name_or_path, overwrite=True)
    out = shield.save(tmp_path / "aligned")
    ids = model.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    fresh = load("smollm2-135m-instruct")
    apply_delta(fresh, out)
    with torch.no_grad():
        aligned = model.hf(ids).logits
        assert torch.equal(load(out).hf(ids).logits, aligned)
        assert torch.equal(fresh.hf(ids).logits, aligned)


@pytest.mark.parametrize("family,mode", [("llama", "kl"), ("qwen2", "greedy"), ("gpt2", "kl")])
def test_frozen_prefix_fast_path_trains_exactly_like_full_forwards(family, mode):
    """Neurons only in the last layer: the cached prefix gives the same losses and weights as full forwards;
    GPT-2 (position embeddings added to inputs_embeds) fails the check and falls back, with a warning."""
    import warnings

    runs = {}
    for fast in (True, False):
        model = tiny.build(family, dtype=torch.float64)
        neurons = NeuronSet({1: [2, 3, 40]}, model.identity)
        shield = Shield(model, neurons, lr=3e-2, retention=0.7, retention_mode=mode, max_new_tokens=6,
                        fast_prefix=fast)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            log = shield.fit(make_data(), steps=4, batch_size=3, seed=2, progress=False)
        runs[fast] = (log["loss"].tolist(), snapshot(model), shield.prefix, caught)
    (fast_loss, fast_w, prefix, caught), (slow_loss, slow_w, none, _) = runs[True], runs[False]
    assert none is None and prefix is not None and prefix.start == 1
    assert fast_loss == pytest.approx(slow_loss, rel=1e-9, abs=1e-9)
    for name in fast_w:
        torch.testing.assert_close(fast_w[name], slow_w[name], rtol=1e-9, atol=1e-9)
    if family == "gpt2":
        assert prefix.enabled is False and any("fast path off" in str(w.message) for w in caught)
    else:
        assert prefix.enabled is True and len(prefix._cache) > 0


def test_shared_cache_reuses_answers_prefix_and_reference_without_changing_training():
    """Two trainers sharing one cache (as in ps.transfer) train exactly as with private caches."""
    data = make_data()
    results = []
    for shared in (False, True):
        model = tiny.build("llama", dtype=torch.float64)
        neurons = NeuronSet({1: [2, 3, 40]}, model.identity)
        cache = {} if shared else None
        logs = []
        for seed in (0, 1):  # two conditions in a row, weights restored in between
            shield = Shield(model, neurons, lr=3e-2, retention=0.7, max_new_tokens=6, cache=cache)
            logs.append(shield.fit(data, steps=3, batch_size=3, seed=seed, progress=False)["loss"].tolist())
            shield.restore()
        results.append((logs, cache))
    (private, _), (shared, cache) = results
    for a, b in zip(shared, private):
        assert a == pytest.approx(b, rel=1e-9)
    assert len(cache["answers"]) == 1 and len(cache["reference"]) > 0 and len(cache[("prefix", 1)]) > 0
