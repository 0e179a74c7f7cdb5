"""Sets of FFN neurons: ``{layer: sorted indices}`` tied to the model they came from.

A neuron ``(l, i)`` is input ``i`` of layer ``l``'s FFN down-projection (see DESIGN.md). A
:class:`NeuronSet` is immutable; ``|``, ``&``, ``-``, ``^`` and :meth:`NeuronSet.jaccard` only
combine sets from the same model (same :class:`ModelIdentity`).

Example:
    >>> ident = ModelIdentity("LlamaForCausalLM", n_layers=2, d_ff=8, d_model=4)
    >>> a = NeuronSet({0: [1, 2], 1: [5]}, ident)
    >>> b = NeuronSet({0: [2, 3]}, ident)
    >>> len(a | b), a.jaccard(b), (0, 2) in a
    (4, 0.25, True)
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ps_interp.errors import PsInterpError
from ps_interp.figio import atomic_write

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What a neuron index refers to: architecture and FFN shape of one model.

    ``name`` (e.g. the HF id) is compared only when both sides set it.

    Example:
        >>> ModelIdentity("LlamaForCausalLM", n_layers=32, d_ff=14336, d_model=4096, name="llama-3-8b")
        ModelIdentity(architecture='LlamaForCausalLM', n_layers=32, d_ff=14336, d_model=4096, gated=True, name='llama-3-8b')
    """

    architecture: str
    n_layers: int
    d_ff: int
    d_model: int
    gated: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("n_layers", "d_ff", "d_model"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise PsInterpError(f"ModelIdentity.{field} must be a positive int, got {value!r}")
            object.__setattr__(self, field, int(value))

    @property
    def n_neurons(self) -> int:
        """All FFN neurons of the model: ``n_layers * d_ff``."""
        return self.n_layers * self.d_ff

    def mismatch(self, other: ModelIdentity) -> str | None:
        """Describe the first differing field (``None`` when compatible)."""
        for field in ("architecture", "n_layers", "d_ff", "d_model", "gated"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                return f"{field} differs ({mine!r} vs {theirs!r})"
        if self.name and other.name and self.name != other.name:
            return f"name differs ({self.name!r} vs {other.name!r})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_indices(values: Any, layer: int, d_ff: int) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    except TypeError:
        raise PsInterpError(f"layer {layer}: expected a list of neuron indices, got {values!r}") from None
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype == bool:
        raise PsInterpError(f"layer {layer}: got a boolean array, expected neuron indices",
                            fix="use NeuronSet.from_mask(mask, identity) for masks")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise PsInterpError(f"layer {layer}: neuron indices must be integers, got {arr.dtype}")
    arr = np.unique(arr.astype(np.int64).ravel())
    if arr[0] < 0 or arr[-1] >= d_ff:
        bad = arr[(arr < 0) | (arr >= d_ff)][:5].tolist()
        raise PsInterpError(f"layer {layer}: neuron indices {bad} out of range [0, {d_ff})",
                            fix="check that the set comes from this model (d_ff)")
    arr.setflags(write=False)
    return arr


class NeuronSet:
    """An immutable set of FFN neurons ``{layer: sorted unique int64 indices}`` of one model.

    ``meta`` holds provenance (method, rho, position, source group, ...) and is saved with the set;
    ``==`` compares identity and neurons, not meta.

    Example:
        >>> ident = ModelIdentity("LlamaForCausalLM", n_layers=2, d_ff=8, d_model=4)
        >>> s = NeuronSet({1: [7, 3, 3]}, ident, meta={"method": "saliency"})
        >>> s.indices(1).tolist(), s.per_layer().tolist(), s.param_count()
        ([3, 7], [0, 2], 24)
    """

    __slots__ = ("identity", "meta", "_layers")

    def __init__(self, neurons: Mapping[int, Iterable[int]] | None, identity: ModelIdentity,
                 *, meta: Mapping[str, Any] | None = None):
        if not isinstance(identity, ModelIdentity):
            raise PsInterpError(f"identity must be a ModelIdentity, got {type(identity).__name__}")
        self.identity = identity
        self.meta: dict[str, Any] = dict(meta or {})
        layers: dict[int, np.ndarray] = {}
        for layer, values in (neurons or {}).items():
            layer_i = self._check_layer(layer)
            idx = _as_indices(values, layer_i, identity.d_ff)
            if idx.size:
                layers[layer_i] = idx
        self._layers = dict(sorted(layers.items()))

    def _check_layer(self, layer: Any) -> int:
        if isinstance(layer, str) and layer.strip().lstrip("-").isdigit():  # JSON keys
            layer_i = int(layer)
        elif isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            layer_i = int(layer)
        else:
            raise PsInterpError(f"layer {layer!r} is not an int")
        if not 0 <= layer_i < self.identity.n_layers:
            raise PsInterpError(f"layer {layer_i} out of range [0, {self.identity.n_layers})",
                                fix="check that the set comes from this model (n_layers)")
        return layer_i

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_mask(cls, mask: np.ndarray, identity: ModelIdentity, *,
                  meta: Mapping[str, Any] | None = None) -> NeuronSet:
        """Build from a boolean ``[n_layers, d_ff]`` mask (torch tensors are accepted)."""
        if hasattr(mask, "detach"):
            mask = mask.detach().cpu().numpy()
        mask = np.asarray(mask)
        want = (identity.n_layers, identity.d_ff)
        if mask.shape != want:
            raise PsInterpError(f"mask has shape {mask.shape}, expected {want} (n_layers, d_ff)")
        if mask.dtype != bool:
            raise PsInterpError(f"mask must be boolean, got {mask.dtype}", fix="pass mask.astype(bool)")
        return cls({layer: np.flatnonzero(row) for layer, row in enumerate(mask)}, identity, meta=meta)

    @classmethod
    def from_frame(cls, df: Any, identity: ModelIdentity, *, meta: Mapping[str, Any] | None = None) -> NeuronSet:
        """Inverse of :meth:`to_frame`: a DataFrame with columns ``layer`` and ``neuron``."""
        missing = [c for c in ("layer", "neuron") if c not in getattr(df, "columns", ())]
        if missing:
            raise PsInterpError(f"DataFrame lacks columns {missing}", fix="name them 'layer' and 'neuron'")
        return cls({int(layer): group["neuron"].to_numpy() for layer, group in df.groupby("layer")},
                   identity, meta=meta)

    def random_like(self, seed: int | np.random.Generator | None = None) -> NeuronSet:
        """A uniformly random set with the same count in every layer (the null for tests).

        Example:
            >>> ident = ModelIdentity("LlamaForCausalLM", n_layers=2, d_ff=8, d_model=4)
            >>> NeuronSet({1: [0, 1, 2]}, ident).random_like(0).per_layer().tolist()
            [0, 3]
        """
        rng = np.random.default_rng(seed)
        picked = {layer: rng.choice(self.identity.d_ff, size=idx.size, replace=False)
                  for layer, idx in self._layers.items()}
        return NeuronSet(picked, self.identity, meta={"random_like": self.meta.get("name", ""),
                                                      "seed": seed if isinstance(seed, int) else None})

    def with_identity(self, identity: ModelIdentity) -> NeuronSet:
        """The same indices relabelled with another identity (e.g. base vs instruct model)."""
        return NeuronSet(self._layers, identity, meta=self.meta)

    # ---- container protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return int(sum(idx.size for idx in self._layers.values()))

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        layer, idx = item
        arr = self._layers.get(layer)  # type: ignore[call-overload]
        if arr is None or isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            return False
        pos = np.searchsorted(arr, idx)
        return bool(pos < arr.size and arr[pos] == idx)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for layer, idx in self._layers.items():
            for i in idx.tolist():
                yield layer, i

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return (self.identity.mismatch(other.identity) is None
                and self._layers.keys() == other._layers.keys()
                and all(np.array_equal(v, other._layers[k]) for k, v in self._layers.items()))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"NeuronSet({len(self)} neurons in {len(self._layers)}/{self.identity.n_layers} layers"
                f" of {self.identity.name or self.identity.architecture})")

    @property
    def layers(self) -> list[int]:
        """Layers holding at least one neuron, ascending."""
        return list(self._layers)

    def indices(self, layer: int) -> np.ndarray:
        """Sorted int64 indices in ``layer`` (read-only; empty if none)."""
        layer_i = self._check_layer(layer)
        return self._layers.get(layer_i, np.empty(0, dtype=np.int64))

    def per_layer(self) -> np.ndarray:
        """Counts per layer, length ``n_layers``."""
        counts = np.zeros(self.identity.n_layers, dtype=np.int64)
        for layer, idx in self._layers.items():
            counts[layer] = idx.size
        return counts

    def to_mask(self) -> np.ndarray:
        """Boolean mask ``[n_layers, d_ff]``."""
        mask = np.zeros((self.identity.n_layers, self.identity.d_ff), dtype=bool)
        for layer, idx in self._layers.items():
            mask[layer, idx] = True
        return mask

    # ---- set algebra --------------------------------------------------------------------
    def _check_same_model(self, other: object, op: str) -> NeuronSet:
        if not isinstance(other, NeuronSet):
            raise PsInterpError(f"cannot apply {op!r} to a NeuronSet and a {type(other).__name__}")
        why = self.identity.mismatch(other.identity)
        if why is not None:
            raise PsInterpError(f"cannot combine neuron sets from different models: {why}; sets must come "
                                "from the same model",
                                fix="identify both sets on the same model, or relabel one with "
                                    ".with_identity(other.identity) if their indices really correspond")
        return other

    def _combine(self, other: object, op: str, fn) -> NeuronSet:
        other = self._check_same_model(other, op)
        out = {}
        for layer in set(self._layers) | set(other._layers):
            empty = np.empty(0, dtype=np.int64)
            out[layer] = fn(self._layers.get(layer, empty), other._layers.get(layer, empty))
        names = [self.meta.get("name", "?"), other.meta.get("name", "?")]
        return NeuronSet(out, self.identity, meta={"operation": op, "operands": names})

    def __or__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "|", np.union1d)

    def __and__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "&", lambda a, b: np.intersect1d(a, b, assume_unique=True))

    def __sub__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "-", lambda a, b: np.setdiff1d(a, b, assume_unique=True))

    def __xor__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "^", lambda a, b: np.setxor1d(a, b, assume_unique=True))

    def intersection_size(self, other: NeuronSet) -> int:
        """``|self & other|`` without building the set."""
        other = self._check_same_model(other, "&")
        return int(sum(np.intersect1d(idx, other._layers[layer], assume_unique=True).size
                       for layer, idx in self._layers.items() if layer in other._layers))

    def jaccard(self, other: NeuronSet) -> float:
        """``|A & B| / |A | B|``; 0.0 when both sets are empty."""
        inter = self.intersection_size(other)
        union = len(self) + len(other) - inter
        return inter / union if union else 0.0

    # ---- parameters ---------------------------------------------------------------------
    def param_count(self) -> int:
        """Parameters owned by these neurons.

        Gated FFN: ``3 * d_model`` per neuron (row of W_gate, row of W_up, column of W_down).
        Non-gated FFN: ``2 * d_model + 1`` (row of the first linear, its bias entry, column of the
        second linear; the second linear's bias belongs to no single neuron).
        """
        d = self.identity.d_model
        return len(self) * (3 * d if self.identity.gated else 2 * d + 1)

    def param_fraction(self, total_params: int) -> float:
        """:meth:`param_count` over the model's total (e.g. ``budget.count_params(config)``)."""
        if isinstance(total_params, bool) or not isinstance(total_params, (int, np.integer)) or total_params <= 0:
            raise PsInterpError(f"total_params must be a positive int, got {total_params!r}",
                                fix="use ps_interp.budget.count_params(config)")
        return self.param_count() / int(total_params)

    # ---- tables and files ---------------------------------------------------------------
    def to_frame(self):
        """A pandas DataFrame with int64 columns ``layer`` and ``neuron``, one row per neuron."""
        import pandas as pd

        layers = [np.full(idx.size, layer, dtype=np.int64) for layer, idx in self._layers.items()]
        return pd.DataFrame({
            "layer": np.concatenate(layers) if layers else np.empty(0, dtype=np.int64),
            "neuron": np.concatenate(list(self._layers.values())) if layers else np.empty(0, dtype=np.int64),
        })

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the file format of :meth:`save`)."""
        return {"schema_version": SCHEMA_VERSION, "identity": self.identity.to_dict(),
                "meta": self.meta, "n_neurons": len(self),
                "neurons": {str(layer): idx.tolist() for layer, idx in self._layers.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NeuronSet:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PsInterpError(f"unsupported NeuronSet schema_version {version!r} (this version reads "
                                f"{SCHEMA_VERSION})", fix="save the set again with this ps_interp version")
        try:
            identity = ModelIdentity(**data["identity"])
            neurons = data["neurons"]
        except (KeyError, TypeError) as exc:
            raise PsInterpError(f"not a NeuronSet file: missing or bad field {exc}") from None
        out = cls(neurons, identity, meta=data.get("meta") or {})
        if "n_neurons" in data and data["n_neurons"] != len(out):
            raise PsInterpError(f"NeuronSet file is inconsistent: n_neurons={data['n_neurons']} but "
                                f"{len(out)} unique neurons listed")
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file + rename); returns the path."""
        path = Path(path)
        try:
            text = json.dumps(self.to_dict(), default=_json_default, indent=1)
        except TypeError as exc:
            raise PsInterpError(f"NeuronSet.meta is not JSON-serialisable: {exc}",
                                fix="keep only str/number/bool/list/dict values in meta") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronSet:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise PsInterpError(f"no NeuronSet file at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PsInterpError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise PsInterpError(f"{path} is not a NeuronSet file")
        return cls.from_dict(data)

    def summary(self) -> str:
        """A few human-readable lines: size, share of neurons and parameters per neuron, meta."""
        ident = self.identity
        counts = self.per_layer()
        lines = [f"NeuronSet of {ident.name or ident.architecture} ({ident.architecture}, "
                 f"{ident.n_layers} layers x d_ff={ident.d_ff}, d_model={ident.d_model}, "
                 f"{'gated' if ident.gated else 'non-gated'} FFN)",
                 f"  {len(self):,} neurons = {len(self) / ident.n_neurons:.4%} of FFN neurons, "
                 f"{self.param_count():,} parameters",
                 f"  {len(self._layers)} non-empty layers"]
        if len(self):
            top = np.argsort(-counts, kind="stable")[:3]
            lines[-1] += ", most in " + ", ".join(f"L{i} ({counts[i]})" for i in top if counts[i])
        if self.meta:
            lines.append("  meta: " + ", ".join(f"{k}={v}" for k, v in self.meta.items()))
        return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, tuple, set)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
