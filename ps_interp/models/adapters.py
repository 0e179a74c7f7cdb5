"""Architecture adapters: where the FFN neurons of each model family live.

An adapter is data: the path of the decoder layer list, the FFN module inside a layer, and the
linear layers whose rows/columns make up a neuron. It is chosen by ``config.architectures[0]``,
never by a substring of the model name.

Example:
    >>> from ps_interp.models.adapters import adapter_for
    >>> adapter_for("LlamaForCausalLM").down
    'down_proj'
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import PsInterpError

#: (module attribute inside the FFN, parameter name, axis that indexes neurons)
NeuronSlice = tuple[str, str, int]


@dataclass(frozen=True)
class Adapter:
    """Where the FFN neurons of one architecture family live.

    ``layers`` is the dotted path (from the HF model) of the decoder layer list; ``mlp`` the FFN
    module inside a layer; ``down`` the FFN module whose *input* is the neuron site
    ``blocks.{l}.mlp.hook_post``; ``neuron_slices`` the parameters that belong to neuron ``i``
    (module, parameter, axis). ``text_config`` names the sub-config holding the text sizes (VLMs).
    """

    family: str
    layers: str
    mlp: str = "mlp"
    down: str = "down_proj"
    gate: str | None = "gate_proj"
    up: str = "up_proj"
    gated: bool = True
    neuron_slices: tuple[NeuronSlice, ...] = (
        ("gate_proj", "weight", 0), ("up_proj", "weight", 0), ("down_proj", "weight", 1))
    d_ff_attr: str = "intermediate_size"
    text_config: str | None = None
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    # vision encoder MLP sites (VLMs): layer list, FFN module, module whose input is the site
    vision_layers: str | None = None
    vision_mlp: str = "mlp"
    vision_down: str = "fc2"
    vision_d_ff_attr: str = "intermediate_size"
    image_token_attr: str | None = None
    multimodal: bool = False
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> "Adapter":
        """A copy with some fields changed (e.g. a VLM reusing its text family's entry)."""
        return dataclasses.replace(self, **changes)


_LLAMA = Adapter(family="llama", layers="model.layers")
_GPT2 = Adapter(
    family="gpt2", layers="transformer.h", down="c_proj", gate=None, up="c_fc", gated=False,
    # Conv1D stores weight as [in, out]: c_fc's column i, its bias i, c_proj's row i
    neuron_slices=(("c_fc", "weight", 1), ("c_fc", "bias", 0), ("c_proj", "weight", 0)),
    d_ff_attr="n_inner", final_norm="transformer.ln_f")
_VLM_TEXT = _LLAMA.replace(layers="model.language_model.layers", final_norm="model.language_model.norm",
                           text_config="text_config", multimodal=True)

ADAPTERS: dict[str, Adapter] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA.replace(family="mistral"),
    "Qwen2ForCausalLM": _LLAMA.replace(family="qwen2"),
    "Qwen3ForCausalLM": _LLAMA.replace(family="qwen3"),
    "Gemma2ForCausalLM": _LLAMA.replace(family="gemma2"),
    "GPT2LMHeadModel": _GPT2,
    "LlavaForConditionalGeneration": _VLM_TEXT.replace(
        family="llava", vision_layers="model.vision_tower.encoder.layers", vision_down="fc2",
        image_token_attr="image_token_index"),
    "Qwen2VLForConditionalGeneration": _VLM_TEXT.replace(
        family="qwen2_vl", vision_layers="model.visual.blocks", vision_down="fc2",
        vision_d_ff_attr="mlp_ratio", image_token_attr="image_token_id"),
    "Qwen2_5_VLForConditionalGeneration": _VLM_TEXT.replace(
        family="qwen2_5_vl", vision_layers="model.visual.blocks", vision_down="down_proj",
        image_token_attr="image_token_id"),
}

#: HF model classes whose config carries no ``architectures`` entry (built from config)
_CLASS_TO_ARCH = {name: name for name in ADAPTERS}


def register_adapter(architecture: str, adapter: Adapter | None = None, **fields) -> Adapter:
    """Register an adapter for your own architecture (``config.architectures[0]``).

    Example:
        >>> from ps_interp.models.adapters import register_adapter, ADAPTERS
        >>> a = register_adapter("MyLlamaForCausalLM", ADAPTERS["LlamaForCausalLM"])
        >>> a.layers
        'model.layers'
    """
    if adapter is None:
        adapter = Adapter(family=fields.pop("family", architecture), **fields)
    elif fields:
        adapter = adapter.replace(**fields)
    ADAPTERS[architecture] = adapter
    _CLASS_TO_ARCH[architecture] = architecture
    return adapter


def supported_architectures() -> list[str]:
    """Architectures with an adapter, sorted."""
    return sorted(ADAPTERS)


def adapter_for(architecture: str | None) -> Adapter:
    """The adapter of ``architecture`` or an error listing the supported ones."""
    if architecture in ADAPTERS:
        return ADAPTERS[architecture]
    raise PsInterpError(
        f"unsupported architecture {architecture!r}; supported: {', '.join(supported_architectures())}",
        fix="describe your model with ps_interp.register_adapter(architecture, Adapter(...)) "
            "(layers path, FFN module, down projection)")


def architecture_of(hf_model) -> str | None:
    """``config.architectures[0]``, filled in from the class name when a model built from config has none."""
    archs = getattr(hf_model.config, "architectures", None)
    if archs:
        return archs[0]
    name = type(hf_model).__name__
    hf_model.config.architectures = [name]
    return name
