"""Linear probes: per-prompt activations (required layers, float16 files), AUROC, transfer."""
import dataclasses

import numpy as np
import pytest
import torch

from ps_interp.data.probes import ProbeSet
from ps_interp.errors import PsInterpError
from ps_interp.planted import plant
from ps_interp.probing import Activations, collect_activations, probe_auroc, probe_transfer
from ps_interp.record import record


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted(one_thread):
    return plant(k=8, n_layers=4, n_probes=12)


@pytest.fixture(scope="module")
def acts(planted):
    return collect_activations(planted.model, planted.probes, layers=[0, 2])


def test_layers_are_required_and_checked(planted):
    with pytest.raises(PsInterpError, match="choose the layers"):
        collect_activations(planted.model, planted.probes, layers=None)
    with pytest.raises(PsInterpError, match="out of range"):
        collect_activations(planted.model, planted.probes, layers=[7])
    with pytest.raises(PsInterpError, match="position"):
        collect_activations(planted.model, planted.probes, layers=[0], position="all")


@pytest.mark.parametrize("position", ["last", "mean"])
def test_activations_agree_with_recorded_means(planted, position):
    acts = collect_activations(planted.model, planted.probes, layers=[1, 3], position=position, batch_size=5)
    stats = record(planted.model, planted.probes, position=position, progress=False)
    for label in ("harmful", "benign"):
        sub = acts.select(label=label)
        for layer in (1, 3):
            np.testing.assert_allclose(sub.acts[layer].mean(0), stats.mean(label=label)[layer].numpy(),
                                       rtol=1e-4, atol=1e-5)


def test_items_and_labels(acts, planted):
    assert acts.layers == [0, 2] and acts.acts[0].shape == (24, 128)
    assert acts.items["id"].tolist() == [it.id for it in planted.probes]
    assert acts.labels.tolist() == [int(it.label == "harmful") for it in planted.probes]


def test_saved_as_float16_safetensors_and_reloaded(planted, tmp_path):
    from safetensors import safe_open

    path = tmp_path / "acts"
    acts = collect_activations(planted.model, planted.probes, layers=[1], path=path)
    with safe_open(str(path / "activations.safetensors"), "pt") as f:
        assert f.get_tensor("layer.1").dtype == torch.float16
    back = Activations.load(path)
    np.testing.assert_allclose(back.acts[1], acts.acts[1], rtol=2e-3, atol=1e-3)
    assert back.items.equals(acts.items) and back.meta["position"] == "last"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts"]  # no temporary folder left


def test_probe_auroc_separates_planted_layers_and_not_shuffled_labels(acts):
    table = probe_auroc(acts, cv=4)
    assert table.layer.tolist() == [0, 2] and (table.auroc > 0.99).all()
    shuffled = np.random.default_rng(0).permutation(acts.labels)
    noise = {0: np.random.default_rng(1).normal(size=acts.acts[0].shape)}
    assert probe_auroc(noise, shuffled, cv=4).auroc[0] < 0.8
    with pytest.raises(PsInterpError, match="labels"):
        probe_auroc({0: acts.acts[0]})
    with pytest.raises(PsInterpError, match=">= 2 harmful"):
        probe_auroc({0: acts.acts[0][:3]}, [1, 0, 0])


def test_probe_transfer_matrix_and_figure(planted):
    twin = ProbeSet(dataclasses.replace(it, lang="sw") for it in planted.probes)
    only_benign = ProbeSet(dataclasses.replace(it, lang="zh") for it in planted.probes if it.label == "benign")
    result = probe_transfer(planted.model, planted.probes + twin + only_benign, layer=1, cv=3)
    assert result.table.index.tolist() == ["en", "sw", "zh"] and result.table.columns.tolist() == ["text"]
    assert result.table.loc["en", "text"] > 0.99 and result.table.loc["sw", "text"] > 0.99
    assert np.isnan(result.table.loc["zh", "text"])  # a target needs both labels
    assert result.long.cross_validated.tolist() == [True, False, False]
    assert "en/text" in result.figure().layout.title.text
    only_sw = probe_transfer(planted.model, planted.probes + twin, layer=1, targets=["sw"], cv=3)
    assert only_sw.long.lang.tolist() == ["sw"]


def test_cv_folds_keep_matched_pairs_and_translations_together():
    from ps_interp.probing import _folds

    pairs = np.repeat([f"p{i}" for i in range(12)], 4)  # harmful + benign twin in two languages
    y = np.tile([1, 0, 1, 0], 12)
    folds = _folds(y, 5, 0, pairs)
    assert len(folds) == 5
    for train, test in folds:
        assert not set(pairs[train]) & set(pairs[test])
        assert 0 < y[test].sum() < len(test)


def test_activations_carry_pairs(acts):
    assert "pair" in acts.items and acts.items["pair"].notna().all()
