"""Shield: align a model by training only its safety neurons, in place.

The update is ``theta <- theta - lr * (M * grad L)`` where the mask M selects, for each neuron, its
gate row, up row and down column (GPT-2: ``c_fc`` column and bias, ``c_proj`` row). It is computed in
its efficient form: the trainable tensors are the selected slices only (``[k_l, d_model]`` per gate /
up, ``[d_model, k_l]`` per down in layer ``l``), the base weights have ``requires_grad=False`` (no
weight gradient is ever computed for them), and optimizer state and weight decay exist for the
slices only. During a step the selected slices of the base weights are zeroed and forward hooks add
the slices' contribution back (``y[..., S] += x @ P.T`` for rows, ``y += x[..., S] @ P.T`` for
columns); after the step the slices are written into the weights. Between steps ``model.hf`` is a
plain HF model holding the current weights, so it can be recorded, evaluated or saved at any time.
This is proven equal to the dense masked update by ``tests/test_align.py``.

Training runs a plain torch forward/backward on ``model.hf`` with module hooks, not an nnsight
trace: the slice form needs autograd through custom hooks on every step, which nnsight would only
wrap (adding its per-call tracing cost) without changing the computation.

The loss is cross-entropy on the refusal tokens of harmful prompts plus ``retention`` times a term
on benign prompts: ``retention_mode="kl"`` is ``KL(p_original || p_current)`` over the positions of
the original model's greedy answer, ``"greedy"`` the cross-entropy on that answer. The original
model is the current one with the original slices written back (no copy of the model is kept).

Safety neurons sit in late layers, and nothing below the lowest one ever changes: each training
sequence's residual stream entering that layer is computed once and cached
(:mod:`ps_interp.prefix`), and every step runs only the layers from there on. The fast path is
checked against a full forward on the first batch and turned off (with a warning) where it does not
match; ``fast_prefix=False`` turns it off by hand.

Example:
    >>> import ps_interp as ps
    >>> from ps_interp.align import Shield
    >>> from ps_interp.pairs import training_pairs
    >>> model = ps.load("smollm2-135m-instruct")                            # doctest: +SKIP
    >>> shield = Shield(model, neurons, lr=1e-3)                            # doctest: +SKIP
    >>> log = shield.fit(training_pairs(ps.probes(langs="en")), steps=50)   # doctest: +SKIP
    >>> shield.restore()                                                    # doctest: +SKIP
"""
from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._io import atomic_dir
from .errors import PsInterpError
from .neurons import NeuronSet
from .pairs import IGNORE, RETENTION_MODES, TrainingData, collate, greedy_answers, sample_batches, target_ids

OPTIMIZERS = ("adamw", "sgd")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ---- losses ---------------------------------------------------------------------------------
def _takes_logits_to_keep(hf) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(hf.forward).parameters


def first_target_column(labels: torch.Tensor) -> int:
    """The first column that holds a label in any row (at least 1: position 0 predicts nothing).

    Example:
        >>> first_target_column(torch.tensor([[IGNORE, IGNORE, 5], [IGNORE, 7, 8]]))
        1
    """
    cols = (labels != IGNORE).any(0).nonzero()
    if cols.numel() == 0:
        raise PsInterpError("a training batch has no labelled token", fix="give every example a target")
    return max(int(cols[0]), 1)


def target_logits(hf, part: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[n, vocab]`` (float32) at the positions that predict a labelled token, and those labels.

    Only the trailing positions that hold labels go through the LM head (``logits_to_keep``).

    Example:
        >>> logits, labels = target_logits(model.hf, collate(model, items, targets))  # doctest: +SKIP
    """
    labels = part["labels"]
    inputs = {k: v for k, v in part.items() if k != "labels"}
    first = first_target_column(labels)
    keep = labels.shape[1] - first + 1
    if _takes_logits_to_keep(hf):
        logits = hf(**inputs, use_cache=False, logits_to_keep=keep).logits
    else:
        logits = hf(**inputs, use_cache=False).logits[:, -keep:]
    pred, tgt = logits[:, :-1], labels[:, first:]
    chosen = tgt != IGNORE
    return pred[chosen].float(), tgt[chosen]


def batch_losses(hf, batch: dict[str, Any], *, retention: float, mode: str = "kl",
                 reference: torch.Tensor | None = None, logits_of: Callable | None = None) -> dict[str, torch.Tensor]:
    """``loss = refusal_loss + retention * retention_loss`` for one step's batch.

    ``batch = {"refusal": collated, "retain": collated or None}``; ``reference`` holds the original
    model's :func:`target_logits` on ``batch["retain"]`` (needed for ``mode="kl"``). ``logits_of(name)``
    replaces ``target_logits(hf, batch[name])`` (the trainers pass their frozen-prefix fast path).
    """
    logits_of = logits_of or (lambda name: target_logits(hf, batch[name]))
    logits, labels = logits_of("refusal")
    refusal = F.cross_entropy(logits, labels)
    retain = batch.get("retain")
    if retain is None or retention == 0:
        kept = torch.zeros((), device=refusal.device)
    elif mode == "greedy":
        kept = F.cross_entropy(*logits_of("retain"))
    else:
        if reference is None:
            raise PsInterpError("retention_mode='kl' needs the original model's logits",
                                fix="pass reference=target_logits(original, batch['retain'])")
        current, _ = logits_of("retain")
        kept = F.kl_div(current.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="batchmean")
    return dict(loss=refusal + retention * kept, refusal_loss=refusal, retention_loss=kept)


def _key(kind: str, item, target) -> tuple:
    """Names one training sequence (prompt + target tokens) for the frozen-prefix cache."""
    return (kind, item.id, item.lang, item.modality, item.text, tuple(target))


# ---- checks ---------------------------------------------------------------------------------
def _check_grad_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise PsInterpError("torch.inference_mode is active: training needs autograd",
                            fix="call fit/step outside `with torch.inference_mode():`")


def check_trainable(model) -> None:
    """Raise unless ``model`` can be trained (local weights, none offloaded, no inference mode or tensors)."""
    from .remote import require_local

    _check_grad_mode()
    require_local(model, "train")
    offloaded = [name for name, p in model.hf.named_parameters() if p.is_meta]
    if offloaded:
        raise PsInterpError(f"{model.name}: {len(offloaded)} parameters are offloaded by accelerate to the CPU or "
                            f"disk (e.g. {offloaded[0]}), so they cannot be trained",
                            fix="load with a device_map that keeps every layer on a GPU (more GPUs, max_memory=, "
                                "or dtype='bfloat16'); record, identify and evaluate work with offloaded layers")
    if any(p.is_inference() for p in model.hf.parameters()):
        raise PsInterpError(f"{model.name} was created under torch.inference_mode; its weights cannot be trained",
                            fix="load the model outside `with torch.inference_mode():`")


def count_parameters(hf) -> int:
    """Parameters of ``hf`` (tied weights counted once)."""
    return sum(p.numel() for p in hf.parameters())


def _make_optimizer(params: list[torch.Tensor], optimizer, lr: float, weight_decay: float):
    if callable(optimizer):
        return optimizer(params)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise PsInterpError(f"unknown optimizer {optimizer!r}",
                        fix=f"use one of {OPTIMIZERS} or a callable params -> torch.optim.Optimizer")


# ---- the training loop, shared with the baselines -----------------------------------------
class Trainer(abc.ABC):
    """Training loop, loss, failure handling and logging shared by :class:`Shield` and the baselines.

    Subclasses define the trainable tensors (:meth:`parameters`), the training-forward context
    (:meth:`_active`), the context under which the model is the original (:meth:`_reference`) and
    :meth:`_reset` (put the original weights back).
    """

    name = "trainer"

    def __init__(self, model, *, lr: float, retention: float = 1.0, retention_mode: str = "kl",
                 weight_decay: float = 0.0, optimizer: str | Callable = "adamw", autocast: bool | torch.dtype = False,
                 max_grad_norm: float | None = None, explode_factor: float = 1e3, max_new_tokens: int = 32,
                 max_length: int | None = None, fast_prefix: bool = True, cache: dict | None = None):
        check_trainable(model)
        if retention_mode not in RETENTION_MODES:
            raise PsInterpError(f"unknown retention_mode {retention_mode!r}", fix=f"use one of {RETENTION_MODES}")
        for label, value in (("lr", lr), ("retention", retention), ("weight_decay", weight_decay)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PsInterpError(f"{label} must be a finite number >= 0, got {value!r}")
        if not callable(optimizer) and optimizer not in OPTIMIZERS:
            raise PsInterpError(f"unknown optimizer {optimizer!r}",
                                fix=f"use one of {OPTIMIZERS} or a callable params -> torch.optim.Optimizer")
        self.model = model
        self.lr, self.retention, self.retention_mode = float(lr), float(retention), retention_mode
        self.weight_decay, self.optimizer_name = float(weight_decay), optimizer
        self.autocast = autocast
        self.max_grad_norm, self.explode_factor = max_grad_norm, float(explode_factor)
        self.max_new_tokens, self.max_length = max_new_tokens, max_length
        self._optimizer = None
        self._initial_loss: float | None = None
        self._steps = 0
        self._rows: list[dict] = []
        # the original model's greedy answers and frozen-prefix streams: trainers of the same original model
        # may share them through one ``cache`` dict (ps_interp.transfer does)
        self._shared = cache
        self._answers: dict[tuple, list[list[int]]] = {} if cache is None else cache.setdefault("answers", {})
        self._reference_store: dict = {} if cache is None else cache.setdefault("reference", {})
        self.fast_prefix, self._prefix = bool(fast_prefix), None
        self.total_params = count_parameters(model.hf)  # before any adapter is added

    # -- to define in subclasses --
    @abc.abstractmethod
    def parameters(self) -> list[torch.Tensor]:
        """The tensors this trainer updates."""

    @abc.abstractmethod
    def _active(self):
        """Context for the training forwards (gradient masks or adapters on)."""

    @abc.abstractmethod
    def _reference(self):
        """Context under which the model computes as the original one."""

    @abc.abstractmethod
    def _reset(self) -> None:
        """Put the original weights back."""

    # -- common --
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer (built on first use, over :meth:`parameters` only)."""
        if self._optimizer is None:
            self._optimizer = _make_optimizer(self.parameters(), self.optimizer_name, self.lr, self.weight_decay)
        return self._optimizer

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters over all parameters of the model."""
        return self.trainable_params / self.total_params

    @property
    def log(self):
        """Loss log of every step so far (a pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame(self._rows, columns=["step", "loss", "refusal_loss", "retention_loss",
                                                 "grad_norm", "seconds"])

    def optimizer_state_bytes(self) -> int:
        """Bytes held by the optimizer's state tensors (0 before the first step)."""
        if self._optimizer is None:
            return 0
        return sum(v.numel() * v.element_size() for state in self._optimizer.state.values()
                   for v in state.values() if torch.is_tensor(v))

    def restore(self) -> None:
        """Put the original weights back exactly and forget the optimizer state."""
        self._reset()
        self._optimizer = None
        self._initial_loss = None

    def _autocast(self):
        from .precision import autocast_context

        return autocast_context(self.model.device, self.autocast)

    def _fail(self, what: str) -> None:
        self.restore()
        raise PsInterpError(f"{self.name}: {what} at step {self._steps + 1}; training stopped and the "
                            "original weights were restored",
                            fix=f"lower lr (now {self.lr:g}), set max_grad_norm, or check the data")

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimizer step on ``{"refusal": collated, "retain": collated or None}``.

        Returns ``dict(loss, refusal_loss, retention_loss, grad_norm)``. A non-finite or exploding
        loss (over ``explode_factor`` times the first one) restores the original weights and raises.
        """
        _check_grad_mode()
        hf = self.model.hf
        retain = batch.get("retain")

        def logits_of(name: str):
            return self._target_logits(batch[name], batch.get("keys", {}).get(name))

        reference = None
        if retain is not None and self.retention and self.retention_mode == "kl":
            reference = self._reference_logits(retain, batch.get("keys", {}).get("retain"), logits_of)
        failure = None
        with torch.enable_grad(), self._active():
            with self._autocast():
                losses = batch_losses(hf, batch, retention=self.retention, mode=self.retention_mode,
                                      reference=reference, logits_of=logits_of)
            value = float(losses["loss"].detach())
            limit = self.explode_factor * max(self._initial_loss or 0.0, 1.0)
            if not math.isfinite(value):
                failure = f"the loss is {value}"
            elif self._initial_loss is not None and value > limit:
                failure = f"the loss exploded ({value:.4g} > {limit:.4g})"
            else:
                params = self.parameters()
                self.optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                grads = [p.grad for p in params if p.grad is not None]
                norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
                if not math.isfinite(norm):
                    failure = f"the gradient norm is {norm}"
                else:
                    if self.max_grad_norm is not None:
                        torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, torch.tensor(norm))
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        if failure is not None:
            self._fail(failure)
        if self._initial_loss is None:
            self._initial_loss = value
        self._steps += 1
        return dict(loss=value, refusal_loss=float(losses["refusal_loss"].detach()),
                    retention_loss=float(losses["retention_loss"].detach()), grad_norm=norm)

    # -- the frozen prefix --
    def first_trained_layer(self) -> int:
        """Layers below this one never change (0: the whole model trains); subclasses narrow it."""
        return 0

    @property
    def prefix(self):
        """The :class:`~ps_interp.prefix.FrozenPrefix` cache of this trainer, or None (``fast_prefix=False``
        or nothing to skip)."""
        if self._prefix is None and self.fast_prefix and self.first_trained_layer() > 0:
            from .prefix import FrozenPrefix

            start = self.first_trained_layer()
            shared = None if self._shared is None else self._shared.setdefault(("prefix", start), {})
            self._prefix = FrozenPrefix(self.model, start, cache=shared)
        return self._prefix

    def _target_logits(self, part: dict, keys) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.prefix
        if prefix is None or keys is None or not prefix.applies(part):
            return target_logits(self.model.hf, part)
        if prefix.enabled is None:  # checked once, with the weights of the moment (both passes alike)
            with torch.no_grad():
                if not prefix.verify(part, keys):
                    warnings.warn(f"{self.name}: frozen-prefix fast path off ({prefix.why_disabled}); "
                                  "training runs full forwards", stacklevel=3)
            if not prefix.enabled:
                return target_logits(self.model.hf, part)
        with prefix.tail():
            return target_logits(self.model.hf, prefix.inputs(part, keys))

    #: the original model's logits on the retention answers are fixed: kept per example up to this many bytes
    reference_cache_bytes = 1 << 30

    def _reference_logits(self, retain: dict, keys, logits_of) -> torch.Tensor:
        """The original model's :func:`target_logits` on ``retain``, from the per-example cache where possible."""
        store = self._reference_store
        if keys is not None and all(k in store for k in keys):
            return torch.cat([store[k] for k in keys])
        with torch.no_grad(), self._reference(), self._autocast():
            reference, _ = logits_of("retain")
        if keys is not None:
            labels = retain["labels"]
            counts = (labels[:, first_target_column(labels):] != IGNORE).sum(1).tolist()
            used = sum(t.numel() * t.element_size() for t in store.values())  # a few hundred entries at most
            if used + reference.numel() * reference.element_size() <= self.reference_cache_bytes:
                for k, rows in zip(keys, reference.split(counts)):
                    store.setdefault(k, rows.detach().clone())
        return reference

    # -- data --
    def retain_answers(self, data: TrainingData) -> list[list[int]]:
        """The original model's greedy answers to ``data.benign`` (generated once, then cached)."""
        key = (tuple((i.id, i.lang, i.modality, i.text) for i in data.benign), self.max_new_tokens)
        if key not in self._answers:
            with self._reference():
                self._answers[key] = greedy_answers(self.model, list(data.benign),
                                                    max_new_tokens=self.max_new_tokens)
        return self._answers[key]

    def batches(self, data: TrainingData, *, steps: int, batch_size: int, seed: int = 0) -> Iterator[dict]:
        """The batches :meth:`fit` trains on (deterministic in ``seed``)."""
        if not isinstance(data, TrainingData):
            raise PsInterpError(f"fit needs TrainingData, got {type(data).__name__}",
                                fix="build it with ps_interp.pairs.training_pairs(probes)")
        if self.retention and not data.benign:
            raise PsInterpError("retention > 0 but the training data has no benign prompts",
                                fix="include benign probes, or pass retention=0")
        targets = [target_ids(self.model, t) for t in data.refusals]
        answers = self.retain_answers(data) if self.retention else None
        for plan in sample_batches(data, steps=steps, batch_size=batch_size, seed=seed):
            refusal = collate(self.model, [data.harmful[i] for i in plan["refusal"]],
                              [targets[i] for i in plan["refusal"]], max_length=self.max_length)
            keys = {"refusal": [_key("refusal", data.harmful[i], targets[i]) for i in plan["refusal"]]}
            retain = None
            if answers is not None:
                retain = collate(self.model, [data.benign[i] for i in plan["retain"]],
                                 [answers[i] for i in plan["retain"]], max_length=self.max_length)
                keys["retain"] = [_key("retain", data.benign[i], answers[i]) for i in plan["retain"]]
            yield dict(refusal=refusal, retain=retain, keys=keys)

    def fit(self, data: TrainingData, *, steps: int = 100, batch_size: int = 8, seed: int = 0,
            progress: bool = True):
        """Train for ``steps`` steps; returns the loss log of these steps (pandas DataFrame).

        Interrupting (Ctrl-C) stops after the current step with a warning and keeps the weights and
        optimizer state, so calling ``fit`` again continues.
        """
        import pandas as pd
        from tqdm.auto import tqdm

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise PsInterpError(f"steps must be a positive int, got {steps!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PsInterpError(f"batch_size must be a positive int, got {batch_size!r}")
        check_trainable(self.model)
        start = len(self._rows)
        bar = tqdm(total=steps, desc=self.name, disable=not progress, leave=False)
        try:
            for batch in self.batches(data, steps=steps, batch_size=batch_size, seed=seed):
                t0 = time.perf_counter()
                out = self.step(batch)
                self._rows.append(dict(step=self._steps, **out, seconds=time.perf_counter() - t0))
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}")
        except KeyboardInterrupt:
            warnings.warn(f"{self.name}: interrupted after {len(self._rows) - start} of {steps} steps; "
                          "call fit again to continue", stacklevel=2)
        finally:
            bar.close()
        return pd.DataFrame(self._rows[start:], columns=self.log.columns)


# ---- Shield -------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Slice:
    """The selected slice of one neuron parameter of one layer."""

    name: str
    layer: int
    module: torch.nn.Module
    param: torch.nn.Parameter
    axis: int
    index: torch.Tensor
    role: str  # "out": adds to the module's output features; "in": reads its input features
    conv: bool  # GPT-2 Conv1D (weight stored [in, out])
    original: torch.Tensor
    value: torch.nn.Parameter

    def contribution(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        v = self.value.to(x.dtype)
        if self.param.dim() == 1:  # bias of the output features
            return out.index_add(-1, self.index, v.expand(*out.shape[:-1], v.shape[0]))
        if self.role == "out":  # Linear: v [k, in]; Conv1D: v [in, k]
            return out.index_add(-1, self.index, x @ (v if self.conv else v.T))
        xs = x.index_select(-1, self.index)  # Linear: v [out, k]; Conv1D: v [k, out]
        return out + xs @ (v if self.conv else v.T)


def _role(module: torch.nn.Module, pname: str, axis: int) -> tuple[str, bool]:
    if pname == "bias":
        return "out", False
    if isinstance(module, torch.nn.Linear):
        return ("out" if axis == 0 else "in"), False
    if type(module).__name__ == "Conv1D":
        return ("out" if axis == 1 else "in"), True
    raise PsInterpError(f"cannot train neurons of a {type(module).__name__} layer",
                        fix="neuron parameters must live in nn.Linear or transformers Conv1D modules")


class Shield(Trainer):
    """Fine-tune only the parameters of ``neurons`` of ``model``, in place (see the module docstring).

    Example:
        >>> from ps_interp.models import tiny
        >>> from ps_interp.neurons import NeuronSet
        >>> m = tiny.build("llama")
        >>> shield = Shield(m, NeuronSet({0: [3, 7]}, m.identity))
        >>> shield.trainable_params  # 2 neurons x (gate row + up row + down column)
        384
    """

    name = "shield"

    def __init__(self, model, neurons: NeuronSet, *, lr: float = 1e-3, retention: float = 1.0,
                 weight_decay: float = 0.0, optimizer: str | Callable = "adamw", autocast: bool | torch.dtype = False,
                 retention_mode: str = "kl", max_grad_norm: float | None = None, explode_factor: float = 1e3,
                 max_new_tokens: int = 32, max_length: int | None = None, fast_prefix: bool = True,
                 cache: dict | None = None):
        if not isinstance(neurons, NeuronSet):
            raise PsInterpError(f"Shield needs a NeuronSet, got {type(neurons).__name__}",
                                fix="identify neurons first (ps_interp.identify) or build a NeuronSet")
        if len(neurons) == 0:
            raise PsInterpError("the NeuronSet is empty: there is nothing to train",
                                fix="identify neurons with a larger rho, or check the identification groups")
        why = neurons.identity.mismatch(model.identity)
        if why is not None:
            raise PsInterpError(f"the NeuronSet belongs to another model: {why}",
                                fix="identify the neurons on this model (or relabel with .with_identity if "
                                    "the indices really correspond)")
        super().__init__(model, lr=lr, retention=retention, retention_mode=retention_mode,
                         weight_decay=weight_decay, optimizer=optimizer, autocast=autocast,
                         max_grad_norm=max_grad_norm, explode_factor=explode_factor,
                         max_new_tokens=max_new_tokens, max_length=max_length, fast_prefix=fast_prefix,
                         cache=cache)
        self.neurons = neurons
        self._slices = self._build_slices()

    def first_trained_layer(self) -> int:
        """The lowest layer holding a neuron: layers below it are the frozen prefix (computed once per example)."""
        return min(self.neurons.layers)

    def _build_slices(self) -> list[_Slice]:
        slices = []
        for layer in self.neurons.layers:
            mlp = self.model.mlp(layer)
            for (name, param, axis), (mod, pname, _) in zip(self.model.neuron_params(layer),
                                                            self.model.adapter.neuron_slices):
                module = getattr(mlp, mod)
                role, conv = _role(module, pname, axis)
                index = torch.tensor(self.neurons.indices(layer).tolist(), dtype=torch.long, device=param.device)
                original = param.detach().index_select(axis, index).clone()
                master = torch.float32 if param.dtype in _LOW_PRECISION else param.dtype
                value = torch.nn.Parameter(original.to(master).clone())
                slices.append(_Slice(name, layer, module, param, axis, index, role, conv, original, value))
        return slices

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable slices (one tensor per neuron parameter and layer)."""
        return [s.value for s in self._slices]

    @torch.no_grad()
    def _write(self, source: str) -> None:
        for s in self._slices:
            src = s.value if source == "value" else s.original
            s.param.index_copy_(s.axis, s.index, src.detach().to(s.param.dtype))

    @contextmanager
    def _active(self):
        hf = self.model.hf
        flags = [(p, p.requires_grad) for p in hf.parameters()]
        by_module: dict[int, list[_Slice]] = {}
        for s in self._slices:
            by_module.setdefault(id(s.module), []).append(s)

        def hook(module, args, out):
            for s in by_module[id(module)]:
                out = s.contribution(args[0], out)
            return out

        handles = []
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            with torch.no_grad():
                for s in self._slices:
                    s.param.index_fill_(s.axis, s.index, 0)
            handles = [ss[0].module.register_forward_hook(hook) for ss in by_module.values()]
            yield
        finally:
            for h in handles:
                h.remove()
            self._write("value")
            for p, flag in flags:
                p.requires_grad_(flag)

    @contextmanager
    def _reference(self):
        self._write("original")
        try:
            yield
        finally:
            self._write("value")

    def _reset(self) -> None:
        with torch.no_grad():
            for s in self._slices:
                s.value.copy_(s.original.to(s.value.dtype))
                s.value.grad = None
        self._write("original")

    # -- inspection and files --
    def changed_parameters(self):
        """One row per trained slice: name, layer, neurons, trainable entries, parameter size, entries
        changed from the original and the largest absolute change (pandas DataFrame)."""
        import pandas as pd

        rows = []
        for s in self._slices:
            current = s.param.detach().index_select(s.axis, s.index)
            diff = (current.to(s.original.dtype) - s.original).abs()
            rows.append(dict(name=s.name, layer=s.layer, axis=s.axis, neurons=int(s.index.numel()),
                             trainable=int(s.value.numel()), numel=int(s.param.numel()),
                             changed=int((current != s.original).sum()), max_abs_change=float(diff.max())))
        return pd.DataFrame(rows)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the aligned model as an HF checkpoint dir, plus ``neurons.json``, ``delta.safetensors``
        (the changed slices, see :mod:`ps_interp.delta`) and ``shield.json`` (settings and steps).

        The directory is built under a temporary name and renamed into place; an existing non-empty
        ``path`` needs ``overwrite=True``; the model's own source directory is never written.

        Example:
            >>> shield.save("runs/aligned")  # doctest: +SKIP
        """
        from .delta import save_delta

        def extras(tmp: Path) -> None:
            self.neurons.save(tmp / "neurons.json")
            values = {s.name: s.value.detach().to(s.param.dtype) for s in self._slices}
            save_delta(tmp / "delta.safetensors", self.model, self.neurons, values,
                       {s.name: s.original for s in self._slices})
            info = dict(steps=self._steps, lr=self.lr, retention=self.retention, retention_mode=self.retention_mode,
                        weight_decay=self.weight_decay, optimizer=str(self.optimizer_name),
                        trainable_params=self.trainable_params, trainable_fraction=self.trainable_fraction,
                        n_neurons=len(self.neurons), model=self.model.name)
            (tmp / "shield.json").write_text(json.dumps(info, indent=1))

        return save_checkpoint(self.model, path, overwrite=overwrite, extras=extras)

    def __repr__(self) -> str:
        return (f"Shield({len(self.neurons)} neurons in {len(self.neurons.layers)} layers of {self.model.name}, "
                f"{self.trainable_params:,} trainable parameters = {self.trainable_fraction:.4%}, "
                f"{self._steps} steps)")


# ---- checkpoints ----------------------------------------------------------------------------
def _source_dirs(model) -> list[Path]:
    out = []
    for cand in (getattr(model, "source", ""), getattr(model.hf, "name_or_path", ""),
                 getattr(model.hf.config, "_name_or_path", "")):
        if not cand:
            continue
        path = Path(cand)
        if path.is_file():
            path = path.parent
        if path.is_dir():
            out.append(path.resolve())
    return out


def _check_target(model, path: Path, overwrite: bool) -> None:
    target = path.resolve()
    for src in _source_dirs(model):
        if target == src or src.is_relative_to(target):
            raise PsInterpError(f"refusing to write over the model's source directory {src}",
                                fix="save to a new directory")
    if path.exists() and not path.is_dir():
        raise PsInterpError(f"{path} exists and is not a directory", fix="choose another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise PsInterpError(f"{path} exists and is not empty", fix="pass overwrite=True or choose another path")


@contextmanager
def _saveable(hf):
    """A dequantized GGUF model still carries its quantizer; hide it while saving (then put it back)."""
    config = hf.config
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    quantizer = getattr(hf, "hf_quantizer", None)
    is_gguf = str(method).lower().endswith("gguf") or type(quantizer).__name__.lower().startswith("gguf")
    if not is_gguf:
        yield
        return
    hf.hf_quantizer = None
    if qc is not None:
        del config.quantization_config
    try:
        yield
    finally:
        hf.hf_quantizer = quantizer
        if qc is not None:
            config.quantization_config = qc


def save_checkpoint(model, path: str | os.PathLike, *, overwrite: bool = False,
                    extras: Callable[[Path], None] | None = None) -> Path:
    """Save ``model`` (weights as safetensors, tokenizer/processor) to ``path`` atomically.

    ``extras(tmp_dir)`` may add files before the rename. Nothing is left behind on failure.
    """
    path = Path(path)
    _check_target(model, path, overwrite)
    with atomic_dir(path) as tmp:
        with _saveable(model.hf):
            model.hf.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        for part in (model.processor, getattr(model.processor, "image_processor", None)):
            if hasattr(part, "save_pretrained"):
                part.save_pretrained(tmp)
                break
        if extras is not None:
            extras(tmp)
    return path
