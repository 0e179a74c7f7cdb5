"""A torchvision-free image+text processor for Qwen2-VL / Qwen2.5-VL.

transformers' ``Qwen2VLProcessor`` insists on a video processor, which needs torchvision (and
torchvision would pull a CUDA torch here). This one does what recording and generation need:
the chat template, ``Qwen2VLImageProcessor`` pixels and the expansion of ``<|image_pad|>``.

Example:
    >>> from ps_interp.models import tiny
    >>> model = tiny.build("qwen2_vl")
    >>> type(model.processor).__name__
    'QwenVLProcessor'
"""
from __future__ import annotations

IMAGE_PAD = "<|image_pad|>"


class QwenVLProcessor:
    """``processor(text=[...], images=[...], return_tensors="pt")`` like the HF processor, images only."""

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or tokenizer.chat_template

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def __call__(self, text, images=None, return_tensors="pt", padding=True, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        out = {}
        if images:
            pix = self.image_processor(images=images, return_tensors=return_tensors)
            out.update(pix)
            merge = self.image_processor.merge_size ** 2
            counts = iter(int(g.prod()) // merge for g in pix["image_grid_thw"])
            texts = [self._expand(t, counts) for t in texts]
        enc = dict(self.tokenizer(texts, return_tensors=return_tensors, padding=padding, **kwargs))
        image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        enc["mm_token_type_ids"] = (enc["input_ids"] == image_id).long()  # 1 = image token, 0 = text
        return {**enc, **out}

    @staticmethod
    def _expand(text: str, counts) -> str:
        parts = text.split(IMAGE_PAD)
        return parts[0] + "".join(IMAGE_PAD * next(counts) + p for p in parts[1:])

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
