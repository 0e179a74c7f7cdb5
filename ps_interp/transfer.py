"""`transfer`: identify on a source (English text by default), align with Shield, re-evaluate every target.

Each target language/modality is measured before and after, for Shield and each baseline trained on the
same data; each target's own safety set is compared with the source set (Jaccard), and the overlap is
correlated with the ASR drop: does safety transfer where the neurons are shared?

Example:
    >>> import ps_interp as ps
    >>> res = ps.transfer(model, source={"langs": ["en"]}, targets={"langs": ["zh", "sw"]})  # doctest: +SKIP
    >>> res.table[["lang", "condition", "asr_before", "asr_after", "jaccard"]]                # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .data import ProbeSet
from .errors import PsInterpError
from .evaluate import Evaluation, evaluate
from .generate import MAX_LANGUAGE_SCALE

CONDITIONS = ("shield", "lora", "random", "full", "layers")


@dataclass
class TransferResult:
    """Per target x condition: ASR before/after, over-refusal, Jaccard with the source set; plus the sets."""

    table: pd.DataFrame
    source_set: object
    target_sets: dict
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    @property
    def targets_only(self) -> pd.DataFrame:
        """``table`` without the source groups themselves (their Jaccard with the source set is 1 by definition)."""
        return _targets_only(self.table)

    @property
    def correlation(self) -> pd.DataFrame:
        """Pearson and Spearman correlation of Jaccard(target set, source set) with the ASR drop, per condition,
        over the target groups that are not the source (zero-shot transfer only)."""
        return transfer_correlation(self.table)


def _targets_only(table: pd.DataFrame) -> pd.DataFrame:
    return table[~table["is_source"].astype(bool)] if "is_source" in table else table


def transfer_correlation(table: pd.DataFrame) -> pd.DataFrame:
    """See :attr:`TransferResult.correlation`; works on a saved ``transfer.csv`` too.

    Example:
        >>> t = pd.DataFrame({"condition": ["shield"] * 4, "is_source": [True, False, False, False],
        ...                   "jaccard": [1.0, 0.1, 0.2, 0.3], "asr_drop": [0.5, 0.0, 0.1, 0.3]})
        >>> float(transfer_correlation(t)["spearman"].iloc[0])
        1.0
    """
    table = _targets_only(table)
    rows = []
    for cond, df in table.groupby("condition"):
        df = df.dropna(subset=["jaccard", "asr_drop"])
        if len(df) >= 3 and df["jaccard"].std() > 0 and df["asr_drop"].std() > 0:
            rows.append({"condition": cond, "n": len(df),
                         "pearson": float(df["jaccard"].corr(df["asr_drop"])),
                         "spearman": float(df["jaccard"].corr(df["asr_drop"], method="spearman"))})
        else:
            rows.append({"condition": cond, "n": len(df), "pearson": np.nan, "spearman": np.nan})
    return pd.DataFrame(rows)


def eval_subset(probes: ProbeSet, per_lang: int | None, seed: int = 0) -> ProbeSet:
    """The test items of ``per_lang`` matched pairs per language (all translations of the same pairs)."""
    if per_lang is None:
        return probes
    pairs = sorted({it.meta.get("pair", it.id) for it in probes})
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(pairs, size=min(per_lang, len(pairs)), replace=False).tolist())
    return ProbeSet([it for it in probes if it.meta.get("pair", it.id) in keep])


def _align(model, condition: str, neurons, data, *, steps, lr, batch_size, retention, seed, progress,
           autocast=False, cache=None):
    """Run one alignment condition; returns an object with ``restore()``, ``trainable_params`` and ``log``."""
    from . import baselines
    from .align import Shield

    kwargs = dict(steps=steps, batch_size=batch_size, seed=seed, progress=progress, retention_mode=retention,
                  autocast=autocast, cache=cache)
    if condition == "shield":
        shield = Shield(model, neurons, lr=lr, retention_mode=retention, autocast=autocast,
                        cache=cache)
        shield.fit(data, steps=steps, batch_size=batch_size, seed=seed, progress=progress)
        return shield
    if condition == "random":
        return baselines.random_neurons_baseline(model, neurons, data, lr=lr, **kwargs)
    if condition == "layers":
        return baselines.layer_neurons_baseline(model, neurons, data, lr=lr, **kwargs)
    if condition == "lora":
        return baselines.lora_baseline(model, data, **kwargs)
    if condition == "full":
        return baselines.full_finetune(model, data, **kwargs)
    raise PsInterpError(f"unknown baseline {condition!r}", fix=f"use some of {CONDITIONS[1:]}")


def trainable_of(result) -> tuple[int | None, float | None]:
    n = getattr(result, "trainable_params", None)
    if callable(n):
        n = n()
    frac = getattr(result, "trainable_fraction", None)
    if callable(frac):
        frac = frac()
    return n, frac


def transfer(model, *, source: dict | None = None, targets: dict | None = None, probes: ProbeSet | None = None,
             stats=None, method: str = "saliency", budget: float | None = 0.0003, rho: float | None = None,
             baselines=("lora", "random"), steps: int = 60, lr: float = 2e-3, batch_size: int = 8,
             retention: str = "kl", eval_per_lang: int | None = 16, max_new_tokens: int = 48, judge=None,
             language_scale: float = MAX_LANGUAGE_SCALE, position: str = "last", autocast: bool | str = False,
             seed: int = 0,
             progress: bool = True) -> TransferResult:
    """Identify safety neurons on ``source``, align on its train split, evaluate every target before/after.

    ``autocast`` (False, True, ``"auto"``; see :mod:`ps_interp.precision`) applies to recording, training and
    generation; the retention metrics (KL, perplexity) are always computed in float32.
    ``source`` / ``targets``: ``{"langs": [...], "modalities": [...]}``; targets default to every language of
    ``probes`` in the source modalities. ``stats`` (recorded on the probe split) is recorded if not given.
    The model is restored to its original weights after each condition.
    """
    from .data import probes as builtin_probes
    from .identify import identify
    from .pairs import training_pairs
    from .record import record

    source = {"langs": ["en"], "modalities": ["text"], **(source or {})}
    probes = probes if probes is not None else builtin_probes(modalities=tuple(
        set(source["modalities"]) | set((targets or {}).get("modalities", source["modalities"]))))
    targets = {"langs": list(probes.langs), "modalities": list(source["modalities"]), **(targets or {})}
    probe_split = probes.select(split="probe", lang=targets["langs"] + source["langs"],
                                modality=targets["modalities"] + source["modalities"])
    if stats is None:
        stats = record(model, probe_split.require_nonempty("probe split"), position=position, progress=progress,
                       autocast=autocast)
    sel = dict(budget=budget) if rho is None else dict(rho=rho)
    source_sets = [identify(stats, method=method, lang=lang, modality=mod, model=model, **sel)
                   for lang in source["langs"] for mod in source["modalities"]]
    source_set = source_sets[0]
    for s in source_sets[1:]:
        source_set = source_set | s
    target_sets = {(lang, mod): identify(stats, method=method, lang=lang, modality=mod, model=model, **sel)
                   for lang in targets["langs"] for mod in targets["modalities"]}
    test = eval_subset(probes.select(split="test", lang=targets["langs"], modality=targets["modalities"]),
                       eval_per_lang, seed).require_nonempty("test split")
    data = training_pairs(probes, langs=source["langs"], modalities=source["modalities"], split="train", seed=seed)
    ev_kw = dict(judge=judge, max_new_tokens=max_new_tokens, language_scale=language_scale, progress=progress,
                 autocast=autocast)
    before = evaluate(model, test, **ev_kw)
    ev_kw["reference"] = before.benign_logprobs  # the original model's benign next-token distributions
    before.retention["benign_kl"] = 0.0
    evaluations = {"before": before}
    training = {}
    cache: dict = {}  # the original model's retention answers and frozen-prefix streams, shared by all conditions
    for cond in ("shield", *baselines):
        result = _align(model, cond, source_set, data, steps=steps, lr=lr, batch_size=batch_size,
                        retention=retention, seed=seed, progress=progress, autocast=autocast, cache=cache)
        try:
            evaluations[cond] = evaluate(model, test, **ev_kw)
        finally:
            result.restore()
        n, frac = trainable_of(result)
        log = getattr(result, "log", None)
        training[cond] = {"trainable_params": n, "trainable_fraction": frac,
                          "final_loss": float(log["loss"].iloc[-1]) if isinstance(log, pd.DataFrame) and len(log) else None}
    table = _transfer_table(evaluations, source_set, target_sets, training)
    table["is_source"] = [lang in source["langs"] and mod in source["modalities"]
                          for lang, mod in zip(table["lang"], table["modality"])]
    return TransferResult(table, source_set, target_sets, evaluations, training)


def _transfer_table(evaluations: dict, source_set, target_sets: dict, training: dict) -> pd.DataFrame:
    def rows_of(ev):
        t = ev.table[ev.table["level"] == "lang+modality"]
        return {(r.lang, r.modality): r for r in t.itertuples()}

    before = rows_of(evaluations["before"])
    rows = []
    for cond, ev in evaluations.items():
        if cond == "before":
            continue
        after = rows_of(ev)
        for key, b in before.items():
            a = after.get(key)
            tset = target_sets.get(key)
            rows.append({"lang": key[0], "modality": key[1], "condition": cond,
                         "asr_before": b.asr, "asr_after": a.asr if a is not None else np.nan,
                         "asr_drop": b.asr - a.asr if a is not None else np.nan,
                         "over_refusal_before": b.over_refusal,
                         "over_refusal_after": a.over_refusal if a is not None else np.nan,
                         "jaccard": source_set.jaccard(tset) if tset is not None else np.nan,
                         "trainable_params": training.get(cond, {}).get("trainable_params"),
                         "kl_after": ev.retention.get("benign_kl")})
    return pd.DataFrame(rows)


def leave_one_language_out(model, langs: list[str], **kwargs) -> pd.DataFrame:
    """For each language L: align on all the others, evaluate on L (Shield only). One row per held-out language."""
    rows = []
    for held in langs:
        res = transfer(model, source={"langs": [x for x in langs if x != held]}, targets={"langs": [held]},
                       baselines=(), **kwargs)
        rows.append(res.table.assign(held_out=held))
    return pd.concat(rows, ignore_index=True)
