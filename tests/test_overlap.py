"""overlap: sets per language/modality, Jaccard matrices, figures, on-disk caching of the statistics."""
import dataclasses
import importlib

import numpy as np
import pytest
import torch

from ps_interp.data.probes import ProbeSet
from ps_interp.errors import PsInterpError
from ps_interp.overlap import Overlap, overlap, stats_fingerprint, weights_digest
from ps_interp.planted import plant

overlap_mod = importlib.import_module("ps_interp.overlap")  # the package exports a function of that name


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted(one_thread):
    return plant(k=8, n_layers=4, n_probes=8)


@pytest.fixture(scope="module")
def probes(planted):
    return planted.probes + ProbeSet(dataclasses.replace(it, lang="sw") for it in planted.probes)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PS_INTERP_CACHE", str(tmp_path))
    return tmp_path


def counting_record(monkeypatch):
    calls = []
    real = overlap_mod.record

    def wrapped(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(overlap_mod, "record", wrapped)
    return calls


def test_overlap_sets_and_matrices(planted, probes, cache):
    ov = overlap(["en", "sw"], model=planted.model, probes=probes, top_k=8, progress=False)
    assert isinstance(ov, Overlap) and list(ov.sets) == ["en/text", "sw/text"]
    assert ov.sets["en/text"] == planted.neurons  # the twins carry the same planted neurons
    assert ov.jaccard.loc["en/text", "sw/text"] == 1.0
    assert 0 < ov.expected.loc["en/text", "sw/text"] < 0.1
    assert ov.pvalue.loc["en/text", "sw/text"] < 1e-6 and np.isnan(ov.pvalue.loc["en/text", "en/text"])
    row = ov.to_frame().iloc[0]
    assert (row.a, row.b, row.intersection, row.size_a) == ("en/text", "sw/text", 8, 8)
    assert ov.figure().data[0].type == "heatmap"
    assert len(ov.layer_figure().data) == 2
    assert ov.meta["method"] == "saliency" and ov.meta["position"] == "last"


def test_second_call_reads_the_cache_and_does_not_record(planted, probes, cache, monkeypatch):
    calls = counting_record(monkeypatch)
    first = overlap(["en", "sw"], model=planted.model, probes=probes, top_k=8, progress=False)
    assert len(calls) == 1 and len(list((cache / "stats").iterdir())) == 1

    def boom(*args, **kwargs):
        raise AssertionError("recorded again")
    monkeypatch.setattr(overlap_mod, "record", boom)
    second = overlap(["en", "sw"], model=planted.model, probes=probes, method="mean_diff", top_k=8, progress=False)
    assert second.sets["en/text"] == first.sets["en/text"]
    with pytest.raises(AssertionError, match="recorded again"):  # another position is another recording
        overlap(["en"], model=planted.model, probes=probes, position="mean", progress=False)


def test_changed_weights_or_probes_change_the_fingerprint(planted, probes):
    fp = stats_fingerprint(planted.model, probes, "last")
    assert fp == stats_fingerprint(planted.model, probes, "last")
    assert fp != stats_fingerprint(planted.model, probes[:-1], "last")
    assert fp != stats_fingerprint(planted.model, probes, "mean")
    digest = weights_digest(planted.model)
    w = planted.model.mlp(3).down_proj.weight
    with torch.no_grad():
        old = w[5, 7].item()
        w[5, 7] += 1e-3  # one neuron's weight, as a Shield update would change it
        try:
            assert weights_digest(planted.model) != digest
        finally:
            w[5, 7] = old
    assert weights_digest(planted.model) == digest


def test_given_stats_need_no_model_or_recording(planted, probes, cache, monkeypatch):
    from ps_interp.record import record

    stats = record(planted.model, probes, progress=False)

    def no_load(*args, **kwargs):
        raise AssertionError("loaded a model")
    monkeypatch.setattr("ps_interp.models.load", no_load)
    monkeypatch.setattr(overlap_mod, "record", no_load)
    ov = overlap(["en", "sw"], stats=stats, method="mean_diff", top_k=8)
    assert ov.sets["sw/text"] == planted.neurons


def test_overlap_with_a_model_running_method(planted, probes, cache):
    ov = overlap(["en", "sw"], model=planted.model, probes=probes, method="attribution", top_k=8, progress=False)
    assert ov.jaccard.loc["en/text", "sw/text"] == 1.0


def test_only_langs_loads_the_default_model_and_builtin_probes(planted, probes, cache, monkeypatch):
    asked = {}

    def fake_load(name):
        asked["model"] = name
        return planted.model

    def fake_probes(**kwargs):
        asked["probes"] = kwargs
        return probes
    monkeypatch.setattr("ps_interp.models.load", fake_load)
    monkeypatch.setattr("ps_interp.data.builtin.probes", fake_probes)
    ov = overlap(["en", "sw"], top_k=8, progress=False)
    assert asked == {"model": "smollm2-135m-instruct",
                     "probes": {"langs": ["en", "sw"], "modalities": ["text"], "split": "probe"}}
    assert ov.sets["en/text"] == planted.neurons and (cache / "stats").is_dir()


def test_bad_arguments(planted, probes, cache):
    with pytest.raises(PsInterpError, match="at least one language"):
        overlap([], model=planted.model, probes=probes)
    with pytest.raises(PsInterpError, match="zh/text/harmful"):
        overlap(["en", "zh"], model=planted.model, probes=probes, progress=False)
    from ps_interp.record import record

    stats = record(planted.model, probes, progress=False)
    with pytest.raises(PsInterpError, match="model= and probes="):
        overlap(["en"], stats=stats, method="ablation")
