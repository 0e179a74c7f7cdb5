"""`identify`: score FFN neurons and select the safety (or language-specific) ones as a NeuronSet.

Scorers (the registry :data:`SCORERS`; each returns a :class:`Scored` ``[n_layers, d_ff]`` table):

- ``saliency`` (Precise Shield, default): ``s(D) = |mean h over D| * ||W_down[:, i]||_2``; with
  ``rho``: per layer the top ``rho * d_ff`` on harmful minus the top ``rho * d_ff`` on benign.
- ``mean_diff``: ``mu_harm - mu_benign`` (``direction="abs"|"positive"|"negative"``).
- ``effect_size``: Cohen's d (``stat="d"``) or Welch's t (``stat="t"``) from the streamed moments.
- ``lape``: language-specific neurons (Tang et al. 2024) from ``P(h > 0)`` per language.
- ``attribution``: ``h * dL/dh`` for the refusal objective, harmful minus benign (needs model + probes).
- ``ablation``: causal drop of the refusal score when one neuron is zeroed, for a saliency pool.

Selection (one of): ``rho`` (fraction per layer, default :data:`DEFAULT_RHO`), ``top_k`` (global),
``budget`` (fraction of all parameters). Global rankings use the raw scores (``normalize="none"``,
default) or per-layer z-scores (``normalize="z"``).

Example:
    >>> from ps_interp.planted import plant
    >>> from ps_interp.record import record
    >>> p = plant()
    >>> stats = record(p.model, p.probes, progress=False)
    >>> found = identify(stats, model=p.model, top_k=len(p.neurons))
    >>> len(found & p.neurons) == len(p.neurons)
    True
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import PsInterpError
from .neurons import ModelIdentity, NeuronSet

DEFAULT_RHO = 0.01
"""Default per-layer fraction: 1% of each layer's neurons enter the harmful and benign top lists
(the paper's constant is not public; the set difference is usually much smaller than 1%)."""


@dataclass
class ScoreContext:
    """What a scorer may read."""

    stats: Any
    model: Any
    lang: str | list[str] | None
    modality: str | list[str] | None
    identity: ModelIdentity
    probes: Any = None


@dataclass
class Scored:
    """Scores ``[n_layers, d_ff]`` (float64; ``-inf`` = never selected) and how to select from them.

    ``harmful``/``benign``: per-group scores for the per-layer set difference (saliency);
    ``default``: the method's own selection when no rho/top_k/budget is given (LAPE);
    ``tiebreak``: a secondary key for equal scores.
    """

    score: torch.Tensor
    meta: dict = field(default_factory=dict)
    harmful: torch.Tensor | None = None
    benign: torch.Tensor | None = None
    default: torch.Tensor | None = None
    tiebreak: torch.Tensor | None = None


# ---- group helpers -----------------------------------------------------------------------------
def _as_list(v) -> list[str] | None:
    return None if v is None else ([v] if isinstance(v, str) else list(v))


def _label(v) -> str:
    return "+".join(_as_list(v)) if v is not None else "*"


def _require_group(stats, lang, modality, label) -> dict:
    """Selection dict for (lang, modality, label); a clear error when nothing was recorded there."""
    sel = {"lang": lang, "modality": modality, "label": label}
    have = [i for i in stats.group_indices(**sel) if stats.count[i] > 0]
    if not have:
        present = ", ".join("/".join(g) for g, c in zip(stats.groups, stats.count) if c > 0) or "none"
        langs, mods = _as_list(lang) or ["en"], _as_list(modality) or ["text"]
        raise PsInterpError(
            f"the statistics have no samples for group {_label(lang)}/{_label(modality)}/{_label(label)} "
            f"(recorded groups: {present})",
            fix=f"record {_label(label)} probes of that group, e.g. stats = ps.record(model, "
                f"ps.probes(langs={langs!r}, modalities={mods!r}, split='probe'))")
    return sel


def _group_meta(stats, sel: dict) -> tuple[list[str], dict[str, int]]:
    idx = [i for i in stats.group_indices(**sel) if stats.count[i] > 0]
    names = ["/".join(stats.groups[i]) for i in idx]
    return names, {n: int(stats.count[i]) for n, i in zip(names, idx)}


def _full(identity: ModelIdentity, layers: Sequence[int], values: torch.Tensor, fill=-math.inf) -> torch.Tensor:
    """``[n_layers, d_ff]`` from per-recorded-layer ``values [len(layers), d_ff]``."""
    out = torch.full((identity.n_layers, identity.d_ff), fill, dtype=torch.float64)
    out[list(layers)] = values.detach().double().cpu()
    return out


def _contrast(ctx: ScoreContext) -> tuple[dict, dict, dict]:
    stats = ctx.stats
    if stats is None:
        raise PsInterpError("this method needs recorded statistics", fix="pass stats=ps.record(model, probes)")
    harm = _require_group(stats, ctx.lang, ctx.modality, "harmful")
    ben = _require_group(stats, ctx.lang, ctx.modality, "benign")
    names_h, n_h = _group_meta(stats, harm)
    names_b, n_b = _group_meta(stats, ben)
    return harm, ben, {"groups": names_h + names_b, "n": {**n_h, **n_b}}


def _directed(diff: torch.Tensor, direction: str) -> torch.Tensor:
    if direction == "abs":
        return diff.abs()
    if direction == "positive":
        return diff
    if direction == "negative":
        return -diff
    raise PsInterpError(f"unknown direction {direction!r}", fix="use 'abs', 'positive' or 'negative'")


# ---- scorers -----------------------------------------------------------------------------------
def saliency(ctx: ScoreContext) -> Scored:
    """Precise Shield: ``|mean h| * ||W_down[:, i]||``, on harmful and on benign.

    Without a model the weight norm is unavailable and the score is ``|mean h|`` (noted in meta).
    Global ranking (top_k / budget) uses the contrast ``s(harmful) - s(benign)``.
    """
    harm, ben, meta = _contrast(ctx)
    stats = ctx.stats
    if ctx.model is not None:
        w = ctx.model.down_norms(stats.layers)
        meta["weight"] = "||W_down[:, i]||_2"
    else:
        w = torch.ones(len(stats.layers), stats.d_ff, dtype=torch.float64)
        meta["weight"] = "none (no model given: saliency = |mean h|)"
    s_h = stats.mean(**harm).cpu().abs() * w
    s_b = stats.mean(**ben).cpu().abs() * w
    meta["ranking"] = "s(harmful) - s(benign)"
    return Scored(_full(ctx.identity, stats.layers, s_h - s_b), meta,
                  harmful=_full(ctx.identity, stats.layers, s_h), benign=_full(ctx.identity, stats.layers, s_b))


def mean_diff(ctx: ScoreContext, direction: str = "abs") -> Scored:
    """``mu_harm - mu_benign``: its absolute value (default), or signed (``direction="positive"``
    ranks neurons more active on harmful first, ``"negative"`` the reverse)."""
    harm, ben, meta = _contrast(ctx)
    diff = ctx.stats.mean(**harm).cpu() - ctx.stats.mean(**ben).cpu()
    meta["direction"] = direction
    return Scored(_full(ctx.identity, ctx.stats.layers, _directed(diff, direction)), meta)


def effect_size(ctx: ScoreContext, stat: str = "d", direction: str = "abs") -> Scored:
    """Cohen's d (pooled sd, ``stat="d"``) or Welch's t (``stat="t"``) of harmful vs benign."""
    harm, ben, meta = _contrast(ctx)
    stats = ctx.stats
    n_h, n_b = stats.n(**harm), stats.n(**ben)
    if n_h < 2 or n_b < 2:
        raise PsInterpError(f"effect sizes need >= 2 samples per group (harmful {n_h}, benign {n_b})",
                            fix="record more probes")
    mu = stats.mean(**harm).cpu() - stats.mean(**ben).cpu()
    v_h, v_b = stats.std(**harm).cpu() ** 2, stats.std(**ben).cpu() ** 2
    if stat == "d":
        den = (((n_h - 1) * v_h + (n_b - 1) * v_b) / (n_h + n_b - 2)).sqrt()
    elif stat == "t":
        den = (v_h / n_h + v_b / n_b).sqrt()
    else:
        raise PsInterpError(f"unknown stat {stat!r}", fix="use stat='d' (Cohen's d) or stat='t' (Welch's t)")
    meta.update(stat=stat, direction=direction)
    return Scored(_full(ctx.identity, stats.layers, _directed(mu / den.clamp(min=1e-12), direction)), meta)


def _quantile(values: torch.Tensor, q: float) -> float:
    """Tang et al.'s threshold: the ``round(N * q)``-th smallest value."""
    flat = values.flatten()
    k = min(max(int(round(flat.numel() * q)), 1), flat.numel())
    return float(flat.kthvalue(k).values)


def _recorded_langs(stats, modality) -> list[str]:
    mods = _as_list(modality)
    return sorted({g[0] for g, c in zip(stats.groups, stats.count) if c > 0 and (mods is None or g[1] in mods)})


def lape_scores(stats, langs: Sequence[str] | None = None, *, modality="text", label=None,
                filter_rate: float = 0.95, activation_bar: float = 0.95) -> dict:
    """LAPE tables: activation probabilities ``P [n_langs, L, F]``, entropy, thresholds, ``keep``.

    ``P(h > 0)`` per language (pooled over labels unless ``label=``) is normalised into a
    distribution over languages; its entropy is low for language-specific neurons. Neurons whose
    probability never reaches the ``filter_rate`` quantile of all probabilities are dropped; a
    neuron belongs to the languages where its probability reaches the ``activation_bar`` quantile.
    (Tang et al. use strict ``>``; ``>=`` is used here so that saturated probabilities of 1 pass.)
    """
    langs = list(langs) if langs is not None else _recorded_langs(stats, modality)
    if len(langs) < 2:
        raise PsInterpError(f"LAPE compares languages but the statistics hold only {langs}",
                            fix="record probes in two or more languages, e.g. ps.probes(langs=['en', 'sw'])")
    for lang in langs:
        _require_group(stats, lang, modality, label or ["harmful", "benign"])
    P = torch.stack([stats.p_active(lang=lang, modality=modality, label=label).cpu() for lang in langs])
    total = P.sum(0, keepdim=True)
    dist = torch.where(total > 0, P / total.clamp(min=1e-300), torch.zeros_like(P))
    entropy = -(dist * torch.where(dist > 0, dist.log(), torch.zeros_like(dist))).sum(0)
    filt, bar = _quantile(P, filter_rate), _quantile(P, activation_bar)
    keep = (P >= filt).any(0) & (total[0] > 0)
    return {"langs": langs, "P": P, "entropy": entropy, "keep": keep, "filter": filt, "bar": bar}


def lape(ctx: ScoreContext, langs: Sequence[str] | None = None, top_rate: float = 0.01,
         filter_rate: float = 0.95, activation_bar: float = 0.95, label=None) -> Scored:
    """Language-specific neurons of ``lang``: score = ``1 - H / log(n_langs)`` where ``P(h>0 | lang)``
    reaches the bar (ties: higher ``P``). Default selection (no rho/top_k/budget) is Tang et al.'s:
    the ``top_rate`` lowest-entropy neurons of the model, kept for the languages they pass the bar in."""
    if ctx.stats is None:
        raise PsInterpError("LAPE needs recorded statistics", fix="pass stats=ps.record(model, probes)")
    lang = _as_list(ctx.lang)
    if lang is None or len(lang) != 1:
        raise PsInterpError(f"LAPE returns the set of one language, got lang={ctx.lang!r}",
                            fix="pass lang='sw' (or use lape_sets(stats, langs) for all)")
    lang = lang[0]
    t = lape_scores(ctx.stats, langs, modality=ctx.modality, label=label, filter_rate=filter_rate,
                    activation_bar=activation_bar)
    if lang not in t["langs"]:
        raise PsInterpError(f"lang {lang!r} is not among the LAPE languages {t['langs']}",
                            fix="record probes in that language or add it to langs=")
    k = t["langs"].index(lang)
    member = t["keep"] & (t["P"][k] >= t["bar"])
    spec = 1.0 - t["entropy"] / math.log(len(t["langs"]))
    member &= spec > 1e-9  # equally likely active in every language: not specific to any
    score = torch.where(member, spec, torch.full_like(spec, -math.inf))
    ent = torch.where(t["keep"], t["entropy"], torch.full_like(spec, math.inf)).flatten()
    n_low = max(int(round(ent.numel() * top_rate)), 1)
    order = np.lexsort((np.arange(ent.numel()), ent.numpy()))[:n_low]
    low = torch.zeros(ent.numel(), dtype=torch.bool)
    low[torch.as_tensor(order)] = True
    low &= torch.isfinite(ent)
    default = low.view_as(spec) & member
    layers = ctx.stats.layers
    groups = [f"{g}/{_label(ctx.modality)}" for g in t["langs"]]
    meta = {"langs": t["langs"], "groups": groups, "top_rate": top_rate, "filter_rate": filter_rate,
            "activation_bar": activation_bar, "thresholds": {"filter": t["filter"], "bar": t["bar"]},
            "n": {f"{g}/{_label(ctx.modality)}": ctx.stats.n(lang=g, modality=ctx.modality) for g in t["langs"]}}
    default = _full(ctx.identity, layers, default.double(), 0) > 0
    return Scored(_full(ctx.identity, layers, score), meta, default=default,
                  tiebreak=_full(ctx.identity, layers, t["P"][k], 0))


def lape_sets(stats, langs: Sequence[str] | None = None, *, model=None, modality="text", **kw) -> dict[str, NeuronSet]:
    """LAPE's language-specific set for each language: ``{lang: NeuronSet}``.

    Example:
        >>> sets = lape_sets(stats, ["en", "zh", "sw"])   # doctest: +SKIP
        >>> {k: len(v) for k, v in sets.items()}           # doctest: +SKIP
        {'en': 12, 'zh': 30, 'sw': 41}
    """
    langs = list(langs) if langs is not None else _recorded_langs(stats, modality)
    return {lang: identify(stats, method="lape", lang=lang, modality=modality, model=model, langs=langs, **kw)
            for lang in langs}


def _needs_model_and_probes(ctx: ScoreContext, method: str):
    if ctx.model is None or ctx.probes is None:
        raise PsInterpError(f"method={method!r} runs the model: it needs model= and probes=",
                            fix=f"identify(stats, method={method!r}, model=model, probes=probes)")
    probes = list(ctx.probes)
    langs, mods = _as_list(ctx.lang), _as_list(ctx.modality)
    probes = [p for p in probes if (langs is None or p.lang in langs) and (mods is None or p.modality in mods)]
    harm = [p for p in probes if p.label == "harmful"]
    ben = [p for p in probes if p.label == "benign"]
    for label, items in (("harmful", harm), ("benign", ben)):
        if not items:
            raise PsInterpError(f"no {label} probes for {_label(ctx.lang)}/{_label(ctx.modality)}",
                                fix="pass probes with harmful and benign items of that language and modality")
    return harm, ben


def _attribution_sums(model, items, batch_size: int, objective: str) -> torch.Tensor:
    """Sum over items of ``sum_t h * dL/dh`` per (layer, neuron); L = log P(refusal opening), or the
    refusal score (minus log P(compliance opening)) with ``objective="score"``."""
    from .data.prompting import encode
    from .intervene import _index_table, _lse, last_logits, opening_tokens
    from .remote import require_local

    require_local(model, "hooks")
    total = torch.zeros(model.n_layers, model.d_ff, dtype=torch.float64)
    was_training = model.hf.training
    model.hf.eval()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = encode(model, chunk)
            toks = [opening_tokens(model, it.lang) for it in chunk]
            table = _index_table([t.refusal for t in toks], model.device)
            comp = _index_table([t.compliance for t in toks], model.device)
            acts, deltas = {}, {}

            def make(layer):
                def hook(module, args):
                    h = args[0]
                    deltas[layer] = torch.zeros_like(h, requires_grad=True)
                    acts[layer] = h.detach()
                    return (h + deltas[layer], *args[1:])
                return hook

            handles = [model.site_module(layer).register_forward_pre_hook(make(layer))
                       for layer in range(model.n_layers)]
            try:
                with torch.enable_grad():
                    logp = last_logits(model, batch).float().log_softmax(-1)
                    target = _lse(logp, table) - (_lse(logp, comp) if objective == "score" else 0.0)
                    target = target.sum()
                    layers = sorted(deltas)
                    grads = torch.autograd.grad(target, [deltas[layer] for layer in layers])
            finally:
                for handle in handles:
                    handle.remove()
            mask = batch["attention_mask"].to(torch.float64)[..., None]
            for layer, grad in zip(layers, grads):
                total[layer] += (acts[layer].double() * grad.double() * mask.to(grad.device)).sum((0, 1)).cpu()
    finally:
        model.hf.train(was_training)
    return total


def attribution(ctx: ScoreContext, direction: str = "positive", objective: str = "logprob",
                batch_size: int = 8) -> Scored:
    """Attribution patching: ``h * dL/dh`` summed over prompt positions, L = log-probability that the
    answer starts with a refusal opening (``objective="score"``: the refusal score, refusal minus
    compliance log-probability, which does not saturate when the model already refuses); mean over
    harmful prompts minus mean over benign prompts.
    ``-h * dL/dh`` is the first-order change of L when the neuron is zeroed, so high scores mark
    neurons that support refusal more on harmful than on benign prompts. Cost: one forward and
    backward pass per batch."""
    if objective not in ("logprob", "score"):
        raise PsInterpError(f"unknown objective {objective!r}", fix="use 'logprob' or 'score'")
    harm, ben = _needs_model_and_probes(ctx, "attribution")
    diff = (_attribution_sums(ctx.model, harm, batch_size, objective) / len(harm)
            - _attribution_sums(ctx.model, ben, batch_size, objective) / len(ben))
    what = "log P(refusal opening)" if objective == "logprob" else "refusal score (log P refusal - log P compliance)"
    meta = {"direction": direction, "objective": f"{what} at the first response position",
            "n": {"harmful": len(harm), "benign": len(ben)},
            "groups": [f"{_label(ctx.lang)}/{_label(ctx.modality)}/{x}" for x in ("harmful", "benign")]}
    return Scored(_directed(diff, direction), meta)


def ablation(ctx: ScoreContext, pool: int = 64, batch_size: int = 16) -> Scored:
    """Causal score: drop of the mean refusal score on harmful probes when the neuron alone is zeroed.

    Too slow for every neuron: only the ``pool`` neurons with the highest saliency contrast are
    scored (the others get ``-inf``). Cost: ``pool + 1`` passes over the harmful probes.
    """
    from .intervene import RefusalScorer, ablate

    harm, _ = _needs_model_and_probes(ctx, "ablation")
    sal = saliency(ctx)
    flat = sal.score.flatten()
    finite = torch.isfinite(flat)
    order = np.lexsort((np.arange(flat.numel()), -flat.numpy()))
    candidates = [int(i) for i in order if finite[i]][:pool]
    scorer = RefusalScorer(ctx.model, harm, batch_size=batch_size)
    base = float(scorer().mean())
    score = torch.full((ctx.identity.n_layers, ctx.identity.d_ff), -math.inf, dtype=torch.float64)
    for flat_i in candidates:
        layer, neuron = divmod(flat_i, ctx.identity.d_ff)
        with ablate(ctx.model, NeuronSet({layer: [neuron]}, ctx.model.identity)):
            score[layer, neuron] = base - float(scorer().mean())
    meta = {**sal.meta, "pool": len(candidates), "baseline_refusal": base,
            "cost": f"{len(candidates) + 1} passes over {len(harm)} harmful probes"}
    meta.pop("ranking", None)
    return Scored(score, meta)


SCORERS: dict[str, Callable[..., Scored]] = {
    "saliency": saliency, "mean_diff": mean_diff, "effect_size": effect_size, "lape": lape,
    "attribution": attribution, "ablation": ablation,
}
"""Scorer registry: ``name -> f(ctx: ScoreContext, **options) -> Scored``; add your own here."""


# ---- selection ---------------------------------------------------------------------------------
def _ranked(score: torch.Tensor, tiebreak: torch.Tensor | None) -> np.ndarray:
    """Flat indices of finite scores, best first (ties: higher tiebreak, then lower index)."""
    flat = score.flatten().numpy()
    tb = tiebreak.flatten().numpy() if tiebreak is not None else np.zeros_like(flat)
    order = np.lexsort((np.arange(flat.size), -tb, -flat))
    return order[np.isfinite(flat[order])]


def _top_per_layer(score: torch.Tensor, n: int, tiebreak: torch.Tensor | None) -> torch.Tensor:
    mask = torch.zeros(score.shape, dtype=torch.bool)
    for layer in range(score.shape[0]):
        tb = tiebreak[layer:layer + 1] if tiebreak is not None else None
        mask[layer, torch.as_tensor(_ranked(score[layer:layer + 1], tb)[:n], dtype=torch.long)] = True
    return mask


def _zscore(score: torch.Tensor) -> torch.Tensor:
    out = score.clone()
    for layer in range(score.shape[0]):
        row = score[layer]
        fin = torch.isfinite(row)
        if fin.sum() > 1:
            vals = row[fin]
            out[layer, fin] = (vals - vals.mean()) / vals.std().clamp(min=1e-12)
    return out


def model_param_count(model=None, config=None) -> int:
    """All parameters: from the model in memory (each shared tensor once) or from a config."""
    if model is not None:
        return int(sum(p.numel() for p in model.hf.parameters()))
    if config is not None:
        from .budget import count_params

        return count_params(config)
    raise PsInterpError("budget= needs the model's total parameter count",
                        fix="pass model=, config= (a config or bundled name) or total_params=")


def neurons_for(budget: float, identity: ModelIdentity, n_params: int) -> int:
    """Neurons whose parameters fit in ``budget`` (a fraction of ``n_params``), rounded down."""
    per = 3 * identity.d_model if identity.gated else 2 * identity.d_model + 1
    return min(int(math.floor(budget * n_params / per + 1e-9)), identity.n_neurons)


def _select(scored: Scored, identity: ModelIdentity, rho, top_k, n_budget, normalize) -> tuple[torch.Tensor, dict]:
    if top_k is None and n_budget is None:
        if rho is None and scored.default is not None:
            return scored.default.clone(), {"selection": "method default"}
        rho = DEFAULT_RHO if rho is None else rho
        n = max(1, int(round(rho * identity.d_ff)))
        if scored.harmful is not None and scored.benign is not None:
            mask = (_top_per_layer(scored.harmful, n, None) & ~_top_per_layer(scored.benign, n, None))
            return mask, {"selection": "rho", "rho": rho, "per_layer": n, "rule": "top(harmful) - top(benign)"}
        return _top_per_layer(scored.score, n, scored.tiebreak), {"selection": "rho", "rho": rho, "per_layer": n}
    k = top_k if top_k is not None else n_budget
    score = _zscore(scored.score) if normalize == "z" else scored.score
    picked = _ranked(score, scored.tiebreak)[:k]
    mask = torch.zeros(identity.n_neurons, dtype=torch.bool)
    mask[torch.as_tensor(picked, dtype=torch.long)] = True
    info = {"selection": "top_k" if top_k is not None else "budget", "normalize": normalize}
    if len(picked) < k:
        info["note"] = f"only {len(picked)} neurons have a finite score (asked for {k})"
    return mask.view(identity.n_layers, identity.d_ff), info


def _identity(stats, model) -> ModelIdentity:
    if model is not None:
        ident = model.identity
        if stats is not None and stats.meta.get("identity"):
            why = ident.mismatch(ModelIdentity(**stats.meta["identity"]))
            if why:
                raise PsInterpError(f"the statistics were recorded on another model: {why}",
                                    fix="record the statistics with this model")
        return ident
    if stats is not None and stats.meta.get("identity"):
        return ModelIdentity(**stats.meta["identity"])
    raise PsInterpError("cannot tell which model the neurons belong to",
                        fix="pass model=, or statistics recorded with ps.record (they carry the model identity)")


def _call(scorer: Callable, ctx: ScoreContext, method: str, options: dict) -> Scored:
    params = inspect.signature(scorer).parameters
    unknown = sorted(set(options) - set(list(params)[1:]))
    if unknown:
        accepted = ", ".join(list(params)[1:]) or "none"
        raise PsInterpError(f"method={method!r} does not take {unknown}",
                            fix=f"its options are: {accepted}; selection: rho, top_k, budget, normalize")
    return scorer(ctx, **options)


def score_neurons(stats, *, method: str = "saliency", lang="en", modality="text", model=None, probes=None,
                  **options) -> Scored:
    """The raw scores of ``method`` (``[n_layers, d_ff]``), before selection.

    Example:
        >>> s = score_neurons(stats, method="effect_size", stat="t")   # doctest: +SKIP
        >>> s.score.shape                                             # doctest: +SKIP
        torch.Size([30, 1536])
    """
    if method not in SCORERS:
        raise PsInterpError(f"unknown method {method!r}", fix=f"use one of {', '.join(SCORERS)}")
    if stats is not None and model is not None and model.d_ff != stats.d_ff:
        raise PsInterpError(f"stats have {stats.d_ff} neurons per layer, the model {model.d_ff}",
                            fix="record the statistics with this model")
    ctx = ScoreContext(stats, model, lang, modality, _identity(stats, model), probes)
    return _call(SCORERS[method], ctx, method, options)


def identify(stats, *, method: str = "saliency", lang="en", modality="text", model=None,
             rho: float | None = None, top_k: int | None = None, budget: float | None = None,
             normalize: str = "none", config=None, total_params: int | None = None, probes=None,
             **options) -> NeuronSet:
    """Score neurons with ``method`` and select a :class:`NeuronSet`.

    ``lang`` / ``modality`` pick the recorded groups (a value or a list, pooled). Give at most one
    of ``rho`` (fraction per layer; default :data:`DEFAULT_RHO`), ``top_k`` (global count) or
    ``budget`` (fraction of all parameters: ``floor(budget * total_params / params_per_neuron)``
    neurons, total from ``model``, ``config=`` or ``total_params=``). ``options`` go to the scorer
    (e.g. ``direction=``, ``stat=``, ``langs=``, ``pool=``).

    Example:
        >>> safety = identify(stats, model=model, lang="en", budget=0.0003)   # doctest: +SKIP
        >>> safety.meta["method"], len(safety)                                 # doctest: +SKIP
        ('saliency', 196)
    """
    given = {k: v for k, v in (("rho", rho), ("top_k", top_k), ("budget", budget)) if v is not None}
    if len(given) > 1:
        raise PsInterpError(f"give one selection, got {sorted(given)}", fix="pass only one of rho, top_k, budget")
    if rho is not None and not 0 < rho <= 1:
        raise PsInterpError(f"rho must be in (0, 1], got {rho!r}", fix="rho=0.01 takes 1% of each layer")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise PsInterpError(f"top_k must be a positive int, got {top_k!r}")
    if budget is not None and not 0 < budget <= 1:
        raise PsInterpError(f"budget must be a fraction in (0, 1], got {budget!r}", fix="0.03% is budget=0.0003")
    if normalize not in ("none", "z"):
        raise PsInterpError(f"unknown normalize {normalize!r}", fix="use 'none' or 'z' (per-layer z-scores)")
    scored = score_neurons(stats, method=method, lang=lang, modality=modality, model=model, probes=probes, **options)
    identity = _identity(stats, model)
    n_budget = None
    if budget is not None:
        n_params = total_params if total_params is not None else model_param_count(model, config)
        n_budget = neurons_for(budget, identity, int(n_params))
        if n_budget < 1:
            raise PsInterpError(f"budget {budget} buys no neuron ({n_params:,} parameters)",
                                fix="raise the budget or use top_k=")
    mask, info = _select(scored, identity, rho, top_k, n_budget, normalize)
    meta = {"method": method, "lang": lang, "modality": modality, "rho": rho, "top_k": top_k, "budget": budget,
            "n_selected": int(mask.sum()), **info, **scored.meta,
            "position": (stats.meta.get("position") if stats is not None else None),
            "layers_scored": list(stats.layers) if stats is not None else list(range(identity.n_layers)),
            "name": f"{method}:{_label(lang)}/{_label(modality)}"}
    if n_budget is not None:
        meta["budget_neurons"] = n_budget
    meta.update({f"option_{k}": v for k, v in options.items() if isinstance(v, (str, int, float, bool))})
    return NeuronSet.from_mask(mask.numpy(), identity, meta=meta)
