"""ablate (exact restore, equals a manual hook, mean mode, nesting), refusal_score and causal_check."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ps_interp.data.builtin import LANGS
from ps_interp.data.prompting import encode
from ps_interp.errors import PsInterpError
from ps_interp.intervene import (OPENINGS_PATH, CausalCheck, ablate, causal_check, load_openings, opening_tokens,
                                 refusal_gap, refusal_score)
from ps_interp.models import tiny
from ps_interp.neurons import NeuronSet
from ps_interp.planted import plant
from ps_interp.record import record


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted(one_thread):
    return plant(k=8, n_layers=4, n_probes=12)


@pytest.fixture(scope="module")
def batch(planted):
    return encode(planted.model, list(planted.probes)[:6])


def logits(model, batch):
    with torch.no_grad():
        return model.hf(**batch, use_cache=False).logits


def test_ablate_restores_the_model_exactly(planted, batch):
    before = logits(planted.model, batch)
    with ablate(planted.model, planted.neurons):
        during = logits(planted.model, batch)
    assert not torch.equal(before, during)
    assert torch.equal(before, logits(planted.model, batch))
    with pytest.raises(RuntimeError, match="boom"), ablate(planted.model, planted.neurons):
        raise RuntimeError("boom")
    assert torch.equal(before, logits(planted.model, batch))
    assert all(not planted.model.site_module(layer)._forward_pre_hooks for layer in range(4))


def test_zero_ablation_equals_a_manual_hook(planted, batch):
    model, neurons = planted.model, planted.neurons

    def manual(layer):
        idx = torch.tensor(neurons.indices(layer))

        def hook(module, args):
            h = args[0].clone()
            h[..., idx] = 0
            return (h,)
        return hook

    handles = [model.site_module(layer).register_forward_pre_hook(manual(layer)) for layer in neurons.layers]
    try:
        expected = logits(model, batch)
    finally:
        for h in handles:
            h.remove()
    with ablate(model, neurons):
        assert torch.equal(logits(model, batch), expected)


def capture_site(model, layer):
    """The site as the down-projection sees it (a forward hook runs after every pre-hook)."""
    seen = {}

    def hook(module, args, output):
        seen["h"] = args[0].detach().clone()
    return seen, model.site_module(layer).register_forward_hook(hook)


def test_mean_ablation_uses_recorded_means(planted, batch):
    stats = record(planted.model, planted.probes, progress=False)
    neurons = NeuronSet({1: [3, 5, 7]}, planted.model.identity)
    means = stats.mean(label="benign")[1, [3, 5, 7]].float()
    with ablate(planted.model, neurons, mode="mean", stats=stats, group={"label": "benign"}):
        seen, handle = capture_site(planted.model, 1)
        try:
            logits(planted.model, batch)
        finally:
            handle.remove()
    h = seen["h"]
    assert torch.allclose(h[..., [3, 5, 7]], means.expand(*h.shape[:-1], 3))
    assert h[..., 0].abs().sum() > 0
    with pytest.raises(PsInterpError, match="stats"):
        with ablate(planted.model, neurons, mode="mean"):
            pass
    with pytest.raises(PsInterpError, match="mode"):
        with ablate(planted.model, neurons, mode="noise"):
            pass


def test_nested_ablations_stack_and_unwind(planted, batch):
    model, ident = planted.model, planted.model.identity
    outer, inner = NeuronSet({2: [1, 2]}, ident), NeuronSet({2: [9]}, ident)
    seen, handle = capture_site(model, 2)
    zeroed = {}
    try:
        with ablate(model, outer):
            with ablate(model, inner):
                logits(model, batch)
                zeroed["both"] = seen["h"]
            logits(model, batch)
            zeroed["outer"] = seen["h"]
        logits(model, batch)
        zeroed["none"] = seen["h"]
    finally:
        handle.remove()
    is_zero = {k: [bool((h[..., i] == 0).all()) for i in (1, 2, 9)] for k, h in zeroed.items()}
    assert is_zero == {"both": [True, True, True], "outer": [True, True, False], "none": [False, False, False]}
    with ablate(model, outer | inner):
        both_logits = logits(model, batch)
    with ablate(model, outer), ablate(model, inner):
        assert torch.equal(logits(model, batch), both_logits)


def test_ablate_rejects_sets_of_another_model(planted):
    other = tiny.build("llama", intermediate_size=64)
    with pytest.raises(PsInterpError, match="another model"):
        with ablate(other, planted.neurons):
            pass


def test_openings_cover_ten_languages_and_tokens_are_disjoint(planted):
    data = load_openings()
    raw = json.loads(OPENINGS_PATH.read_text(encoding="utf-8"))
    for kind in ("refusal", "compliance"):
        assert set(LANGS) <= set(data[kind]) and set(raw[kind]) == set(data[kind])
        assert all(len(data[kind][lang]) >= 4 for lang in LANGS)
    for lang in LANGS:
        toks = opening_tokens(planted.model, lang)
        assert toks.refusal and toks.compliance and not set(toks.refusal) & set(toks.compliance)
    tok = planted.model.tokenizer
    sure = tok.convert_tokens_to_ids("Su")  # first token of "Sure" after the generation prompt
    assert sure in opening_tokens(planted.model, "en").compliance
    assert tok.convert_tokens_to_ids("I") in opening_tokens(planted.model, "en").refusal  # "I'm sorry"


def test_refusal_score_table_and_padding_invariance(planted):
    df = refusal_score(planted.model, planted.probes)
    assert list(df.columns[:5]) == ["id", "lang", "modality", "label", "score"]
    assert df["id"].tolist() == [it.id for it in planted.probes]
    np.testing.assert_allclose(df.score, df.refusal_logp - df.compliance_logp)
    one = refusal_score(planted.model, planted.probes, batch_size=1)
    np.testing.assert_allclose(df.score, one.score, atol=1e-4)
    assert df[df.label == "harmful"].score.min() > df[df.label == "benign"].score.max()


def test_refusal_gap_per_language():
    df = pd.DataFrame({"lang": ["en", "en", "en", "sw", "sw"],
                       "label": ["harmful", "harmful", "benign", "harmful", "benign"],
                       "score": [3.0, 1.0, -1.0, 0.5, 0.0]})
    gap = refusal_gap(df)
    assert gap.loc["en"].tolist() == [2.0, -1.0, 3.0] and gap.loc["sw", "gap"] == 0.5
    with pytest.raises(PsInterpError, match="benign"):
        refusal_gap(df[df.label == "harmful"])


def test_causal_check_gives_a_large_z_for_the_planted_set(planted):
    check = causal_check(planted.model, planted.neurons, planted.probes, n_random=12, seed=0)
    assert isinstance(check, CausalCheck)
    assert check.effect > 1.0 and check.z > 5 and check.p == pytest.approx(1 / 13)
    assert len(check.random_effects) == 12 and check.n_neurons == 8
    fig = check.figure()
    assert "z = " in fig.layout.title.text
    assert "8 neurons" in check.summary() and f"z = {check.z:.2f}" in check.summary()
    rand = causal_check(planted.model, planted.neurons.random_like(123), planted.probes, n_random=12, seed=1)
    assert rand.z < 3  # a random set is not special


def test_causal_check_accepts_a_metric_callable(planted):
    def harmful_refusal(model, probes):
        df = refusal_score(model, probes)
        return float(df[df.label == "harmful"].score.mean())

    check = causal_check(planted.model, planted.neurons, planted.probes, n_random=3, metric=harmful_refusal)
    assert check.metric == "harmful_refusal" and check.effect > 1.0
    with pytest.raises(PsInterpError, match="metric"):
        causal_check(planted.model, planted.neurons, planted.probes, metric="asr")


def test_causal_check_with_the_cached_prefix_equals_full_forwards(tiny_llama):
    from tests.conftest import make_probes

    """Sets in the last layer only: the prefix is run once, and every effect equals the full-forward one."""
    late = NeuronSet({1: [0, 5, 9, 30]}, tiny_llama.identity)
    probes = make_probes(n=6)
    fast = causal_check(tiny_llama, late, probes, n_random=4, seed=3)
    slow = causal_check(tiny_llama, late, probes, n_random=4, seed=3, fast_prefix=False)
    assert fast.effect == pytest.approx(slow.effect, abs=1e-5)
    np.testing.assert_allclose(fast.random_effects, slow.random_effects, atol=1e-5)
    assert fast.baseline == pytest.approx(slow.baseline, abs=1e-5)
