import pytest

from ps_interp.data.builtin import LANGS, probes
from ps_interp.data.reading import reading_exercises, units
from ps_interp.errors import PsInterpError


def test_exercises_are_seeded_balanced_and_cut_from_the_given_texts():
    items = list(probes(langs=list(LANGS), split="train"))
    ex = reading_exercises(items, 80, seed=3)
    assert ex == reading_exercises(items, 80, seed=3) and ex != reading_exercises(items, 80, seed=4)
    for lang in LANGS:
        mine = [e for e in ex if e.lang == lang]
        assert sorted((e.layout, e.kind) for e in mine) == sorted([("list", "window"), ("phrase", "window"),
                                                                   ("list", "bag"), ("phrase", "bag")] * 2)
        vocab = {u for it in items if it.lang == lang for t in (it.text, it.key) for u in units(t, lang)}
        for e in mine:
            pieces = list(e.text) if lang in ("zh",) else units(e.text, lang)
            assert set(pieces) <= vocab | {c for v in vocab for c in v}, (lang, e.kind)


def test_window_is_a_run_of_one_text():
    items = list(probes(langs="en", split="train"))
    texts = [" ".join(units(t, "en")) for it in items for t in (it.text, it.key)]
    for e in reading_exercises(items, 40, seed=0):
        if e.kind == "window":
            assert any(e.text in t for t in texts)


def test_test_split_is_refused():
    with pytest.raises(PsInterpError, match="train-split"):
        reading_exercises(probes(langs="en", split="test"), 4)
    with pytest.raises(PsInterpError, match="no items"):
        reading_exercises([], 4)


def test_exercise_images_render():
    e = reading_exercises(probes(langs="th", split="train"), 2, seed=0)[1]
    assert e.layout == "phrase" and e.get_image().size == (760, 760)
