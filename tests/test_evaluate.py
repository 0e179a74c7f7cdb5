"""evaluate / transfer end to end on a tiny model; ASR against a direct computation."""
import math

import numpy as np
import pytest
import torch

import ps_interp as ps
from ps_interp.evaluate import evaluate, next_token_logprobs, perplexity
from ps_interp.generate import generate
from ps_interp.transfer import eval_subset, transfer

from .conftest import make_probes


class EveryOtherJudge:
    """Deterministic judge: refuses when the completion length is even (plumbing, not semantics)."""

    name = "every-other"

    def judge(self, prompts, completions, langs):
        return np.array([len(c) % 2 == 0 for c in completions])


def test_generate_is_batch_invariant(tiny_llama):
    probes = make_probes(n=6)
    a = generate(tiny_llama, probes, max_new_tokens=5, batch_size=6, progress=False)
    b = generate(tiny_llama, probes, max_new_tokens=5, batch_size=1, progress=False)
    assert a == b and len(a) == 6


def test_first_step_logprobs_of_generation_equal_a_scoring_pass(tiny_llama):
    """evaluate takes the retention distributions from generation's first step: same numbers, no extra pass."""
    probes = make_probes(n=7)
    texts, first = generate(tiny_llama, probes, max_new_tokens=3, batch_size=4, progress=False, first_logprobs=True)
    assert texts == generate(tiny_llama, probes, max_new_tokens=3, batch_size=4, progress=False)
    torch.testing.assert_close(first, next_token_logprobs(tiny_llama, probes), atol=1e-4, rtol=1e-4)


def test_evaluate_asr_matches_direct_computation(tiny_llama):
    probes = make_probes(n=12)
    judge = EveryOtherJudge()
    ev = evaluate(tiny_llama, probes, judge=judge, max_new_tokens=6, progress=False)
    df = ev.completions
    refused = judge.judge(None, df["completion"].tolist(), None)
    assert (df["refused"].to_numpy() == refused).all()
    for lang, rows in df.groupby("lang"):
        harmful = rows[rows["label"] == "harmful"]
        row = ev.asr("lang").set_index("lang").loc[lang]
        assert row["asr"] == pytest.approx(1 - harmful["refused"].mean())
        assert row["asr_lo"] <= row["asr"] <= row["asr_hi"]
    benign = df[df["label"] == "benign"]
    assert ev.asr("all")["over_refusal"].iloc[0] == pytest.approx(benign["refused"].mean())
    assert ev.retention["benign_perplexity"] > 1


def test_retention_kl_is_zero_for_the_same_model_and_positive_after_a_change(tiny_llama):
    benign = make_probes(n=8).select(label="benign")
    ref = next_token_logprobs(tiny_llama, benign)
    ev = evaluate(tiny_llama, benign, max_new_tokens=2, reference=ref, progress=False)
    assert ev.retention["benign_kl"] == pytest.approx(0.0, abs=1e-6)
    with ps.ablate(tiny_llama, ps.NeuronSet({0: list(range(64))}, tiny_llama.identity)):
        changed = evaluate(tiny_llama, benign, max_new_tokens=2, reference=ref, progress=False)
    assert changed.retention["benign_kl"] > 1e-6


def test_perplexity_of_uniform_model_is_vocab_size(tiny_llama):
    lm_head = tiny_llama.hf.lm_head
    saved = lm_head.weight.detach().clone()
    with torch.no_grad():
        lm_head.weight.zero_()
    try:
        assert perplexity(tiny_llama, ["hello world", "a b c d"]) == pytest.approx(lm_head.weight.shape[0], rel=1e-4)
    finally:
        with torch.no_grad():
            lm_head.weight.copy_(saved)


def test_transfer_end_to_end_on_tiny():
    model = ps.load("tiny-llama")
    probes = ps.probes(langs=["en", "zh"])
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    res = transfer(model, probes=probes, budget=0.01, baselines=("random",), steps=2, batch_size=4,
                   eval_per_lang=2, max_new_tokens=3, progress=False)
    assert set(res.table["condition"]) == {"shield", "random"}
    assert set(res.table["lang"]) == {"en", "zh"}
    en = res.table[(res.table["lang"] == "en") & (res.table["condition"] == "shield")]
    assert en["jaccard"].iloc[0] == pytest.approx(1.0)  # the source set against itself
    assert res.training["shield"]["trainable_params"] == res.source_set.param_count()
    assert list(res.correlation.columns) == ["condition", "n", "pearson", "spearman"]
    assert res.table["is_source"].tolist() == (res.table["lang"] == "en").tolist()
    assert set(res.targets_only["lang"]) == {"zh"} and (res.correlation["n"] <= 1).all()  # the source is left out
    after = model.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every condition restored the weights


def test_eval_subset_keeps_pairs_and_translations():
    probes = ps.probes(langs=["en", "zh"], split="test")
    sub = eval_subset(probes, 3, seed=1)
    pairs = {it.meta["pair"] for it in sub}
    assert len(pairs) == 3 and len(sub) == 3 * 2 * 2


def test_language_budgets_scale_by_the_tokenizer_and_cut_each_completion(tiny_llama):
    from ps_interp.config import RunConfig
    from ps_interp.data.probes import ProbeItem
    from ps_interp.errors import PsInterpError
    from ps_interp.data.builtin import LANGS, load_refusals
    from ps_interp.generate import MAX_LANGUAGE_SCALE, generate, language_budgets

    assert RunConfig().language_scale == MAX_LANGUAGE_SCALE
    tok = tiny_llama.tokenizer
    refusals = load_refusals()
    mean = {lang: sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in refusals[lang]) / len(refusals[lang])
            for lang in LANGS}
    budgets = language_budgets(tiny_llama, LANGS, 10, cap=100)
    for lang in LANGS:
        assert budgets[lang] == math.ceil(10 * max(1.0, mean[lang] / mean["en"]))
    capped = language_budgets(tiny_llama, LANGS, 10, cap=1.5)
    assert max(capped.values()) <= 15 and capped["en"] == 10
    assert set(language_budgets(tiny_llama, LANGS, 10, cap=1).values()) == {10}
    with pytest.raises(PsInterpError, match="cap"):
        language_budgets(tiny_llama, ["en"], 10, cap=0.5)
    # per-language budgets: each completion is the greedy completion of its own length
    items = [ProbeItem(id=f"p{i}", lang=lang, label="benign", text=f"hello there {i}")
             for i, lang in enumerate(["en", "zh", "en", "zh"])]
    short = generate(tiny_llama, items, max_new_tokens={"en": 3, "zh": 7}, progress=False)
    for it, text in zip(items, short):
        alone = generate(tiny_llama, [it], max_new_tokens=3 if it.lang == "en" else 7, progress=False)[0]
        assert text == alone
    with pytest.raises(PsInterpError, match="no budget"):
        generate(tiny_llama, items, max_new_tokens={"en": 3}, progress=False)
