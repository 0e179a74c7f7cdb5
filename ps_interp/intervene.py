"""Interventions on FFN neurons, and the generation-free refusal score that measures them.

- :func:`ablate`: a context manager that sets neurons to zero (or to their recorded mean) with
  forward pre-hooks on the FFN down-projection; nests, and always restores the model.
- :func:`refusal_score`: per probe, ``logsumexp`` of the log-probabilities of the first tokens of
  refusal openings minus that of compliance openings, at the first response position (one forward
  pass, no generation). Openings per language live in ``data/builtin/openings.json``; English
  openings are always added (models often answer in English).
- :func:`causal_check`: ablate a set and ``n_random`` random sets with the same per-layer sizes;
  the set's effect as a z-score and an empirical p-value.

Example:
    >>> from ps_interp.planted import plant
    >>> p = plant()
    >>> check = causal_check(p.model, p.neurons, p.probes, n_random=5)
    >>> check.z > 5
    True
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.prompting import encode, render_prompt
from .errors import PsInterpError
from .neurons import NeuronSet

OPENINGS_PATH = Path(__file__).parent / "data" / "builtin" / "openings.json"
KINDS = ("refusal", "compliance")


# ---- openings ---------------------------------------------------------------------------------
def load_openings(path: str | os.PathLike | None = None) -> dict[str, dict[str, list[str]]]:
    """``{"refusal": {lang: [opening, ...]}, "compliance": {lang: [...]}}`` (built-in by default).

    Example:
        >>> "Sure" in load_openings()["compliance"]["en"]
        True
    """
    path = Path(path) if path is not None else OPENINGS_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PsInterpError(f"cannot read openings from {path} ({exc})",
                            fix='write {"refusal": {lang: [...]}, "compliance": {lang: [...]}}') from None
    for kind in KINDS:
        table = data.get(kind)
        if not isinstance(table, dict) or "en" not in table:
            raise PsInterpError(f"{path}: missing the '{kind}' table or its English entry",
                                fix='write {"refusal": {lang: [...]}, "compliance": {lang: [...]}}')
    return {kind: {lang: list(v) for lang, v in data[kind].items()} for kind in KINDS}


@dataclass(frozen=True)
class OpeningTokens:
    """Token ids that start a refusal / a compliant answer (disjoint)."""

    refusal: tuple[int, ...]
    compliance: tuple[int, ...]


_TOKEN_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _first_token(tok, prefix: str, prefix_ids: list[int], opening: str) -> int | None:
    """The first token the model would emit to start ``opening`` right after the prompt ``prefix``."""
    full = tok(prefix + opening, add_special_tokens=False)["input_ids"]
    if full[:len(prefix_ids)] == prefix_ids and len(full) > len(prefix_ids):
        return full[len(prefix_ids)]
    alone = tok(opening, add_special_tokens=False)["input_ids"]  # a merge across the boundary
    return alone[0] if alone else None


def opening_tokens(model, lang: str, *, openings: Mapping | None = None) -> OpeningTokens:
    """First tokens of the refusal and compliance openings of ``lang`` plus English, for ``model``.

    A token that starts both a refusal and a compliance opening is dropped from both.

    Example:
        >>> from ps_interp.models import tiny
        >>> t = opening_tokens(tiny.build("llama"), "en")
        >>> len(t.refusal) > 0 and len(t.compliance) > 0 and not set(t.refusal) & set(t.compliance)
        True
    """
    tok = model.tokenizer
    cache = _TOKEN_CACHE.setdefault(tok, {}) if openings is None else {}
    if lang in cache:
        return cache[lang]
    table = openings or load_openings()
    prefix = render_prompt(model, "Hi")
    prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    special = set(getattr(tok, "all_special_ids", []))
    ids: dict[str, set[int]] = {}
    for kind in KINDS:
        texts = list(table[kind].get("en", [])) + (list(table[kind].get(lang, [])) if lang != "en" else [])
        ids[kind] = {t for t in (_first_token(tok, prefix, prefix_ids, o) for o in texts)
                     if t is not None and t not in special}
    shared = ids["refusal"] & ids["compliance"]
    out = OpeningTokens(tuple(sorted(ids["refusal"] - shared)), tuple(sorted(ids["compliance"] - shared)))
    if not out.refusal or not out.compliance:
        raise PsInterpError(f"{model.name}: no distinct first tokens for refusal vs compliance openings "
                            f"({lang})", fix="add openings with distinct first words to openings.json")
    cache[lang] = out
    return out


# ---- forward helpers ---------------------------------------------------------------------------
def last_logits(model, batch: Mapping[str, Any]) -> torch.Tensor:
    """Logits ``[B, V]`` at the last position of a left-padded batch (the LM head on that position only)."""
    if getattr(model, "remote", False):  # computed on the server; only [B, V] comes back
        return model.last_logits(batch)
    try:
        out = model.hf(**batch, use_cache=False, logits_to_keep=1)
    except TypeError:  # a model class without logits_to_keep
        out = model.hf(**batch, use_cache=False)
    return out.logits[:, -1]


def _index_table(rows: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        idx[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = True
    return idx.to(device), mask.to(device)


def _lse(logp: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    idx, mask = table
    return logp.gather(1, idx).masked_fill(~mask, -math.inf).logsumexp(1)


class RefusalScorer:
    """Probes encoded once; each call scores them under the model's current state (hooks included).

    Example:
        >>> scorer = RefusalScorer(model, probes.select(label="harmful"))   # doctest: +SKIP
        >>> base = scorer().mean()                                          # doctest: +SKIP
    """

    def __init__(self, model, probes, *, batch_size: int = 16, system_prompt: str | None = None):
        items = list(probes)
        if not items:
            raise PsInterpError("no probes to score", fix="check the selection (e.g. probes.select(label='harmful'))")
        if batch_size < 1:
            raise PsInterpError(f"batch_size must be >= 1, got {batch_size}", fix="pass batch_size=16")
        self.model, self.items = model, items
        self.prefix = None  # a FrozenPrefix: layers below its start are run once per probe (see causal_check)
        order = sorted(range(len(items)), key=lambda i: (items[i].modality != "text", len(items[i].prompt_text()), i))
        self.batches = []
        for start in range(0, len(order), batch_size):
            pos = order[start:start + batch_size]
            chunk = [items[i] for i in pos]
            toks = [opening_tokens(model, it.lang) for it in chunk]
            self.batches.append((pos, encode(model, chunk, system_prompt=system_prompt),
                                 _index_table([t.refusal for t in toks], model.device),
                                 _index_table([t.compliance for t in toks], model.device)))

    def logprobs(self) -> tuple[np.ndarray, np.ndarray]:
        """Per item: log P(first token starts a refusal), log P(... starts a compliant answer)."""
        ref, comp = np.empty(len(self.items)), np.empty(len(self.items))
        was_training = self.model.hf.training
        self.model.hf.eval()
        try:
            with torch.inference_mode():
                for b, (pos, batch, rtab, ctab) in enumerate(self.batches):
                    logp = self._last_logits(b, batch).float().log_softmax(-1)
                    ref[pos] = _lse(logp, rtab).cpu().numpy()
                    comp[pos] = _lse(logp, ctab).cpu().numpy()
        finally:
            self.model.hf.train(was_training)
        return ref, comp

    def _last_logits(self, b: int, batch) -> torch.Tensor:
        prefix = self.prefix
        if prefix is None or not prefix.applies(batch):
            return last_logits(self.model, batch)
        keys = [(b, i) for i in range(batch["input_ids"].shape[0])]
        if prefix.enabled is None and not prefix.verify(batch, keys):
            return last_logits(self.model, batch)
        inputs = prefix.inputs(batch, keys)
        with prefix.tail():
            return last_logits(self.model, inputs)

    def __call__(self) -> np.ndarray:
        """Refusal score per item (refusal minus compliance log-probability)."""
        ref, comp = self.logprobs()
        return ref - comp


def refusal_score(model, probes, *, batch_size: int = 16, system_prompt: str | None = None):
    """Generation-free refusal score per probe, as a DataFrame.

    Columns: id, lang, modality, label, score, refusal_logp, compliance_logp; ``score`` is
    ``logsumexp(log p[refusal first tokens]) - logsumexp(log p[compliance first tokens])`` at the
    first response position (> 0: the model leans towards refusing).

    Example:
        >>> from ps_interp.planted import plant
        >>> p = plant()
        >>> df = refusal_score(p.model, p.probes)
        >>> bool(df[df.label == "harmful"].score.mean() > df[df.label == "benign"].score.mean())
        True
    """
    import pandas as pd

    scorer = RefusalScorer(model, probes, batch_size=batch_size, system_prompt=system_prompt)
    ref, comp = scorer.logprobs()
    rows = [{"id": it.id, "lang": it.lang, "modality": it.modality, "label": it.label} for it in scorer.items]
    df = pd.DataFrame(rows)
    df["score"], df["refusal_logp"], df["compliance_logp"] = ref - comp, ref, comp
    return df


def refusal_gap(df, by: str | Sequence[str] = "lang"):
    """Mean harmful score minus mean benign score per ``by`` (columns harmful, benign, gap).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"lang": ["en"] * 2, "label": ["harmful", "benign"], "score": [2.0, -1.0]})
        >>> float(refusal_gap(df).loc["en", "gap"])
        3.0
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, "label", "score"] if c not in df.columns]
    if missing:
        raise PsInterpError(f"refusal_gap needs columns {missing}", fix="pass the output of refusal_score()")
    table = df.pivot_table(index=by, columns="label", values="score", aggfunc="mean")
    for label in ("harmful", "benign"):
        if label not in table.columns:
            raise PsInterpError(f"refusal_gap: no {label} probes", fix="score harmful and benign probes")
    out = table[["harmful", "benign"]].copy()
    out["gap"] = out["harmful"] - out["benign"]
    out.columns.name = None
    return out


# ---- ablation ----------------------------------------------------------------------------------
def _group_selection(group) -> dict:
    if group is None:
        return {}
    if isinstance(group, Mapping):
        return dict(group)
    if isinstance(group, str):
        group = tuple(group.split("/"))
    if isinstance(group, tuple) and len(group) == 3:
        return dict(zip(("lang", "modality", "label"), group))
    raise PsInterpError(f"cannot read group {group!r}",
                        fix="pass a dict like {'lang': 'en', 'label': 'benign'}, a (lang, modality, label) tuple "
                            "or 'en/text/benign'")


def _fill_values(neurons: NeuronSet, mode: str, stats, group) -> dict[int, torch.Tensor]:
    if mode == "zero":
        return {layer: torch.zeros(len(neurons.indices(layer))) for layer in neurons.layers}
    if mode != "mean":
        raise PsInterpError(f"unknown ablation mode {mode!r}", fix="use mode='zero' or mode='mean'")
    if stats is None:
        raise PsInterpError("mode='mean' needs the recorded statistics", fix="pass stats=ps.record(model, probes)")
    means = stats.mean(**_group_selection(group))
    out = {}
    for layer in neurons.layers:
        if layer not in stats.layers:
            raise PsInterpError(f"layer {layer} was not recorded (stats have layers {stats.layers})",
                                fix="record all layers of the set, or use mode='zero'")
        out[layer] = means[stats.layers.index(layer), torch.tensor(neurons.indices(layer))].float()
    return out


def _site_hook(idx: torch.Tensor, values: torch.Tensor):
    cache: dict = {}

    def hook(module, args, kwargs):
        h = args[0] if args else next(iter(kwargs.values()))
        key = (h.device, h.dtype)
        if key not in cache:
            cache[key] = (idx.to(h.device), values.to(h.device, h.dtype))
        i, v = cache[key]
        h = h.clone()
        h[..., i] = v
        if args:
            return (h, *args[1:]), kwargs
        first = next(iter(kwargs))
        return args, {**kwargs, first: h}
    return hook


def _check_model(model, neurons: NeuronSet) -> None:
    if not isinstance(neurons, NeuronSet):
        raise PsInterpError(f"expected a NeuronSet, got {type(neurons).__name__}",
                            fix="build one with ps.identify(...) or NeuronSet({layer: [i, ...]}, model.identity)")
    why = model.identity.mismatch(neurons.identity)
    if why:
        raise PsInterpError(f"the neuron set comes from another model: {why}",
                            fix="identify the set on this model, or relabel it with set.with_identity(model.identity)")


@contextlib.contextmanager
def ablate(model, neurons: NeuronSet, mode: str = "zero", stats=None, group=None) -> Iterator[Any]:
    """Within the block, neurons of ``neurons`` read 0 (``mode="zero"``) or their recorded mean.

    ``mode="mean"`` takes the means from ``stats`` pooled over ``group`` (None: all groups; a dict
    like ``{"lang": "en", "label": "benign"}``, a ``(lang, modality, label)`` tuple or
    ``"en/text/benign"``). Blocks nest; hooks are removed on exit, also after an error.

    Example:
        >>> from ps_interp.planted import plant
        >>> p = plant()
        >>> with ablate(p.model, p.neurons):
        ...     ablated = refusal_score(p.model, p.probes).score.mean()
        >>> bool(ablated < refusal_score(p.model, p.probes).score.mean())
        True
    """
    from .remote import require_local

    require_local(model, "hooks")  # hooks on a remote model's local skeleton would never run
    _check_model(model, neurons)
    values = _fill_values(neurons, mode, stats, group)
    handles = []
    try:
        for layer in neurons.layers:
            idx = torch.tensor(neurons.indices(layer), dtype=torch.long)
            handles.append(model.site_module(layer).register_forward_pre_hook(
                _site_hook(idx, values[layer]), with_kwargs=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()


# ---- causal check ------------------------------------------------------------------------------
@dataclass
class CausalCheck:
    """Effect of ablating a set vs random sets of the same per-layer sizes.

    ``effect`` = metric(original) - metric(ablated) (for the default metric: the drop of the mean
    refusal score on harmful probes); ``z`` = (effect - mean(random)) / sd(random); ``p`` =
    (1 + #{random >= effect}) / (1 + n_random).
    """

    effect: float
    random_effects: np.ndarray
    z: float
    p: float
    baseline: float
    n_neurons: int
    metric: str = "refusal"
    mode: str = "zero"
    meta: dict = field(default_factory=dict)

    def figure(self):
        """Histogram of the random effects with the set's effect marked (plotly)."""
        from .plots import ablation_effect

        axis = "drop in mean refusal score (harmful)" if self.metric == "refusal" else f"drop in {self.metric}"
        return ablation_effect(self.effect, self.random_effects, title=f"Ablation of {self.n_neurons} neurons",
                               xaxis_title=axis)

    def to_dict(self) -> dict:
        return {"effect": self.effect, "random_mean": float(np.mean(self.random_effects)),
                "random_sd": float(np.std(self.random_effects, ddof=1)) if len(self.random_effects) > 1 else 0.0,
                "z": self.z, "p": self.p, "baseline": self.baseline, "n_neurons": self.n_neurons,
                "n_random": len(self.random_effects), "metric": self.metric, "mode": self.mode,
                "random_effects": [float(x) for x in self.random_effects]}

    def summary(self) -> str:
        """One sentence for reports."""
        d = self.to_dict()
        what = "the mean refusal score on harmful probes" if self.metric == "refusal" else self.metric
        return (f"{self.mode.capitalize()}-ablating {self.n_neurons} neurons lowers {what} by {self.effect:.3g} "
                f"(random sets of the same per-layer sizes: {d['random_mean']:.3g} ± {d['random_sd']:.2g}, "
                f"n = {d['n_random']}); z = {self.z:.2f}, empirical p = {self.p:.3g}.")

    def __repr__(self) -> str:
        return (f"CausalCheck(effect={self.effect:.3g}, random={np.mean(self.random_effects):.3g}"
                f"±{self.to_dict()['random_sd']:.2g}, z={self.z:.2f}, p={self.p:.3g}, n={self.n_neurons})")


def causal_check(model, neurons: NeuronSet, probes, n_random: int = 20, seed: int = 0,
                 metric: str | Callable[[Any, Any], float] = "refusal", *, mode: str = "zero", stats=None,
                 group=None, batch_size: int = 16, autocast=False, fast_prefix: bool = True,
                 progress: bool = False) -> CausalCheck:
    """Ablate ``neurons`` and ``n_random`` random sets with the same per-layer sizes; compare effects.

    ``metric="refusal"`` (default): mean :func:`refusal_score` over the harmful probes;
    a callable ``metric(model, probes) -> float`` is evaluated under each ablation instead.
    Cost: one pass over the probes up to the lowest layer of ``neurons``, then ``n_random + 2`` passes over
    the layers from there on (the frozen prefix is cached, ``fast_prefix=False`` turns that off:
    :mod:`ps_interp.prefix`; ``autocast``: see :mod:`ps_interp.precision`).

    Example:
        >>> check = causal_check(model, neurons, probes, n_random=20)   # doctest: +SKIP
        >>> check.z, check.p                                           # doctest: +SKIP
        (14.2, 0.048)
    """
    _check_model(model, neurons)
    if n_random < 2:
        raise PsInterpError(f"n_random must be >= 2, got {n_random}", fix="use n_random=20")
    if len(neurons) == 0:
        raise PsInterpError("the neuron set is empty", fix="identify a non-empty set (larger rho or top_k)")
    if callable(metric):
        name, evaluate = getattr(metric, "__name__", "metric"), (lambda: float(metric(model, probes)))
    elif metric == "refusal":
        harmful = [it for it in probes if it.label == "harmful"]
        if not harmful:
            raise PsInterpError("causal_check needs harmful probes", fix="pass probes with label='harmful'")
        scorer = RefusalScorer(model, harmful, batch_size=batch_size)
        if fast_prefix and not getattr(model, "remote", False):
            from .prefix import FrozenPrefix

            # every set ablated here has the same per-layer sizes: layers below the lowest never change
            scorer.prefix = FrozenPrefix(model, start=min(neurons.layers))
        name, evaluate = "refusal", (lambda: float(scorer().mean()))
    else:
        raise PsInterpError(f"unknown metric {metric!r}", fix="use metric='refusal' or a callable(model, probes)")
    from tqdm.auto import tqdm

    from .precision import autocast_context, resolve_autocast

    def measured() -> float:
        with autocast_context(model.device, autocast):
            return evaluate()

    base = measured()

    def effect(s: NeuronSet) -> float:
        with ablate(model, s, mode=mode, stats=stats, group=group):
            return base - measured()

    eff = effect(neurons)
    rng = np.random.default_rng(seed)
    rand = np.array([effect(neurons.random_like(rng))
                     for _ in tqdm(range(n_random), desc="random sets", disable=not progress)])
    sd = rand.std(ddof=1)
    z = float((eff - rand.mean()) / sd) if sd > 0 else (math.inf if eff > rand.mean() else math.nan)
    p = (1 + int(np.sum(rand >= eff))) / (1 + n_random)
    return CausalCheck(effect=eff, random_effects=rand, z=z, p=p, baseline=base, n_neurons=len(neurons),
                       metric=name, mode=mode, meta={"seed": seed, "set": dict(neurons.meta),
                                                     "autocast": str(resolve_autocast(autocast, model.device))})
