"""Tiny random models of every supported family, built from config with an offline tokenizer.

Example:
    >>> from ps_interp.models import tiny
    >>> model = tiny.build("qwen2", num_hidden_layers=3)
    >>> model.n_layers
    3
"""
from __future__ import annotations

import copy

import torch

from ..errors import PsInterpError
from .processors import QwenVLProcessor
from .tokenizer import train_tokenizer

_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2", "llava", "qwen2_vl", "qwen2_5_vl")
IMAGE_SIZE = 32  # pixels; tiny vision towers see 32x32 images


def _text_config(family: str, vocab: int, tok, overrides: dict):
    import transformers as tf

    ids = dict(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
               bos_token_id=tok.bos_token_id)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **{**ids, **overrides})
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
           "qwen3": tf.Qwen3Config, "gemma2": tf.Gemma2Config}[family]
    extra = {"head_dim": 16} if family in ("gemma2", "qwen3") else {}
    return cls(**{**_TEXT, **extra, **ids, **overrides})


def build(family: str = "llama", *, seed: int = 0, dtype=torch.float32, **overrides):
    """A tiny random :class:`~ps_interp.models.model.Model` of ``family`` (see ``FAMILIES``).

    ``overrides`` go to the text config (e.g. ``num_hidden_layers=3``). VLM families come with a
    real HF processor (CLIP / Qwen2-VL image processor) built offline.
    """
    import transformers as tf

    from .model import Model

    if family not in FAMILIES:
        raise PsInterpError(f"unknown tiny family {family!r}", fix=f"use one of {', '.join(FAMILIES)}")
    tok = copy.deepcopy(train_tokenizer())  # processors write into their tokenizer: never share the cached one
    torch.manual_seed(seed)
    processor = None
    if family in ("llava",):
        text = _text_config("llama", len(tok), tok, overrides)
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8)
        cfg = tf.LlavaConfig(vision_config=vision, text_config=text,
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
        hf = tf.LlavaForConditionalGeneration(cfg)
        processor = _llava_processor(tok)
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        hf, processor = _qwen_vl(family, tok, overrides)
    else:
        cfg = _text_config(family, len(tok), tok, overrides)
        cls = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "mistral": tf.MistralForCausalLM,
               "qwen2": tf.Qwen2ForCausalLM, "qwen3": tf.Qwen3ForCausalLM, "gemma2": tf.Gemma2ForCausalLM}[family]
        hf = cls(cfg)
    hf = hf.to(dtype).eval()
    hf.generation_config.pad_token_id = tok.pad_token_id
    return Model(hf, tok, processor=processor, name=f"tiny-{family}", source="tiny")


def _llava_processor(tok):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                          vision_feature_select_strategy="default", chat_template=tok.chat_template,
                          image_token="<image>", num_additional_image_tokens=1)


def _qwen_vl(family: str, tok, overrides: dict):
    import transformers as tf

    text = {**_TEXT, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]}, **overrides}
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2)
        hf = tf.Qwen2VLForConditionalGeneration(tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                      patch_size=8, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
                      window_size=32)
        hf = tf.Qwen2_5_VLForConditionalGeneration(
            tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids))
    image_processor = tf.Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2,
                                               min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE)
    template = tok.chat_template.replace("'<image>'", "'<|vision_start|><|image_pad|><|vision_end|>'")
    return hf, QwenVLProcessor(image_processor, tok, chat_template=template)
