"""Exact Jaccard null: brute-force enumeration, Monte-Carlo, calibration, matrices."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from ps_interp.errors import PsInterpError
from ps_interp.neurons import ModelIdentity, NeuronSet
from ps_interp.overlap_stats import (_hypergeom_pmf, expected_jaccard, intersection_pmf, jaccard_matrix,
                                     jaccard_pvalue, overlap_test)


def brute_force(sizes_a, sizes_b, d_ff):
    """Exact distribution of the total intersection by enumerating every B (A fixed, by symmetry)."""
    per_layer = [list(itertools.combinations(range(d_ff), b)) for b in sizes_b]
    fixed_a = [set(range(a)) for a in sizes_a]
    counts = {}
    for combo in itertools.product(*per_layer):
        inter = sum(len(fa & set(b)) for fa, b in zip(fixed_a, combo))
        counts[inter] = counts.get(inter, 0) + 1
    n = sum(counts.values())
    return {k: v / n for k, v in counts.items()}


CASES = [([3, 2], [2, 4], 8), ([1, 4, 0], [3, 2, 5], 6), ([6, 6, 6], [6, 1, 3], 6), ([2, 5, 3], [4, 4, 2], 7)]


def test_hypergeom_matches_scipy():
    for d_ff, a, b in [(8, 3, 4), (14336, 143, 200), (14336, 7168, 7168), (10, 10, 3), (5, 0, 2)]:
        lo, pmf = _hypergeom_pmf(d_ff, a, b)
        k = np.arange(lo, lo + pmf.size)
        np.testing.assert_allclose(pmf, stats.hypergeom.pmf(k, d_ff, a, b), rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("sizes_a,sizes_b,d_ff", CASES)
def test_exact_against_enumeration(sizes_a, sizes_b, d_ff):
    truth = brute_force(sizes_a, sizes_b, d_ff)
    support, pmf = intersection_pmf(sizes_a, sizes_b, d_ff)
    assert dict(zip(support.tolist(), pmf)) == pytest.approx(truth, abs=1e-12)
    total = sum(sizes_a) + sum(sizes_b)
    exp = sum(p * k / (total - k) for k, p in truth.items())
    assert expected_jaccard(sizes_a, sizes_b, d_ff) == pytest.approx(exp, abs=1e-12)
    for k in truth:
        tail = sum(p for kk, p in truth.items() if kk >= k)
        assert jaccard_pvalue(k, sizes_a, sizes_b, d_ff) == pytest.approx(tail, abs=1e-12)
        # the same p-value from the Jaccard index instead of the intersection size
        assert jaccard_pvalue(k / (total - k), sizes_a, sizes_b, d_ff) == pytest.approx(tail, abs=1e-12)


def test_expectation_against_monte_carlo_with_neuron_sets():
    ident = ModelIdentity("LlamaForCausalLM", n_layers=3, d_ff=20, d_model=4)
    a = NeuronSet({0: range(5), 1: range(12), 2: [3]}, ident)
    b = NeuronSet({0: range(8), 1: range(2), 2: range(10)}, ident)
    draws = [a.random_like(s).jaccard(b.random_like(10_000 + s)) for s in range(3000)]
    exact = expected_jaccard(a.per_layer(), b.per_layer(), 20)
    assert abs(np.mean(draws) - exact) < 4 * np.std(draws) / math.sqrt(len(draws))
    # a pooled (layer-agnostic) null would give a clearly different answer: the test can tell
    assert abs(expected_jaccard([a.__len__()], [len(b)], 60) - exact) > 0.005


def test_randomized_pvalues_are_uniform_under_the_null():
    rng = np.random.default_rng(123)
    ident = ModelIdentity("LlamaForCausalLM", n_layers=3, d_ff=12, d_model=4)
    base_a = NeuronSet({0: range(3), 1: range(5), 2: range(2)}, ident)
    base_b = NeuronSet({0: range(4), 1: range(2), 2: range(6)}, ident)
    pr, pc = [], []
    for _ in range(200):
        a, b = base_a.random_like(rng), base_b.random_like(rng)
        pr.append(overlap_test(a, b, randomized=True, seed=rng).pvalue)
        pc.append(overlap_test(a, b).pvalue)
    assert stats.kstest(pr, "uniform").pvalue > 0.01
    # conservative version: never below the randomized one, and clearly not uniform on this small null
    assert np.all(np.array(pc) >= np.array(pr))
    assert stats.kstest(pc, "uniform").pvalue < 0.01


def test_enriched_overlap_has_small_pvalue():
    ident = ModelIdentity("LlamaForCausalLM", n_layers=4, d_ff=100, d_model=4)
    a = NeuronSet({l: range(10) for l in range(4)}, ident)
    b = NeuronSet({l: range(5, 15) for l in range(4)}, ident)
    res = overlap_test(a, b)
    assert res.intersection == 20 and res.jaccard == pytest.approx(20 / 60)
    assert res.pvalue < 1e-10 and res.enrichment > 5
    disjoint = overlap_test(a, NeuronSet({l: range(50, 60) for l in range(4)}, ident))
    assert disjoint.pvalue == pytest.approx(1.0)


def test_large_sets_are_fast_and_sane():
    sizes = [7168] * 32  # half of Llama-3-8B's d_ff in every layer
    assert expected_jaccard(sizes, sizes, 14336) == pytest.approx(1 / 3, abs=1e-4)
    assert jaccard_pvalue(1 / 3, sizes, sizes, 14336) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("args", [([1, 2], [1], 4), ([5], [1], 4), ([-1], [1], 4), ([1.5], [1], 4)])
def test_bad_sizes_raise(args):
    with pytest.raises(PsInterpError):
        expected_jaccard(*args)


def test_bad_observed_raise():
    with pytest.raises(PsInterpError):
        jaccard_pvalue(1.5, [2], [2], 8)
    with pytest.raises(PsInterpError):
        jaccard_pvalue(3, [2], [2], 8)


def test_empty_sets():
    assert expected_jaccard([0, 0], [0, 3], 8) == 0.0
    assert jaccard_pvalue(0, [0, 0], [0, 3], 8) == 1.0


def test_jaccard_matrix():
    ident = ModelIdentity("LlamaForCausalLM", n_layers=2, d_ff=10, d_model=4)
    sets = {"en": NeuronSet({0: [0, 1, 2], 1: [4]}, ident), "de": NeuronSet({0: [1, 2], 1: [4, 5]}, ident),
            "sw": NeuronSet({1: [9]}, ident)}
    j, e, p = jaccard_matrix(sets)
    assert list(j.index) == list(j.columns) == ["en", "de", "sw"]
    assert j.loc["en", "de"] == pytest.approx(3 / 5) and j.loc["de", "en"] == j.loc["en", "de"]
    assert j.loc["en", "sw"] == 0.0 and np.all(np.diag(j) == 1.0)
    assert e.loc["en", "de"] == pytest.approx(expected_jaccard([3, 1], [2, 2], 10))
    assert p.loc["en", "de"] == pytest.approx(jaccard_pvalue(3, [3, 1], [2, 2], 10))
    assert np.all(np.isnan(np.diag(p)))
    other = ModelIdentity("LlamaForCausalLM", n_layers=2, d_ff=12, d_model=4)
    with pytest.raises(PsInterpError, match="d_ff differs"):
        jaccard_matrix({**sets, "x": NeuronSet({0: [1]}, other)})
