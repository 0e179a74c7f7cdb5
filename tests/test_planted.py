"""Planted ground truth: every scorer recovers k planted safety neurons in a tiny Llama."""
import dataclasses

import numpy as np
import pytest
import torch

from ps_interp.data.probes import ProbeSet
from ps_interp.identify import identify, model_param_count, neurons_for
from ps_interp.intervene import ablate, refusal_score
from ps_interp.planted import plant, planted_probes
from ps_interp.record import record

K = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted(one_thread):
    return plant(k=K, n_layers=4, seed=0)


@pytest.fixture(scope="module")
def stats(planted):
    return record(planted.model, planted.probes, progress=False)


def recall(found, truth):
    return len(found & truth) / len(truth)


def precision(found, truth):
    return len(found & truth) / max(len(found), 1)


def test_planted_neurons_are_spread_over_layers_and_fire_only_on_triggers(planted, stats):
    assert len(planted.neurons) == K and planted.neurons.per_layer().tolist() == [2, 2, 2, 2]
    harm, ben = stats.mean(label="harmful"), stats.mean(label="benign")
    for layer, i in planted.neurons:
        assert harm[layer, i] > 1.0
        assert ben[layer, i] == 0.0  # exactly silent without a trigger
    assert stats.p_active(label="harmful")[planted.neurons.to_mask()].min() == 1.0


def test_planted_neurons_carry_the_refusal(planted):
    base = refusal_score(planted.model, planted.probes)
    gap = base[base.label == "harmful"].score.mean() - base[base.label == "benign"].score.mean()
    assert gap > 2.0
    with ablate(planted.model, planted.neurons):
        ablated = refusal_score(planted.model, planted.probes)
    gap_ablated = ablated[ablated.label == "harmful"].score.mean() - ablated[ablated.label == "benign"].score.mean()
    assert abs(gap_ablated) < 0.05 * gap


@pytest.mark.parametrize("method, options", [
    ("saliency", {}), ("mean_diff", {}), ("mean_diff", {"direction": "positive"}),
    ("effect_size", {"stat": "d"}), ("effect_size", {"stat": "t"}),
    ("attribution", {"probes": True}), ("attribution", {"probes": True, "objective": "score"}),
    ("ablation", {"probes": True, "pool": 16}),
])
def test_every_scorer_recovers_the_planted_neurons(planted, stats, method, options):
    if options.get("probes"):
        options = {**options, "probes": planted.probes}
    found = identify(stats, method=method, model=planted.model, top_k=K, **options)
    assert len(found) == K
    assert recall(found, planted.neurons) >= 0.9, (method, found.to_frame().values.tolist())


def test_attribution_needs_no_statistics(planted):
    found = identify(None, method="attribution", model=planted.model, probes=planted.probes, top_k=K)
    assert recall(found, planted.neurons) >= 0.9
    assert found.meta["position"] is None and found.meta["n"] == {"harmful": 24, "benign": 24}


def test_lape_recovers_them_as_specific_to_the_trigger_language(planted):
    # LAPE compares languages: the prompts with triggers become language "xx"
    probes = ProbeSet(dataclasses.replace(it, lang="xx" if it.label == "harmful" else "en") for it in planted.probes)
    stats = record(planted.model, probes, progress=False)
    found = identify(stats, method="lape", lang="xx", top_k=K)
    assert recall(found, planted.neurons) >= 0.9
    assert len(identify(stats, method="lape", lang="en", top_k=K) & planted.neurons) == 0


def test_saliency_precision_at_the_matching_top_k_and_budget(planted, stats):
    found = identify(stats, model=planted.model, top_k=K)
    assert precision(found, planted.neurons) >= 0.9
    per_neuron = 3 * planted.model.d_model
    budget = (K * per_neuron + 0.5) / model_param_count(planted.model)
    assert neurons_for(budget, planted.model.identity, model_param_count(planted.model)) == K
    by_budget = identify(stats, model=planted.model, budget=budget)
    assert by_budget == found and by_budget.meta["selection"] == "budget"
    assert precision(by_budget, planted.neurons) >= 0.9


def test_saliency_rho_rule_contains_the_planted_neurons(planted, stats):
    found = identify(stats, model=planted.model, rho=2 / 128)  # two per layer, as planted
    assert found == planted.neurons
    assert found.meta["rule"] == "top(harmful) - top(benign)"


def test_random_sets_do_not_pass_the_recall_bar(planted):
    rng = np.random.default_rng(1)
    assert max(recall(planted.neurons.random_like(rng), planted.neurons) for _ in range(20)) < 0.9


def test_probes_are_paired_and_triggers_absent_from_benign(planted):
    probes = planted_probes(6)
    harm = [it.text for it in probes if it.label == "harmful"]
    ben = [it.text for it in probes if it.label == "benign"]
    assert all(h.startswith(b) and len(h) > len(b) for h, b in zip(harm, ben))
    tok = planted.model.tokenizer
    ids = {t for text in ben for t in tok(text)["input_ids"]}
    assert not ids & set(planted.trigger_ids)
    assert planted.refusal_ids and not set(planted.refusal_ids) & set(planted.compliance_ids)
