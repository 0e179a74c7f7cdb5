"""Streaming per-neuron statistics (never a cache of activations).

Per group ``(lang, modality, label)`` and per (layer, neuron), float64: count, sum, sum of squares,
sum of |h| and count of h > 0. Groups merge by adding.

Example:
    >>> import torch
    >>> s = ActivationStats.empty([("en", "text", "harmful")], layers=[0], d_ff=3)
    >>> h = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)   # one sample
    >>> s.add_reduced(0, torch.stack([h, h * h, h.abs(), (h > 0).double()]), torch.tensor([1.0]))
    >>> s.mean(lang="en")[0].tolist()
    [1.0, -2.0, 0.5]
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_dir
from .errors import PsInterpError

SCHEMA_VERSION = 1
MOMENTS = ("sum", "sumsq", "sumabs", "npos")
Group = tuple[str, str, str]
GROUP_FIELDS = ("lang", "modality", "label")


@dataclass
class ActivationStats:
    """Float64 moments per group x layer x neuron. ``count[g]`` is the number of samples of group g."""

    groups: list[Group]
    layers: list[int]
    count: torch.Tensor  # [G]
    moments: dict[str, torch.Tensor]  # name -> [G, L, F]
    meta: dict = field(default_factory=dict)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def empty(cls, groups, layers, d_ff: int, meta: dict | None = None, device="cpu") -> "ActivationStats":
        groups = [tuple(g) for g in groups]
        shape = (len(groups), len(layers), d_ff)
        return cls(groups, list(layers), torch.zeros(len(groups), dtype=torch.float64, device=device),
                   {m: torch.zeros(shape, dtype=torch.float64, device=device) for m in MOMENTS}, dict(meta or {}))

    def add_reduced(self, layer_pos: int, reduced: torch.Tensor, counts: torch.Tensor | None) -> None:
        """Add per-group sums already reduced on the model's device: ``reduced [4, G, F]`` in MOMENTS order."""
        reduced = reduced.to(self.count.device)
        for i, name in enumerate(MOMENTS):
            self.moments[name][:, layer_pos] += reduced[i]
        if counts is not None:
            self.count += counts.to(self.count.device)

    # ---- selection ---------------------------------------------------------------------
    @property
    def d_ff(self) -> int:
        return self.moments["sum"].shape[-1]

    def group_indices(self, **selection) -> list[int]:
        """Indices of groups matching ``lang=``, ``modality=``, ``label=`` (each a value or a list)."""
        unknown = set(selection) - set(GROUP_FIELDS)
        if unknown:
            raise PsInterpError(f"unknown selection keys {sorted(unknown)}", fix=f"use {GROUP_FIELDS}")
        want = {k: ({v} if isinstance(v, str) else set(v)) for k, v in selection.items() if v is not None}
        return [i for i, g in enumerate(self.groups)
                if all(g[GROUP_FIELDS.index(k)] in vals for k, vals in want.items())]

    def select(self, **selection) -> "ActivationStats":
        """Stats restricted to the matching groups (an error if none match or all are empty)."""
        idx = self._require(selection)
        return ActivationStats([self.groups[i] for i in idx], self.layers, self.count[idx].clone(),
                               {k: v[idx].clone() for k, v in self.moments.items()}, dict(self.meta))

    def _require(self, selection) -> list[int]:
        idx = [i for i in self.group_indices(**selection) if self.count[i] > 0]
        if not idx:
            present = ", ".join("/".join(g) for g in self.groups) or "none"
            raise PsInterpError(f"empty group: no recorded samples match {selection or 'all'} (groups: {present})",
                                fix="record probes of that language/modality/label, or change the selection")
        return idx

    def _pooled(self, selection) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = self._require(selection)
        n = self.count[idx].sum()
        return n, {k: v[idx].sum(0) for k, v in self.moments.items()}

    def mean(self, **selection) -> torch.Tensor:
        """Mean activation ``[L, F]`` pooled over the matching groups."""
        n, m = self._pooled(selection)
        return m["sum"] / n

    def std(self, **selection) -> torch.Tensor:
        """Sample standard deviation ``[L, F]`` (ddof=1) over the matching groups."""
        n, m = self._pooled(selection)
        var = (m["sumsq"] - m["sum"] ** 2 / n) / (n - 1).clamp(min=1)
        return var.clamp(min=0).sqrt()

    def mean_abs(self, **selection) -> torch.Tensor:
        n, m = self._pooled(selection)
        return m["sumabs"] / n

    def p_active(self, **selection) -> torch.Tensor:
        """Share of samples with h > 0, ``[L, F]``."""
        n, m = self._pooled(selection)
        return m["npos"] / n

    def n(self, **selection) -> int:
        return int(self.count[self._require(selection)].sum())

    # ---- combination and files ---------------------------------------------------------
    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Sum of two recordings (same layers and width); groups are united."""
        if other.layers != self.layers or other.d_ff != self.d_ff:
            raise PsInterpError("cannot merge stats of different layers or widths",
                                fix="record both with the same model and layers")
        groups = sorted(set(self.groups) | set(other.groups))
        out = ActivationStats.empty(groups, self.layers, self.d_ff, self.meta)
        for src in (self, other):
            idx = torch.tensor([groups.index(g) for g in src.groups], dtype=torch.long)
            out.count.index_add_(0, idx, src.count.cpu())
            for k in MOMENTS:
                out.moments[k].index_add_(0, idx, src.moments[k].cpu())
        return out

    def to(self, device) -> "ActivationStats":
        return ActivationStats(self.groups, self.layers, self.count.to(device),
                               {k: v.to(device) for k, v in self.moments.items()}, self.meta)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``stats.safetensors`` + ``stats.json`` into ``directory`` (atomically)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            tensors = {"count": self.count.cpu().contiguous(),
                       **{k: v.cpu().contiguous() for k, v in self.moments.items()}}
            save_file(tensors, str(tmp / "stats.safetensors"))
            info = {"schema_version": SCHEMA_VERSION, "groups": [list(g) for g in self.groups],
                    "layers": self.layers, "d_ff": self.d_ff, "meta": self.meta}
            (tmp / "stats.json").write_text(json.dumps(info, indent=1, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ActivationStats":
        """Read what :meth:`save` wrote."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "stats.json").exists():
            raise PsInterpError(f"no saved statistics in {directory}", fix="pass the folder that stats.save() wrote")
        info = json.loads((directory / "stats.json").read_text())
        if info.get("schema_version") != SCHEMA_VERSION:
            raise PsInterpError(f"{directory}: stats schema {info.get('schema_version')} != {SCHEMA_VERSION}",
                                fix="record again with this version of ps_interp")
        t = load_file(str(directory / "stats.safetensors"))
        return cls([tuple(g) for g in info["groups"]], info["layers"], t["count"],
                   {k: t[k] for k in MOMENTS}, info.get("meta", {}))

    def to_frame(self):
        """One row per group: lang, modality, label, n."""
        import pandas as pd

        return pd.DataFrame([dict(zip(GROUP_FIELDS, g), n=int(c)) for g, c in zip(self.groups, self.count)])

    def max_rel_diff(self, other: "ActivationStats") -> float:
        """Largest |difference| of any moment, relative to that moment's largest |value|."""
        if self.groups != other.groups or self.layers != other.layers:
            return float("inf")
        diffs = [(self.count.cpu() - other.count.cpu()).abs().max() / self.count.abs().max().clamp(min=1)]
        for k in MOMENTS:
            a, b = self.moments[k].cpu(), other.moments[k].cpu()
            diffs.append((a - b).abs().max() / a.abs().max().clamp(min=1e-300))
        return float(max(diffs))

    def allclose(self, other: "ActivationStats", tol: float = 1e-6) -> bool:
        """Same groups, layers and counts, and moments within ``tol`` relative to their scale."""
        return self.max_rel_diff(other) <= tol

    def __repr__(self) -> str:
        return (f"ActivationStats({len(self.groups)} groups, {len(self.layers)} layers x {self.d_ff} neurons, "
                f"position={self.meta.get('position')!r})")


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
