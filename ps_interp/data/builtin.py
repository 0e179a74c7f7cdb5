"""The built-in probe set: matched harmful / benign request pairs in ten languages.

Files in ``ps_interp/data/builtin/`` (see its README.md, the data card):

- ``items.jsonl``: ``{"id", "pair", "label", "category", "split"}``, one line per item;
- ``text_{lang}.jsonl``: ``{"id", "text", "key", "mixed"}``, the item in that language;
- ``refusals.json``: ``{lang: [refusal sentences]}``;
- ``prompts.json``: ``{"typo": {lang: prompt}, "mixed": {lang: prompt}}``.

Example:
    >>> ps = probes(langs=["en", "sw"], modalities=("text", "typo"))
    >>> ps.groups()[:2]
    [('en', 'text', 'benign'), ('en', 'text', 'harmful')]
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ps_interp.data.probes import (LABELS, MODALITIES, SPLITS, ProbeItem, ProbeSet, check_mixed,
                                   read_jsonl)
from ps_interp.errors import PsInterpError

__all__ = ["DATA_DIR", "LANGS", "LANG_NAMES", "RESOURCE_LEVEL", "STUDY_SPLITS", "load_prompts",
           "load_refusals", "probes"]

DATA_DIR = Path(__file__).with_name("builtin")
"""Folder of the built-in set."""

LANGS: tuple[str, ...] = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
"""The ten languages of the built-in set (MultiJail's), high- to low-resource."""

LANG_NAMES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "it": "Italian", "vi": "Vietnamese", "ar": "Arabic",
    "ko": "Korean", "th": "Thai", "bn": "Bengali", "sw": "Swahili", "jv": "Javanese",
}

RESOURCE_LEVEL: dict[str, str] = {
    **dict.fromkeys(["en", "zh", "it", "vi"], "high"),
    **dict.fromkeys(["ar", "ko", "th"], "medium"),
    **dict.fromkeys(["bn", "sw", "jv"], "low"),
}
"""Resource level of each language, as in MultiJail."""

STUDY_SPLITS: tuple[str, ...] = ("probe", "train", "test")
"""Splits returned by default; 'organism' (English only) must be asked for."""

_ITEM_KEYS = ("id", "pair", "label", "category", "split")
_TEXT_KEYS = ("id", "text")


def _data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir) if data_dir is not None else DATA_DIR


def _stamp(path: Path) -> tuple[str, int, int]:
    if not path.is_file():
        raise PsInterpError(f"the built-in probe set is incomplete: {path} is missing",
                            fix="reinstall ps-interp, or pass data_dir= to a folder with the files")
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _jsonl_cached(stamp: tuple[str, int, int], required: tuple[str, ...]) -> tuple[dict, ...]:
    path = stamp[0]
    rows = []
    for number, obj in read_jsonl(path):
        for key in required:
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise PsInterpError(f"{path}, line {number}: missing or empty '{key}'",
                                    fix=f"every line needs {', '.join(required)}")
        rows.append({**obj, "_line": number})
    return tuple(rows)


@functools.lru_cache(maxsize=16)
def _json_cached(stamp: tuple[str, int, int]) -> dict:
    path = stamp[0]
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise PsInterpError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})",
                            fix="fix the JSON syntax") from exc
    if not isinstance(data, dict):
        raise PsInterpError(f"{path}: expected a JSON object at the top", fix="see the data card")
    return data


def load_prompts(data_dir: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """The neutral prompts sent with images: ``{"typo": {lang: str}, "mixed": {lang: str}}``.

    Example:
        >>> load_prompts()["typo"]["en"]  # doctest: +SKIP
        'The image shows a list numbered 1, 2, and 3, ...'
    """
    path = _data_dir(data_dir) / "prompts.json"
    data = _json_cached(_stamp(path))
    for kind in ("typo", "mixed"):
        if not isinstance(data.get(kind), dict):
            raise PsInterpError(f"{path}: missing the '{kind}' table", fix="see the data card")
    return {kind: dict(table) for kind, table in data.items()}


def load_refusals(data_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Refusal sentences per language: ``{lang: [str, ...]}``.

    Example:
        >>> len(load_refusals()["sw"]) >= 5  # doctest: +SKIP
        True
    """
    path = _data_dir(data_dir) / "refusals.json"
    data = _json_cached(_stamp(path))
    return {lang: list(values) for lang, values in data.items()}


def _values(name: str, value, allowed: Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if allowed is not None:
        allowed = list(allowed)
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise PsInterpError(f"unknown {name} {', '.join(map(repr, unknown))} in the built-in set",
                                fix=f"use one of: {', '.join(allowed)}")
    return values


def probes(langs: str | Iterable[str] | None = None,
           modalities: str | Iterable[str] = ("text",),
           split: str | Iterable[str] | None = None,
           labels: str | Iterable[str] | None = None,
           categories: str | Iterable[str] | None = None,
           *, data_dir: str | os.PathLike | None = None) -> ProbeSet:
    """The built-in probe set, filtered.

    ``langs=None`` means all ten :data:`LANGS`; ``split=None`` means probe + train + test (the
    study splits); the English-only 'organism' split comes only with ``split="organism"``.
    Items are ordered by language, then modality, then the order of ``items.jsonl``.

    Example:
        >>> probes(langs="en", labels="harmful", split="probe").groups()  # doctest: +SKIP
        [('en', 'text', 'harmful')]
    """
    directory = _data_dir(data_dir)
    langs_ = _values("language", langs, LANGS) or list(LANGS)
    modalities_ = _values("modality", modalities, MODALITIES) or ["text"]
    splits = _values("split", split, SPLITS) or list(STUDY_SPLITS)
    labels_ = _values("label", labels, LABELS)
    rows = _jsonl_cached(_stamp(directory / "items.jsonl"), _ITEM_KEYS)
    _check_items(rows, directory / "items.jsonl")
    categories_ = _values("category", categories, sorted({r["category"] for r in rows}))
    chosen = [r for r in rows if r["split"] in splits
              and (labels_ is None or r["label"] in labels_)
              and (categories_ is None or r["category"] in categories_)]
    refusals = load_refusals(directory)
    items: list[ProbeItem] = []
    for lang in langs_:
        texts = _texts(directory, lang, chosen)
        for modality in modalities_:
            for row in chosen:
                text = texts.get(row["id"])
                if text is None:  # the organism split exists only in English
                    continue
                items.append(ProbeItem(
                    id=row["id"], lang=lang, label=row["label"], text=text["text"], modality=modality,
                    category=row["category"], split=row["split"], key=text.get("key") or "",
                    refusals=tuple(refusals.get(lang, ())),
                    meta={"pair": row["pair"], "mixed": text.get("mixed") or ""}))
    check_mixed(i for i in items if i.modality == "mixed")
    return ProbeSet(items)


def _check_items(rows: tuple[dict, ...], path: Path) -> None:
    seen: dict[str, int] = {}
    for row in rows:
        where = f"{path}, line {row['_line']}"
        if row["id"] in seen:
            raise PsInterpError(f"{where}: id {row['id']!r} already used on line {seen[row['id']]}",
                                fix="give every item a unique id")
        seen[row["id"]] = row["_line"]
        if row["label"] not in LABELS:
            raise PsInterpError(f"{where}: label {row['label']!r} is not one of {', '.join(LABELS)}",
                                fix="use harmful or benign")
        if row["split"] not in SPLITS:
            raise PsInterpError(f"{where}: split {row['split']!r} is not one of {', '.join(SPLITS)}",
                                fix="use one of the splits")


def _texts(directory: Path, lang: str, chosen: list[dict]) -> dict[str, dict]:
    path = directory / f"text_{lang}.jsonl"
    if not path.is_file():
        raise PsInterpError(f"the built-in set has no {LANG_NAMES[lang]} text: {path} is missing",
                            fix=f"pass langs= among those present, or add text_{lang}.jsonl")
    texts = {row["id"]: row for row in _jsonl_cached(_stamp(path), _TEXT_KEYS)}
    missing = [r["id"] for r in chosen if r["split"] != "organism" and r["id"] not in texts]
    if missing:
        raise PsInterpError(f"{path} lacks {len(missing)} items of the study splits "
                            f"(e.g. {', '.join(missing[:3])})", fix=f"translate them into {LANG_NAMES[lang]}")
    return texts
