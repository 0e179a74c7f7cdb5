"""Batched greedy generation with left padding and a progress bar.

Example:
    >>> from ps_interp.models import tiny
    >>> from ps_interp.generate import generate
    >>> model = tiny.build("llama")
    >>> len(generate(model, ["Hi"], max_new_tokens=4, progress=False))
    1
"""
from __future__ import annotations

import torch

from .data.prompting import encode, encode_texts
from .errors import PsInterpError
from .precision import autocast_context


def _as_items(prompts):
    return [p for p in prompts] if not isinstance(prompts[0], str) else None


def generate(model, prompts, *, max_new_tokens: int = 64, batch_size: int = 16, system_prompt: str | None = None,
             autocast: bool = False, progress: bool = True, first_logprobs: bool = False):
    """Greedy completions (decoded, special tokens removed) of probe items or plain strings, in input order.

    ``first_logprobs=True`` returns ``(texts, logprobs)``: ``logprobs[i]`` is the float32 log-distribution
    ``[vocab]`` of the first answer token of prompt ``i`` (the generation's own first step, so retention
    metrics need no extra forward).
    """
    from tqdm.auto import tqdm

    prompts = list(prompts)
    if not prompts:
        return []
    is_text = isinstance(prompts[0], str)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]) if is_text else len(prompts[i].prompt_text()), i))
    out: list[str | None] = [None] * len(prompts)
    first: list[torch.Tensor | None] = [None] * len(prompts)
    eos = model.tokenizer.eos_token_id
    ctx = autocast_context(model.device, autocast)
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
                seqs, step0 = model.generate_ids(batch, **kw), None
            elif first_logprobs:
                res = model.hf.generate(**batch, **kw, output_logits=True, return_dict_in_generate=True)
                seqs, step0 = res.sequences, res.logits[0].float().log_softmax(-1).cpu()
            else:
                seqs, step0 = model.hf.generate(**batch, **kw), None
        new = seqs[:, batch["input_ids"].shape[1]:]
        for j, (i, row) in enumerate(zip(idx, new)):
            out[i] = model.tokenizer.decode(row, skip_special_tokens=True).strip()
            if step0 is not None:
                first[i] = step0[j]
        bar.update(len(idx))
    bar.close()
    if not first_logprobs:
        return out
    if any(f is None for f in first):  # remote generation returns ids only: one extra scoring pass
        from .evaluate import next_token_logprobs

        if is_text:
            raise PsInterpError("first_logprobs with remote generation needs probe items, not strings",
                                fix="pass ProbeItems (ps_interp.data.ProbeItem) or first_logprobs=False")
        return out, next_token_logprobs(model, prompts, system_prompt=system_prompt)
    return out, torch.stack(first)
