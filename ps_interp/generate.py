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


#: at most this many times ``max_new_tokens`` for a language (the slowest scripts would otherwise take 8x)
MAX_LANGUAGE_SCALE = 4.0


def language_budgets(model, langs, max_new_tokens: int, *, cap: float = MAX_LANGUAGE_SCALE) -> dict[str, int]:
    """Per-language ``max_new_tokens``: ``max_new_tokens`` English tokens' worth of text in each language.

    The scale is how many more tokens the model's tokenizer needs for the built-in refusals
    (``refusals.json``, the same sentences in every language) than for the English ones, at most
    ``cap`` (``cap=1`` gives every language ``max_new_tokens``). A language with no built-in refusals
    gets ``max_new_tokens``. Why: SmolLM2's tokenizer needs 8.5x the tokens for a Bengali refusal and
    6.8x for Thai; with one budget, 32 new tokens of Bengali are ~9 characters, too short for any
    refusal to show, so a keyword judge could only ever see compliance there.

    Example:
        >>> from ps_interp.models import tiny
        >>> language_budgets(tiny.build("llama"), ["en"], 32)
        {'en': 32}
    """
    import math

    from .data.builtin import load_refusals

    if cap < 1:
        raise PsInterpError(f"cap = {cap} would give a language fewer tokens than English", fix="use cap >= 1")
    refusals = load_refusals()
    tok = model.tokenizer

    def mean_tokens(lang):
        texts = refusals.get(lang) or []
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts) if texts else 0.0

    english = mean_tokens("en")
    out = {}
    for lang in dict.fromkeys(langs):
        ratio = mean_tokens(lang) / english if english and cap > 1 else 1.0
        out[lang] = int(math.ceil(max_new_tokens * min(cap, max(1.0, ratio))))
    return out


def generate(model, prompts, *, max_new_tokens: int | dict[str, int] = 64, batch_size: int = 16,
             system_prompt: str | None = None, autocast: bool = False, progress: bool = True,
             first_logprobs: bool = False):
    """Greedy completions (decoded, special tokens removed) of probe items or plain strings, in input order.

    ``max_new_tokens`` may be a ``{lang: n}`` mapping (probe items only; see :func:`language_budgets`):
    each completion is cut to its language's budget (greedy decoding: the first n tokens do not depend on
    how far the batch goes on).

    ``first_logprobs=True`` returns ``(texts, logprobs)``: ``logprobs[i]`` is the float32 log-distribution
    ``[vocab]`` of the first answer token of prompt ``i`` (the generation's own first step, so retention
    metrics need no extra forward).
    """
    from tqdm.auto import tqdm

    prompts = list(prompts)
    if not prompts:
        return []
    is_text = isinstance(prompts[0], str)
    if isinstance(max_new_tokens, dict):
        if is_text:
            raise PsInterpError("per-language max_new_tokens needs probe items, not strings",
                                fix="pass ProbeItems or one max_new_tokens for all prompts")
        missing = sorted({p.lang for p in prompts} - set(max_new_tokens))
        if missing:
            raise PsInterpError(f"max_new_tokens has no budget for {missing}",
                                fix="build it with ps_interp.generate.language_budgets(model, langs, n)")
        budget = [max_new_tokens[p.lang] for p in prompts]
    else:
        budget = [max_new_tokens] * len(prompts)
    length = [len(p) if is_text else len(p.prompt_text()) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (budget[i], length[i], i))  # batches share a budget
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
        kw = dict(max_new_tokens=max(budget[i] for i in idx), do_sample=False, eos_token_id=eos,
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
            out[i] = model.tokenizer.decode(row[:budget[i]], skip_special_tokens=True).strip()
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
