"""Baselines for Shield on the same data and steps: LoRA, full fine-tuning, random and whole-layer neurons.

Each function trains ``model`` in place with the loss, batches and failure handling of
:class:`ps_interp.align.Shield` and returns a :class:`BaselineResult` (trainable parameters as a
count and a fraction, the loss log, and ``restore()`` to get the original model back exactly).

Example:
    >>> from ps_interp.baselines import lora_baseline
    >>> result = lora_baseline(model, data, rank=8, steps=50)   # doctest: +SKIP
    >>> result.trainable_percent                                 # doctest: +SKIP
    1.1
    >>> result.restore()                                         # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any

import torch

from .align import Shield, Trainer
from .errors import PsInterpError
from .neurons import NeuronSet
from .pairs import TrainingData

LORA_TARGETS = ("mlp", "all")
_ADAPTER = "ps_interp"


@dataclasses.dataclass
class BaselineResult:
    """What one baseline run did: method, trainable parameters, loss log, and the trainer.

    Example:
        >>> result.summary()  # doctest: +SKIP
        {'method': 'lora', 'trainable_params': 1474560, 'trainable_percent': 1.096, ...}
    """

    method: str
    trainable_params: int
    total_params: int
    log: Any  # pandas DataFrame
    trainer: Trainer
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_fraction

    def restore(self) -> None:
        """Give the model its original weights (and modules) back."""
        self.trainer.restore()

    def summary(self) -> dict[str, Any]:
        final = self.log.iloc[-1] if len(self.log) else {}
        return dict(method=self.method, trainable_params=self.trainable_params,
                    trainable_percent=self.trainable_percent, steps=len(self.log),
                    final_loss=float(final["loss"]) if len(self.log) else float("nan"), **self.settings)


def _run(method: str, trainer: Trainer, data: TrainingData, steps: int, batch_size: int, seed: int,
         progress: bool, settings: dict) -> BaselineResult:
    log = trainer.fit(data, steps=steps, batch_size=batch_size, seed=seed, progress=progress)
    return BaselineResult(method, trainer.trainable_params, trainer.total_params, log, trainer, settings)


# ---- full fine-tuning ----------------------------------------------------------------------
class FullFinetune(Trainer):
    """Every parameter trainable (embeddings included). Keeps a copy of the weights for restore()
    and for the KL reference (the original tensors are swapped in, no second model is built)."""

    name = "full-ft"

    def __init__(self, model, *, lr: float = 1e-5, **kwargs):
        super().__init__(model, lr=lr, **kwargs)
        self._params = list(model.hf.parameters())
        self._originals = [p.detach().clone() for p in self._params]

    def parameters(self) -> list[torch.nn.Parameter]:
        return self._params

    @contextmanager
    def _active(self):
        flags = [p.requires_grad for p in self._params]
        for p in self._params:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p, flag in zip(self._params, flags):
                p.requires_grad_(flag)

    @contextmanager
    def _reference(self):
        current = [p.data for p in self._params]
        for p, original in zip(self._params, self._originals):
            p.data = original
        try:
            yield
        finally:
            for p, data in zip(self._params, current):
                p.data = data

    @torch.no_grad()
    def _reset(self) -> None:
        for p, original in zip(self._params, self._originals):
            p.copy_(original)
            p.grad = None


def full_finetune(model, data: TrainingData, *, steps: int = 100, batch_size: int = 8, seed: int = 0,
                  lr: float = 1e-5, progress: bool = True, **trainer_kw) -> BaselineResult:
    """Fine-tune all parameters of ``model`` on ``data`` (in place).

    Example:
        >>> result = full_finetune(model, data, steps=10)  # doctest: +SKIP
    """
    return _run("full-ft", FullFinetune(model, lr=lr, **trainer_kw), data, steps, batch_size, seed, progress,
                dict(lr=lr))


# ---- LoRA ------------------------------------------------------------------------------------
def lora_target_modules(model, target: str = "mlp") -> list[str]:
    """Qualified names of the Linear / Conv1D modules LoRA wraps: the FFNs of the decoder layers
    (``"mlp"``) or every linear layer of the decoder layers, attention included (``"all"``).

    Example:
        >>> from ps_interp.models import tiny
        >>> lora_target_modules(tiny.build("llama"))[:2]
        ['model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj']
    """
    if target not in LORA_TARGETS:
        raise PsInterpError(f"unknown LoRA target {target!r}", fix=f"use one of {LORA_TARGETS}")
    names = []
    for layer in range(model.n_layers):
        prefix = f"{model.adapter.layers}.{layer}"
        root = model.layers[layer] if target == "all" else model.mlp(layer)
        if target == "mlp":
            prefix = f"{prefix}.{model.adapter.mlp}"
        for name, module in root.named_modules():
            if name and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"):
                names.append(f"{prefix}.{name}")
    return names


class LoraTrainer(Trainer):
    """LoRA adapters (peft) injected into ``model.hf`` in place.

    ``merge=True``: :meth:`finish` merges the adapters into the weights and removes the LoRA modules
    (originals of the wrapped weights are kept for :meth:`restore`). ``merge=False``: the adapters
    stay injected and active until :meth:`restore` removes them.
    """

    name = "lora"

    def __init__(self, model, *, rank: int = 8, alpha: float | None = None, target: str = "mlp",
                 dropout: float = 0.0, merge: bool = True, lr: float = 1e-4, **kwargs):
        from peft import LoraConfig, inject_adapter_in_model

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise PsInterpError(f"LoRA rank must be a positive int, got {rank!r}")
        super().__init__(model, lr=lr, **kwargs)
        hf = model.hf
        self.merge, self.rank, self.target = merge, rank, target
        self._targets = lora_target_modules(model, target)
        self._flags = {name: p.requires_grad for name, p in hf.named_parameters()}
        self._originals = {name: hf.get_submodule(name).weight.detach().clone() for name in self._targets}
        self._originals.update({f"{name}.bias": hf.get_submodule(name).bias.detach().clone()
                                for name in self._targets if hf.get_submodule(name).bias is not None})
        conv = type(hf.get_submodule(self._targets[0])).__name__ == "Conv1D"
        config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                            target_modules=self._targets, bias="none", fan_in_fan_out=conv)
        had_config = hasattr(hf, "peft_config")
        inject_adapter_in_model(config, hf, adapter_name=_ADAPTER)
        self._drop_peft_config = not had_config
        self._params = [p for name, p in hf.named_parameters() if "lora_" in name]
        self._state = "injected"

    def _lora_layers(self) -> list[tuple[str, torch.nn.Module]]:
        from peft.tuners.lora import LoraLayer

        return [(n, m) for n, m in self.model.hf.named_modules() if isinstance(m, LoraLayer)]

    def parameters(self) -> list[torch.nn.Parameter]:
        return self._params

    @contextmanager
    def _active(self):
        if self._state != "injected":
            raise PsInterpError("the LoRA adapters were already merged or removed",
                                fix="start a new lora_baseline (or call restore() first)")
        hf = self.model.hf
        flags = [(p, p.requires_grad) for p in hf.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        for p in self._params:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    @contextmanager
    def _reference(self):
        layers = [m for _, m in self._lora_layers()]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)

    def _unwrap(self, merge: bool) -> None:
        hf = self.model.hf
        for name, module in self._lora_layers():
            if merge:
                module.merge(adapter_names=[_ADAPTER])
            parent, _, child = name.rpartition(".")
            setattr(hf.get_submodule(parent), child, module.get_base_layer())
        if self._drop_peft_config and hasattr(hf, "peft_config"):
            del hf.peft_config
        for name, p in hf.named_parameters():
            p.requires_grad_(self._flags.get(name, p.requires_grad))

    def finish(self) -> None:
        """After training: merge into the weights and drop the LoRA modules (``merge=True``), else nothing."""
        if self.merge and self._state == "injected":
            self._unwrap(merge=True)
            self._state = "merged"

    @torch.no_grad()
    def _reset(self) -> None:
        if self._state == "injected":
            self._unwrap(merge=False)
        hf = self.model.hf
        for name, original in self._originals.items():
            if name.endswith(".bias"):
                hf.get_submodule(name[:-5]).bias.copy_(original)
            else:
                hf.get_submodule(name).weight.copy_(original)
        self._state = "removed"


def lora_baseline(model, data: TrainingData, *, rank: int = 8, alpha: float | None = None, target: str = "mlp",
                  merge: bool = True, steps: int = 100, batch_size: int = 8, seed: int = 0, lr: float = 1e-4,
                  progress: bool = True, **trainer_kw) -> BaselineResult:
    """Train LoRA adapters (peft) of ``rank`` on the FFNs (``target="mlp"``) or every linear layer of the
    decoder (``"all"``). With ``merge=True`` they are merged into ``model`` afterwards (the model is a plain
    HF model again); ``restore()`` gives the original weights back either way.

    Example:
        >>> result = lora_baseline(model, data, rank=8, target="all", steps=10)  # doctest: +SKIP
    """
    trainer = LoraTrainer(model, rank=rank, alpha=alpha, target=target, merge=merge, lr=lr, **trainer_kw)
    try:
        result = _run("lora", trainer, data, steps, batch_size, seed, progress,
                      dict(rank=rank, target=target, lr=lr, merge=merge))
    except BaseException:
        trainer.restore()
        raise
    trainer.finish()
    return result


# ---- neuron baselines -----------------------------------------------------------------------
def _neuron_run(method: str, model, neurons: NeuronSet, data: TrainingData, steps: int, batch_size: int,
                seed: int, progress: bool, shield_kw: dict) -> BaselineResult:
    shield = Shield(model, neurons, **shield_kw)
    return _run(method, shield, data, steps, batch_size, seed, progress,
                dict(n_neurons=len(neurons), lr=shield.lr))


def random_neurons_baseline(model, neurons: NeuronSet, data: TrainingData, *, neuron_seed: int = 0,
                            steps: int = 100, batch_size: int = 8, seed: int = 0, progress: bool = True,
                            **shield_kw) -> BaselineResult:
    """Shield on random neurons with the same count per layer as ``neurons`` (``neurons.random_like``).

    Example:
        >>> result = random_neurons_baseline(model, safety, data, steps=50)  # doctest: +SKIP
        >>> result.trainer.neurons.per_layer().tolist() == safety.per_layer().tolist()  # doctest: +SKIP
        True
    """
    return _neuron_run("random-neurons", model, neurons.random_like(neuron_seed), data, steps, batch_size,
                       seed, progress, shield_kw)


def layer_neurons(neurons: NeuronSet) -> NeuronSet:
    """Every neuron of the layers that hold at least one neuron of ``neurons``.

    Example:
        >>> from ps_interp.neurons import ModelIdentity
        >>> ident = ModelIdentity("LlamaForCausalLM", n_layers=2, d_ff=4, d_model=2)
        >>> layer_neurons(NeuronSet({1: [0]}, ident)).per_layer().tolist()
        [0, 4]
    """
    d_ff = neurons.identity.d_ff
    return NeuronSet({layer: range(d_ff) for layer in neurons.layers}, neurons.identity,
                     meta={"layer_neurons_of": neurons.meta.get("name", "")})


def layer_neurons_baseline(model, neurons: NeuronSet, data: TrainingData, *, steps: int = 100,
                           batch_size: int = 8, seed: int = 0, progress: bool = True,
                           **shield_kw) -> BaselineResult:
    """Shield on all neurons of the layers that hold ``neurons`` (the whole FFN of those layers)."""
    return _neuron_run("layer-neurons", model, layer_neurons(neurons), data, steps, batch_size, seed,
                       progress, shield_kw)
