"""`estimate`: time and memory to expect for record / align / evaluate, before running anything.

Everything comes from the model config (parameter counts from :mod:`ps_interp.budget`) and the
probe lengths (tokenized when a tokenizer is at hand, else ~chars/4 plus the chat template), with
FLOP counts (forward ``2 * params * tokens``; training ``3x`` for full fine-tuning, ``2x`` when the
weights are frozen and only activation gradients flow, as in Shield and LoRA) and a table of device
throughputs (:data:`DEVICES`). Generation is the larger of compute time and the time to stream the
weights once per new token. Memory is weights + activations + gradients + optimizer state + the
copies ps_interp keeps for ``restore()``; for Shield the gradients and AdamW state exist for the
selected slices only.

These are planning numbers (within ~2x), not measurements: ``bench/gpu.py`` measures.

Example:
    >>> est = estimate("llama-3-8b", n_prompts=1000, mean_tokens=60, dtype="bfloat16", device="h100")
    >>> est.row("record")["time_s"] < est.row("align", "full")["time_s"]
    True
    >>> print(est)                                   # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .budget import _text_info, load_config, neuron_params, neurons_for_budget, param_breakdown
from .errors import PsInterpError

GB = 1e9
#: tokens a chat template adds around a user turn when no tokenizer is given (system + role markers)
TEMPLATE_TOKENS = 24
#: image tokens per image prompt when no processor says otherwise (LLaVA-1.5: (336/14)^2)
IMAGE_TOKENS = 576
#: padded / real tokens: batches are length-sorted, so padding is small
PADDING = 1.1
#: FLOPs of the backward relative to the forward: frozen weights need activation gradients only
BACKWARD = {"full": 2.0, "shield": 1.0, "lora": 1.0}
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Device:
    """Effective throughput of one device: FLOP/s per dtype, memory bandwidth, memory, request overhead."""

    name: str
    flops: dict[str, float]
    bandwidth: float  # bytes/s actually reached when streaming weights
    memory: float | None  # bytes per device (None: host RAM, not checked)
    overhead_s: float = 0.0  # fixed cost per forward request (remote execution)
    note: str = ""
    layer_step_s: float = 0.0  # host-side cost per decoder layer per generation step (eager HF generate)


#: Effective (not peak) throughputs. CPU: measured on this project's 2-thread CPU, idle: recording
#: SmolLM2-135M in fp32 ran ~140 GFLOP/s (1,200 prompts x 83 tokens in 148 s); bf16 autocast 0.62x of
#: that (bench/precision.py). Under load from other jobs it fell to ~45. GPUs: 40% of the dense tensor-core peak
#: (H100 SXM bf16 989 TFLOP/s -> ~400), fp32 without TF32, 70% of the memory bandwidth. Generation on a GPU
#: also pays ~1 ms per layer per new token of Python and kernel launches (bench/gpu.py on one H100, batch 16:
#: Llama-3-8B 33 ms per step against 7 ms of weight streaming, Qwen2.5-7B 46 ms against 7 ms).
DEVICES: dict[str, Device] = {
    "cpu": Device("cpu", {"float32": 130e9, "bfloat16": 80e9, "float16": 10e9}, 10e9, None,
                  note="2 threads, idle, measured on SmolLM2-135M (fp32); bf16 autocast measured 0.62x of fp32"),
    "a100": Device("NVIDIA A100 80GB", {"bfloat16": 125e12, "float16": 125e12, "float32": 8e12}, 1.4e12, 80 * GB,
                   note="40% of 312 TFLOP/s bf16, 70% of 2.0 TB/s", layer_step_s=1e-3),
    "h100": Device("NVIDIA H100 80GB", {"bfloat16": 400e12, "float16": 400e12, "float32": 27e12}, 2.3e12, 80 * GB,
                   note="40% of 989 TFLOP/s bf16, 70% of 3.35 TB/s", layer_step_s=1e-3),
    "h200": Device("NVIDIA H200 141GB", {"bfloat16": 400e12, "float16": 400e12, "float32": 27e12}, 3.3e12, 141 * GB,
                   note="40% of 989 TFLOP/s bf16, 70% of 4.8 TB/s", layer_step_s=1e-3),
    "ndif": Device("NDIF (remote)", {"bfloat16": 125e12, "float16": 125e12, "float32": 8e12}, 1.4e12, None,
                   overhead_s=3.0, note="assumes A100-class GPUs and ~3 s queue + transfer per request; "
                                        "the server's load is not known in advance"),
}


@dataclass
class Estimate:
    """Expected time and memory per stage; :meth:`table` is the DataFrame, ``print(est)`` the summary.

    Example:
        >>> est = estimate("smollm2-135m", n_prompts=100, mean_tokens=40)
        >>> list(est.table().columns)[:4]
        ['stage', 'method', 'tokens', 'tflop']
    """

    model: str
    n_params: int
    dtype: str
    device: Device
    n_devices: int
    n_prompts: int
    mean_tokens: float
    rows: list[dict] = field(default_factory=list)
    assumptions: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per stage (and method): tokens, TFLOP, seconds, memory in GB, whether it fits, and the
        statistics copied to the host (``transfer_gb``; downloaded from the server when remote)."""
        return pd.DataFrame(self.rows, columns=["stage", "method", "tokens", "tflop", "time_s", "memory_gb",
                                                "weights_gb", "activations_gb", "grads_gb", "optimizer_gb",
                                                "transfer_gb", "fits"])

    def row(self, stage: str, method: str = "") -> dict:
        """The row of ``stage`` (``record``, ``align``, ``evaluate``) and ``method`` (align: shield/lora/full)."""
        for r in self.rows:
            if r["stage"] == stage and (not method or r["method"] == method):
                return r
        raise PsInterpError(f"no estimate for {stage!r} {method!r}",
                            fix="use stage 'record', 'evaluate' or 'align' with method 'shield', 'lora' or 'full'")

    def __str__(self) -> str:
        cap = f", {self.n_devices} devices" if self.n_devices > 1 else ""
        lines = [f"Estimate for {self.model} ({self.n_params / 1e9:.2f}B params, {self.dtype}) on "
                 f"{self.device.name}{cap}: {self.n_prompts:,} prompts x {self.mean_tokens:.0f} tokens"]
        for r in self.rows:
            label = r["stage"] + (f" ({r['method']})" if r["method"] else "")
            fits = "" if r["fits"] is None else ("" if r["fits"] else "  DOES NOT FIT")
            moved = f"  ({_human_bytes(r['transfer_gb'] * GB)} of statistics to the host)" if r["transfer_gb"] else ""
            lines.append(f"  {label:<18} {_human_time(r['time_s']):>9}  {r['memory_gb']:8.1f} GB{fits}{moved}")
        if not any(r["stage"] == "align" for r in self.rows):
            lines.append("  align: does not run remotely; estimate it for the GPUs of a local copy")
        if any(r["fits"] is False for r in self.rows):
            lines.append("  (too large: spread layers over more GPUs with device_map='auto', use bf16, "
                         "or SGD / fewer layers for full fine-tuning)")
        lines.append("  planning figures (~2x); bench/gpu.py measures. Assumptions: est.assumptions")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Estimate({self.model!r}, {len(self.rows)} stages on {self.device.name})"


def _human_bytes(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def _human_time(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---- inputs -----------------------------------------------------------------------------------
def _resolve_model(model_or_config) -> tuple[Any, Any, str]:
    """(config, tokenizer-or-Model-or-None, name) from a Model, an HF model, or any config form."""
    if hasattr(model_or_config, "adapter") and hasattr(model_or_config, "hf"):  # a ps_interp Model
        cfg = model_or_config.hf.config
        return cfg, model_or_config, model_or_config.name
    if hasattr(model_or_config, "config") and hasattr(model_or_config, "parameters"):  # an HF model
        return model_or_config.config, None, type(model_or_config).__name__
    cfg = load_config(model_or_config)
    name = model_or_config if isinstance(model_or_config, str) else cfg.get("_name_or_path", "") or "model"
    return cfg, None, str(name)


def prompt_lengths(probes, model=None, *, image_tokens: int = IMAGE_TOKENS) -> list[int]:
    """Tokens per prompt: with ``model``, its chat template and tokenizer; else ~chars/4 + template.

    Example:
        >>> prompt_lengths(["x" * 400])
        [124]
    """
    items = list(probes)
    out = []
    if model is not None and getattr(model, "tokenizer", None) is not None:
        from .data.prompting import render_prompt

        for it in items:
            text = it if isinstance(it, str) else it.prompt_text()
            image = not isinstance(it, str) and it.modality != "text"
            rendered = render_prompt(model, text, image=image and model.processor is not None)
            n = len(model.tokenizer(rendered, add_special_tokens=False)["input_ids"])
            out.append(n + (image_tokens if image else 0))
        return out
    for it in items:
        text = it if isinstance(it, str) else it.prompt_text()
        image = not isinstance(it, str) and it.modality != "text"
        out.append(math.ceil(len(text) / 4) + TEMPLATE_TOKENS + (image_tokens if image else 0))
    return out


def _device(device, model) -> Device:
    if isinstance(device, Device):
        return device
    if device is None:
        if model is not None and getattr(model, "remote", False):
            return DEVICES["ndif"]
        device = model.device.type if model is not None else "cpu"
    key = str(device).lower()
    if key.startswith("cuda"):
        key = _gpu_kind()
    if key not in DEVICES:
        raise PsInterpError(f"unknown device {device!r}", fix=f"use one of {sorted(DEVICES)} or a Device(...)")
    return DEVICES[key]


def _gpu_kind() -> str:
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    for kind in ("h200", "h100", "a100"):
        if kind in name.lower():
            return kind
    return "h100"


def _dtype(dtype, model, dev: Device) -> str:
    if dtype is None and model is not None and not getattr(model, "remote", False):
        dtype = next(model.hf.parameters()).dtype
    if dtype is None:  # a config alone: float32 on a CPU, bfloat16 on GPUs and on NDIF
        dtype = "float32" if dev.name.startswith("cpu") else "bfloat16"
    name = str(dtype).replace("torch.", "")
    if name not in _BYTES:
        raise PsInterpError(f"unsupported dtype {dtype!r} for an estimate", fix=f"use one of {sorted(_BYTES)}")
    return name


def calibrate_cpu(dtype: str = "float32", seconds: float = 0.3) -> Device:
    """A CPU :class:`Device` scaled from a short matmul on this machine (forward ~ half the matmul rate).

    Example:
        >>> calibrate_cpu(seconds=0.05).flops["float32"] > 1e8
        True
    """
    import torch

    tdtype = getattr(torch, dtype)
    a, b = torch.randn(256, 1024, dtype=tdtype), torch.randn(1024, 1024, dtype=tdtype)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    rate = 0.5 * n * 2 * 256 * 1024 * 1024 / (time.perf_counter() - t0)
    base = DEVICES["cpu"]
    return Device("cpu (calibrated)", {**base.flops, dtype: rate}, base.bandwidth, None,
                  note=f"0.5 x a {dtype} matmul measured now ({torch.get_num_threads()} threads)")


# ---- the estimate ------------------------------------------------------------------------------
def estimate(model_or_config, probes=None, *, n_prompts: int | None = None, mean_tokens: float | None = None,
             dtype=None, device=None, n_devices: int = 1, batch_size: int = 16, steps: int = 60,
             train_batch_size: int = 8, answer_tokens: int = 32, retention: bool = True, neurons=None,
             budget: float = 0.0003, lora_rank: int = 8, optimizer: str = "adamw", max_new_tokens: int = 48,
             eval_prompts: int | None = None, n_groups: int | None = None, calibrate: bool = False) -> Estimate:
    """Time and memory to expect for record, Shield / LoRA / full fine-tuning, and evaluation.

    Args:
        model_or_config: a :class:`~ps_interp.models.model.Model` (its tokenizer counts tokens), an HF
            model, a config (dict, transformers config, ``config.json`` path) or a bundled name
            such as ``"llama-3-8b"``.
        probes: the probes to record (their lengths and groups are used); or give ``n_prompts`` and
            ``mean_tokens``.
        dtype, device: default to the model's; for a config, ``"cpu"`` and float32 there, bfloat16 on
            GPUs and NDIF. ``device`` is a
            key of :data:`DEVICES` (``cpu``, ``a100``, ``h100``, ``h200``, ``ndif``), ``"cuda"``
            (detected) or a :class:`Device`. ``n_devices`` GPUs share the memory (``device_map="auto"``;
            layers run one after another, so time does not shrink).
        batch_size: recording and evaluation batch; ``steps`` / ``train_batch_size`` /
            ``answer_tokens`` / ``retention`` describe one training run; ``neurons`` (a count or a
            NeuronSet) defaults to the ``budget`` fraction of the parameters.
        calibrate: on a CPU, measure a short matmul instead of using the constant.

    On ``device="ndif"`` there are no ``align`` rows: training does not run remotely.

    Example:
        >>> est = estimate("llama-3-8b", n_prompts=2000, mean_tokens=64, dtype="bfloat16", device="h100")
        >>> est.row("align", "shield")["optimizer_gb"] < est.row("align", "full")["optimizer_gb"] / 1000
        True
    """
    cfg, model, name = _resolve_model(model_or_config)
    _, text = _text_info(cfg)
    parts = param_breakdown(cfg)
    n_params = sum(parts.values())
    if probes is not None:
        lengths = prompt_lengths(probes, model)
        if not lengths:
            raise PsInterpError("no probes to estimate", fix="pass probes with items, or n_prompts=")
        n_prompts = n_prompts or len(lengths)
        mean_tokens = mean_tokens or sum(lengths) / len(lengths)
        if n_groups is None and not isinstance(next(iter(probes)), str):
            n_groups = len({it.group for it in probes})
    if not n_prompts or not mean_tokens or n_prompts < 1 or mean_tokens <= 0:
        raise PsInterpError("the estimate needs the probes or both n_prompts and mean_tokens",
                            fix="estimate(config, probes) or estimate(config, n_prompts=1000, mean_tokens=60)")
    if optimizer not in ("adamw", "sgd"):
        raise PsInterpError(f"unknown optimizer {optimizer!r}", fix="use 'adamw' or 'sgd'")
    if n_devices < 1:
        raise PsInterpError(f"n_devices must be >= 1, got {n_devices}")
    dev = _device(device, model)
    dtype = _dtype(dtype, model, dev)
    if calibrate and dev.name.startswith("cpu"):
        dev = calibrate_cpu(dtype)
    flops_rate = dev.flops[dtype]
    nbytes = _BYTES[dtype]
    n_groups = n_groups or 2

    d, d_ff, n_layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    heads = text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or d // heads
    vocab = text["vocab_size"]
    decoder = parts["layers.attention"] + parts["layers.mlp"] + parts["layers.norms"] \
        + parts.get("vision", 0) + parts.get("projector", 0)
    head = parts["lm_head"] or parts["embed_tokens"]  # a tied head is the embedding matrix
    weights = n_params * nbytes
    capacity = dev.memory * n_devices if dev.memory else None

    def forward_flops(tokens: float, context: float, head_tokens: float) -> float:
        """Matmuls of the decoder, QK^T and AV over a causal context, and the LM head where it runs."""
        return 2 * decoder * tokens + 2 * n_layers * heads * head_dim * tokens * context + 2 * head * head_tokens

    def row(stage, method, tokens, flops, seconds, acts, grads=0.0, state=0.0, transfer=0.0):
        total = weights + acts + grads + state
        return dict(stage=stage, method=method, tokens=int(tokens), tflop=flops / 1e12, time_s=seconds,
                    memory_gb=total / GB, weights_gb=weights / GB, activations_gb=acts / GB,
                    grads_gb=grads / GB, optimizer_gb=state / GB, transfer_gb=transfer / GB,
                    fits=None if capacity is None else bool(total <= 0.9 * capacity))

    rows = []
    # record: the decoder up to the last layer (no LM head); moments accumulate on the device in float64
    tokens = n_prompts * mean_tokens * PADDING
    flops = forward_flops(tokens, mean_tokens, 0)
    n_batches = math.ceil(n_prompts / batch_size)
    acts = batch_size * mean_tokens * PADDING * (4 * d + 3 * d_ff) * nbytes + 4 * n_groups * n_layers * d_ff * 8
    per_group = 4 * 8 * n_layers * d_ff  # float64 moments of one group
    if dev.overhead_s:  # remote: every request returns the moments of the groups in its batch (group-major)
        in_batch = min(n_groups, math.ceil(batch_size * n_groups / n_prompts) + 1)
        transfer = n_batches * in_batch * per_group
    else:  # local: one copy to the host at the end
        transfer = n_groups * per_group
    rows.append(row("record", "", tokens, flops, flops / flops_rate + n_batches * dev.overhead_s, acts,
                    transfer=transfer))

    # align: a step is a refusal batch (fwd + bwd) and, with retention, a retain batch (reference fwd + fwd + bwd)
    seq = mean_tokens + answer_tokens
    batch_tokens = train_batch_size * seq * PADDING
    per_forward = forward_flops(batch_tokens, seq, train_batch_size * answer_tokens)
    train_acts = (batch_tokens * n_layers * (8 * d + 4 * d_ff) * nbytes  # saved for the backward (no recompute)
                  + 3 * train_batch_size * answer_tokens * vocab * 4)  # fp32 logits at labelled positions
    n_neurons = neurons if isinstance(neurons, int) else (len(neurons) if neurons is not None
                                                          else neurons_for_budget(cfg, budget))
    n_shield = n_neurons * neuron_params(cfg)
    adam = 8 if optimizer == "adamw" else 0
    # Shield / LoRA / full as ps_interp implements them (the copies are what restore() puts back);
    # method: (trainable numbers, gradient bytes each, state bytes each, bytes copied for restore())
    trainables = {
        "shield": (n_shield, 4, adam + 4, n_shield * nbytes),  # fp32 slices + AdamW; original slices
        "lora": (n_layers * 3 * lora_rank * (d + d_ff), 4, adam + 4, parts["layers.mlp"] * nbytes),
        "full": (n_params, nbytes, adam // 4 * nbytes, n_params * nbytes),  # AdamW state in the param dtype
    }
    for method, (n_train, grad_bytes, state_bytes, copies) in ({} if dev.overhead_s else trainables).items():
        passes = (1 + BACKWARD[method]) * (2 if retention else 1) + (1 if retention else 0)
        flops = steps * per_forward * passes
        rows.append(row("align", method, steps * batch_tokens * (2 if retention else 1), flops,
                        flops / flops_rate + steps * dev.overhead_s, train_acts,
                        grads=n_train * grad_bytes, state=n_train * state_bytes + copies))

    # evaluate: prefill, then one step per new token (the larger of its compute and streaming the weights,
    # plus the per-layer launch cost on GPUs)
    n_eval = eval_prompts or n_prompts
    prefill_tokens = n_eval * mean_tokens * PADDING
    prefill = forward_flops(prefill_tokens, mean_tokens, n_eval)
    batches = math.ceil(n_eval / batch_size)
    step_flops = forward_flops(batch_size, mean_tokens + max_new_tokens / 2, batch_size)
    per_step = max(step_flops / flops_rate, weights / dev.bandwidth) + n_layers * dev.layer_step_s
    kv = 2 * n_layers * kv_heads * head_dim * batch_size * (mean_tokens + max_new_tokens) * nbytes
    seconds = prefill / flops_rate + batches * max_new_tokens * per_step + batches * dev.overhead_s
    rows.append(row("evaluate", "", prefill_tokens + n_eval * max_new_tokens,
                    prefill + batches * max_new_tokens * step_flops, seconds, kv + 2 * batch_size * vocab * 4))

    assumptions = dict(flops_per_s=flops_rate, bandwidth_bytes_per_s=dev.bandwidth, device_note=dev.note,
                       padding=PADDING, template_tokens=TEMPLATE_TOKENS if model is None else "tokenized",
                       backward_over_forward=BACKWARD, shield_neurons=n_neurons, lora_rank=lora_rank,
                       lora_target="mlp", optimizer=optimizer, retention_kl=retention, steps=steps,
                       train_batch_size=train_batch_size, answer_tokens=answer_tokens,
                       max_new_tokens=max_new_tokens, eval_prompts=n_eval, groups=n_groups,
                       activations="no recompute; all layers keep training activations (Shield needs them "
                                   "only from its lowest selected layer up)",
                       memory_fits="<= 90% of the devices' memory")
    return Estimate(name, n_params, dtype, dev, n_devices, int(n_prompts), float(mean_tokens), rows, assumptions)
