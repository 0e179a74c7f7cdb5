"""`record`: stream FFN neuron statistics over a probe set, never caching activations.

The forward stops after the last recorded layer (no LM head), the reduction to per-group moments
happens inside the nnsight trace (so the same code runs remotely), and only [4, G, F] sums per
layer leave it.

Example:
    >>> import ps_interp as ps
    >>> from ps_interp.models import tiny
    >>> model = tiny.build("llama")
    >>> stats = ps.record(model, ps.probes(langs=["en"]).select(split="probe"))   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from .data.prompting import encode
from .errors import PsInterpError
from .stats import MOMENTS, ActivationStats

POSITIONS = ("last", "mean", "all", "image", "text")


def position_weights(batch: dict, position: str, image_token_id: int | None) -> torch.Tensor:
    """``[B, T]`` weights of the token positions a prompt contributes (rows sum to 1, or per-token 1 for ``all``)."""
    mask = batch["attention_mask"].bool()
    if position == "last":
        idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask).masked_fill(~mask, -1).amax(1)
        w = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
        return w.scatter_(1, idx[:, None], 1.0)
    if position in ("image", "text"):
        if image_token_id is None:
            raise PsInterpError(f"position={position!r} needs a vision-language model",
                                fix="use position='last', 'mean' or 'all' for text models")
        is_img = batch["input_ids"] == image_token_id
        mask = mask & (is_img if position == "image" else ~is_img)
    w = mask.double()
    if position != "all":
        w = w / w.sum(1, keepdim=True).clamp(min=1)
    return w


def reduce_site(h: torch.Tensor, weights: torch.Tensor, onehot: torch.Tensor, per_token: bool) -> torch.Tensor:
    """Per-group moments ``[4, G, F]`` (sum, sumsq, sumabs, npos) of site activations ``h [B, T, F]``.

    ``per_token=False``: each prompt is one sample, the weighted sum of its positions;
    ``per_token=True``: each selected token is a sample. ``weights`` and ``onehot`` move to
    ``h``'s device (layers may sit on different GPUs, or on a remote server).
    """
    one_position = not per_token and bool((weights.count_nonzero(1) <= 1).all())  # decided where weights live
    weights, onehot = weights.to(h.device), onehot.to(h.device)
    if per_token:
        x = h.double()
        gw = torch.einsum("bg,bt->gbt", onehot, weights)
        return torch.stack([torch.einsum("gbt,btf->gf", gw, v)
                            for v in (x, x * x, x.abs(), (x > 0).double())])
    if one_position:  # one position per prompt: gather instead of a weighted sum
        pos = weights.argmax(1)
        v = h[torch.arange(h.shape[0], device=h.device), pos].double() * weights.sum(1, keepdim=True)
    else:
        v = torch.einsum("bt,btf->bf", weights, h.double())
    return torch.stack([onehot.T @ m for m in (v, v * v, v.abs(), (v > 0).double())])


def _sample_counts(weights: torch.Tensor, onehot: torch.Tensor, per_token: bool) -> torch.Tensor:
    per_prompt = weights.sum(1) if per_token else (weights.sum(1) > 0).double()
    return onehot.T @ per_prompt


def _trace_batch(model, batch: dict, layers: list[int], weights, onehot, per_token: bool) -> list[torch.Tensor]:
    """One nnsight trace: read each site in forward order, reduce inside, stop after the last layer.

    The body references only envoys, tensors and ``reduce_site`` (never ``model``), so it runs
    unchanged on a remote server (``model.trace_options``, see :mod:`ps_interp.remote`).
    """
    import nnsight

    sites = [model.site_envoy(layer) for layer in layers]
    with model.nn.trace(**batch, **getattr(model, "trace_options", {})) as tracer:
        out = nnsight.save([])
        for site in sites:
            out.append(reduce_site(site.input, weights, onehot, per_token))
        tracer.stop()
    return list(out)


class _Stop(Exception):
    """Raised by the last site hook: the rest of the forward (and the LM head) never runs."""


def run_to_sites(model, batch: dict, layers: list[int], fn) -> None:
    """Forward ``batch`` calling ``fn(layer, h)`` on each site input ``h [B, T, d_ff]``; stop after the last layer.

    Example:
        >>> run_to_sites(model, batch, [0, 3], lambda layer, h: print(layer, h.shape))  # doctest: +SKIP
    """
    last = max(layers)

    def make(layer):
        def hook(module, args):
            fn(layer, args[0])
            if layer == last:
                raise _Stop
        return hook

    handles = [model.site_module(layer).register_forward_pre_hook(make(layer)) for layer in layers]
    try:
        model.hf(**batch, use_cache=False)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()


def _hook_batch(model, batch: dict, layers: list[int], weights, onehot, per_token: bool) -> list[torch.Tensor]:
    """The same reduction with plain forward pre-hooks (backend='hooks'), stopping after the last layer."""
    out = {}
    run_to_sites(model, batch, layers, lambda layer, h: out.__setitem__(layer, reduce_site(h, weights, onehot,
                                                                                            per_token)))
    return [out[layer] for layer in layers]


BACKENDS = {"nnsight": _trace_batch, "hooks": _hook_batch}


def _batches(model, probes, batch_size: int) -> list[list[int]]:
    """Deterministic batches of similar length (less padding; padding never changes a result)."""
    # A remote model gets group-major batches: each request then returns the moments of ~1 group.
    by_group = getattr(model, "remote", False)
    keys = [(it.modality != "text", it.group if by_group else (), len(it.prompt_text()), i)
            for i, it in enumerate(probes)]
    order = [k[-1] for k in sorted(keys)]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _fingerprint(model, probes, position, layers, batch_size, system_prompt) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([dataclasses.asdict(model.identity), position, layers, batch_size, system_prompt]).encode())
    for it in probes:
        h.update(f"{it.id}|{it.lang}|{it.modality}|{it.label}|{it.prompt_text()}\n".encode())
    return h.hexdigest()[:16]


def record(model, probes, *, position: str = "last", layers: list[int] | None = None, batch_size: int = 16,
           backend: str | None = None, checkpoint: str | Path | None = None, checkpoint_every: float = 60.0,
           system_prompt: str | None = None, autocast: bool | torch.dtype = False,
           padding_side: str = "left", progress: bool = True) -> ActivationStats:
    """Record streaming per-neuron statistics of ``model`` on ``probes``.

    Args:
        position: ``last`` prompt token (default), ``mean`` over non-pad prompt tokens, ``all``
            tokens as samples, or for VLMs ``image`` / ``text`` token positions (mean per prompt).
        layers: which layers (default all); the forward stops after the last one.
        backend: ``nnsight`` (default), ``hooks`` (plain PyTorch hooks) or ``lens`` (TransformerLens).
        checkpoint: a folder; an interrupted run resumes there and ends with identical stats.
        autocast: ``True`` or a dtype runs the forward under CPU/GPU autocast (bfloat16 by default).

    Example:
        >>> stats = record(model, probes, position="mean", batch_size=8)   # doctest: +SKIP
        >>> stats.mean(lang="en", label="harmful").shape                     # doctest: +SKIP
        torch.Size([30, 1536])
    """
    if position not in POSITIONS:
        raise PsInterpError(f"unknown position {position!r}", fix=f"use one of {POSITIONS}")
    if len(probes) == 0:
        raise PsInterpError("no probes to record", fix="check the selection (e.g. probes.select(lang='en'))")
    if batch_size < 1:
        raise PsInterpError(f"batch_size must be >= 1, got {batch_size}", fix="pass batch_size=16")
    layers = list(range(model.n_layers)) if layers is None else sorted(set(int(x) for x in layers))
    if not layers or layers[0] < 0 or layers[-1] >= model.n_layers:
        raise PsInterpError(f"layers {layers} out of range", fix=f"use layers in 0..{model.n_layers - 1}")
    backend = backend or getattr(model, "backend", "nnsight")
    if backend != "nnsight" and getattr(model, "remote", False):
        from .remote import require_local

        require_local(model, "hooks")
    if backend == "lens":
        from .backends.lens import lens_batch_fn

        batch_fn = lens_batch_fn(model)
    elif backend in BACKENDS:
        batch_fn = BACKENDS[backend]
    else:
        raise PsInterpError(f"unknown backend {backend!r}", fix="use 'nnsight', 'hooks' or 'lens'")

    probes = list(probes)
    groups = sorted({it.group for it in probes})
    gindex = {g: i for i, g in enumerate(groups)}
    per_token = position == "all"
    meta = {"position": position, "model": model.name, "architecture": model.architecture,
            "identity": dataclasses.asdict(model.identity), "site": "blocks.{layer}.mlp.hook_post",
            "backend": backend, "batch_size": batch_size, "system_prompt": system_prompt,
            "n_prompts": {"/".join(g): sum(1 for it in probes if it.group == g) for g in groups}}
    stats = ActivationStats.empty(groups, layers, model.d_ff, meta)
    batches = _batches(model, probes, batch_size)
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    fp = _fingerprint(model, probes, position, layers, batch_size, system_prompt)
    if ckpt and (ckpt / "progress.json").exists():
        info = json.loads((ckpt / "progress.json").read_text())
        if info.get("fingerprint") != fp:
            raise PsInterpError(f"checkpoint {ckpt} belongs to another run (model, probes or settings differ)",
                                fix="use a new checkpoint folder or delete this one")
        stats, start = ActivationStats.load(ckpt / "stats"), info["batches_done"]

    from tqdm.auto import tqdm

    from .precision import autocast_context

    dev = model.device
    ctx = autocast_context(dev, autocast)
    last_save = time.monotonic()
    was_training = model.hf.training
    model.hf.eval()
    # Running float64 totals ([4, G, F] per layer) live on each layer's own device and are copied into
    # `stats` only at checkpoints and at the end; adding in batch order keeps resumed runs bit-identical.
    totals: dict[int, torch.Tensor] = {}
    count = stats.count.to(dev, copy=True)

    try:
        bar = tqdm(total=len(batches), initial=start, desc=f"record ({position})", disable=not progress,
                   unit="batch")
        for bi in range(start, len(batches)):
            items = [probes[i] for i in batches[bi]]
            batch = encode(model, items, system_prompt=system_prompt, padding_side=padding_side)
            weights = position_weights(batch, position, model.image_token_id)
            present = sorted({gindex[it.group] for it in items})  # reduce over the batch's own groups only
            column = {g: i for i, g in enumerate(present)}
            onehot = torch.zeros(len(items), len(present), dtype=torch.float64, device=dev)
            onehot[torch.arange(len(items)), torch.tensor([column[gindex[it.group]] for it in items])] = 1.0
            with torch.inference_mode(), ctx:
                reduced = batch_fn(model, batch, layers, weights, onehot, per_token)
            index = torch.tensor(present)
            count.index_add_(0, index.to(dev), _sample_counts(weights, onehot, per_token).to(dev))
            for pos, red in enumerate(reduced):
                if pos not in totals:
                    totals[pos] = torch.stack([stats.moments[m][:, pos] for m in MOMENTS]).to(red.device)
                totals[pos].index_add_(1, index.to(red.device), red.double())
            bar.update(1)
            if ckpt and (time.monotonic() - last_save > checkpoint_every) and bi + 1 < len(batches):
                _store(stats, totals, count)
                _save_checkpoint(ckpt, stats, bi + 1, fp)
                last_save = time.monotonic()
        bar.close()
        _store(stats, totals, count)
    finally:
        model.hf.train(was_training)
    if ckpt:
        _save_checkpoint(ckpt, stats, len(batches), fp)
    return stats


def _store(stats: ActivationStats, totals: dict[int, torch.Tensor], count: torch.Tensor) -> None:
    """Copy the running totals (on the layers' devices) into ``stats`` (on the host): one copy per layer."""
    for pos, total in totals.items():
        for i, name in enumerate(MOMENTS):
            stats.moments[name][:, pos] = total[i].to(stats.moments[name].device)
    stats.count.copy_(count.to(stats.count.device))


def _save_checkpoint(ckpt: Path, stats: ActivationStats, done: int, fp: str) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    stats.save(ckpt / "stats")
    tmp = ckpt / "progress.json.tmp"
    tmp.write_text(json.dumps({"batches_done": done, "fingerprint": fp}))
    tmp.replace(ckpt / "progress.json")
