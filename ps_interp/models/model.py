"""The one `Model` type: an HF model + tokenizer/processor + adapter, traced with nnsight.

Example:
    >>> from ps_interp.models import tiny
    >>> model = tiny.build("llama")
    >>> model.n_layers, model.d_ff
    (2, 128)
"""
from __future__ import annotations

import contextlib
from functools import cached_property

import torch

from ..errors import PsInterpError
from .adapters import Adapter, adapter_for, architecture_of

SITE = "blocks.{layer}.mlp.hook_post"
VISION_SITE = "vision.blocks.{layer}.mlp.hook_post"


def get_path(root, path: str):
    """Follow a dotted path (``"model.layers"``) from ``root``."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


@contextlib.contextmanager
def _materialized(module: torch.nn.Module):
    """Within the block, a module offloaded by accelerate (weights on ``meta``) holds its real weights."""
    if any(p.is_meta for p in module.parameters(recurse=False)) and hasattr(module, "_hf_hook"):
        from accelerate.utils import align_module_device

        with torch.inference_mode(False), align_module_device(module):
            yield
    else:
        yield


class Model:
    """An HF model with its tokenizer/processor and adapter, traced with nnsight.

    Build one with :func:`ps_interp.load` or :func:`ps_interp.wrap`; the same object is recorded,
    aligned and recorded again (everything acts on ``model.hf`` in place).
    """

    def __init__(self, hf_model, tokenizer, *, processor=None, name: str = "", source: str = "",
                 adapter: Adapter | None = None, validate: bool = True):
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name or getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__
        self.source = source
        self.architecture = architecture_of(hf_model)
        self.adapter = adapter or adapter_for(self.architecture)
        self._nn = None
        if validate:
            self.validate()

    # ---- sizes -------------------------------------------------------------------------
    @property
    def text_config(self):
        cfg = self.hf.config
        return getattr(cfg, self.adapter.text_config) if self.adapter.text_config else cfg

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        cfg = self.text_config
        return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))

    @property
    def d_ff(self) -> int:
        d = getattr(self.text_config, self.adapter.d_ff_attr, None)
        return int(d) if d else 4 * self.d_model  # GPT-2's n_inner=None means 4 * n_embd

    @property
    def identity(self):
        """A :class:`ps_interp.neurons.ModelIdentity`: what makes neuron indices comparable."""
        from ..neurons import ModelIdentity

        return ModelIdentity(self.architecture, self.n_layers, self.d_ff, self.d_model,
                             self.adapter.gated, self.name)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def is_multimodal(self) -> bool:
        return self.adapter.multimodal

    # ---- modules -----------------------------------------------------------------------
    @cached_property
    def layers(self):
        return get_path(self.hf, self.adapter.layers)

    def mlp(self, layer: int):
        return get_path(self.layers[layer], self.adapter.mlp)

    def site_module(self, layer: int):
        """The module whose input is neuron site ``blocks.{layer}.mlp.hook_post``."""
        return getattr(self.mlp(layer), self.adapter.down)

    def down_weight(self, layer: int) -> torch.Tensor:
        """Output weights of the neurons of ``layer`` as ``[d_model, d_ff]``."""
        w = self.site_module(layer).weight
        return w if w.shape[-1] == self.d_ff else w.T  # GPT-2 Conv1D stores [d_ff, d_model]

    def down_norms(self, layers=None) -> torch.Tensor:
        """``||W_down[:, i]||_2`` as ``[len(layers), d_ff]`` float64 on the CPU (all layers by default).

        Layers that accelerate offloaded to the CPU or disk (``device_map``) are read from their offload
        map one at a time; a remote model computes this on its server.

        Example:
            >>> from ps_interp.models import tiny
            >>> tiny.build("llama").down_norms([1]).shape
            torch.Size([1, 128])
        """
        layers = range(self.n_layers) if layers is None else layers
        rows = []
        for layer in layers:
            module = self.site_module(layer)
            with _materialized(module):
                rows.append(self.down_weight(layer).detach().float().norm(dim=0).double().cpu())
        return torch.stack(rows)

    def neuron_params(self, layer: int) -> list[tuple[str, torch.nn.Parameter, int]]:
        """(qualified name, parameter, neuron axis) for every parameter slice of a neuron in ``layer``."""
        mlp = self.mlp(layer)
        prefix = f"{self.adapter.layers}.{layer}.{self.adapter.mlp}"
        return [(f"{prefix}.{mod}.{pname}", getattr(getattr(mlp, mod), pname), axis)
                for mod, pname, axis in self.adapter.neuron_slices]

    @cached_property
    def vision_layers(self):
        if not self.adapter.vision_layers:
            raise PsInterpError(f"{self.architecture} has no vision encoder",
                                fix="use a LLaVA / Qwen-VL model for vision sites")
        return get_path(self.hf, self.adapter.vision_layers)

    def vision_site_module(self, layer: int):
        return getattr(get_path(self.vision_layers[layer], self.adapter.vision_mlp), self.adapter.vision_down)

    @property
    def image_token_id(self) -> int | None:
        attr = self.adapter.image_token_attr
        return getattr(self.hf.config, attr, None) if attr else None

    # ---- nnsight -----------------------------------------------------------------------
    @property
    def nn(self):
        """The nnsight wrapper of ``hf`` (built on first use)."""
        if self._nn is None:
            from nnsight import NNsight

            self._nn = NNsight(self.hf)
        return self._nn

    def envoy(self, path: str):
        """The nnsight envoy at a dotted path of the HF model."""
        return get_path(self.nn, path)

    def site_envoy(self, layer: int):
        return getattr(get_path(self.envoy(self.adapter.layers)[layer], self.adapter.mlp), self.adapter.down)

    def vision_site_envoy(self, layer: int):
        blocks = self.envoy(self.adapter.vision_layers)
        return getattr(get_path(blocks[layer], self.adapter.vision_mlp), self.adapter.vision_down)

    # ---- checks ------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the adapter against the model: site width == d_ff and zeroing the site changes the logits."""
        layer = self.n_layers - 1
        site = self.site_module(layer)
        width = site.weight.shape[1] if isinstance(site, torch.nn.Linear) else site.weight.shape[0]
        if width != self.d_ff:
            raise PsInterpError(
                f"adapter for {self.architecture}: site width {width} != {self.adapter.d_ff_attr}={self.d_ff}",
                fix="check the adapter's `down` and `d_ff_attr` fields")
        if getattr(self, "_validated_logits", False):
            return
        ids = torch.tensor([[1, 2, 3, 4]], device=self.device) % int(self.text_config.vocab_size)
        with torch.no_grad():
            base = self.forward_logits(ids)
            handle = site.register_forward_pre_hook(lambda m, a: (torch.zeros_like(a[0]),) + tuple(a[1:]))
            try:
                zeroed = self.forward_logits(ids)
            finally:
                handle.remove()
        if torch.allclose(base, zeroed):
            raise PsInterpError(f"adapter for {self.architecture}: zeroing {SITE.format(layer=layer)} "
                                "does not change the logits", fix="check the adapter's layer/FFN paths")
        self._validated_logits = True

    def forward_logits(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """Logits of a plain forward (no cache)."""
        return self.hf(input_ids=input_ids, use_cache=False, **kwargs).logits

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, {self.architecture}, n_layers={self.n_layers}, d_ff={self.d_ff}, "
                f"d_model={self.d_model})")
