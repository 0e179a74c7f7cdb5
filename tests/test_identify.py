"""identify: scorers on statistics with known values, selection rules, meta and errors."""
import dataclasses

import numpy as np
import pytest
import torch

from ps_interp.errors import PsInterpError
from ps_interp.identify import (DEFAULT_RHO, SCORERS, identify, lape_scores, lape_sets, neurons_for,
                                score_neurons)
from ps_interp.neurons import ModelIdentity
from ps_interp.stats import ActivationStats

IDENT = ModelIdentity("LlamaForCausalLM", n_layers=2, d_ff=10, d_model=4, name="synthetic")


def make_stats(samples: dict, layers=(0, 1), position="last") -> ActivationStats:
    """Stats from raw samples ``{(lang, modality, label): array [n, n_layers, d_ff]}``."""
    groups = sorted(samples)
    stats = ActivationStats.empty(groups, list(layers), IDENT.d_ff,
                                  {"position": position, "identity": dataclasses.asdict(IDENT)})
    for g, x in samples.items():
        gi = groups.index(g)
        x = torch.as_tensor(x, dtype=torch.float64)
        onehot = torch.zeros(x.shape[0], len(groups), dtype=torch.float64)
        onehot[:, gi] = 1
        for pos in range(len(layers)):
            v = x[:, pos]
            red = torch.stack([onehot.T @ m for m in (v, v * v, v.abs(), (v > 0).double())])
            stats.add_reduced(pos, red, onehot.sum(0) if pos == 0 else None)
    return stats


@pytest.fixture(scope="module")
def raw():
    rng = np.random.default_rng(0)
    harm = rng.normal(0.0, 1.0, size=(30, 2, 10))
    ben = rng.normal(0.0, 1.0, size=(40, 2, 10))
    harm[:, 0, 3] += 4.0  # layer 0 neuron 3: strongly up on harmful
    harm[:, 1, 7] += 2.5  # layer 1 neuron 7: up on harmful
    harm[:, 1, 2] -= 3.0  # layer 1 neuron 2: down on harmful
    ben[:, 0, 5] += 6.0   # layer 0 neuron 5: large everywhere
    harm[:, 0, 5] += 6.0
    return harm, ben


@pytest.fixture(scope="module")
def stats(raw):
    harm, ben = raw
    return make_stats({("en", "text", "harmful"): harm, ("en", "text", "benign"): ben,
                       ("sw", "text", "harmful"): harm[:10], ("sw", "text", "benign"): ben[:10]})


def test_registry_lists_every_method():
    assert set(SCORERS) == {"saliency", "mean_diff", "effect_size", "lape", "attribution", "ablation"}


def test_saliency_without_model_is_abs_mean_and_says_so(stats, raw):
    harm, ben = raw
    s = score_neurons(stats, method="saliency")
    np.testing.assert_allclose(s.harmful.numpy(), np.abs(harm[:, :, :].mean(0)), rtol=1e-10)
    np.testing.assert_allclose(s.benign.numpy(), np.abs(ben.mean(0)), rtol=1e-10)
    found = identify(stats)
    assert "no model" in found.meta["weight"]


def test_saliency_rho_rule_is_top_harmful_minus_top_benign(stats, raw):
    harm, ben = raw
    found = identify(stats, rho=0.3)  # 3 per layer
    for layer in range(2):
        top_h = set(np.argsort(-np.abs(harm.mean(0)[layer]), kind="stable")[:3].tolist())
        top_b = set(np.argsort(-np.abs(ben.mean(0)[layer]), kind="stable")[:3].tolist())
        assert set(found.indices(layer).tolist()) == top_h - top_b
    assert (0, 3) in found and (0, 5) not in found  # neuron 5 is large on benign too
    assert found.meta["rho"] == 0.3 and found.meta["per_layer"] == 3


def test_default_selection_is_documented_rho(stats):
    assert identify(stats).meta["rho"] == DEFAULT_RHO and identify(stats).meta["per_layer"] == 1


def test_mean_diff_directions_and_top_k(stats):
    assert set(identify(stats, method="mean_diff", top_k=3)) == {(0, 3), (1, 2), (1, 7)}
    assert set(identify(stats, method="mean_diff", top_k=2, direction="positive")) == {(0, 3), (1, 7)}
    assert set(identify(stats, method="mean_diff", top_k=1, direction="negative")) == {(1, 2)}
    with pytest.raises(PsInterpError, match="direction"):
        identify(stats, method="mean_diff", direction="up")


def test_effect_sizes_match_scipy(stats, raw):
    from scipy import stats as st

    harm, ben = raw
    t = score_neurons(stats, method="effect_size", stat="t", direction="positive").score.numpy()
    expected_t = st.ttest_ind(harm, ben, equal_var=False, axis=0).statistic
    np.testing.assert_allclose(t, expected_t, rtol=1e-8)
    d = score_neurons(stats, method="effect_size", stat="d", direction="positive").score.numpy()
    nh, nb = len(harm), len(ben)
    pooled = np.sqrt(((nh - 1) * harm.var(0, ddof=1) + (nb - 1) * ben.var(0, ddof=1)) / (nh + nb - 2))
    np.testing.assert_allclose(d, (harm.mean(0) - ben.mean(0)) / pooled, rtol=1e-8)
    with pytest.raises(PsInterpError, match="stat"):
        identify(stats, method="effect_size", stat="z")


def test_lang_selects_groups_and_meta_records_them(stats):
    found = identify(stats, lang="sw", method="mean_diff", top_k=2)
    assert found.meta["groups"] == ["sw/text/harmful", "sw/text/benign"]
    assert found.meta["n"] == {"sw/text/harmful": 10, "sw/text/benign": 10}
    assert found.meta["method"] == "mean_diff" and found.meta["position"] == "last"
    assert found.meta["top_k"] == 2 and found.meta["selection"] == "top_k"
    pooled = identify(stats, lang=["en", "sw"], method="mean_diff", top_k=2)
    assert pooled.meta["n"]["en/text/harmful"] == 30


def test_missing_group_names_the_group_and_how_to_record(stats):
    with pytest.raises(PsInterpError) as err:
        identify(stats, lang="zh")
    assert "zh/text/harmful" in str(err.value) and "ps.record" in str(err.value)
    only_harm = make_stats({("en", "text", "harmful"): np.ones((3, 2, 10))})
    with pytest.raises(PsInterpError, match="en/text/benign"):
        identify(only_harm, method="effect_size")


def test_selection_arguments_are_checked(stats):
    with pytest.raises(PsInterpError, match="one selection"):
        identify(stats, rho=0.1, top_k=3)
    with pytest.raises(PsInterpError, match="rho"):
        identify(stats, rho=0.0)
    with pytest.raises(PsInterpError, match="top_k"):
        identify(stats, top_k=0)
    with pytest.raises(PsInterpError, match="unknown method"):
        identify(stats, method="magic")
    with pytest.raises(PsInterpError, match="does not take"):
        identify(stats, method="saliency", stat="d")
    with pytest.raises(PsInterpError, match="total parameter"):
        identify(stats, budget=0.001)


def test_budget_converts_a_parameter_fraction_into_neurons(stats):
    per_neuron = 3 * IDENT.d_model
    found = identify(stats, method="mean_diff", budget=0.01, total_params=100 * per_neuron * 10)
    assert len(found) == 10 == neurons_for(0.01, IDENT, 100 * per_neuron * 10)
    assert found.meta["budget_neurons"] == 10
    found = identify(stats, method="mean_diff", budget=0.0003, config="llama-3-8b")  # config-only total
    assert len(found) == min(196, IDENT.n_neurons)


def test_z_normalisation_balances_layers():
    rng = np.random.default_rng(1)
    harm = rng.normal(size=(50, 2, 10))
    ben = rng.normal(size=(50, 2, 10))
    harm[:, 1] *= 100  # layer 1 has a much larger scale
    ben[:, 1] *= 100
    stats = make_stats({("en", "text", "harmful"): harm, ("en", "text", "benign"): ben})
    raw_sel = identify(stats, method="mean_diff", top_k=6)
    z_sel = identify(stats, method="mean_diff", top_k=6, normalize="z")
    assert raw_sel.per_layer()[1] == 6
    assert 1 <= z_sel.per_layer()[0] <= 5


def test_unrecorded_layers_are_never_selected():
    stats = make_stats({("en", "text", "harmful"): np.full((3, 1, 10), 2.0),
                        ("en", "text", "benign"): np.zeros((3, 1, 10))}, layers=(1,))
    found = identify(stats, method="mean_diff", top_k=15)
    assert found.layers == [1] and len(found) == 10 and "note" in found.meta


def test_lape_finds_language_specific_neurons():
    n = 20
    base = -np.ones((n, 2, 10))
    en, sw, zh = base.copy(), base.copy(), base.copy()
    en[:, 0, :] = 1.0           # layer 0: active in every language (high entropy)
    sw[:, 0, :] = 1.0
    zh[:, 0, :] = 1.0
    sw[:, 1, 4] = 1.0           # layer 1 neuron 4: Swahili only
    zh[:, 1, 6] = 1.0           # layer 1 neuron 6: Chinese only
    en[: n // 2, 1, 8] = 1.0    # layer 1 neuron 8: sometimes, in English only (below the bar)
    samples = {}
    for lang, x in (("en", en), ("sw", sw), ("zh", zh)):
        samples[(lang, "text", "harmful")] = x[: n // 2]
        samples[(lang, "text", "benign")] = x[n // 2:]
    stats = make_stats(samples)
    t = lape_scores(stats)
    assert t["langs"] == ["en", "sw", "zh"] and t["entropy"][1, 4] == 0
    assert set(identify(stats, method="lape", lang="sw", top_k=1)) == {(1, 4)}
    sets = lape_sets(stats, ["en", "sw", "zh"], rho=0.1)
    assert set(sets["zh"]) == {(1, 6)} and set(sets["sw"]) == {(1, 4)} and len(sets["en"]) == 0
    with pytest.raises(PsInterpError, match="two or more"):
        identify(stats, method="lape", lang="sw", langs=["sw"])


def test_identity_comes_from_stats_or_model_and_must_agree(stats):
    from ps_interp.models import tiny

    assert identify(stats).identity == IDENT
    with pytest.raises(PsInterpError, match="neurons per layer"):
        identify(stats, model=tiny.build("llama"))
    other = dataclasses.replace(IDENT, d_ff=128, d_model=64, name="another-llama")
    stats128 = ActivationStats.empty([("en", "text", "harmful")], [0], 128, {"identity": dataclasses.asdict(other)})
    with pytest.raises(PsInterpError, match="another model"):
        identify(stats128, model=tiny.build("llama"))


def test_model_scorers_need_model_and_probes(stats):
    with pytest.raises(PsInterpError, match="model= and probes="):
        identify(stats, method="attribution")
    with pytest.raises(PsInterpError, match="model= and probes="):
        identify(stats, method="ablation")
