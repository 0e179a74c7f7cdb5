"""Frozen-prefix cache: train neurons of late layers without re-running the early layers at every step.

When every trainable tensor sits in layers ``>= start`` (Shield on safety neurons, which cluster in the
last layers; the random-neuron baseline with the same per-layer counts), layers ``0..start-1`` compute
the same residual stream for a training example at every step. :class:`FrozenPrefix` computes it once
per example (the input of layer ``start``, real tokens only) and then runs only layers ``start..`` on
it: the decoder's layer list is swapped for its tail and the cached stream is passed as
``inputs_embeds``, so rotary positions and the padding mask are built by the model as usual.

It is checked, not assumed: :meth:`FrozenPrefix.verify` compares the tail logits with a full forward on
a real batch, and a model family for which ``inputs_embeds`` is not the first layer's input (GPT-2 adds
position embeddings, Gemma scales them) fails the check and trains with full forwards instead.
Text-only batches only (an image batch always runs the full model).

Example:
    >>> from ps_interp.models import tiny
    >>> from ps_interp.pairs import collate
    >>> from ps_interp.data.probes import ProbeItem
    >>> m = tiny.build("llama")
    >>> part = collate(m, [ProbeItem(id="a", lang="en", label="benign", text="Hi there")], [[5, 6]])
    >>> prefix = FrozenPrefix(m, start=1)
    >>> prefix.verify(part, keys=[("demo", 0)])
    True
"""
from __future__ import annotations

import contextlib
from collections.abc import Hashable, Sequence

import torch

from .models.model import get_path

_TEXT_KEYS = {"input_ids", "attention_mask", "position_ids", "labels"}


class FrozenPrefix:
    """Per-example cache of the residual stream entering layer ``start`` (see the module doc)."""

    def __init__(self, model, start: int, *, atol: float = 1e-3, cache: dict | None = None):
        """``cache``: a dict to keep the streams in, shared by trainers of the same unchanged prefix."""
        self.model, self.start, self.atol = model, int(start), float(atol)
        path = model.adapter.layers.rsplit(".", 1)
        self._parent = get_path(model.hf, path[0]) if len(path) == 2 else model.hf
        self._attr = path[-1]
        self._cache: dict[Hashable, torch.Tensor] = {} if cache is None else cache
        self.enabled: bool | None = None  # None until verified
        self._full = None
        self.why_disabled: str | None = None

    # -- applicability --------------------------------------------------------------------
    def applies(self, part: dict) -> bool:
        """True when this batch can take the fast path (text only, a prefix to skip, verified or not yet)."""
        return self.start > 0 and self.enabled is not False and set(part) <= _TEXT_KEYS

    @contextlib.contextmanager
    def tail(self):
        """Within the block the decoder runs only layers ``start..`` (its layer list is swapped)."""
        full = getattr(self._parent, self._attr)
        self._full = full
        setattr(self._parent, self._attr, torch.nn.ModuleList(list(full)[self.start:]))
        try:
            yield
        finally:
            setattr(self._parent, self._attr, full)
            self._full = None

    @contextlib.contextmanager
    def _whole(self):
        """The full layer list, also inside :meth:`tail` (cache misses are computed on the whole model)."""
        full = getattr(self, "_full", None)
        if full is None:
            yield
            return
        tail = getattr(self._parent, self._attr)
        setattr(self._parent, self._attr, full)
        try:
            yield
        finally:
            setattr(self._parent, self._attr, tail)

    # -- the cache ------------------------------------------------------------------------
    @torch.no_grad()
    def _compute(self, part: dict) -> torch.Tensor:
        """The input of layer ``start`` for a collated batch ``[B, T, d_model]`` (one full-prefix pass)."""
        captured = {}

        def grab(module, args, kwargs):
            captured["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
            raise _Stop

        layer = self.model.layers[self.start]
        handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
        inputs = {k: v for k, v in part.items() if k != "labels"}
        try:
            with self._whole():
                self.model.hf(**inputs, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured["h"]

    def stream(self, part: dict, keys: Sequence[Hashable]) -> torch.Tensor:
        """The cached layer-``start`` input for a collated (left-padded) batch; missing rows are computed once.

        ``keys[i]`` names example ``i`` (the same key must always mean the same token sequence). Padding
        positions are zero: they are masked out as keys and never carry a label.
        """
        mask = part["attention_mask"].bool()
        missing = [i for i, k in enumerate(keys) if k not in self._cache
                   or self._cache[k].shape[0] != int(mask[i].sum())]
        if missing:
            rows = self._compute({k: v[missing] for k, v in part.items()})
            for j, i in enumerate(missing):
                self._cache[keys[i]] = rows[j][mask[i]].clone()
        first = self._cache[keys[0]]
        out = first.new_zeros(mask.shape[0], mask.shape[1], first.shape[-1])
        for i, k in enumerate(keys):
            out[i, mask[i]] = self._cache[k]
        return out

    def inputs(self, part: dict, keys: Sequence[Hashable]) -> dict:
        """Model inputs for the tail: the cached stream as ``inputs_embeds`` plus mask, positions, labels."""
        out = {k: v for k, v in part.items() if k != "input_ids"}
        out["inputs_embeds"] = self.stream(part, keys)
        return out

    @torch.no_grad()
    def verify(self, part: dict, keys: Sequence[Hashable]) -> bool:
        """Compare tail logits on the cache with a full forward on ``part``; enable or disable the fast path."""
        if self.start <= 0 or not set(part) <= _TEXT_KEYS:
            self.enabled, self.why_disabled = False, "no prefix to skip, or an image batch"
            return False
        inputs = {k: v for k, v in part.items() if k != "labels"}
        full = self.model.hf(**inputs, use_cache=False).logits.float()
        try:
            with self.tail():
                fast = self.model.hf(**{k: v for k, v in self.inputs(part, keys).items() if k != "labels"},
                                     use_cache=False).logits.float()
        except Exception as exc:  # an architecture whose forward does not take this path
            self.enabled, self.why_disabled = False, f"{type(exc).__name__}: {exc}"
            self._cache.clear()
            return False
        mask = part["attention_mask"].bool()
        err = float((full[mask] - fast[mask]).abs().max())
        scale = max(float(full[mask].abs().max()), 1.0)
        self.enabled = err <= self.atol * scale
        if not self.enabled:
            self.why_disabled = f"tail logits differ from a full forward by {err:.3g} (scale {scale:.3g})"
            self._cache.clear()
        return self.enabled


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass early."""
