"""Training data for alignment: harmful prompt -> refusal in its language, benign prompts to retain.

:func:`training_pairs` picks the items; :func:`collate` turns prompts and target token ids into one
left-padded batch (``input_ids``, ``attention_mask``, ``position_ids``, ``labels`` with the prompt
masked by ``-100``); :func:`greedy_answers` generates the original model's own answers to the benign
prompts once (the retention targets).

Example:
    >>> from ps_interp.data.builtin import load_refusals, probes
    >>> data = training_pairs(probes(langs="en"), langs=("en",))
    >>> data.harmful[0].label, data.refusals[0] in load_refusals()["en"]
    ('harmful', True)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .data.probes import ProbeItem, ProbeSet
from .errors import PsInterpError

IGNORE = -100
RETENTION_MODES = ("kl", "greedy")


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """Harmful items with their refusal targets, and benign items for the retention term.

    Example:
        >>> from ps_interp.data.builtin import probes
        >>> data = training_pairs(probes(langs="en"))
        >>> len(data.harmful) == len(data.refusals)
        True
    """

    harmful: tuple[ProbeItem, ...]
    refusals: tuple[str, ...]
    benign: tuple[ProbeItem, ...]
    meta: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.harmful) != len(self.refusals):
            raise PsInterpError(f"{len(self.harmful)} harmful items but {len(self.refusals)} refusal targets",
                                fix="give one refusal target per harmful item")
        if not self.harmful:
            raise PsInterpError("no harmful items to train on", fix="select probes with label='harmful'")

    def __repr__(self) -> str:
        langs = sorted({i.lang for i in self.harmful + self.benign})
        return f"TrainingData({len(self.harmful)} refusal pairs, {len(self.benign)} benign prompts, langs={langs})"

    def to_frame(self):
        """One row per example: kind ('refusal' / 'retain'), id, lang, modality, target (refusals only).

        Prompts are left out on purpose (harmful requests stay in the data files).
        """
        import pandas as pd

        rows = [dict(kind="refusal", id=i.id, lang=i.lang, modality=i.modality, target=t)
                for i, t in zip(self.harmful, self.refusals)]
        rows += [dict(kind="retain", id=i.id, lang=i.lang, modality=i.modality, target=None) for i in self.benign]
        return pd.DataFrame(rows, columns=["kind", "id", "lang", "modality", "target"])


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def training_pairs(probes: ProbeSet, *, langs: str | Iterable[str] | None = ("en",),
                   modalities: str | Iterable[str] = ("text",), split: str | Iterable[str] | None = "train",
                   seed: int = 0, refusals: Mapping[str, Sequence[str]] | None = None) -> TrainingData:
    """Harmful items -> a refusal in their language; benign items for retention.

    The refusal of a harmful item is taken from ``item.refusals``, else from ``refusals`` (default: the
    built-in ``refusals.json``), cycled deterministically from a per-language offset drawn with ``seed``.
    ``langs=None`` / ``split=None`` keep every language / split present.

    Example:
        >>> from ps_interp.data.builtin import probes
        >>> training_pairs(probes(langs="en"), split="train").benign[0].label
        'benign'
    """
    if not isinstance(probes, ProbeSet):
        raise PsInterpError(f"training_pairs needs a ProbeSet, got {type(probes).__name__}",
                            fix="pass ps_interp.data.builtin.probes(...) or ProbeSet.load_jsonl(path)")
    chosen = probes.select(lang=_as_tuple(langs), modality=_as_tuple(modalities), split=_as_tuple(split))
    harmful = chosen.select(label="harmful").require_nonempty("harmful training prompts")
    benign = chosen.select(label="benign")
    table = refusals
    rng = np.random.default_rng(seed)
    offsets: dict[str, int] = {}
    counters: dict[str, int] = {}
    targets = []
    for item in harmful:
        pool = list(item.refusals)
        if not pool:
            if table is None:
                from .data.builtin import load_refusals

                table = load_refusals()
            pool = list(table.get(item.lang) or ())
        if not pool:
            raise PsInterpError(f"no refusal sentences for language {item.lang!r} (item {item.id!r})",
                                fix=f"add refusals['{item.lang}'] to refusals.json or pass refusals=")
        if item.lang not in offsets:
            offsets[item.lang] = int(rng.integers(len(pool)))
        n = counters.get(item.lang, 0)
        counters[item.lang] = n + 1
        targets.append(pool[(offsets[item.lang] + n) % len(pool)])
    meta = dict(langs=list(_as_tuple(langs) or chosen.langs), modalities=list(_as_tuple(modalities)),
                split=split if isinstance(split, (str, type(None))) else list(split), seed=seed)
    return TrainingData(tuple(harmful), tuple(targets), tuple(benign), meta)


# ---- tokens ---------------------------------------------------------------------------------
def _end_id(model) -> int | None:
    return model.tokenizer.eos_token_id


def target_ids(model, text: str) -> list[int]:
    """Token ids of a target answer: the text (no special tokens) followed by the end-of-turn token.

    Example:
        >>> from ps_interp.models import tiny
        >>> ids = target_ids(tiny.build("llama"), "No.")
        >>> ids[-1] == tiny.build("llama").tokenizer.eos_token_id
        True
    """
    ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    end = _end_id(model)
    return ids + ([end] if end is not None else [])


def _prompt_rows(model, items: Sequence[ProbeItem]) -> tuple[list[dict[str, list]], dict]:
    """Per item the unpadded prompt ids (and other per-token inputs such as ``mm_token_type_ids``),
    plus the per-batch inputs (pixel values...), from one ``encode`` call."""
    from .data.prompting import encode

    enc = encode(model, items, padding_side="left")
    ids, mask = enc.pop("input_ids"), enc.pop("attention_mask").bool()
    enc.pop("position_ids", None)
    per_token = [k for k, v in enc.items() if torch.is_tensor(v) and v.dim() == 2 and v.shape == ids.shape]
    rows = [{"input_ids": ids[r][mask[r]].tolist(), **{k: enc[k][r][mask[r]].tolist() for k in per_token}}
            for r in range(ids.shape[0])]
    return rows, {k: v for k, v in enc.items() if k not in per_token}


def collate(model, items: Sequence[ProbeItem], targets: Sequence[Sequence[int]], *,
            max_length: int | None = None) -> dict[str, torch.Tensor]:
    """One left-padded training batch: prompt tokens then target tokens; ``labels`` mark the targets.

    ``position_ids`` follow the attention mask, so padding never changes the loss. With
    ``max_length``, the target is cut first, then the prompt from the left (text prompts only: a
    prompt with an image is never cut).

    Example:
        >>> from ps_interp.models import tiny
        >>> from ps_interp.data.probes import ProbeItem
        >>> m = tiny.build("llama")
        >>> b = collate(m, [ProbeItem(id="a", lang="en", label="benign", text="Hi")], [[5, 6]])
        >>> b["labels"][0, -2:].tolist()
        [5, 6]
    """
    if len(items) != len(targets) or not items:
        raise PsInterpError(f"collate got {len(items)} items and {len(targets)} targets",
                            fix="pass one target (list of token ids) per item")
    prompts, extra = _prompt_rows(model, items)
    rows = []
    for prompt, target in zip(prompts, targets):
        target = list(target)
        n = len(prompt["input_ids"])
        if max_length is not None:
            target = target[:max(max_length - 1, 1)]
            if not extra:
                n = min(n, max(max_length - len(target), 1))
        row = {k: v[len(v) - n:] + [0] * len(target) for k, v in prompt.items()}
        row["input_ids"] = row["input_ids"][:n] + target
        row["labels"] = [IGNORE] * n + target
        rows.append(row)
    width = max(len(r["input_ids"]) for r in rows)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    fill = {"input_ids": pad, "labels": IGNORE}

    def padded(key: str) -> torch.Tensor:
        value = fill.get(key, 0)
        return torch.tensor([[value] * (width - len(r[key])) + r[key] for r in rows], dtype=torch.long)

    attention = torch.tensor([[0] * (width - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in rows])
    batch = {key: padded(key) for key in rows[0]}
    batch["attention_mask"] = attention
    if model.adapter.extra.get("position_ids", True) and "image_grid_thw" not in extra \
            and "mm_token_type_ids" not in batch:
        batch["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    batch.update(extra)
    return batch


@torch.no_grad()
def greedy_answers(model, items: Sequence[ProbeItem], *, max_new_tokens: int = 32,
                   batch_size: int = 8) -> list[list[int]]:
    """The model's own greedy answer to each item (token ids, up to and including the end token).

    Example:
        >>> from ps_interp.models import tiny
        >>> from ps_interp.data.probes import ProbeItem
        >>> m = tiny.build("llama")
        >>> len(greedy_answers(m, [ProbeItem(id="a", lang="en", label="benign", text="Hi")], max_new_tokens=4)[0])
        4
    """
    from .data.prompting import encode

    end = _end_id(model)
    answers: list[list[int]] = []
    for start in range(0, len(items), batch_size):
        enc = encode(model, items[start:start + batch_size], padding_side="left")
        enc.pop("position_ids", None)  # generate() derives positions from the attention mask
        width = enc["input_ids"].shape[1]
        out = model.hf.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=model.tokenizer.pad_token_id)
        for row in out[:, width:].tolist():
            if end is not None and end in row:
                row = row[:row.index(end) + 1]
            answers.append(row or ([end] if end is not None else [0]))
    return answers


def epoch_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Indices of ``steps`` batches of ``batch_size`` drawn without replacement, reshuffled every epoch.

    Example:
        >>> epoch_order(3, steps=2, batch_size=2, seed=0)
        [[2, 0], [1, 2]]
    """
    from collections import deque

    rng = np.random.default_rng(seed)
    stream: deque[int] = deque()
    batches = []
    for _ in range(steps):
        picked: list[int] = []
        deferred: list[int] = []  # an index already in this batch (epoch boundary) waits for the next one
        while len(picked) < min(batch_size, n):
            if not stream:
                stream.extend(rng.permutation(n).tolist())
            candidate = stream.popleft()
            (deferred if candidate in picked else picked).append(candidate)
        stream.extendleft(reversed(deferred))
        batches.append(picked)
    return batches


def sample_batches(data: TrainingData, *, steps: int, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """Index plan for ``steps`` steps: ``{"refusal": [...], "retain": [...]}``.

    ``retain`` is empty when there are no benign items.
    """
    refusal = epoch_order(len(data.harmful), steps, batch_size, seed)
    retain = epoch_order(len(data.benign), steps, batch_size, seed + 1) if data.benign else [[]] * steps
    return [dict(refusal=r, retain=k) for r, k in zip(refusal, retain)]
