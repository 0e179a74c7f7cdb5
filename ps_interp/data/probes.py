"""Probe items and the :class:`ProbeSet` every stage of the pipeline reads.

A :class:`ProbeItem` is one request in one language and one modality; all translations (and
modalities) of one item share its ``id``. A :class:`ProbeSet` is an immutable sequence of items
with selection, grouping and JSONL round trips.

Example:
    >>> ps = ProbeSet.from_records([
    ...     {"id": "p1", "lang": "en", "label": "benign", "text": "How do I bake bread?"}])
    >>> ps.select(lang="en").groups()
    [('en', 'text', 'benign')]
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ps_interp._io import atomic_write_text
from ps_interp.errors import PsInterpError

__all__ = ["LABELS", "MODALITIES", "SPLITS", "ProbeItem", "ProbeSet", "atomic_write_text", "check_mixed",
           "read_jsonl"]

LABELS: tuple[str, ...] = ("harmful", "benign")
MODALITIES: tuple[str, ...] = ("text", "typo", "mixed")
SPLITS: tuple[str, ...] = ("probe", "train", "test", "organism")
_FIELDS = ("id", "lang", "label", "text", "modality", "category", "split", "key", "image", "refusals")
_REQUIRED = ("id", "lang", "label", "text")


def _check_choice(name: str, value: Any, allowed: Sequence[str], where: str) -> None:
    if value not in allowed:
        raise PsInterpError(f"{where}: {name} {value!r} is not one of {', '.join(allowed)}",
                            fix=f"set {name} to one of {', '.join(allowed)}")


@dataclass(frozen=True)
class ProbeItem:
    """One request (harmful or benign) in one language and modality.

    ``modality`` is 'text' (the request as text), 'typo' (the request drawn as a FigStep-style
    image, with a neutral text prompt) or 'mixed' (the key phrase drawn as an image, with the
    request rephrased to point at it, stored in ``meta['mixed']``). ``meta`` is excluded from
    equality and hashing.

    Example:
        >>> item = ProbeItem(id="p1", lang="en", label="benign", text="How do I bake bread?")
        >>> item.group, item.prompt_text()
        (('en', 'text', 'benign'), 'How do I bake bread?')
    """

    id: str
    lang: str
    label: str
    text: str
    modality: str = "text"
    category: str = ""
    split: str = "probe"
    key: str = ""
    image: Image.Image | str | None = field(default=None, hash=False)
    refusals: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        where = f"probe item {self.id!r} ({self.lang})"
        for name in ("id", "lang", "text"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise PsInterpError(f"{where}: {name} must be a non-empty string, got {value!r}",
                                    fix=f"give every item a {name}")
        _check_choice("label", self.label, LABELS, where)
        _check_choice("modality", self.modality, MODALITIES, where)
        _check_choice("split", self.split, SPLITS, where)
        if isinstance(self.image, os.PathLike):
            object.__setattr__(self, "image", os.fspath(self.image))
        if not isinstance(self.refusals, tuple):
            object.__setattr__(self, "refusals", tuple(self.refusals))
        if self.meta is None:
            object.__setattr__(self, "meta", {})

    @property
    def group(self) -> tuple[str, str, str]:
        """(lang, modality, label): the unit statistics are accumulated over."""
        return (self.lang, self.modality, self.label)

    def prompt_text(self, prompts: Mapping[str, Mapping[str, str]] | None = None) -> str:
        """The text part of the user message.

        'text': the request itself; 'typo': the neutral prompt of the item's language (the
        request is in the image); 'mixed': the 'mixed' prompt, a newline, then ``meta['mixed']``
        (the request rephrased to point at the key phrase shown in the image).
        ``prompts`` defaults to the built-in ``prompts.json``; a language it lacks falls back to
        English. ``meta['typo_prompt']`` / ``meta['mixed_prompt']`` override the prompt of one item.

        Example:
            >>> ProbeItem(id="p", lang="en", label="benign", text="Hi").prompt_text()
            'Hi'
        """
        if self.modality == "text":
            return self.text
        override = self.meta.get(f"{self.modality}_prompt")
        if override is None:
            if prompts is None:
                from ps_interp.data.builtin import load_prompts

                prompts = load_prompts()
            override = _lookup_prompt(prompts, self.modality, self.lang)
        if self.modality == "typo":
            return override
        mixed = self.meta.get("mixed")
        if not mixed:
            raise PsInterpError(f"probe item {self.id!r} ({self.lang}) is 'mixed' but has no "
                                "meta['mixed'] text", fix="set meta['mixed'] or use modality 'typo'")
        return f"{override}\n{mixed}" if override else mixed

    def get_image(self, size: int = 760) -> Image.Image | None:
        """The image of the user message, or None for 'text'.

        An explicit ``image`` (a PIL image or a file path) wins; otherwise 'typo' renders the
        request (or ``meta['typo']``) as a FigStep list and 'mixed' renders the key phrase.
        Rendering is cached.

        Example:
            >>> ProbeItem(id="p", lang="en", label="benign", text="Hi").get_image() is None
            True
        """
        if self.modality == "text":
            return None
        if isinstance(self.image, Image.Image):
            return self.image
        if isinstance(self.image, str):
            return _open_image(self.image, self.id)
        from ps_interp.data.typography import render_list_image, render_phrase_image

        if self.modality == "typo":
            return render_list_image(self.meta.get("typo") or self.text, self.lang, size)
        if not self.key:
            raise PsInterpError(f"probe item {self.id!r} ({self.lang}) is 'mixed' but has no key phrase",
                                fix="set key= on the item or use modality 'typo'")
        return render_phrase_image(self.key, self.lang, size)

    def to_record(self) -> dict:
        """A JSON-ready dict (the image only as a path).

        Example:
            >>> ProbeItem(id="p", lang="en", label="benign", text="Hi").to_record()["label"]
            'benign'
        """
        if isinstance(self.image, Image.Image):
            raise PsInterpError(f"probe item {self.id!r} ({self.lang}) holds an in-memory image, "
                                "which cannot be written to JSON",
                                fix="save the image to a file and set image= to its path")
        record = {name: getattr(self, name) for name in _FIELDS}
        record["refusals"] = list(self.refusals)
        record["meta"] = dict(self.meta)
        return record


def check_mixed(items: Iterable[ProbeItem]) -> None:
    """Raise unless every item has the key phrase and ``meta['mixed']`` text 'mixed' needs."""
    lacking = [f"{i.id} ({i.lang})" for i in items if not (i.key and i.meta.get("mixed"))]
    if lacking:
        raise PsInterpError(
            f"{len(lacking)} items have no key phrase or meta['mixed'] text, needed for "
            f"'mixed': {', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}",
            fix="use modality 'typo', or set key and meta['mixed'] on these items")


def _lookup_prompt(prompts: Mapping[str, Mapping[str, str]], kind: str, lang: str) -> str:
    table = prompts.get(kind) or {}
    if lang in table:
        return table[lang]
    if "en" in table:
        return table["en"]
    raise PsInterpError(f"no '{kind}' prompt for language '{lang}' (nor English)",
                        fix=f"add prompts['{kind}']['{lang}'] to prompts.json")


def _open_image(path: str, item_id: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise PsInterpError(f"probe item {item_id!r}: cannot read image {path!r} ({exc})",
                            fix="check the image path") from exc


def _as_set(value: Any) -> set | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    return set(value)


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a bad line raises
    :class:`PsInterpError` naming the file and the line.

    Example:
        >>> read_jsonl("probes.jsonl")  # doctest: +SKIP
        [(1, {'id': 'p1', ...})]
    """
    path = Path(path)
    if not path.is_file():
        raise PsInterpError(f"file not found: {path}", fix="check the path")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PsInterpError(f"{path}, line {number}: invalid JSON ({exc.msg})",
                                    fix="write one JSON object per line") from exc
            if not isinstance(obj, dict):
                raise PsInterpError(f"{path}, line {number}: expected a JSON object, got "
                                    f"{type(obj).__name__}", fix="write one JSON object per line")
            rows.append((number, obj))
    return rows


def _lang_order(langs: Iterable[str]) -> tuple[str, ...]:
    from ps_interp.data.builtin import LANGS

    present = set(langs)
    return tuple([l for l in LANGS if l in present] + sorted(present - set(LANGS)))


class ProbeSet(Sequence):
    """An immutable sequence of :class:`ProbeItem`.

    Example:
        >>> ps = ProbeSet([ProbeItem(id="a", lang="en", label="benign", text="Hi"),
        ...                ProbeItem(id="a", lang="zh", label="benign", text="你好")])
        >>> len(ps.select(lang=["zh"])), ps.langs
        (1, ('en', 'zh'))
    """

    __slots__ = ("_items", "_query", "_source")

    def __init__(self, items: Iterable[ProbeItem] = (), *, _query: str = "", _source: str = ""):
        self._items: tuple[ProbeItem, ...] = tuple(items)
        for position, item in enumerate(self._items):
            if not isinstance(item, ProbeItem):
                raise PsInterpError(f"ProbeSet element {position} is a {type(item).__name__}, "
                                    "not a ProbeItem", fix="build sets from ProbeItem objects or "
                                    "use ProbeSet.from_records")
        self._query = _query
        self._source = _source

    # ------------------------------------------------------------ sequence
    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ProbeItem]:
        return iter(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ProbeSet(self._items[index])
        return self._items[index]

    def __add__(self, other: ProbeSet) -> ProbeSet:
        if not isinstance(other, ProbeSet):
            return NotImplemented
        return ProbeSet(self._items + other._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProbeSet) and self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        labels = {label: sum(i.label == label for i in self._items) for label in LABELS}
        return (f"ProbeSet({len(self)} items, langs={list(self.langs)}, "
                f"modalities={list(self.modalities)}, harmful={labels['harmful']}, "
                f"benign={labels['benign']})")

    # ------------------------------------------------------------ views
    @property
    def langs(self) -> tuple[str, ...]:
        """Languages present, the built-in order first (en, zh, ...), then others sorted."""
        return _lang_order(i.lang for i in self._items)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present, in the order text, typo, mixed."""
        present = {i.modality for i in self._items}
        return tuple(m for m in MODALITIES if m in present)

    @property
    def ids(self) -> tuple[str, ...]:
        """Distinct item ids, in order of first appearance."""
        return tuple(dict.fromkeys(i.id for i in self._items))

    def groups(self) -> list[tuple[str, str, str]]:
        """Sorted (lang, modality, label) groups present."""
        return sorted({i.group for i in self._items})

    def select(self, lang=None, modality=None, label=None, split=None, category=None) -> ProbeSet:
        """Items matching every given filter; each filter is a value or a list of values.

        An empty result is allowed (see :meth:`require_nonempty`); a label, modality or split
        that does not exist at all raises.

        Example:
            >>> ps.select(lang=["en", "zh"], label="harmful")  # doctest: +SKIP
        """
        filters = {"lang": _as_set(lang), "modality": _as_set(modality), "label": _as_set(label),
                   "split": _as_set(split), "category": _as_set(category)}
        for name, allowed in (("label", LABELS), ("modality", MODALITIES), ("split", SPLITS)):
            for value in sorted(filters[name] or ()):
                _check_choice(name, value, allowed, "select")
        active = {k: v for k, v in filters.items() if v is not None}
        items = [i for i in self._items if all(getattr(i, k) in v for k, v in active.items())]
        query = ", ".join(f"{k}={sorted(v)}" for k, v in active.items())
        return ProbeSet(items, _query=query, _source=self._summary())

    def _summary(self) -> str:
        if not self._items:
            return "no items"
        splits = sorted({i.split for i in self._items})
        labels = sorted({i.label for i in self._items})
        return (f"langs={list(self.langs)}, modalities={list(self.modalities)}, "
                f"labels={labels}, splits={splits}")

    def require_nonempty(self, what: str = "") -> ProbeSet:
        """Return self, or raise :class:`PsInterpError` naming the selection if it is empty.

        Example:
            >>> ps.select(lang="sw").require_nonempty("Swahili harmful text")  # doctest: +SKIP
            PsInterpError: no probes for Swahili harmful text (selected lang=['sw']) ...
        """
        if self._items:
            return self
        problem = f"no probes for {what or 'this selection'}"
        if self._query:
            problem += f" (selected {self._query})"
        fix = f"select values that exist; the set it came from has {self._source}" if self._source \
            else "load or build probes first"
        raise PsInterpError(problem, fix=fix)

    def with_modality(self, modality: str) -> ProbeSet:
        """A copy of every item in ``modality`` (an explicit image is dropped when the modality
        changes, since it belonged to the old one).

        Example:
            >>> ps.with_modality("typo").modalities  # doctest: +SKIP
            ('typo',)
        """
        _check_choice("modality", modality, MODALITIES, "with_modality")
        if modality == "mixed":
            check_mixed(self._items)
        return ProbeSet(
            i if i.modality == modality else dataclasses.replace(i, modality=modality, image=None)
            for i in self._items)

    def sample(self, n: int, seed: int = 0, by: str = "item") -> ProbeSet:
        """``n`` random items (``by='item'``) or all items of ``n`` random ids (``by='id'``, keeps
        translations together), in their original order.

        Example:
            >>> ps.sample(10, seed=0, by="id")  # doctest: +SKIP
        """
        if by not in ("item", "id"):
            raise PsInterpError(f"sample(by={by!r}) is not supported", fix="use by='item' or by='id'")
        pool = range(len(self)) if by == "item" else self.ids
        if not 0 <= n <= len(pool):
            raise PsInterpError(f"cannot sample {n} {by}s from {len(pool)}",
                                fix=f"ask for at most {len(pool)}")
        chosen = random.Random(seed).sample(list(pool), n)
        if by == "item":
            return ProbeSet(self._items[i] for i in sorted(chosen))
        keep = set(chosen)
        return ProbeSet(i for i in self._items if i.id in keep)

    # ------------------------------------------------------------ tables and files
    def to_frame(self):
        """A pandas DataFrame, one row per item (no images): the item fields, ``refusals`` as a
        count ``n_refusals``, and scalar ``meta`` entries as extra columns.

        Example:
            >>> ps.to_frame().groupby(["lang", "label"]).size()  # doctest: +SKIP
        """
        import pandas as pd

        base = ["id", "lang", "modality", "label", "category", "split", "text", "key"]
        rows = []
        for item in self._items:
            row = {name: getattr(item, name) for name in base}
            row["n_refusals"] = len(item.refusals)
            row["image"] = item.image if isinstance(item.image, str) else None
            for k, v in item.meta.items():
                if v is None or isinstance(v, (str, int, float, bool)):
                    row[k if k not in row else f"meta_{k}"] = v
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else [*base, "n_refusals", "image"])

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> ProbeSet:
        """Build from dicts with the item fields; unknown keys go to ``meta``.

        Example:
            >>> ProbeSet.from_records([{"id": "a", "lang": "en", "label": "benign", "text": "Hi",
            ...                         "source": "demo"}])[0].meta
            {'source': 'demo'}
        """
        return cls(_item_from_record(r, f"record {n}") for n, r in enumerate(records))

    def save_jsonl(self, path: str | os.PathLike) -> Path:
        """Write one JSON object per item (atomically); images only as paths.

        Example:
            >>> ps.save_jsonl("runs/probes.jsonl")  # doctest: +SKIP
        """
        lines = [json.dumps(i.to_record(), ensure_ascii=False) for i in self._items]
        atomic_write_text(path, "".join(f"{line}\n" for line in lines))
        return Path(path)

    @classmethod
    def load_jsonl(cls, path: str | os.PathLike) -> ProbeSet:
        """Read a file written by :meth:`save_jsonl` (or any JSONL of item records).

        Example:
            >>> ProbeSet.load_jsonl("runs/probes.jsonl")  # doctest: +SKIP
        """
        return cls(_item_from_record(obj, f"{path}, line {number}") for number, obj in read_jsonl(path))


def _item_from_record(record: Mapping[str, Any], where: str) -> ProbeItem:
    if not isinstance(record, Mapping):
        raise PsInterpError(f"{where}: expected a dict, got {type(record).__name__}",
                            fix="pass dicts with id, lang, label and text")
    for name in _REQUIRED:
        if name not in record:
            raise PsInterpError(f"{where}: missing field '{name}'",
                                fix=f"give every record {', '.join(_REQUIRED)}")
    fields = {k: record[k] for k in _FIELDS if k in record and record[k] is not None}
    meta = dict(record.get("meta") or {})
    meta.update({k: v for k, v in record.items() if k not in _FIELDS and k != "meta"})
    try:
        return ProbeItem(**fields, meta=meta)
    except PsInterpError as exc:
        raise PsInterpError(f"{where}: {exc.problem}", fix=exc.fix) from None
    except TypeError as exc:
        raise PsInterpError(f"{where}: {exc}", fix="check the field types") from None
