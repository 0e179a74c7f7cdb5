"""`evaluate`: ASR per language x modality x category with bootstrap intervals, over-refusal, retention.

Example:
    >>> import ps_interp as ps
    >>> ev = ps.evaluate(model, ps.probes(split="test"), max_new_tokens=48)   # doctest: +SKIP
    >>> ev.table.query("level == 'lang'")[["lang", "asr", "asr_lo", "asr_hi"]]  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .asr import asr_table
from .data.prompting import encode, encode_texts
from .errors import PsInterpError
from .generate import MAX_LANGUAGE_SCALE, generate, language_budgets
from .intervene import last_logits
from .judges import RefusalKeywords


@dataclass
class Evaluation:
    """Completions with verdicts (``completions``), the ASR / over-refusal table and retention figures."""

    completions: pd.DataFrame
    table: pd.DataFrame
    retention: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    #: next-token log-probabilities ``[n_benign, vocab]`` on the benign prompts (in order): the ``reference``
    #: for evaluating the same model after a change (what ``transfer`` does with the "before" evaluation)
    benign_logprobs: torch.Tensor | None = field(default=None, repr=False)

    def asr(self, by: str = "lang") -> pd.DataFrame:
        """The rows of ``table`` at one level (``lang``, ``modality``, ``category`` or ``all``)."""
        t = self.table
        return t[t["level"] == by].reset_index(drop=True)

    def save(self, directory: str | os.PathLike, *, include_completions: bool = True) -> Path:
        """Write table.csv, retention.json and (unless told not to) completions.csv."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(d / "asr.csv", index=False)
        (d / "retention.json").write_text(json.dumps({"retention": self.retention, "settings": self.settings},
                                                     indent=1, default=float))
        if include_completions:
            self.completions.to_csv(d / "completions.csv", index=False)
        return d

    def __repr__(self) -> str:
        overall = self.asr("all")
        asr = float(overall["asr"].iloc[0]) if len(overall) else float("nan")
        return f"Evaluation({len(self.completions)} prompts, ASR {asr:.1%}, retention {self.retention})"


def next_token_logprobs(model, probes, *, batch_size: int = 16, system_prompt: str | None = None) -> torch.Tensor:
    """Log-probabilities ``[N, vocab]`` of the first response token of each prompt (float32, CPU)."""
    items = list(probes)
    out = []
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            batch = encode(model, items[s:s + batch_size], system_prompt=system_prompt)
            logits = last_logits(model, batch).float()
            out.append(torch.log_softmax(logits, -1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def nll_sums(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[sum of next-token NLL, number of predicted tokens]`` of a right-padded batch (float64)."""
    target = input_ids[:, 1:].to(logits.device)
    mask = attention_mask[:, 1:].to(logits.device).bool()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, reduction="none")
    return torch.stack([nll[mask].double().sum(), mask.sum().double()])


def perplexity(model, texts: list[str], *, batch_size: int = 16) -> float:
    """Token-level perplexity of ``texts`` (raw, no chat template)."""
    total, count = 0.0, 0
    tok = model.tokenizer
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            chunk = texts[s:s + batch_size]
            side, tok.padding_side = tok.padding_side, "right"
            try:
                enc = tok(chunk, return_tensors="pt", padding=True).to(model.device)
            finally:
                tok.padding_side = side
            if getattr(model, "remote", False):  # reduced on the server: two numbers come back
                nll, n = model.reduce_logits(dict(enc), nll_sums, enc["input_ids"], enc["attention_mask"]).tolist()
            else:
                nll, n = nll_sums(model.hf(**enc, use_cache=False).logits, enc["input_ids"],
                                  enc["attention_mask"]).tolist()
            total += nll
            count += int(n)
    return float(np.exp(total / max(count, 1)))


def retention_metrics(model, benign, reference: torch.Tensor | None = None, *, batch_size: int = 16,
                      current: torch.Tensor | None = None) -> dict:
    """KL(original || current) of benign next-token distributions (when ``reference`` is given) and perplexity.

    ``current``: the current model's :func:`next_token_logprobs` on ``benign`` if already known (from generation).
    """
    items = list(benign)
    out = {"benign_perplexity": perplexity(model, [it.text for it in items], batch_size=batch_size)}
    if reference is not None:
        if len(reference) != len(items):
            raise PsInterpError(f"reference has {len(reference)} rows for {len(items)} benign prompts",
                                fix="compute the reference with next_token_logprobs on the same benign probes")
        cur = current if current is not None else next_token_logprobs(model, items, batch_size=batch_size)
        kl = (reference.exp() * (reference - cur)).sum(-1)
        out["benign_kl"] = float(kl.mean())
    return out


def evaluate(model, probes, *, judge=None, max_new_tokens: int = 64, batch_size: int = 32,
             reference: torch.Tensor | None = None, system_prompt: str | None = None, autocast: bool = False,
             language_scale: float = MAX_LANGUAGE_SCALE, n_boot: int = 2000, seed: int = 0,
             progress: bool = True) -> Evaluation:
    """Generate greedily on every probe, judge refusals, and tabulate ASR and over-refusal with 95% intervals.

    ``max_new_tokens`` counts English tokens: each language gets as much text (its budget scaled by the
    tokenizer's length ratio on the built-in refusals, at most ``language_scale`` times; 1 turns this off;
    :func:`~ps_interp.generate.language_budgets`), so that long-tokenised scripts are judged on as much text.

    ``reference``: :func:`next_token_logprobs` of the original model on the *benign* probes (in order),
    to report the KL of the current model to it. ``judge`` defaults to :class:`RefusalKeywords`.
    """
    items = list(probes)
    if not items:
        raise PsInterpError("no probes to evaluate", fix="check the selection (e.g. probes.select(split='test'))")
    judge = judge or RefusalKeywords()
    budgets = language_budgets(model, [it.lang for it in items], max_new_tokens, cap=language_scale)
    texts, first = generate(model, items, max_new_tokens=budgets, batch_size=batch_size,
                            system_prompt=system_prompt, autocast=autocast, progress=progress, first_logprobs=True)
    refused = judge.judge([it.prompt_text() for it in items], texts, [it.lang for it in items])
    df = pd.DataFrame({"id": [it.id for it in items], "lang": [it.lang for it in items],
                       "modality": [it.modality for it in items], "label": [it.label for it in items],
                       "category": [it.category for it in items], "completion": texts,
                       "refused": np.asarray(refused, dtype=bool)})
    table = asr_table(df, by=("lang", "modality", "category", ("lang", "modality")), n_boot=n_boot, seed=seed)
    is_benign = [it.label == "benign" for it in items]
    benign = [it for it, b in zip(items, is_benign) if b]
    benign_first = first[torch.tensor(is_benign)] if benign else None
    # generation batches of 32 ran 16% faster than 16 here; full-sequence logits stay at 16 rows (memory)
    retention = retention_metrics(model, benign, reference, batch_size=min(batch_size, 16),
                                  current=benign_first) if benign else {}
    settings = {"judge": getattr(judge, "name", type(judge).__name__), "max_new_tokens": max_new_tokens,
                "language_scale": language_scale, "max_new_tokens_by_lang": budgets,
                "decoding": "greedy", "system_prompt": system_prompt, "n_boot": n_boot}
    return Evaluation(df, table, retention, settings, benign_logprobs=benign_first)
