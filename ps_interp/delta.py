"""Neuron deltas: the changed weight slices of an aligned model, as one small safetensors file.

For every layer the file holds the neuron indices and, for each neuron parameter (gate row, up row,
down column; GPT-2: ``c_fc`` column and bias, ``c_proj`` row), the *new* slice values and the
*original* ones. :func:`apply_delta` copies the new values into an original model (bit-exact, and it
checks first that the model holds the original values); :func:`revert_delta` puts the originals back.

Example:
    >>> from ps_interp.models import tiny
    >>> m = tiny.build("llama")
    >>> neurons = apply_delta(m, "runs/shield/delta.safetensors")  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import PsInterpError
from .neurons import ModelIdentity, NeuronSet

FORMAT = "ps_interp.delta"
VERSION = "1"


def _index_key(layer: int) -> str:
    return f"layers.{layer}.neurons"


def delta_tensors(model, neurons: NeuronSet, values: dict[str, torch.Tensor],
                  originals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a delta file: ``{param}.value``, ``{param}.original`` and ``layers.{l}.neurons``."""
    out: dict[str, torch.Tensor] = {}
    for layer in neurons.layers:
        out[_index_key(layer)] = torch.tensor(neurons.indices(layer).tolist(), dtype=torch.int64)
        for name, _param, _axis in model.neuron_params(layer):
            out[f"{name}.value"] = values[name].detach().cpu().contiguous()
            out[f"{name}.original"] = originals[name].detach().cpu().contiguous()
    return out


def save_delta(path: str | os.PathLike, model, neurons: NeuronSet, values: dict[str, torch.Tensor],
               originals: dict[str, torch.Tensor]) -> Path:
    """Write a delta file atomically (temp file + rename); returns the path.

    ``values`` / ``originals`` map each qualified parameter name of ``model.neuron_params(l)`` to its
    slice (``param.index_select(axis, neurons.indices(l))``) after / before training.
    """
    from safetensors.torch import save_file

    from .figio import atomic_write

    path = Path(path)
    tensors = delta_tensors(model, neurons, values, originals)
    axes = {name: axis for layer in neurons.layers for name, _p, axis in model.neuron_params(layer)}
    meta = {"format": FORMAT, "version": VERSION, "identity": json.dumps(neurons.identity.to_dict()),
            "axes": json.dumps(axes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def load_delta(path: str | os.PathLike) -> tuple[NeuronSet, dict[str, int], dict[str, torch.Tensor]]:
    """(neurons, {param name: neuron axis}, tensors) of a delta file."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "delta.safetensors"
    if not path.is_file():
        raise PsInterpError(f"no delta file at {path}", fix="pass the delta.safetensors written by Shield.save")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types on a bad header
        raise PsInterpError(f"{path} is not a safetensors file ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise PsInterpError(f"{path} is not a ps_interp delta file (version {VERSION})",
                            fix="write it with Shield.save or delta.save_delta")
    identity = ModelIdentity(**json.loads(meta["identity"]))
    layers = {int(k.split(".")[1]): v.tolist() for k, v in tensors.items() if k.endswith(".neurons")}
    return NeuronSet(layers, identity, meta={"delta": str(path)}), json.loads(meta["axes"]), tensors


def _slices(model, neurons: NeuronSet, axes: dict[str, int], tensors: dict[str, torch.Tensor]):
    why = neurons.identity.mismatch(model.identity)
    if why is not None:
        raise PsInterpError(f"the delta was made for another model: {why}",
                            fix="apply it to the model it was trained from")
    for layer in neurons.layers:
        for name, param, axis in model.neuron_params(layer):
            if name not in axes or axes[name] != axis:
                raise PsInterpError(f"the delta has no slice for {name} (axis {axis})",
                                    fix="apply it to a model of the architecture it was trained on")
            index = torch.tensor(neurons.indices(layer).tolist(), dtype=torch.long, device=param.device)
            yield name, param, axis, index, tensors[f"{name}.value"], tensors[f"{name}.original"]


def _holds(param: torch.Tensor, axis: int, index: torch.Tensor, expected: torch.Tensor) -> bool:
    current = param.detach().index_select(axis, index)
    expected = expected.to(device=current.device, dtype=current.dtype)
    return torch.equal(current, expected)


@torch.no_grad()
def _write(model, path, *, which: str, expect: str, check: bool) -> NeuronSet:
    neurons, axes, tensors = load_delta(path)
    plan = list(_slices(model, neurons, axes, tensors))
    if check:
        bad = [name for name, param, axis, index, value, original in plan
               if not _holds(param, axis, index, original if expect == "original" else value)]
        if bad:
            raise PsInterpError(f"the model does not hold the {'original' if expect == 'original' else 'aligned'} "
                                f"weights the delta expects ({len(bad)} slices differ, e.g. {bad[0]})",
                                fix="load the model the delta was made from (or pass check=False)")
    for name, param, axis, index, value, original in plan:
        src = value if which == "value" else original
        param.data.index_copy_(axis, index, src.to(device=param.device, dtype=param.dtype))
    return neurons


def apply_delta(model, path: str | os.PathLike, *, check: bool = True) -> NeuronSet:
    """Copy the aligned slices of a delta file into ``model`` (in place); returns the neurons.

    ``path`` is a directory written by ``Shield.save`` or its ``delta.safetensors``. With
    ``check=True`` the model must hold the original slice values (else nothing is written).

    Example:
        >>> neurons = apply_delta(model, "runs/shield")  # doctest: +SKIP
    """
    return _write(model, path, which="value", expect="original", check=check)


def revert_delta(model, path: str | os.PathLike, *, check: bool = True) -> NeuronSet:
    """Undo :func:`apply_delta`: copy the original slice values back into ``model``."""
    return _write(model, path, which="original", expect="value", check=check)
