"""The safety-tuned default model organism: SmolLM2-135M-Instruct plus a small English-only safety LoRA.

SmolLM2-135M-Instruct answers almost every harmful request in every language, so it has no refusal
to find. ``smollm2-135m-safety-en`` is that model with a LoRA adapter (shipped in
``ps_interp/assets/smollm2-135m-safety-en/``, a few MB of safetensors) merged into its weights at
load. The adapter was trained by ``scripts/train_organism.py`` on the English-only ``organism`` split
of the built-in data (harmful -> English refusal, benign -> the base model's own answer); its
measured behaviour in all ten languages is in ``MODEL_CARD.md`` next to it. The base model stays
available as ``smollm2-135m-instruct``.

Adapter format (``FORMAT``): ``adapter.safetensors`` holds ``{module}.lora_A`` ``[r, in]`` and
``{module}.lora_B`` ``[out, r]`` for each adapted ``nn.Linear`` (``module`` is its dotted path in the
HF model); ``adapter.json`` holds ``rank``, ``alpha`` (the merge adds ``alpha / rank * B @ A`` to the
weight), the base model's name and architecture, the file's sha256 and how it was trained.

Example:
    >>> import ps_interp as ps
    >>> import ps_interp.models.organism  # registers the name
    >>> model = ps.load("smollm2-135m-safety-en")   # doctest: +SKIP
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from .._io import read_shipped_asset, write_shipped_asset
from ..errors import PsInterpError
from .loading import DEFAULT_MODEL, NAMED
from .model import Model, get_path

ORGANISM = "smollm2-135m-safety-en"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / ORGANISM
FORMAT = "ps_interp.lora"
VERSION = 1
WEIGHTS, META = "adapter.safetensors", "adapter.json"
TARGETS = ("mlp", "all")

Factors = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


def lora_targets(model: Model, which: str = "mlp") -> list[str]:
    """Dotted paths of the ``nn.Linear`` modules a LoRA adapts: the FFN's (``"mlp"``) or every linear layer
    of the decoder blocks (``"all"``).

    Example:
        >>> from ps_interp.models import tiny
        >>> lora_targets(tiny.build("llama"))[:2]
        ['model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj']
    """
    if which not in TARGETS:
        raise PsInterpError(f"unknown LoRA targets {which!r}", fix=f"use one of {TARGETS}")
    a = model.adapter
    paths = []
    for layer in range(model.n_layers):
        block = f"{a.layers}.{layer}"
        if which == "mlp":
            names = [f"{a.mlp}.{n}" for n in (a.gate, a.up, a.down) if n]
        else:
            names = [n for n, m in get_path(model.hf, block).named_modules() if isinstance(m, torch.nn.Linear)]
        for name in names:
            if not isinstance(get_path(model.hf, f"{block}.{name}"), torch.nn.Linear):
                raise PsInterpError(f"{model.architecture}: {block}.{name} is not an nn.Linear",
                                    fix="LoRA here supports nn.Linear layers only (not GPT-2's Conv1D)")
            paths.append(f"{block}.{name}")
    return paths


def init_factors(model: Model, paths: list[str], rank: int, *, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fresh float32 LoRA factors: ``A`` Kaiming-uniform, ``B`` zero (the adapter starts as a no-op).

    Example:
        >>> from ps_interp.models import tiny
        >>> m = tiny.build("llama")
        >>> A, B = init_factors(m, lora_targets(m)[:1], rank=4)["model.layers.0.mlp.gate_proj"]
        >>> tuple(A.shape), tuple(B.shape), float(B.abs().sum())
        ((4, 64), (128, 4), 0.0)
    """
    if not isinstance(rank, int) or rank < 1:
        raise PsInterpError(f"LoRA rank must be a positive int, got {rank!r}", fix="use e.g. rank=8")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for path in paths:
        w = get_path(model.hf, path).weight
        bound = 1.0 / w.shape[1] ** 0.5  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and peft
        A = (torch.rand(rank, w.shape[1], generator=gen) * 2 - 1) * bound
        out[path] = (A.to(w.device), torch.zeros(w.shape[0], rank, device=w.device))
    return out


@contextmanager
def lora_hooks(model: Model, factors: Factors, scale: float) -> Iterator[None]:
    """Add ``scale * x @ A.T @ B.T`` to each adapted layer's output (unmerged LoRA) while inside.

    Example:
        >>> with lora_hooks(model, factors, scale=2.0):   # doctest: +SKIP
        ...     loss = model.hf(**batch).loss
    """
    def hook(A, B):
        def add(module, args, out):
            x = args[0]
            return out + scale * torch.nn.functional.linear(torch.nn.functional.linear(x, A.to(x.dtype)), B.to(x.dtype))
        return add

    handles = [get_path(model.hf, path).register_forward_hook(hook(A, B)) for path, (A, B) in factors.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def save_adapter(directory: str | os.PathLike, factors: Factors, *, rank: int, alpha: float, base: str,
                 architecture: str, dtype: torch.dtype = torch.float16, extra: Mapping | None = None) -> Path:
    """Write ``adapter.safetensors`` then ``adapter.json`` (each atomically; the JSON holds the weights'
    sha256, so a half-updated pair is caught on load). Returns the directory.

    Example:
        >>> save_adapter("out/adapter", factors, rank=8, alpha=16, base="smollm2-135m-instruct",
        ...              architecture="LlamaForCausalLM")   # doctest: +SKIP
    """
    from safetensors.torch import save_file

    if not factors:
        raise PsInterpError("no LoRA factors to save", fix="train the adapter first")
    tensors = {}
    for path, (A, B) in factors.items():
        tensors[f"{path}.lora_A"] = A.detach().to("cpu", dtype).contiguous()
        tensors[f"{path}.lora_B"] = B.detach().to("cpu", dtype).contiguous()
    meta = {"format": FORMAT, "version": VERSION, "base": base, "architecture": architecture,
            "rank": int(rank), "alpha": float(alpha), "targets": sorted(factors), "dtype": str(dtype).split(".")[-1],
            **dict(extra or {})}
    d = write_shipped_asset(directory, WEIGHTS, META, tensors, meta)
    return d


def read_adapter(directory: str | os.PathLike = ASSET_DIR) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """``({module: (A, B)}, meta)`` from an adapter directory, after checking format and checksum.

    Example:
        >>> factors, meta = read_adapter()   # doctest: +SKIP
        >>> meta["base"]                     # doctest: +SKIP
        'smollm2-135m-instruct'
    """
    d = Path(directory)
    tensors, meta = read_shipped_asset(d, WEIGHTS, META, fmt=FORMAT, version=VERSION, what="adapter",
                                       rebuild="rebuild the adapter with scripts/train_organism.py")
    factors = {}
    for key in tensors:
        if key.endswith(".lora_A"):
            path = key[: -len(".lora_A")]
            if f"{path}.lora_B" not in tensors:
                raise PsInterpError(f"{d / WEIGHTS}: {path} has lora_A but no lora_B", fix="rebuild the adapter")
            factors[path] = (tensors[key], tensors[f"{path}.lora_B"])
    if len(factors) * 2 != len(tensors):
        raise PsInterpError(f"{d / WEIGHTS}: unpaired LoRA tensors", fix="rebuild the adapter")
    return factors, meta


def merge_adapter(model: Model, directory: str | os.PathLike = ASSET_DIR) -> dict:
    """Add ``alpha / rank * B @ A`` to each adapted weight of ``model`` in place; returns the adapter's meta.

    Example:
        >>> base = ps.load("smollm2-135m-instruct")   # doctest: +SKIP
        >>> merge_adapter(base)["rank"]              # doctest: +SKIP
        8
    """
    factors, meta = read_adapter(directory)
    if meta.get("architecture") != model.architecture:
        raise PsInterpError(f"the adapter in {directory} is for {meta.get('architecture')}, not {model.architecture}",
                            fix=f"merge it into {meta.get('base')!r}")
    scale = float(meta["alpha"]) / int(meta["rank"])
    updates = []
    for path, (A, B) in factors.items():
        try:
            module = get_path(model.hf, path)
        except (AttributeError, IndexError):
            module = None
        w = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or tuple(w.shape) != (B.shape[0], A.shape[1]):
            raise PsInterpError(f"the adapter does not fit {model.name}: no linear layer {path} of shape "
                                f"{(B.shape[0], A.shape[1])}", fix=f"merge it into {meta.get('base')!r}")
        updates.append((w, A, B))
    with torch.no_grad():  # check everything first, then write: never a half-merged model
        for w, A, B in updates:
            delta = scale * (B.float() @ A.float())
            w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
    return meta


def load_organism(*, dtype=None, device_map=None, directory: str | os.PathLike = ASSET_DIR, **kwargs) -> Model:
    """SmolLM2-135M-Instruct with the shipped English safety adapter merged (``ps.load(ORGANISM)``).

    Example:
        >>> model = load_organism()   # doctest: +SKIP
        >>> model.name
        'smollm2-135m-safety-en'
    """
    model = NAMED[DEFAULT_MODEL](dtype=dtype, device_map=device_map, **kwargs)
    meta = merge_adapter(model, directory)
    model.name = ORGANISM
    model.source = f"{model.source} + {Path(directory) / WEIGHTS} (sha256 {meta['sha256'][:12]})"
    return model


NAMED[ORGANISM] = load_organism
