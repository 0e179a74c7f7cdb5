"""Reading exercises for the VLM projector: new typographic images made from train-split text only.

The train split has 90 requests per language, drawn as 1,800 ``typo``/``mixed`` images. A projector
trained on those alone can learn to recognise 180 sentences instead of reading. Each exercise takes
text from the given items (pass train-split items only) and draws it in one of the two layouts the
study uses (FigStep list, centred phrase):

- ``window``: a contiguous run of words (characters for Chinese and Thai) of one request;
- ``bag``: words of the language's texts in a random order, which the language model cannot
  complete from context, so only the image tells it what comes next.

Example:
    >>> from ps_interp.data.builtin import probes
    >>> ex = reading_exercises(probes(langs="en", split="train"), 4, seed=0)
    >>> len(ex), ex[0].lang, ex[0].layout in ("list", "phrase")
    (4, 'en', True)
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image

from ps_interp.errors import PsInterpError

from .typography import _tokens, render_list_image, render_phrase_image

NO_SPACE_LANGS = frozenset({"zh", "th", "ja"})
LIST_UNITS = {"words": (3, 14), "chars": (6, 28)}
PHRASE_UNITS = {"words": (1, 4), "chars": (2, 8)}


@dataclass(frozen=True)
class ReadingExercise:
    """Text to draw and read back: ``layout`` is 'list' (FigStep) or 'phrase' (centred key phrase)."""

    lang: str
    text: str
    layout: str
    kind: str  # 'window' or 'bag'

    def get_image(self, size: int = 760) -> Image.Image:
        draw = render_list_image if self.layout == "list" else render_phrase_image
        return draw(self.text, self.lang, size)


def units(text: str, lang: str) -> list[str]:
    """The pieces exercises are cut from: words, or clusters for languages written without spaces.

    Example:
        >>> units("Bake bread at home.", "en")
        ['Bake', 'bread', 'at', 'home.']
    """
    return [t.strip() for t in _tokens(text) if not t.isspace() and t.strip()]


def _join(pieces: list[str], lang: str) -> str:
    return ("" if lang in NO_SPACE_LANGS else " ").join(pieces)


def reading_exercises(items: Iterable, n: int, *, seed: int = 0) -> list[ReadingExercise]:
    """``n`` exercises spread evenly over the items' languages, half lists and half phrases, half
    windows and half bags; the text comes from each item's request and key phrase.

    Example:
        >>> from ps_interp.data.builtin import probes
        >>> [(e.layout, e.kind) for e in reading_exercises(probes(langs="en", split="train"), 4, seed=1)][:3]
        [('list', 'window'), ('phrase', 'window'), ('list', 'bag')]
    """
    by_lang: dict[str, list[list[str]]] = {}
    for it in items:
        if getattr(it, "split", "train") != "train":
            raise PsInterpError(f"reading exercises from item {it.id!r} of the {it.split!r} split",
                                fix="pass train-split items only (the test split must stay unseen)")
        texts = by_lang.setdefault(it.lang, [])
        for text in (it.text, it.key):
            if text and text.strip():
                texts.append(units(text, it.lang))
    if not by_lang:
        raise PsInterpError("no items to make reading exercises from", fix="pass train-split probe items")
    rng = random.Random(seed)
    langs = sorted(by_lang)
    out = []
    for i in range(n):
        lang = langs[i % len(langs)]
        round_ = i // len(langs)  # each language cycles list/phrase x window/bag
        layout = ("list", "phrase")[round_ % 2]
        kind = ("window", "bag")[(round_ // 2) % 2]
        unit = "chars" if lang in NO_SPACE_LANGS else "words"
        lo, hi = (LIST_UNITS if layout == "list" else PHRASE_UNITS)[unit]
        length = rng.randint(lo, hi)
        if kind == "window":
            source = rng.choice(by_lang[lang])
            start = rng.randint(0, max(0, len(source) - length))
            pieces = source[start:start + length]
        else:
            pool = [u for text in by_lang[lang] for u in text]
            pieces = [rng.choice(pool) for _ in range(length)]
        out.append(ReadingExercise(lang, _join(pieces, lang), layout, kind))
    return out
