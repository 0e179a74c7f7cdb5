"""Layers on different devices (accelerate ``device_map``), tested on a CPU-only machine.

A second GPU cannot be simulated here, so the tests use what is available: a layer offloaded to
disk by accelerate (its weights are on ``meta`` and hooks bring them in for each forward, the same
machinery as a multi-GPU map), a map pinning each module explicitly, and the ``meta`` device as a
second device for the reduction inside the trace.
"""
import pytest
import torch

from ps_interp.align import Shield
from ps_interp.errors import PsInterpError
from ps_interp.evaluate import evaluate
from ps_interp.identify import identify
from ps_interp.models import load, tiny
from ps_interp.neurons import NeuronSet
from ps_interp.record import record, reduce_site

from .conftest import make_probes

MODULES = ("model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head")


@pytest.fixture(scope="module")
def plain(one_thread):
    return tiny.build("llama")


@pytest.fixture(scope="module")
def saved(plain, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / plain.name  # same name: neuron sets and stats carry over
    plain.hf.save_pretrained(path)
    plain.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def offloaded(saved, tmp_path_factory):
    """Layer 1 lives on disk: accelerate moves its weights in for each forward and out again."""
    device_map = {name: "cpu" for name in MODULES} | {"model.layers.1": "disk"}
    model = load(saved, device_map=device_map, offload_folder=str(tmp_path_factory.mktemp("offload")))
    assert model.hf.hf_device_map["model.layers.1"] == "disk"
    assert model.site_module(1).weight.is_meta and not model.site_module(0).weight.is_meta
    return model


@pytest.fixture(scope="module")
def probes():
    return make_probes(n=12)


def test_offloaded_layer_records_the_same_stats(plain, offloaded, probes):
    ref = record(plain, probes, batch_size=5, progress=False)
    for position in ("last", "mean"):
        got = record(offloaded, probes, batch_size=5, position=position, progress=False)
        want = ref if position == "last" else record(plain, probes, batch_size=5, position=position, progress=False)
        assert got.max_rel_diff(want) < 1e-6, position


def test_explicit_device_map_records_and_trains_like_the_plain_model(plain, saved, probes):
    pinned = load(saved, device_map={name: "cpu" for name in MODULES})  # one device: accelerate adds no hooks
    assert record(pinned, probes, batch_size=4, progress=False).max_rel_diff(
        record(plain, probes, batch_size=4, progress=False)) < 1e-6
    from ps_interp.pairs import training_pairs

    data = training_pairs(probes, langs=None, split=None)
    neurons = NeuronSet({0: [1, 5], 1: [2]}, plain.identity)
    logs = []
    for model in (plain, pinned):
        shield = Shield(model, neurons.with_identity(model.identity), lr=1e-2, retention=0)
        logs.append(shield.fit(data, steps=2, batch_size=2, progress=False)["loss"].tolist())
        shield.restore()
    assert logs[0] == pytest.approx(logs[1], rel=1e-5)


def test_offloaded_model_evaluates_like_the_plain_one(plain, offloaded, probes):
    kw = dict(max_new_tokens=4, n_boot=10, progress=False)
    a, b = evaluate(plain, probes, **kw), evaluate(offloaded, probes, **kw)
    assert a.completions["completion"].tolist() == b.completions["completion"].tolist()
    assert a.retention["benign_perplexity"] == pytest.approx(b.retention["benign_perplexity"], rel=1e-5)


def test_offloaded_layer_identifies_the_same_neurons(plain, offloaded, probes):
    stats = record(plain, probes, batch_size=6, progress=False)
    torch.testing.assert_close(offloaded.down_norms(), plain.down_norms())
    assert offloaded.site_module(1).weight.is_meta  # read from the offload map, then put back
    want = identify(stats, model=plain, lang="en", rho=0.1)
    got = identify(stats, model=offloaded, lang="en", rho=0.1)
    assert got.to_dict()["neurons"] == want.to_dict()["neurons"]


def test_training_offloaded_layers_is_a_clear_error(offloaded):
    neurons = NeuronSet({0: [1]}, offloaded.identity)
    with pytest.raises(PsInterpError, match="offloaded.*device_map"):
        Shield(offloaded, neurons)


@pytest.mark.parametrize("position", ["last", "mean", "all"])
def test_reduction_runs_on_the_activation_device(position):
    """Weights and group one-hots are built next to the inputs; the reduction follows the activations."""
    from ps_interp.record import position_weights

    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    weights = position_weights({"attention_mask": mask, "input_ids": mask}, position, None)
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    h = torch.randn(2, 4, 8)
    want = reduce_site(h, weights, onehot, position == "all")
    got = reduce_site(h.to("meta"), weights, onehot, position == "all")  # a second device
    assert got.device.type == "meta" and got.shape == want.shape == (4, 2, 8)


def test_statistics_move_to_the_host_once(plain, probes, monkeypatch):
    """Totals accumulate on the layers' devices; the host copy happens once, not once per batch."""
    import importlib

    rec = importlib.import_module("ps_interp.record")
    calls = []
    store = rec._store
    monkeypatch.setattr(rec, "_store", lambda *args: (calls.append(1), store(*args)))
    stats = record(plain, probes, batch_size=3, progress=False)  # 4 batches
    assert len(calls) == 1
    assert stats.count.sum() == len(probes)
    assert stats.allclose(record(plain, probes, batch_size=12, progress=False), tol=1e-6)
