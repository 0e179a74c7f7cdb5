"""Parameter budgets from a model config alone (no weights are loaded).

``config`` is a transformers ``PretrainedConfig``, a dict (the content of ``config.json``), a
path to a ``config.json``, or the name of a bundled config (:func:`bundled_configs`).

Supported families: text decoders ``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``gpt2``;
multimodal ``llava`` (text decoder + CLIP vision tower + 2-layer projector) and ``qwen2_vl`` /
``qwen2_5_vl`` (text decoder + vision encoder with its patch merger).

Example:
    >>> count_params("llama-3-8b")
    8030261248
    >>> neurons_for_budget("llama-3-8b", 0.0003)  # 0.03% of the parameters
    196
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ps_interp.errors import PsInterpError
from ps_interp.neurons import ModelIdentity, NeuronSet

CONFIG_DIR = Path(__file__).parent / "configs"

# Per text family: gated FFN?, norm type, and the config key (or fixed value) for each bias.
_TEXT_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(gated=True, norm="rms", qkv_bias="attention_bias", o_bias="attention_bias",
                  mlp_bias="mlp_bias", qk_norm=False),
    "mistral": dict(gated=True, norm="rms", qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=False),
    "qwen2": dict(gated=True, norm="rms", qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False),
    "qwen3": dict(gated=True, norm="rms", qkv_bias="attention_bias", o_bias="attention_bias",
                  mlp_bias=False, qk_norm=True),
    "gpt2": dict(gated=False, norm="layer", qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=False),
}
_TEXT_FAMILIES["qwen2_vl_text"] = _TEXT_FAMILIES["qwen2_5_vl_text"] = _TEXT_FAMILIES["qwen2"]
_MULTIMODAL = ("llava", "qwen2_vl", "qwen2_5_vl")
_ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
            "n_inner": "intermediate_size", "n_positions": "max_position_embeddings", "in_chans": "in_channels"}
_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def bundled_configs() -> list[str]:
    """Names accepted wherever a config is expected, e.g. ``'llama-3-8b'``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(config: Any) -> dict[str, Any]:
    """Normalise any accepted config form to a plain dict (see module docstring).

    Example:
        >>> load_config("smollm2-135m")["hidden_size"]
        576
    """
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            path = CONFIG_DIR / f"{str(config).lower()}.json"
        if not path.is_file():
            raise PsInterpError(f"no config named or found at {str(config)!r}",
                                fix=f"pass a config.json path, a transformers config, or one of {bundled_configs()}")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PsInterpError(f"{path} is not valid JSON ({exc})") from None
    raise PsInterpError(f"cannot read a model config from a {type(config).__name__}",
                        fix="pass a transformers config, a dict, a config.json path or a bundled name")


def _transformers_defaults(model_type: str, sub: str | None = None) -> dict[str, Any]:
    """transformers' defaults for ``model_type`` (its ``sub`` config), or {} without transformers."""
    try:
        from transformers import AutoConfig

        defaults = AutoConfig.for_model(model_type).to_dict()
    except Exception:  # no transformers or unknown model_type: the caller reports missing keys
        return {}
    return defaults.get(sub) or {} if sub else defaults


def _complete(cfg: dict[str, Any], required: tuple[str, ...], what: str,
              defaults_from: tuple[str, str | None] | None = None) -> dict[str, Any]:
    """Rename legacy keys and fill those a raw ``config.json`` leaves at transformers' defaults."""
    cfg = {_ALIASES.get(k, k): v for k, v in cfg.items()}
    if cfg.get("model_type") == "gpt2" and cfg.get("intermediate_size") is None and "hidden_size" in cfg:
        cfg["intermediate_size"] = 4 * cfg["hidden_size"]
    if all(cfg.get(k) is not None for k in required):
        return cfg
    model_type, sub = defaults_from or (cfg.get("model_type", ""), None)
    defaults = {_ALIASES.get(k, k): v for k, v in _transformers_defaults(model_type, sub).items()}
    cfg = {**defaults, **{k: v for k, v in cfg.items() if v is not None}}
    missing = [k for k in required if cfg.get(k) is None]
    if missing:
        raise PsInterpError(f"{what} config lacks {missing}",
                            fix="pass the transformers config object (AutoConfig.from_pretrained) or add the keys")
    return _complete(cfg, required, what)


def _split(config: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Return (top-level, text config, vision config or None)."""
    top = load_config(config)
    model_type = top.get("model_type")
    if model_type in _MULTIMODAL:
        text = dict(top.get("text_config") or {})
        if model_type != "llava":  # older Qwen-VL configs keep the text fields at top level
            text = {**{k: v for k, v in top.items() if k not in ("text_config", "vision_config")}, **text}
            text["model_type"] = f"{model_type}_text"
        text.setdefault("model_type", "llama")
        vision = dict(top.get("vision_config") or {})
        vision.setdefault("model_type", "clip_vision_model" if model_type == "llava" else model_type)
        return top, text, vision
    if model_type not in _TEXT_FAMILIES:
        raise PsInterpError(f"model_type {model_type!r} is not supported for parameter counting",
                            fix=f"use one of {sorted(set(_TEXT_FAMILIES) | set(_MULTIMODAL))}")
    return top, top, None


def _flag(family: dict[str, Any], key: str, cfg: dict[str, Any]) -> bool:
    value = family[key]
    return bool(cfg.get(value, False)) if isinstance(value, str) else value


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _text_breakdown(text: dict[str, Any], tied: bool) -> dict[str, int]:
    family_name = text.get("model_type")
    if family_name not in _TEXT_FAMILIES:
        raise PsInterpError(f"text model_type {family_name!r} is not supported for parameter counting",
                            fix=f"use one of {sorted(_TEXT_FAMILIES)}")
    family = _TEXT_FAMILIES[family_name]
    cfg = _complete(text, _TEXT_KEYS, "text")
    h, ff, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    qkv_bias, o_bias = _flag(family, "qkv_bias", cfg), _flag(family, "o_bias", cfg)
    norm = h * (2 if family["norm"] == "layer" else 1)
    attn = (_linear(h, heads * head_dim, qkv_bias) + 2 * _linear(h, kv_heads * head_dim, qkv_bias)
            + _linear(heads * head_dim, h, o_bias) + (2 * head_dim if family["qk_norm"] else 0))
    mlp_bias = _flag(family, "mlp_bias", cfg)
    mlp = (2 if family["gated"] else 1) * _linear(h, ff, mlp_bias) + _linear(ff, h, mlp_bias)
    out = {"embed_tokens": cfg["vocab_size"] * h,
           "layers.attention": n_layers * attn,
           "layers.mlp": n_layers * mlp,
           "layers.norms": n_layers * 2 * norm,
           "final_norm": norm,
           "lm_head": 0 if tied else cfg["vocab_size"] * h}
    if family_name == "gpt2":
        out["embed_positions"] = cfg["max_position_embeddings"] * h
    return out


def _clip_vision(v: dict[str, Any]) -> int:
    cfg = _complete(v, ("hidden_size", "intermediate_size", "num_hidden_layers", "image_size", "patch_size"),
                    "vision", ("llava", "vision_config"))
    h, ff, channels = cfg["hidden_size"], cfg["intermediate_size"], cfg.get("num_channels", 3)
    positions = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
    embeddings = channels * cfg["patch_size"] ** 2 * h + h + positions * h  # conv (no bias), CLS, positions
    layer = 4 * _linear(h, h, True) + _linear(h, ff, True) + _linear(ff, h, True) + 2 * 2 * h
    return embeddings + cfg["num_hidden_layers"] * layer + 2 * 2 * h  # + pre- and post-layernorm


def _qwen_vision(v: dict[str, Any], model_type: str) -> int:
    qwen25 = model_type == "qwen2_5_vl"
    shape = ("hidden_size", "intermediate_size", "out_hidden_size") if qwen25 else ("embed_dim", "mlp_ratio",
                                                                                   "hidden_size")
    cfg = _complete(v, ("depth", "in_channels", "patch_size", "temporal_patch_size", "spatial_merge_size", *shape),
                    "vision", (model_type, "vision_config"))
    if qwen25:  # RMSNorm, gated MLP with biases; the merger maps to out_hidden_size
        dim, ff, out_dim, norm = cfg["hidden_size"], cfg["intermediate_size"], cfg["out_hidden_size"], cfg["hidden_size"]
        mlp = 2 * _linear(dim, ff, True) + _linear(ff, dim, True)
    else:  # LayerNorm, fc1/fc2 MLP; here hidden_size is the merger's output width
        dim, out_dim = cfg["embed_dim"], cfg["hidden_size"]
        ff, norm = int(dim * cfg["mlp_ratio"]), 2 * dim
        mlp = _linear(dim, ff, True) + _linear(ff, dim, True)
    patch = cfg["in_channels"] * cfg["temporal_patch_size"] * cfg["patch_size"] ** 2 * dim  # Conv3d, no bias
    block = 2 * norm + _linear(dim, 3 * dim, True) + _linear(dim, dim, True) + mlp
    merged = dim * cfg["spatial_merge_size"] ** 2
    merger = norm + _linear(merged, merged, True) + _linear(merged, out_dim, True)
    return patch + cfg["depth"] * block + merger


def param_breakdown(config: Any) -> dict[str, int]:
    """Parameters per component; values sum to :func:`count_params`.

    Example:
        >>> param_breakdown("smollm2-135m")["lm_head"]  # tied to the embeddings
        0
    """
    top, text, vision = _split(config)
    tied = bool(top.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    if "tie_word_embeddings" not in top and "tie_word_embeddings" not in text:
        tied = text.get("model_type") == "gpt2"  # transformers' defaults
    out = _text_breakdown(text, tied)
    model_type = top.get("model_type")
    if model_type == "llava":
        text_hidden = _complete(text, _TEXT_KEYS, "text")["hidden_size"]
        vcfg = _complete(vision, ("hidden_size",), "vision", ("llava", "vision_config"))
        layers = top.get("vision_feature_layer", -2)
        n_feature_layers = len(layers) if isinstance(layers, (list, tuple)) else 1
        bias = top.get("multimodal_projector_bias", True)
        out["vision"] = _clip_vision(vision)
        out["projector"] = (_linear(vcfg["hidden_size"] * n_feature_layers, text_hidden, bias)
                            + _linear(text_hidden, text_hidden, bias))
    elif model_type in ("qwen2_vl", "qwen2_5_vl"):
        out["vision"] = _qwen_vision(vision, model_type)
    return out


def count_params(config: Any) -> int:
    """Total parameters of the model described by ``config`` (tied embeddings counted once).

    Example:
        >>> round(count_params("llama-2-7b") / 1e9, 2)
        6.74
    """
    return sum(param_breakdown(config).values())


def _text_info(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    top, text, _ = _split(config)
    return top, _complete(text, _TEXT_KEYS, "text")


def identity_from_config(config: Any, name: str = "") -> ModelIdentity:
    """The :class:`ModelIdentity` of the language model's FFN neurons described by ``config``.

    Example:
        >>> identity_from_config("smollm2-135m").d_ff
        1536
    """
    top, text = _text_info(config)
    arch = (top.get("architectures") or [top.get("model_type", "")])[0]
    return ModelIdentity(arch, n_layers=text["num_hidden_layers"], d_ff=text["intermediate_size"],
                         d_model=text["hidden_size"], gated=_TEXT_FAMILIES[text["model_type"]]["gated"],
                         name=name or top.get("_name_or_path", "") or "")


def neuron_params(config: Any) -> int:
    """Parameters per FFN neuron of the language model: ``3*hidden`` gated, ``2*hidden+1`` otherwise."""
    ident = identity_from_config(config)
    return 3 * ident.d_model if ident.gated else 2 * ident.d_model + 1


def total_neurons(config: Any) -> int:
    """All FFN neurons of the language model: ``num_hidden_layers * intermediate_size``."""
    return identity_from_config(config).n_neurons


def param_budget(config: Any, neurons: int | NeuronSet) -> float:
    """Fraction of all parameters owned by ``neurons`` (a count or a :class:`NeuronSet`).

    Example:
        >>> f"{param_budget('llama-3-8b', neurons=196):.5%}"
        '0.02999%'
    """
    n = len(neurons) if isinstance(neurons, NeuronSet) else neurons
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise PsInterpError(f"neurons must be a non-negative int or a NeuronSet, got {neurons!r}")
    return n * neuron_params(config) / count_params(config)


def neurons_for_budget(config: Any, fraction: float) -> int:
    """The largest neuron count whose parameters stay within ``fraction`` of the model (rounded down).

    Example:
        >>> neurons_for_budget("llama-2-7b", 0.0003)
        164
    """
    if not 0 <= fraction <= 1 or isinstance(fraction, bool):
        raise PsInterpError(f"fraction must be in [0, 1], got {fraction!r}",
                            fix="0.03% is fraction=0.0003")
    n = math.floor(fraction * count_params(config) / neuron_params(config) + 1e-9)
    return min(n, total_neurons(config))
