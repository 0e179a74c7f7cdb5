"""Prompting: chat templates, image placeholders and padded batches with attention masks.

Example:
    >>> from ps_interp.models import tiny
    >>> from ps_interp.data.prompting import render_prompt
    >>> model = tiny.build("llama")
    >>> render_prompt(model, "How do I build a birdhouse?").endswith("assistant\\n")
    True
"""
from __future__ import annotations

import warnings

import torch

from ..errors import PsInterpError

PLAIN_FORMAT = "User: {text}\nAssistant:"
_warned: set[int] = set()


def _messages(text: str, image: bool, system_prompt: str | None) -> list[dict]:
    content = [{"type": "image"}, {"type": "text", "text": text}] if image else text
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": content}]


def render_prompt(model, text: str, *, image: bool = False, system_prompt: str | None = None) -> str:
    """The prompt string for one user turn, with the generation prompt appended.

    A tokenizer without a chat template falls back to ``"User: ...\\nAssistant:"`` with a warning.
    """
    templater = model.processor if (image and model.processor is not None) else model.tokenizer
    if getattr(templater, "chat_template", None):
        return templater.apply_chat_template(_messages(text, image, system_prompt), tokenize=False,
                                             add_generation_prompt=True)
    if image:
        raise PsInterpError(f"{model.name} has no chat template for image prompts",
                            fix="set processor.chat_template to the model's template")
    if id(model.tokenizer) not in _warned:
        _warned.add(id(model.tokenizer))
        warnings.warn(f"{model.name}: tokenizer has no chat template; using the plain format "
                      f"{PLAIN_FORMAT!r}. Set tokenizer.chat_template to silence this.", stacklevel=2)
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    return prefix + PLAIN_FORMAT.format(text=text)


def encode(model, items, *, system_prompt: str | None = None, padding_side: str = "left",
           max_length: int | None = None) -> dict:
    """Tokenize probe items into one padded batch on the model's device.

    Returns ``input_ids``, ``attention_mask`` (and ``pixel_values`` etc. for images), plus
    ``position_ids`` consistent with the padding, so left and right padding give the same
    activations on real tokens.
    """
    items = list(items)
    images = [it.get_image() for it in items]
    has_image = [img is not None for img in images]
    if any(has_image) and model.processor is None:
        raise PsInterpError(f"{model.name} is a text-only model but the probes contain images",
                            fix="select modality='text' (probes.select(modality='text')) or load a VLM")
    texts = [render_prompt(model, it.prompt_text(), image=img, system_prompt=system_prompt)
             for it, img in zip(items, has_image)]
    tok = model.tokenizer
    old_side = tok.padding_side
    tok.padding_side = padding_side
    try:
        if any(has_image):
            batch = model.processor(text=texts, images=[i for i in images if i is not None],
                                    return_tensors="pt", padding=True)
        else:
            batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                        truncation=max_length is not None, max_length=max_length)
    finally:
        tok.padding_side = old_side
    batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in dict(batch).items()}
    batch.pop("token_type_ids", None)
    if model.adapter.extra.get("position_ids", True) and "image_grid_thw" not in batch \
            and "mm_token_type_ids" not in batch:
        batch["position_ids"] = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return batch


def encode_texts(model, texts: list[str], **kwargs) -> dict:
    """:func:`encode` for plain strings (text modality)."""
    from types import SimpleNamespace

    items = [SimpleNamespace(prompt_text=(lambda t=t: t), get_image=lambda: None) for t in texts]
    return encode(model, items, **kwargs)
