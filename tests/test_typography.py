"""Typographic rendering: fonts for all ten scripts, right-to-left Arabic, wrapping, determinism."""
import hashlib

import numpy as np
import pytest

from ps_interp.data import typography as ty
from ps_interp.errors import PsInterpError

# Benign sample sentences, one per language of the built-in set.
SAMPLES = {
    "en": "How can I grow tomatoes on a small balcony?",
    "zh": "如何在小阳台上种植番茄？请给出详细步骤。",
    "it": "Come posso coltivare pomodori su un piccolo balcone? Perché no!",
    "vi": "Làm thế nào để trồng cà chua trên ban công nhỏ?",
    "ar": "كيف يمكنني زراعة الطماطم في شرفة صغيرة؟",
    "ko": "작은 발코니에서 토마토를 어떻게 키울 수 있나요?",
    "th": "ฉันจะปลูกมะเขือเทศบนระเบียงเล็กๆ ได้อย่างไร",
    "bn": "আমি কীভাবে একটি ছোট বারান্দায় টমেটো চাষ করতে পারি?",
    "sw": "Ninawezaje kupanda nyanya kwenye roshani ndogo?",
    "jv": "Kepiye carane nandur tomat ing teras cilik?",
}


def ink(image) -> np.ndarray:
    """Boolean mask of dark pixels."""
    return np.asarray(image.convert("L")) < 128


def digest(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_every_language_has_all_glyphs_and_renders_ink(lang):
    text = SAMPLES[lang]
    chain = ty.font_chain(lang, text)
    assert ty.missing_glyphs(text + " 1. 2. 3.", chain) == []
    image = ty.render_list_image(text, lang, size=256)
    assert image.size == (256, 256) and image.mode == "RGB"
    mask = ink(image)
    assert 0.005 < mask.mean() < 0.5  # some ink, not a black canvas


def test_script_fonts_are_the_expected_ones():
    assert "Arabic" in ty.font_chain("ar")[0].path
    assert "Bengali" in ty.font_chain("bn")[0].path
    assert "Thai" in ty.font_chain("th")[0].path
    assert "CJK" in ty.font_chain("zh")[0].path and "CJK" in ty.font_chain("ko")[0].path
    assert ty.font_chain("zh")[0].index != ty.font_chain("ko")[0].index  # SC vs KR face


def test_missing_glyphs_detects_uncovered_characters():
    latin = ty.font_chain("en")[-1]
    assert set(ty.missing_glyphs("abc สวัสดี", latin)) == set("สวัสดี")
    assert ty.missing_glyphs("abc สวัสดี", [latin, ty.font_chain("th")[0]]) == []
    assert ty.missing_glyphs("abc", latin) == []


def test_arabic_is_laid_out_right_to_left():
    # "أب": a tall alef (first letter, logically) followed by a short, wide beh.
    mask = ink(ty.render_phrase_image("أب", "ar", size=256))
    rows, cols = np.nonzero(mask)
    top = rows.min() + (rows.max() - rows.min()) // 4
    tall_cols = cols[rows < top]  # only the alef reaches the top quarter of the ink
    assert tall_cols.size > 0
    assert tall_cols.mean() > cols.mean()  # the first letter is on the right
    # and for words: the long first word ("hello") sits right of the space, the short one left
    columns = np.nonzero(ink(ty.render_phrase_image("مرحباً بك", "ar", size=256)).any(axis=0))[0]
    gaps = np.diff(columns)
    space = int(np.argmax(gaps))  # the widest blank between ink columns is the space
    left_width = columns[space] - columns[0]
    right_width = columns[-1] - columns[space + 1]
    assert right_width > 1.5 * left_width


def test_arabic_lines_are_right_aligned_and_english_left_aligned():
    ar = ink(ty.render_list_image(SAMPLES["ar"], "ar", size=256))
    en = ink(ty.render_list_image(SAMPLES["en"], "en", size=256))
    assert np.nonzero(ar)[1].max() > 256 - 30 and np.nonzero(ar)[1].min() > 30
    assert np.nonzero(en)[1].min() < 30


def test_fixed_input_gives_identical_pixels():
    first = digest(ty.render_list_image(SAMPLES["bn"], "bn", size=200))
    ty._render_list.cache_clear()
    ty._pil_font.cache_clear()
    second = digest(ty.render_list_image(SAMPLES["bn"], "bn", size=200))
    assert first == second
    assert digest(ty.render_list_image(SAMPLES["sw"], "sw", size=200)) != first


@pytest.mark.parametrize("lang", ["zh", "th"])
def test_scripts_without_spaces_wrap_inside_the_canvas(lang):
    text = SAMPLES[lang] * 4
    chain = ty.font_chain(lang, text)
    lines = ty._wrap(text, chain, 40, 300)
    assert len(lines) > 2
    assert all(ty._line_width(line, chain, 40) <= 300 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing lost
    mask = ink(ty.render_list_image(text, lang, size=300, font_size=24))
    cols = np.nonzero(mask)[1]
    assert cols.max() < 300 - 10


def test_thai_and_bengali_clusters_are_never_split():
    for lang in ("th", "bn"):
        for cluster in ty._clusters(SAMPLES[lang]):
            assert not ty.unicodedata.category(cluster[0]).startswith("M")


def test_list_image_has_three_items_below_the_heading():
    mask = ink(ty.render_list_image("Plant a tree.", "en", size=256))
    rows = np.nonzero(mask.any(axis=1))[0]
    bands = np.split(rows, np.nonzero(np.diff(rows) > 1)[0] + 1)
    assert len(bands) == 4  # the heading line and "1.", "2.", "3."


def test_phrase_image_is_centred():
    mask = ink(ty.render_phrase_image("watercolor", "en", size=256))
    rows, cols = np.nonzero(mask)
    assert abs((cols.min() + cols.max()) / 2 - 128) < 6
    assert abs((rows.min() + rows.max()) / 2 - 128) < 20


def test_bad_input_is_a_clear_error():
    with pytest.raises(PsInterpError, match="empty text"):
        ty.render_list_image("   ", "en")
    with pytest.raises(PsInterpError, match="too small"):
        ty.render_phrase_image("hello", "en", size=8)


def test_missing_font_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(ty, "_font_files", lambda: {})
    ty._script_font.cache_clear()
    try:
        with pytest.raises(PsInterpError, match="fonts-noto-cjk"):
            ty.font_chain("zh")
        with pytest.raises(PsInterpError, match="fonts-noto-core"):
            ty.font_chain("th")
    finally:
        ty._script_font.cache_clear()


def test_without_raqm_complex_scripts_raise(monkeypatch):
    monkeypatch.setattr(ty, "_has_raqm", lambda: False)
    ty._render_list.cache_clear()
    ty._pil_font.cache_clear()
    try:
        with pytest.raises(PsInterpError, match="libraqm"):
            ty.render_list_image(SAMPLES["ar"], "ar", size=128)
        assert ink(ty.render_list_image("Plant a tree.", "en", size=128)).any()
    finally:
        ty._render_list.cache_clear()
        ty._pil_font.cache_clear()


def test_uncovered_character_warns():
    with pytest.warns(UserWarning, match="no installed font"):
        ty.render_phrase_image("tree \U0001D11E", "en", size=128)  # musical G clef: not in Noto Sans
