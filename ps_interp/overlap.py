"""`overlap`: safety neurons per language/modality, their pairwise Jaccard and its random-set null.

Called with only ``langs``, it loads the embedded default model and the built-in probes (split
``probe``), records once and caches the statistics under ``cache_dir()/stats/<fingerprint>/``
(the fingerprint covers the model's weights, the probes and the token position), so a second call
(or a call with another method) does not record again.

Example:
    >>> import ps_interp as ps
    >>> ov = ps.overlap(langs=["en", "zh", "sw"])   # doctest: +SKIP
    >>> ov.jaccard.round(2)                          # doctest: +SKIP
    >>> ov.figure().show()                           # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import PsInterpError
from .identify import identify
from .neurons import NeuronSet
from .record import record
from .stats import ActivationStats

RUNS_MODEL = ("attribution", "ablation")  # methods that run the model on the probes


@dataclass
class Overlap:
    """Neuron sets keyed ``"lang/modality"``, with Jaccard, null expectation and p-value matrices."""

    sets: dict[str, NeuronSet]
    jaccard: object
    expected: object
    pvalue: object
    meta: dict = field(default_factory=dict)
    stats: ActivationStats | None = field(default=None, repr=False)

    def figure(self, alpha: float = 0.05):
        """Heatmap of the Jaccard matrix; ``*`` marks p < alpha against random sets."""
        from .plots import jaccard_heatmap

        method = self.meta.get("method", "")
        return jaccard_heatmap(self.jaccard, self.pvalue, alpha, title=f"Jaccard overlap of {method} neurons")

    def layer_figure(self, normalize: bool = False):
        """Neurons per layer, one line per set."""
        from .plots import layer_distribution

        return layer_distribution(self.sets, normalize=normalize)

    def to_frame(self):
        """One row per pair: a, b, size_a, size_b, intersection, jaccard, expected, pvalue, enrichment."""
        import pandas as pd

        names, rows = list(self.sets), []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                j, e = float(self.jaccard.loc[a, b]), float(self.expected.loc[a, b])
                rows.append({"a": a, "b": b, "size_a": len(self.sets[a]), "size_b": len(self.sets[b]),
                             "intersection": self.sets[a].intersection_size(self.sets[b]), "jaccard": j,
                             "expected": e, "pvalue": float(self.pvalue.loc[a, b]),
                             "enrichment": j / e if e > 0 else float("nan")})
        return pd.DataFrame(rows)


# ---- cached recording --------------------------------------------------------------------------
def weights_digest(model) -> str:
    """A cheap fingerprint of the model's weights (per tensor: its float64 sum and a strided sample),
    so an aligned model does not reuse the statistics of the original.

    Example:
        >>> from ps_interp.models import tiny
        >>> len(weights_digest(tiny.build("llama")))
        16
    """
    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy()
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|{float(flat.sum(dtype=torch.float64))!r}|".encode())
            h.update(sample.tobytes())
    return h.hexdigest()[:16]


def stats_fingerprint(model, probes, position: str, layers=None, system_prompt: str | None = None) -> str:
    """What determines recorded statistics: model identity and weights, probes, position, layers."""
    h = hashlib.sha1()
    h.update(json.dumps([model.identity.to_dict(), model.name, weights_digest(model), position, layers,
                         system_prompt]).encode())
    for it in probes:
        image = it.image if isinstance(it.image, str) else ("<in-memory>" if it.image is not None else "")
        h.update(f"{it.id}|{it.lang}|{it.modality}|{it.label}|{image}|{it.prompt_text()}\n".encode())
    return h.hexdigest()[:16]


def cached_record(model, probes, *, position: str = "last", cache: bool = True, **record_kw) -> ActivationStats:
    """:func:`ps_interp.record.record`, cached under ``cache_dir()/stats/<fingerprint>/``.

    Example:
        >>> stats = cached_record(model, probes)   # records   # doctest: +SKIP
        >>> stats = cached_record(model, probes)   # reads the cache   # doctest: +SKIP
    """
    if not cache:
        return record(model, probes, position=position, **record_kw)
    from .models import cache_dir

    fp = stats_fingerprint(model, probes, position, record_kw.get("layers"), record_kw.get("system_prompt"))
    folder = Path(cache_dir()) / "stats" / fp
    if (folder / "stats.json").exists():
        try:
            return ActivationStats.load(folder)
        except (PsInterpError, OSError, ValueError):
            pass  # an unreadable cache entry is recorded again
    stats = record(model, probes, position=position, **record_kw)
    stats.meta["fingerprint"] = fp
    stats.save(folder)
    return stats


# ---- overlap -----------------------------------------------------------------------------------
def _as_tuple(v) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


def overlap(langs, modalities=("text",), *, stats: ActivationStats | None = None, model=None, probes=None,
            method: str = "saliency", position: str = "last", cache: bool = True, batch_size: int = 16,
            progress: bool = True, **selection) -> Overlap:
    """Identify a neuron set per (language, modality) and compare them pairwise.

    Without ``stats``, records ``model`` (default: the embedded SmolLM2-135M-Instruct) on ``probes``
    (default: the built-in probe split of ``langs`` x ``modalities``), cached on disk.
    ``selection`` goes to :func:`ps_interp.identify.identify` (``rho=``, ``top_k=``, ``budget=``,
    scorer options).

    Example:
        >>> ov = overlap(["en", "sw"], model=model, probes=probes, top_k=50)   # doctest: +SKIP
        >>> float(ov.jaccard.loc["en/text", "sw/text"])                         # doctest: +SKIP
        0.31
    """
    from .overlap_stats import jaccard_matrix

    langs, modalities = _as_tuple(langs), _as_tuple(modalities)
    if not langs or not modalities:
        raise PsInterpError("overlap needs at least one language and one modality",
                            fix="pass langs=['en', 'sw'] (and modalities=('text',))")
    if stats is None:
        if model is None:
            from .models import DEFAULT_MODEL, load

            model = load(DEFAULT_MODEL)
        if probes is None:
            from .data.builtin import probes as builtin_probes

            probes = builtin_probes(langs=list(langs), modalities=list(modalities), split="probe")
        stats = cached_record(model, probes, position=position, cache=cache, batch_size=batch_size,
                              progress=progress)
    elif method in RUNS_MODEL and (model is None or probes is None):
        raise PsInterpError(f"method={method!r} runs the model on the probes", fix="pass model= and probes= too")
    extra = {"probes": probes} if method in RUNS_MODEL else {}
    sets = {f"{lang}/{mod}": identify(stats, method=method, lang=lang, modality=mod, model=model,
                                      **extra, **selection)
            for lang in langs for mod in modalities}
    jac, exp, pval = jaccard_matrix(sets)
    meta = {"method": method, "langs": list(langs), "modalities": list(modalities),
            "position": stats.meta.get("position", position), "model": getattr(model, "name", None),
            "selection": {k: v for k, v in selection.items() if isinstance(v, (str, int, float, bool))},
            "sizes": {k: len(v) for k, v in sets.items()}}
    return Overlap(sets, jac, exp, pval, meta, stats)
