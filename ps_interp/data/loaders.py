"""Load external probe sets the user has on disk into a :class:`ProbeSet`.

Formats (``load_probes(path, format=...)``; ``format=None`` guesses from the header / layout):

- ``multijail``: MultiJail CSV, columns ``id, source, tags, en, zh, it, vi, ar, ko, th, bn, sw, jv``;
  one harmful item per row and language, id ``multijail-{id}``, category = ``tags``.
- ``advbench``: AdvBench ``harmful_behaviors.csv``, columns ``goal, target``; English harmful
  items ``advbench-{row}`` (row counted from 0), ``target`` kept in ``meta``.
- ``harmbench``: HarmBench behaviors CSV, columns ``Behavior, FunctionalCategory,
  SemanticCategory, Tags, ContextString, BehaviorID``; id = ``BehaviorID``, category =
  ``SemanticCategory``; a contextual behavior becomes ``"{ContextString}\\n\\n---\\n\\n{Behavior}"``
  (HarmBench's own layout).
- ``xsafety``: XSafety as laid out upstream: a folder with one sub-folder per language
  (``en/``, ``zh/``, ...; ``sp`` and ``jp`` are read as ``es`` and ``ja``) holding one CSV per
  category with **no header and one prompt per row** (first column). The category is the file
  name without a ``_n`` / ``_en`` / ``_{lang}`` suffix; rows with the same number in the same
  category share the id ``xsafety-{category}-{row}`` (the upstream files are translations row by
  row). A single such CSV, or a JSON file holding a list of strings or of objects with ``text``
  (or ``prompt``) and optional ``category`` / ``id``, is accepted too; its language is ``lang=``,
  else the folder or file name. Upstream ``.xlsx`` files must be saved as CSV first.
- ``figstep``: FigStep SafeBench CSV, columns ``dataset, category_id, task_id, category_name,
  question, instruction``; text = ``question``, and the typographic image of modality 'typo'
  shows ``instruction`` (kept in ``meta['typo']``). ``image_dir=`` attaches FigStep's own images
  ``query_{dataset}_{category_id}_{task_id}_*.png`` when present.
- ``mmsafetybench``: MM-SafetyBench JSON (one file per scenario, or their folder),
  ``{"0": {"Question", "Changed Question", "Key Phrase", "Phrase Type", "Rephrased Question",
  "Rephrased Question(SD)"}, ...}``; text = ``Question``, key = ``Key Phrase``, the 'mixed'
  prompt = ``Rephrased Question`` (which already says where to look, so no prefix is added).
  ``image_dir=`` (the upstream ``imgs/`` folder) attaches ``{scenario}/{image_kind}/{n}.jpg``.
- ``table``: any CSV / TSV / JSONL / JSON list with a column ``mapping`` (see :func:`load_table`).
- ``jsonl``: a file written by :meth:`ProbeSet.save_jsonl`.

Every item is loaded as modality 'text' and then converted with ``modality=``; ``split=``
(default 'probe') is set on every item. A malformed file raises :class:`PsInterpError` naming
the file, the line and the missing column.

Example:
    >>> ps = load_probes("multijail.csv", langs=["en", "sw"])  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ps_interp.data.probes import ProbeItem, ProbeSet, read_jsonl
from ps_interp.errors import PsInterpError

__all__ = ["FORMATS", "load_probes", "load_table", "load_multijail", "load_advbench", "load_harmbench",
           "load_xsafety", "load_figstep", "load_mmsafetybench"]

MULTIJAIL_LANGS = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
MULTIJAIL_COLUMNS = ("id", "source", "tags", *MULTIJAIL_LANGS)
ADVBENCH_COLUMNS = ("goal", "target")
HARMBENCH_COLUMNS = ("Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString",
                     "BehaviorID")
FIGSTEP_COLUMNS = ("dataset", "category_id", "task_id", "category_name", "question", "instruction")
MMSB_KEYS = ("Question", "Key Phrase", "Rephrased Question")
_XSAFETY_ALIASES = {"sp": "es", "jp": "ja", "cn": "zh"}
_LABEL_WORDS = {
    "harmful": "harmful", "unsafe": "harmful", "1": "harmful", "true": "harmful", "yes": "harmful",
    "benign": "benign", "safe": "benign", "0": "benign", "false": "benign", "no": "benign",
}


# ---------------------------------------------------------------- readers

def _check_file(path: Path) -> None:
    if not path.exists():
        raise PsInterpError(f"file not found: {path}", fix="check the path")


def _read_csv(path: str | os.PathLike, required: Sequence[str], delimiter: str = ",") -> list[tuple[int, dict]]:
    """(line number, row) for each data row; checks the header has ``required`` and every row
    has as many fields as the header."""
    path = Path(path)
    _check_file(path)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = reader.fieldnames
        if not header:
            raise PsInterpError(f"{path}, line 1: empty file, no header", fix="write a header row first")
        for column in required:
            if column not in header:
                raise PsInterpError(f"{path}, line 1: missing column '{column}' (header has "
                                    f"{', '.join(header)})", fix=f"the header needs {', '.join(required)}")
        rows, start = [], 2
        try:
            for row in reader:
                if None in row:
                    raise PsInterpError(f"{path}, line {start}: more fields than the header's "
                                        f"{len(header)}", fix="quote fields that contain the delimiter")
                absent = [c for c in header if row[c] is None]
                if absent:
                    raise PsInterpError(f"{path}, line {start}: missing column '{absent[0]}'",
                                        fix=f"give every row {len(header)} fields")
                rows.append((start, row))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise PsInterpError(f"{path}, line {reader.line_num}: malformed CSV ({exc})",
                                fix="check the quoting") from exc
    return rows


def _cell(row: Mapping[str, Any], column: str, path: Path | str, line: int) -> str:
    value = row.get(column)
    if value is None:
        raise PsInterpError(f"{path}, line {line}: missing column '{column}'",
                            fix=f"add '{column}' to every row")
    value = str(value).strip()
    if not value:
        raise PsInterpError(f"{path}, line {line}: empty '{column}'", fix=f"fill in '{column}' or drop the row")
    return value


def _read_json(path: Path) -> tuple[Any, str]:
    _check_file(path)
    raw = path.read_text(encoding="utf-8-sig")
    try:
        return json.loads(raw), raw
    except json.JSONDecodeError as exc:
        raise PsInterpError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})",
                            fix="fix the JSON syntax") from exc


def _json_line(raw: str, key: str) -> int:
    """Line of ``"key":`` in the raw JSON text (1 when not found)."""
    match = re.search(r'"%s"\s*:' % re.escape(key), raw)
    return raw.count("\n", 0, match.start()) + 1 if match else 1


# ---------------------------------------------------------------- formats

def load_multijail(path: str | os.PathLike, langs: Iterable[str] | None = None,
                   split: str = "probe") -> ProbeSet:
    """MultiJail CSV -> one harmful item per row and language (ordered by language).

    Example:
        >>> load_multijail("multijail.csv", langs=["en", "bn"])  # doctest: +SKIP
    """
    langs = list(langs) if langs is not None else list(MULTIJAIL_LANGS)
    unknown = [l for l in langs if l not in MULTIJAIL_LANGS]
    if unknown:
        raise PsInterpError(f"MultiJail has no language {', '.join(unknown)}",
                            fix=f"use some of {', '.join(MULTIJAIL_LANGS)}")
    rows = _read_csv(path, ("id", "source", "tags", *langs))
    return ProbeSet(
        ProbeItem(id=f"multijail-{_cell(row, 'id', path, line)}", lang=lang, label="harmful",
                  text=_cell(row, lang, path, line), category=row["tags"].strip(), split=split,
                  meta={"dataset": "multijail", "source": row["source"].strip()})
        for lang in langs for line, row in rows)


def load_advbench(path: str | os.PathLike, lang: str = "en", split: str = "probe") -> ProbeSet:
    """AdvBench ``harmful_behaviors.csv`` -> harmful items ``advbench-{row}``.

    Example:
        >>> load_advbench("harmful_behaviors.csv")  # doctest: +SKIP
    """
    rows = _read_csv(path, ADVBENCH_COLUMNS)
    return ProbeSet(
        ProbeItem(id=f"advbench-{n}", lang=lang, label="harmful", text=_cell(row, "goal", path, line),
                  split=split, meta={"dataset": "advbench", "target": row["target"].strip()})
        for n, (line, row) in enumerate(rows))


def load_harmbench(path: str | os.PathLike, functional_categories: Iterable[str] | None = None,
                   lang: str = "en", split: str = "probe") -> ProbeSet:
    """HarmBench behaviors CSV -> harmful items (optionally only some FunctionalCategory values,
    e.g. ``["standard"]``).

    Example:
        >>> load_harmbench("harmbench_behaviors_text_all.csv", functional_categories=["standard"])  # doctest: +SKIP
    """
    keep = set(functional_categories) if functional_categories is not None else None
    items = []
    for line, row in _read_csv(path, HARMBENCH_COLUMNS):
        functional = row["FunctionalCategory"].strip()
        if keep is not None and functional not in keep:
            continue
        behavior = _cell(row, "Behavior", path, line)
        context = row["ContextString"].strip()
        items.append(ProbeItem(
            id=_cell(row, "BehaviorID", path, line), lang=lang, label="harmful",
            text=f"{context}\n\n---\n\n{behavior}" if context else behavior,
            category=row["SemanticCategory"].strip(), split=split,
            meta={"dataset": "harmbench", "functional_category": functional, "tags": row["Tags"].strip(),
                  "behavior": behavior}))
    return ProbeSet(items)


def _xsafety_category(stem: str, lang: str) -> str:
    for suffix in ("_n", "_en", f"_{lang}"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _xsafety_csv(path: Path, lang: str, split: str) -> list[ProbeItem]:
    category = _xsafety_category(path.stem, lang)
    items = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        start = 1
        try:
            for n, row in enumerate(reader):
                text = row[0].strip() if row else ""
                if not text:
                    raise PsInterpError(f"{path}, line {start}: empty prompt (column 1)",
                                        fix="one prompt per row, in the first column, no header")
                items.append(ProbeItem(id=f"xsafety-{category}-{n}", lang=lang, label="harmful", text=text,
                                       category=category, split=split, meta={"dataset": "xsafety"}))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise PsInterpError(f"{path}, line {reader.line_num}: malformed CSV ({exc})",
                                fix="check the quoting") from exc
    return items


def _xsafety_json(path: Path, lang: str, split: str) -> list[ProbeItem]:
    data, raw = _read_json(path)
    if not isinstance(data, list):
        raise PsInterpError(f"{path}, line 1: expected a JSON list of prompts", fix="see load_probes' docs")
    items = []
    for n, entry in enumerate(data):
        if isinstance(entry, str):
            entry = {"text": entry}
        where = f"{path}, entry {n}"
        if not isinstance(entry, dict):
            raise PsInterpError(f"{where}: expected a string or an object", fix="see load_probes' docs")
        text = entry.get("text", entry.get("prompt"))
        if not isinstance(text, str) or not text.strip():
            raise PsInterpError(f"{where}: missing column 'text' (or 'prompt')", fix="give every entry a text")
        category = str(entry.get("category") or "")
        items.append(ProbeItem(id=str(entry.get("id") or f"xsafety-{category or 'item'}-{n}"), lang=lang,
                               label="harmful", text=text.strip(), category=category, split=split,
                               meta={"dataset": "xsafety"}))
    return items


def _xsafety_file(path: Path, lang: str, split: str) -> list[ProbeItem]:
    if path.suffix == ".json":
        return _xsafety_json(path, lang, split)
    return _xsafety_csv(path, lang, split)


def _lang_code(name: str) -> str | None:
    name = _XSAFETY_ALIASES.get(name.lower(), name.lower())
    return name if re.fullmatch(r"[a-z]{2,3}", name) else None


def _lang_from_path(path: Path) -> str:
    """Language of a single XSafety file: its name (``zh.json``, ``prompts_zh.json``) or folder."""
    for candidate in (path.stem, path.stem.rsplit("_", 1)[-1], path.parent.name):
        code = _lang_code(candidate)
        if code:
            return code
    raise PsInterpError(f"{path}: cannot tell the language from the file or folder name",
                        fix="pass lang='xx' (ISO 639-1)")


def load_xsafety(path: str | os.PathLike, langs: Iterable[str] | None = None, lang: str | None = None,
                 split: str = "probe") -> ProbeSet:
    """XSafety folder (``{lang}/{Category}.csv``), one language folder, or one CSV / JSON file.

    Example:
        >>> load_xsafety("Multilingual_safety_benchmark", langs=["en", "zh"])  # doctest: +SKIP
    """
    path = Path(path)
    _check_file(path)
    keep = set(langs) if langs is not None else None
    if path.is_file():
        return ProbeSet(_xsafety_file(path, lang or _lang_from_path(path), split))
    lang_dirs = sorted(d for d in path.iterdir() if d.is_dir())
    if not lang_dirs:
        lang_dirs = [path]
    items: list[ProbeItem] = []
    for directory in lang_dirs:
        name = lang if (lang and directory == path) else _lang_code(directory.name)
        if name is None:
            raise PsInterpError(f"{directory}: folder name is not a language code",
                                fix="name language folders en, zh, ... (or pass lang= for one folder)")
        if keep is not None and name not in keep:
            continue
        files = sorted(p for p in directory.iterdir() if p.suffix in (".csv", ".json"))
        stems = {p.stem for p in files}
        for sheet in sorted(directory.glob("*.xlsx")):
            if sheet.stem not in stems:
                raise PsInterpError(f"{sheet}: Excel files are not read",
                                    fix=f"save it as {sheet.with_suffix('.csv').name} (one prompt per row)")
        for file in files:
            items.extend(_xsafety_file(file, name, split))
    return ProbeSet(items)


_FIGSTEP_LIST = re.compile(r"\s*1\.\s*2\.\s*3\.\s*$")


def load_figstep(path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 lang: str = "en", split: str = "probe") -> ProbeSet:
    """FigStep SafeBench CSV -> harmful items ``safebench-{category_id}-{task_id}``.

    Example:
        >>> load_figstep("safebench.csv").with_modality("typo")  # doctest: +SKIP
    """
    items = []
    for line, row in _read_csv(path, FIGSTEP_COLUMNS):
        cat, task = _cell(row, "category_id", path, line), _cell(row, "task_id", path, line)
        dataset = row["dataset"].strip()
        instruction = _FIGSTEP_LIST.sub("", _cell(row, "instruction", path, line)).strip()
        image = None
        if image_dir is not None:
            found = sorted(Path(image_dir).glob(f"query_{dataset}_{cat}_{task}_*.png"))
            image = str(found[0]) if found else None
        items.append(ProbeItem(
            id=f"safebench-{cat}-{task}", lang=lang, label="harmful", text=_cell(row, "question", path, line),
            category=row["category_name"].strip(), split=split, image=image,
            meta={"dataset": "figstep", "typo": instruction, "source": dataset}))
    return ProbeSet(items)


def _mmsb_file(path: Path, split: str, image_dir: Path | None, image_kind: str, lang: str) -> list[ProbeItem]:
    data, raw = _read_json(path)
    if not isinstance(data, dict):
        raise PsInterpError(f"{path}, line 1: expected an object {{\"0\": {{...}}, ...}}",
                            fix="pass an MM-SafetyBench processed_questions JSON file")
    category = re.sub(r"^\d+-", "", path.stem)
    items = []
    for number, entry in data.items():
        line = _json_line(raw, number)
        if not isinstance(entry, dict):
            raise PsInterpError(f"{path}, line {line}: entry {number!r} is not an object", fix="see the format")
        for column in MMSB_KEYS:
            if not isinstance(entry.get(column), str) or not entry[column].strip():
                raise PsInterpError(f"{path}, line {line}: entry {number!r} has no '{column}'",
                                    fix=f"every entry needs {', '.join(MMSB_KEYS)}")
        image = None
        if image_dir is not None:
            candidate = image_dir / path.stem / image_kind / f"{number}.jpg"
            if not candidate.is_file():
                raise PsInterpError(f"{path}, line {line}: image {candidate} not found",
                                    fix="check image_dir (the upstream imgs/ folder) and image_kind")
            image = str(candidate)
        items.append(ProbeItem(
            id=f"mmsb-{category}-{number}", lang=lang, label="harmful", text=entry["Question"].strip(),
            category=category, split=split, key=entry["Key Phrase"].strip(), image=image,
            meta={"dataset": "mmsafetybench", "mixed": entry["Rephrased Question"].strip(),
                  "mixed_prompt": "", "phrase_type": entry.get("Phrase Type", ""),
                  "changed_question": entry.get("Changed Question", ""),
                  "rephrased_question_sd": entry.get("Rephrased Question(SD)", "")}))
    return items


def load_mmsafetybench(path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                       image_kind: str = "SD_TYPO", lang: str = "en", split: str = "probe") -> ProbeSet:
    """MM-SafetyBench scenario JSON file(s) -> harmful items ``mmsb-{scenario}-{n}``.

    Example:
        >>> load_mmsafetybench("processed_questions").with_modality("mixed")  # doctest: +SKIP
    """
    path = Path(path)
    _check_file(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    images = Path(image_dir) if image_dir is not None else None
    return ProbeSet(i for f in files for i in _mmsb_file(f, split, images, image_kind, lang))


def _normalize_label(value: Any, where: str) -> str:
    label = _LABEL_WORDS.get(str(value).strip().lower())
    if label is None:
        raise PsInterpError(f"{where}: label {value!r} is neither harmful nor benign",
                            fix="use harmful/benign (or unsafe/safe, 1/0, true/false)")
    return label


def load_table(path: str | os.PathLike, mapping: Mapping[str, str] | None = None,
               defaults: Mapping[str, Any] | None = None, split: str | None = None) -> ProbeSet:
    """A CSV / TSV / JSONL / JSON-list file with a column mapping.

    ``mapping`` maps item fields to column names (``{"text": "prompt", "label": "is_unsafe"}``);
    a field not mapped is read from the column of the same name if there is one, else from
    ``defaults``. ``text``, ``lang`` and ``label`` are required (``label`` also accepts
    unsafe/safe, 1/0, true/false); ``id`` defaults to ``{file stem}-{row}``. Other columns go to
    ``meta``.

    Example:
        >>> load_table("my.csv", mapping={"text": "prompt"}, defaults={"lang": "en", "label": "harmful"})  # doctest: +SKIP
    """
    path = Path(path)
    mapping = dict(mapping or {})
    defaults = dict(defaults or {})
    if split is not None:
        defaults["split"] = split
    fields = ("id", "lang", "label", "text", "modality", "category", "split", "key", "image")
    bad = [f for f in mapping if f not in fields]
    if bad:
        raise PsInterpError(f"mapping names unknown fields {', '.join(bad)}", fix=f"map some of {', '.join(fields)}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = _read_csv(path, [c for f, c in mapping.items()], "\t" if suffix == ".tsv" else ",")
        where = [f"{path}, line {line}" for line, _ in rows]
        records = [row for _, row in rows]
    elif suffix == ".jsonl":
        pairs = read_jsonl(path)
        where = [f"{path}, line {line}" for line, _ in pairs]
        records = [obj for _, obj in pairs]
    elif suffix == ".json":
        data, raw = _read_json(path)
        if not isinstance(data, list):
            raise PsInterpError(f"{path}, line 1: expected a JSON list of objects", fix="or use JSONL")
        records, where = data, [f"{path}, entry {n}" for n in range(len(data))]
    else:
        raise PsInterpError(f"{path}: cannot read '{suffix}' tables", fix="use .csv, .tsv, .jsonl or .json")
    items = []
    for n, (record, at) in enumerate(zip(records, where)):
        if not isinstance(record, Mapping):
            raise PsInterpError(f"{at}: expected an object", fix="one object per row")
        values: dict[str, Any] = {}
        for name in fields:
            column = mapping.get(name, name)
            if column in record and record[column] not in (None, ""):
                values[name] = record[column]
            elif name in defaults:
                values[name] = defaults[name]
            elif name in mapping:
                raise PsInterpError(f"{at}: missing column '{column}'", fix=f"fill '{column}' in every row")
        for name in ("text", "lang", "label"):
            if name not in values:
                column = mapping.get(name, name)
                raise PsInterpError(f"{at}: missing column '{column}'",
                                    fix=f"map the field '{name}' to a column, or give defaults={{'{name}': ...}}")
        values["label"] = _normalize_label(values["label"], at)
        values.setdefault("id", f"{path.stem}-{n}")
        used = {mapping.get(name, name) for name in fields}
        meta = {k: v for k, v in record.items() if k not in used}
        try:
            items.append(ProbeItem(**{k: (v if k == "image" else str(v).strip()) for k, v in values.items()},
                                   meta=meta))
        except PsInterpError as exc:
            raise PsInterpError(f"{at}: {exc.problem}", fix=exc.fix) from None
    return ProbeSet(items)


def _load_saved(path: str | os.PathLike) -> ProbeSet:
    return ProbeSet.load_jsonl(path)


FORMATS: dict[str, Callable[..., ProbeSet]] = {
    "multijail": load_multijail,
    "advbench": load_advbench,
    "harmbench": load_harmbench,
    "xsafety": load_xsafety,
    "figstep": load_figstep,
    "safebench": load_figstep,
    "mmsafetybench": load_mmsafetybench,
    "table": load_table,
    "jsonl": _load_saved,
}
"""Format name -> loader."""


def _csv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle), [])


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of ``path`` from its header or layout.

    Example:
        >>> detect_format("harmful_behaviors.csv")  # doctest: +SKIP
        'advbench'
    """
    path = Path(path)
    _check_file(path)
    if path.is_dir():
        if any(d.is_dir() and any(d.glob("*.csv")) for d in path.iterdir()) or any(path.glob("*.csv")):
            return "xsafety"
        if any(path.glob("*.json")):
            return "mmsafetybench"
    elif path.suffix.lower() == ".csv":
        header = set(_csv_header(path))
        for name, columns in (("multijail", MULTIJAIL_COLUMNS[:4]), ("advbench", ADVBENCH_COLUMNS),
                              ("harmbench", ("Behavior", "BehaviorID")),
                              ("figstep", ("category_name", "question", "instruction"))):
            if set(columns) <= header:
                return name
    elif path.suffix.lower() == ".jsonl":
        first = read_jsonl(path)[:1]
        if first and {"id", "lang", "label", "text"} <= set(first[0][1]):
            return "jsonl"
    elif path.suffix.lower() == ".json":
        data, _ = _read_json(path)
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "Key Phrase" in v
                                                   for v in data.values()):
            return "mmsafetybench"
        if isinstance(data, list) and data and all(isinstance(v, str) for v in data):
            return "xsafety"
    raise PsInterpError(f"cannot tell the format of {path}",
                        fix=f"pass format= one of {', '.join(FORMATS)} (format='table' with mapping= "
                            "for other tables)")


def load_probes(path: str | os.PathLike, format: str | None = None, *, modality: str = "text",
                **options: Any) -> ProbeSet:
    """Load an external probe file (or folder) into a :class:`ProbeSet`.

    ``format`` is one of :data:`FORMATS` (None: guessed); ``modality`` converts every item
    ('typo' renders the request, 'mixed' needs key phrases); other keyword options go to the
    format's loader (e.g. ``langs=``, ``split=``, ``image_dir=``, ``mapping=``).

    Example:
        >>> load_probes("harmful_behaviors.csv", format="advbench", split="test")  # doctest: +SKIP
    """
    name = format or detect_format(path)
    loader = FORMATS.get(name)
    if loader is None:
        raise PsInterpError(f"unknown probe format {name!r}", fix=f"use one of {', '.join(FORMATS)}")
    accepted = [p for p in inspect.signature(loader).parameters if p != "path"]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise PsInterpError(f"format {name!r} takes no option {', '.join(unknown)}",
                            fix=f"its options are: {', '.join(accepted) or 'none'}")
    probes = loader(path, **options)
    return probes if modality == "text" else probes.with_modality(modality)
