"""Batched greedy generation with left padding and a progress bar.

Example:
    >>> from ps_interp.models import tiny
    >>> from ps_interp.generate import generate
    >>> model = tiny.build("llama")
    >>> len(generate(model, ["Hi"], max_new_tokens=4, progress=False))
    1
"""
from __future__ import annotations

import contextlib

import torch

from .data.prompting import encode, encode_texts


def _as_items(prompts):
    return [p for p in prompts] if not isinstance(prompts[0], str) else None


def generate(model, prompts, *, max_new_tokens: int = 64, batch_size: int = 16, system_prompt: str | None = None,
             autocast: bool = False, progress: bool = True) -> list[str]:
    """Greedy completions (decoded, special tokens removed) of probe items or plain strings, in input order."""
    from tqdm.auto import tqdm

    prompts = list(prompts)
    if not prompts:
        return []
    is_text = isinstance(prompts[0], str)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]) if is_text else len(prompts[i].prompt_text()), i))
    out: list[str | None] = [None] * len(prompts)
    eos = model.tokenizer.eos_token_id
    ctx = torch.autocast(model.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    bar = tqdm(total=len(prompts), desc="generate", disable=not progress, unit="prompt")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        chunk = [prompts[i] for i in idx]
        batch = (encode_texts(model, chunk, system_prompt=system_prompt) if is_text
                 else encode(model, chunk, system_prompt=system_prompt))
        batch.pop("position_ids", None)  # generate() derives positions from the attention mask
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                  pad_token_id=model.tokenizer.pad_token_id)
        with torch.inference_mode(), ctx:
            if getattr(model, "remote", False):  # generated on the server; only the token ids come back
                seqs = model.generate_ids(batch, **kw)
            else:
                seqs = model.hf.generate(**batch, **kw)
        new = seqs[:, batch["input_ids"].shape[1]:]
        for i, row in zip(idx, new):
            out[i] = model.tokenizer.decode(row, skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return out
