"""``record(..., backend="lens")``: the FFN site read through a TransformerLens 4.x ``TransformerBridge``.

The bridge is built once per model (cached on it as ``model._lens_bridge``) around a structural
copy of ``model.hf``: the bridge rewrites the modules it wraps in place, so it gets its own module
tree and config, while the copy *shares the parameter tensors* with the user's model (no second
set of weights, and in-place updates such as :func:`ps_interp.align` are seen by the bridge). The
user's model is never modified. The site is ``blocks.{l}.mlp.hook_post`` (in TL 4.x an alias of
``blocks.{l}.mlp.out.hook_in``, the input of ``down_proj``); it is reduced inside the hook and the
forward stops right after the last recorded layer.

TransformerLens may ``pip install torchvision`` at run time for multimodal processors; that is
refused (see :func:`no_runtime_installs`).

Example:
    >>> from ps_interp.models import tiny
    >>> model = tiny.build("llama")
    >>> bridge = lens_bridge(model)                  # booted once, then cached
    >>> bridge is lens_bridge(model)
    True
"""
from __future__ import annotations

import contextlib
import copy
import os
import subprocess
from collections.abc import Callable, Iterator

import torch

from ..errors import PsInterpError, require
from ..record import reduce_site

SITE_HOOK = "blocks.{layer}.mlp.hook_post"
_HELPERS = "transformer_lens.model_bridge.sources.transformers.helpers"
_TORCHVISION_FIX = ("use backend='nnsight' (or 'hooks'); or install a torchvision build that matches your "
                    "torch yourself before using backend='lens'")


class _Stop(Exception):
    """Raised by the last site hook: nothing after the last recorded layer runs."""


# ---- the no-pip guard -------------------------------------------------------------------------
def _is_install(args) -> bool:
    words = args.split() if isinstance(args, (str, bytes)) else [str(a) for a in args]
    words = [os.path.basename(w.decode() if isinstance(w, bytes) else w) for w in words]
    return "install" in words and any(w.startswith("pip") or w in ("uv", "conda", "mamba") for w in words)


class _NoInstallPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        if _is_install(args):
            raise PsInterpError(f"TransformerLens tried to run {args!r} while building its bridge",
                                fix="use backend='nnsight' (or 'hooks'); ps_interp never installs packages at run time")
        super().__init__(args, *rest, **kwargs)


def _refuse_torchvision_install() -> bool:
    """Replacement of TransformerLens' ``_ensure_torchvision``: import it, never install it."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        raise PsInterpError("TransformerLens wants to install torchvision (pip install torchvision) to build a "
                            "multimodal processor; that would pull a multi-GB torch build into this environment",
                            fix=_TORCHVISION_FIX) from None
    return True


@contextlib.contextmanager
def no_runtime_installs() -> Iterator[None]:
    """Within the block TransformerLens cannot pip-install anything (it raises :class:`PsInterpError`).

    Patches TransformerLens' ``_ensure_torchvision`` (which runs ``pip install torchvision``) and,
    as a backstop, ``subprocess.Popen`` for any ``pip``/``uv`` ``install`` command.

    Example:
        >>> with no_runtime_installs():
        ...     pass
    """
    import importlib

    helpers = importlib.import_module(_HELPERS)
    saved = (helpers._ensure_torchvision, subprocess.Popen)
    helpers._ensure_torchvision = _refuse_torchvision_install
    subprocess.Popen = _NoInstallPopen
    try:
        yield
    finally:
        helpers._ensure_torchvision, subprocess.Popen = saved


# ---- booting ------------------------------------------------------------------------------------
def _shared_copy(hf: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``hf`` (modules, config, buffers) whose parameters *are* ``hf``'s parameters."""
    memo = {id(p): p for _, p in hf.named_parameters(remove_duplicate=False)}
    return copy.deepcopy(hf, memo)


def _cache_key(model) -> tuple:
    return tuple((id(p), p.dtype, p.device) for p in model.hf.parameters())


def _unsupported(model, why: str) -> PsInterpError:
    import importlib.metadata as md

    version = md.version("transformer-lens")
    return PsInterpError(f"TransformerLens {version} cannot wrap {model.architecture} in a TransformerBridge "
                         f"({why})", fix="use backend='nnsight' (the default) or backend='hooks'")


def _boot(model):
    require("transformer_lens", "record(backend='lens')", package="transformer-lens", extra="lens")
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    if not model.architecture:
        raise _unsupported(model, "the HF config names no architecture")
    hf = _shared_copy(model.hf)
    try:
        with no_runtime_installs():
            bridge = build_bridge_from_module(hf, model.architecture, hf_config=hf.config, model_name=model.name)
    except PsInterpError:
        raise
    except Exception as exc:  # unsupported architecture, missing optional library, adapter mismatch
        raise _unsupported(model, f"{type(exc).__name__}: {exc}") from None
    bridge.eval()
    _check_bridge(model, bridge)
    return bridge


def _shares_weights(model, bridge) -> bool:
    """Whether every bridge parameter is one of the model's (GPT-2's bridge splits ``c_attn`` into new q/k/v)."""
    own = {id(p) for p in model.hf.parameters()}
    return all(id(p) in own for p in bridge.original_model.parameters())


def _check_bridge(model, bridge) -> None:
    """The bridge has a block and a site hook per layer, and its site equals ``down_proj``'s input."""
    blocks = getattr(bridge, "blocks", None)
    if blocks is None or len(blocks) != model.n_layers:
        raise _unsupported(model, f"its bridge has {0 if blocks is None else len(blocks)} blocks, "
                                  f"the model {model.n_layers} layers")
    for layer in range(model.n_layers):
        if bridge.get_hook_point(SITE_HOOK.format(layer=layer)) is None:
            raise _unsupported(model, f"no hook {SITE_HOOK.format(layer=layer)}")
    ids = torch.tensor([[1, 2, 3, 4]], device=model.device) % int(model.text_config.vocab_size)
    want = _reference_site(model, ids)
    with torch.no_grad():
        got = _run(bridge, {"input_ids": ids}, [0], lambda layer, h: h.detach().clone())[0]
    if got.shape != want.shape or not torch.allclose(got.float(), want.float(), rtol=1e-2,
                                                     atol=1e-4 + 1e-2 * want.abs().max().item()):
        raise _unsupported(model, f"{SITE_HOOK.format(layer=0)} is not the input of down_proj")


def _reference_site(model, ids: torch.Tensor) -> torch.Tensor:
    seen = {}

    def hook(module, args):
        seen["h"] = args[0].detach().clone()
        raise _Stop

    handle, was_training = model.site_module(0).register_forward_pre_hook(hook), model.hf.training
    model.hf.eval()
    try:
        with torch.no_grad():
            model.hf(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
        model.hf.train(was_training)
    return seen["h"]


def lens_bridge(model):
    """The ``TransformerBridge`` of ``model``, cached on it as ``model._lens_bridge``.

    The cached bridge shares the model's parameters, so in-place updates reach it; it is rebuilt
    when a parameter is replaced, moved or cast. A bridge that had to re-create some parameters
    (GPT-2's split q/k/v) could go stale, so it is not cached: each call builds a fresh one.
    Raises :class:`PsInterpError` for an architecture TransformerLens cannot wrap, or while hooks are
    attached to ``model.hf`` (the bridge runs a copy and would not see them).
    """
    _refuse_active_hooks(model)
    key = _cache_key(model)
    cached = getattr(model, "_lens_bridge", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    bridge = _boot(model)
    model._lens_bridge = (key, bridge) if _shares_weights(model, bridge) else None
    return bridge


# ---- running ------------------------------------------------------------------------------------
def _run(bridge, batch: dict, layers: list[int], reduce: Callable[[int, torch.Tensor], torch.Tensor]) -> list:
    """One bridge forward; ``reduce(layer, h)`` runs inside each site hook, then the forward stops."""
    out, last = {}, layers[-1]

    def make(layer: int):
        def hook_fn(tensor: torch.Tensor, hook) -> None:
            out[layer] = reduce(layer, tensor)
            if layer == last:
                raise _Stop

        return hook_fn

    kwargs = {k: v for k, v in batch.items() if k != "input_ids"}
    hooks = [(SITE_HOOK.format(layer=layer), make(layer)) for layer in layers]
    try:
        bridge.run_with_hooks(batch["input_ids"], fwd_hooks=hooks, return_type=None, use_cache=False, **kwargs)
    except _Stop:
        pass
    return [out[layer] for layer in layers]


def _framework_hook(fn) -> bool:
    """Hooks that transformers / accelerate keep on a model (e.g. output capturing), copied with it."""
    module = getattr(getattr(fn, "func", fn), "__module__", "") or ""
    return module.split(".")[0] in ("transformers", "accelerate", "torch")


def _refuse_active_hooks(model) -> None:
    """The bridge runs a copy: hooks on the user's modules (e.g. an active ``ablate``) would be ignored."""
    hooked = [name for name, mod in model.hf.named_modules()
              if any(not _framework_hook(fn) for hooks in (mod._forward_hooks, mod._forward_pre_hooks)
                     for fn in hooks.values())]
    if hooked:
        raise PsInterpError(f"backend='lens' runs a copy of the model and would ignore the forward hooks on "
                            f"{len(hooked)} module(s) of model.hf (e.g. {hooked[0]}; an active ablate()?)",
                            fix="record with backend='nnsight' or 'hooks' while hooks are attached")


def lens_batch_fn(model) -> Callable:
    """A :mod:`ps_interp.record` backend that reads the FFN sites through ``model``'s TransformerBridge.

    Used by ``record(..., backend="lens")``; the bridge comes from :func:`lens_bridge`.

    Example:
        >>> from ps_interp.record import record
        >>> stats = record(model, probes, backend="lens")   # doctest: +SKIP
    """
    bridge = lens_bridge(model)

    def batch_fn(model, batch: dict, layers: list[int], weights, onehot, per_token: bool) -> list[torch.Tensor]:
        if bridge.training != model.hf.training:
            bridge.train(model.hf.training)
        return _run(bridge, batch, layers, lambda layer, h: reduce_site(h, weights, onehot, per_token))

    return batch_fn
