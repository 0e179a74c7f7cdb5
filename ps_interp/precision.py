"""Mixed precision: one autocast switch for recording, generation, scoring and training.

``autocast`` everywhere accepts ``False`` (exact float32), ``True`` (bfloat16), a dtype, or ``"auto"``:
bfloat16 on a CUDA GPU that supports it, float32 on CPUs. On the project's 2-core Xeon (AVX512-BF16,
torch 2.13) bf16 autocast was *slower* than float32 for every stage of the main job: forward 0.62x,
generation 0.61x, Shield step 0.65x the float32 speed (``bench/precision.py``, idle machine, 1 and 2
threads), so ``"auto"`` keeps CPUs in float32; pass ``True`` to try bf16 on yours.

Example:
    >>> import torch
    >>> with autocast_context(torch.device("cpu"), False):
    ...     pass
    >>> resolve_autocast(False, torch.device("cpu"))
    False
"""
from __future__ import annotations

import contextlib

import torch

from .errors import PsInterpError


def native_bf16(device: torch.device) -> bool:
    """True where the CPU or GPU has bfloat16 instructions (not the same as bf16 being faster: see above)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def bf16_pays_off(device: torch.device) -> bool:
    """What ``autocast="auto"`` picks: bf16 on a bf16-capable GPU, float32 on CPUs (measured slower here)."""
    return device.type == "cuda" and native_bf16(device)


def resolve_autocast(autocast, device: torch.device):
    """``"auto"`` -> ``True`` or ``False`` for ``device``; other values are checked and returned."""
    if autocast == "auto":
        return bf16_pays_off(device)
    if isinstance(autocast, (bool, torch.dtype)) or autocast is None:
        return bool(autocast) if autocast is None else autocast
    raise PsInterpError(f"autocast = {autocast!r} is not allowed", fix='use False, True, "auto" or a torch dtype')


def autocast_context(device: torch.device, autocast):
    """A ``torch.autocast`` block for ``autocast`` (see the module doc), or a no-op one when it is off."""
    autocast = resolve_autocast(autocast, device)
    if not autocast:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if autocast is True else autocast
    return torch.autocast(device.type, dtype=dtype)
