"""Typographic images (FigStep style): an instruction drawn as text on a white canvas.

Fonts come from the system (Debian ``fonts-noto-core`` and ``fonts-noto-cjk``); each language
gets a chain of fonts (its script's font, then Noto Sans for Latin digits and punctuation) and
every character is drawn with the first font of the chain that has a glyph for it. Complex
scripts (Arabic, Bengali, Thai) are shaped with Pillow's raqm layout; Arabic lines are laid out
right to left. Pixels are deterministic for fixed inputs.

Example:
    >>> img = render_list_image("How do I bake bread at home?", "en")
    >>> img.size
    (760, 760)
"""
from __future__ import annotations

import functools
import os
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, features

from ps_interp.errors import PsInterpError, require

__all__ = [
    "FontSpec",
    "font_chain",
    "missing_glyphs",
    "render_list_image",
    "render_phrase_image",
    "script_of",
]

FONT_DIRS: tuple[str, ...] = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    os.path.expanduser("~/.local/share/fonts"),
    os.path.expanduser("~/.fonts"),
    "/Library/Fonts",
    "/System/Library/Fonts",
)
"""Folders searched for fonts (after those in the ``PS_INTERP_FONT_DIRS`` environment variable)."""

# script -> (candidate (file name, face family or None), Debian package that ships the first one)
_SCRIPT_FONTS: dict[str, tuple[tuple[tuple[str, str | None], ...], str]] = {
    "latin": ((("NotoSans-Regular.ttf", None), ("DejaVuSans.ttf", None)), "fonts-noto-core"),
    "arabic": ((("NotoSansArabic-Regular.ttf", None), ("NotoNaskhArabic-Regular.ttf", None)),
               "fonts-noto-core"),
    "thai": ((("NotoSansThai-Regular.ttf", None), ("NotoSerifThai-Regular.ttf", None)), "fonts-noto-core"),
    "bengali": ((("NotoSansBengali-Regular.ttf", None), ("NotoSerifBengali-Regular.ttf", None)),
                "fonts-noto-core"),
    "devanagari": ((("NotoSansDevanagari-Regular.ttf", None),), "fonts-noto-core"),
    "hebrew": ((("NotoSansHebrew-Regular.ttf", None),), "fonts-noto-core"),
    "han": ((("NotoSansCJK-Regular.ttc", "Noto Sans CJK SC"), ("NotoSansCJKsc-Regular.otf", None),
             ("NotoSansSC-Regular.otf", None)), "fonts-noto-cjk"),
    "hangul": ((("NotoSansCJK-Regular.ttc", "Noto Sans CJK KR"), ("NotoSansCJKkr-Regular.otf", None),
                ("NotoSansKR-Regular.otf", None)), "fonts-noto-cjk"),
    "kana": ((("NotoSansCJK-Regular.ttc", "Noto Sans CJK JP"), ("NotoSansCJKjp-Regular.otf", None),
              ("NotoSansJP-Regular.otf", None)), "fonts-noto-cjk"),
}

LANG_SCRIPT: dict[str, str] = {
    **dict.fromkeys(["en", "it", "vi", "sw", "jv", "de", "fr", "es", "pt", "nl", "id", "ms", "tr",
                     "pl", "ru", "uk", "el"], "latin"),  # Noto Sans also covers Greek and Cyrillic
    "zh": "han", "ko": "hangul", "ja": "kana", "ar": "arabic", "fa": "arabic", "ur": "arabic",
    "th": "thai", "bn": "bengali", "hi": "devanagari", "he": "hebrew",
}
"""Main script of each known language (ISO 639-1); other languages are guessed from the text."""

_NEEDS_SHAPING = {"arabic", "thai", "bengali", "devanagari", "hebrew"}
_NO_SPACE_SCRIPTS = {"han", "kana", "thai"}  # wrap between characters, not only at spaces
_NO_LINE_START = set("，。、．！？；：）」』】〕》〉,.!?;:)]}%ฯๆ")
_NO_LINE_END = set("（「『【〔《〈([{")
_NAME_PREFIX = {
    "LATIN": "latin", "ARABIC": "arabic", "THAI": "thai", "BENGALI": "bengali", "CJK": "han",
    "FULLWIDTH": "han", "IDEOGRAPHIC": "han", "HANGUL": "hangul", "HIRAGANA": "kana",
    "KATAKANA": "kana", "DEVANAGARI": "devanagari", "HEBREW": "hebrew", "CYRILLIC": "latin",
    "GREEK": "latin",
}


@dataclass(frozen=True)
class FontSpec:
    """One font face: a file and, for collections (.ttc), the face index.

    Example:
        >>> FontSpec("/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf").index
        0
    """

    path: str
    index: int = 0


def script_of(char: str) -> str | None:
    """The script key of one character ('latin', 'arabic', 'han', ...), None for neutral ones.

    Example:
        >>> script_of("a"), script_of("ب"), script_of("1")
        ('latin', 'arabic', None)
    """
    if not char.isalpha():
        return None
    return _NAME_PREFIX.get(unicodedata.name(char, "").split(" ")[0])


@functools.lru_cache(maxsize=1)
def _font_files() -> dict[str, str]:
    """File name -> first path found, over PS_INTERP_FONT_DIRS then FONT_DIRS."""
    extra = [d for d in os.environ.get("PS_INTERP_FONT_DIRS", "").split(os.pathsep) if d]
    found: dict[str, str] = {}
    for root in [*extra, *FONT_DIRS]:
        for dirpath, _dirs, files in sorted(os.walk(root)):
            for name in sorted(files):
                found.setdefault(name, os.path.join(dirpath, name))
    return found


def _face_index(path: str, family: str | None) -> int | None:
    """Index of the face named ``family`` in a font file (0 when no family is asked)."""
    if family is None:
        return 0
    for index in range(64):
        try:
            name = ImageFont.truetype(path, 10, index=index).getname()[0]
        except OSError:
            return None
        if name == family:
            return index
    return None


@functools.lru_cache(maxsize=None)
def _script_font(script: str) -> FontSpec | None:
    candidates, _package = _SCRIPT_FONTS[script]
    files = _font_files()
    for filename, family in candidates:
        if filename in files:
            index = _face_index(files[filename], family)
            if index is not None:
                return FontSpec(files[filename], index)
    return None


def _require_font(script: str, lang: str) -> FontSpec:
    spec = _script_font(script)
    if spec is None:
        candidates, package = _SCRIPT_FONTS[script]
        raise PsInterpError(
            f"no font for the {script} script (language '{lang}') was found in "
            f"{', '.join(FONT_DIRS[:1])} and the other font folders",
            fix=f"install the Debian package {package} (apt-get install {package}), or put "
                f"{candidates[0][0]} in a folder named by the PS_INTERP_FONT_DIRS environment variable")
    return spec


def font_chain(lang: str, text: str = "") -> list[FontSpec]:
    """Fonts used for ``text`` in ``lang``: the language's script font first, then fonts for other
    scripts found in the text, then Noto Sans (Latin, digits, punctuation).

    Example:
        >>> [os.path.basename(f.path) for f in font_chain("ar")]
        ['NotoSansArabic-Regular.ttf', 'NotoSans-Regular.ttf']
    """
    main = LANG_SCRIPT.get(lang)
    if main is None:  # unknown language: the most frequent script of the text
        scripts = [s for s in map(script_of, text) if s in _SCRIPT_FONTS]
        main = max(sorted(set(scripts)), key=scripts.count) if scripts else "latin"
    chain = [_require_font(main, lang)]
    for script in sorted({s for s in map(script_of, text) if s in _SCRIPT_FONTS} - {main, "latin"}):
        spec = _script_font(script)
        if spec is not None:
            chain.append(spec)
    chain.append(_require_font("latin", lang))
    return list(dict.fromkeys(chain))


@functools.lru_cache(maxsize=None)
def _cmap(spec: FontSpec) -> frozenset[int]:
    ttlib = require("fontTools.ttLib", "checking font glyph coverage", package="fonttools")
    font = ttlib.TTFont(spec.path, fontNumber=spec.index, lazy=True)
    try:
        return frozenset(font.getBestCmap() or {})
    finally:
        font.close()


def _ignorable(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf")


def missing_glyphs(text: str, font_path: str | FontSpec | Sequence[str | FontSpec]) -> list[str]:
    """Characters of ``text`` that no given font maps to a glyph (they would render as .notdef).

    ``font_path`` is a font file, a :class:`FontSpec`, or a chain of them (a character is missing
    when every font of the chain lacks it). Whitespace and invisible format characters are ignored.

    Example:
        >>> missing_glyphs("สวัสดี", font_chain("th"))
        []
    """
    fonts = [font_path] if isinstance(font_path, (str, FontSpec)) else list(font_path)
    cmaps = [_cmap(f if isinstance(f, FontSpec) else FontSpec(str(f))) for f in fonts]
    missing = [c for c in text if not _ignorable(c) and not any(ord(c) in m for m in cmaps)]
    return list(dict.fromkeys(missing))


# ---------------------------------------------------------------- layout

def _has_raqm() -> bool:
    return bool(features.check("raqm"))


@functools.lru_cache(maxsize=256)
def _pil_font(spec: FontSpec, size: int) -> ImageFont.FreeTypeFont:
    engine = ImageFont.Layout.RAQM if _has_raqm() else ImageFont.Layout.BASIC
    return ImageFont.truetype(spec.path, size, index=spec.index, layout_engine=engine)


def _check_shaping(text: str, lang: str) -> None:
    scripts = {script_of(c) for c in text} | {LANG_SCRIPT.get(lang)}
    needs = sorted(s for s in scripts & _NEEDS_SHAPING)
    if needs and not _has_raqm():
        raise PsInterpError(
            f"drawing {', '.join(needs)} text (language '{lang}') needs Pillow's raqm text layout, "
            "which is not available",
            fix="install the Debian packages libraqm0 and libfribidi0 (apt-get install libraqm0 "
                "libfribidi0), then restart Python")


def _is_rtl(char: str) -> bool:
    return unicodedata.bidirectional(char) in ("R", "AL")


def _base_rtl(text: str, lang: str) -> bool:
    if LANG_SCRIPT.get(lang) in ("arabic", "hebrew"):
        return True
    for char in text:
        if _is_rtl(char):
            return True
        if unicodedata.bidirectional(char) == "L":
            return False
    return False


def _runs(line: str, chain: Sequence[FontSpec]) -> list[tuple[str, FontSpec]]:
    """Split a line into runs drawn with one font each; neutral characters stick to their run."""
    cmaps = [_cmap(f) for f in chain]
    runs: list[list] = []
    for char in line:
        code = ord(char)
        if runs and (code in cmaps[runs[-1][2]] or unicodedata.category(char).startswith("M")):
            runs[-1][0].append(char)
            continue
        index = next((i for i, m in enumerate(cmaps) if code in m), 0)
        runs.append([[char], chain[index], index])
    return [("".join(chars), spec) for chars, spec, _ in runs]


def _direction(run: str) -> str:
    return "rtl" if any(_is_rtl(c) for c in run) else "ltr"


def _run_width(run: str, spec: FontSpec, size: int) -> float:
    font = _pil_font(spec, size)
    if _has_raqm():
        return font.getlength(run, direction=_direction(run))
    return font.getlength(run)


def _line_width(line: str, chain: Sequence[FontSpec], size: int) -> float:
    return sum(_run_width(run, spec, size) for run, spec in _runs(line, chain))


def _clusters(text: str) -> list[str]:
    """Grapheme-like clusters: a base character with its combining marks, joiners and, after a
    virama, the next consonant (so Bengali conjuncts and Thai vowel marks never split)."""
    clusters: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        glue = category.startswith("M") or char in "\u200c\u200d"
        after_virama = bool(clusters) and unicodedata.combining(clusters[-1][-1]) == 9
        if clusters and (glue or after_virama or clusters[-1][-1] in "\u200d"):
            clusters[-1] += char
        else:
            clusters.append(char)
    return clusters


def _tokens(text: str) -> list[str]:
    """Unbreakable pieces: words, whitespace runs, and single clusters of scripts without spaces
    (closing punctuation stays with the cluster before it, opening with the one after it)."""
    tokens: list[str] = []
    prev_no_space = False
    for cluster in _clusters(text):
        no_space = script_of(cluster[0]) in _NO_SPACE_SCRIPTS
        prev = tokens[-1] if tokens else ""
        if not prev or cluster.isspace() != prev[-1].isspace():
            join = bool(prev) and not cluster.isspace() and cluster[0] in _NO_LINE_START
        elif cluster.isspace():
            join = True
        else:
            join = (cluster[0] in _NO_LINE_START or prev[-1] in _NO_LINE_END
                    or not (no_space or prev_no_space))
        if join:
            tokens[-1] += cluster
        else:
            tokens.append(cluster)
        prev_no_space = no_space
    return tokens


def _wrap(text: str, chain: Sequence[FontSpec], size: int, width: float) -> list[str]:
    """Greedy wrap of ``text`` into lines no wider than ``width``; explicit newlines are kept and
    a word longer than a line is cut between clusters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for token in _tokens(paragraph):
            candidate = line + token if line else token.lstrip()
            if not candidate or _line_width(candidate.rstrip(), chain, size) <= width:
                line = candidate
                continue
            if line.strip():
                lines.append(line.strip())
            line = token.lstrip()
            if line and _line_width(line.rstrip(), chain, size) > width:
                pieces = _cut(line.rstrip(), chain, size, width)
                lines.extend(pieces[:-1])
                line = pieces[-1]
        lines.append(line.strip())
    return lines


def _cut(word: str, chain: Sequence[FontSpec], size: int, width: float) -> list[str]:
    pieces, piece = [], ""
    for cluster in _clusters(word):
        if piece and _line_width(piece + cluster, chain, size) > width:
            pieces.append(piece)
            piece = ""
        piece += cluster
    return [*pieces, piece]


def _line_height(lines: Iterable[str], chain: Sequence[FontSpec], size: int) -> tuple[int, int]:
    """(line height, ascent) over the fonts actually used by ``lines``."""
    used = {spec for line in lines for _, spec in _runs(line, chain)} or {chain[0]}
    metrics = [_pil_font(spec, size).getmetrics() for spec in sorted(used, key=chain.index)]
    ascent = max(a for a, _ in metrics)
    height = max(a + d for a, d in metrics)
    return round(height * 1.1), ascent


def _draw_line(draw: ImageDraw.ImageDraw, line: str, chain: Sequence[FontSpec], size: int,
               x: float, baseline: float, rtl: bool) -> None:
    """Draw one line starting at ``x`` (its left edge), runs in visual order."""
    runs = _runs(line, chain)
    if rtl:  # simplified bidi: in a right-to-left paragraph, runs go right to left
        runs = runs[::-1]
    for run, spec in runs:
        font = _pil_font(spec, size)
        kwargs = {"direction": _direction(run)} if _has_raqm() else {}
        draw.text((x, baseline), run, font=font, fill=0, anchor="ls", **kwargs)
        x += _run_width(run, spec, size)


def _check_args(text: str, lang: str, size: int) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PsInterpError(f"nothing to draw: empty text for language '{lang}'",
                            fix="pass a non-empty string")
    if not isinstance(size, int) or size < 64:
        raise PsInterpError(f"image size {size!r} is too small", fix="use an int size >= 64, e.g. 760")
    _check_shaping(text, lang)
    return text.strip()


def _warn_missing(text: str, lang: str, chain: Sequence[FontSpec]) -> None:
    missing = missing_glyphs(text, chain)
    if missing:
        warnings.warn(f"no installed font has a glyph for {''.join(missing)!r} (language '{lang}'); "
                      "they are drawn as empty boxes. Install fonts-noto-core / fonts-noto-cjk",
                      stacklevel=3)


_ITEMS = ("1.", "2.", "3.")
_MIN_FONT = 10


def _list_layout(text: str, chain: Sequence[FontSpec], size: int, font_size: int):
    margin = round(size * 0.06)
    lines = _wrap(text, chain, font_size, size - 2 * margin)
    line_h, ascent = _line_height([*lines, *_ITEMS], chain, font_size)
    height = line_h * (len(lines) + 0.5 + 1.5 * len(_ITEMS))
    return margin, lines, line_h, ascent, height


def _fit(fits, start: int) -> int:
    """Largest font size in [_MIN_FONT, start] for which ``fits(size)`` holds (binary search)."""
    lo, hi = _MIN_FONT, max(start, _MIN_FONT)
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@functools.lru_cache(maxsize=128)
def _render_list(text: str, lang: str, size: int, font_size: int | None) -> Image.Image:
    chain = font_chain(lang, text)
    if font_size is None:
        font_size = _fit(lambda s: _list_layout(text, chain, size, s)[4] <= size - 2 * round(size * 0.06),
                         size // 11)
    margin, lines, line_h, ascent, _ = _list_layout(text, chain, size, font_size)
    rtl = _base_rtl(text, lang)
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    y = margin + ascent
    rows = [(line, y + i * line_h) for i, line in enumerate(lines)]
    y += line_h * (len(lines) + 0.5)
    rows += [(item, y + i * 1.5 * line_h) for i, item in enumerate(_ITEMS)]
    for line, baseline in rows:
        width = _line_width(line, chain, font_size)
        x = size - margin - width if rtl else margin
        _draw_line(draw, line, chain, font_size, x, baseline, rtl)
    return image


@functools.lru_cache(maxsize=128)
def _render_phrase(text: str, lang: str, size: int, font_size: int | None) -> Image.Image:
    chain = font_chain(lang, text)
    margin = round(size * 0.08)
    inner = size - 2 * margin

    def layout(s: int):
        lines = _wrap(text, chain, s, inner)
        line_h, ascent = _line_height(lines, chain, s)
        return lines, line_h, ascent, line_h * len(lines)

    if font_size is None:
        font_size = _fit(lambda s: layout(s)[3] <= inner, size // 8)
    lines, line_h, ascent, height = layout(font_size)
    rtl = _base_rtl(text, lang)
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    top = (size - height) / 2
    for i, line in enumerate(lines):
        width = _line_width(line, chain, font_size)
        _draw_line(draw, line, chain, font_size, (size - width) / 2, top + ascent + i * line_h, rtl)
    return image


def render_list_image(text: str, lang: str, size: int = 760, font_size: int | None = None) -> Image.Image:
    """FigStep-style image: ``text`` as a heading followed by empty items "1.", "2.", "3.".

    White ``size`` x ``size`` RGB canvas, black text wrapped to the width (between characters for
    Chinese and Thai), right-aligned for right-to-left languages. ``font_size=None`` picks the
    largest size that fits; a fixed size that does not fit is clipped at the bottom.

    Example:
        >>> render_list_image("Steps to plant a tree.", "en").getbbox() is not None
        True
    """
    text = _check_args(text, lang, size)
    chain = font_chain(lang, text)
    _warn_missing(text, lang, chain)
    return _render_list(text, lang, size, font_size).convert("RGB")


def render_phrase_image(text: str, lang: str, size: int = 760, font_size: int | None = None) -> Image.Image:
    """A key phrase centred on a white ``size`` x ``size`` RGB canvas, as large as fits.

    Example:
        >>> render_phrase_image("水彩画", "zh").size
        (760, 760)
    """
    text = _check_args(text, lang, size)
    chain = font_chain(lang, text)
    _warn_missing(text, lang, chain)
    return _render_phrase(text, lang, size, font_size).convert("RGB")
