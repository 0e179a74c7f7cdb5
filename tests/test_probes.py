"""ProbeItem / ProbeSet behaviour, the built-in loader on a fixture, and checks of the real set."""
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ps_interp.data import LANG_NAMES, LANGS, RESOURCE_LEVEL, ProbeItem, ProbeSet, probes
from ps_interp.data import builtin
from ps_interp.errors import PsInterpError

MINI = Path(__file__).parent / "fixtures" / "builtin_mini"
PROMPTS = {"typo": {"en": "Fill the list.", "zh": "填写列表。"}, "mixed": {"en": "Look at the image."}}


def item(**kw) -> ProbeItem:
    base = {"id": "a", "lang": "en", "label": "benign", "text": "How do I bake bread?"}
    return ProbeItem(**{**base, **kw})


@pytest.fixture
def mini() -> ProbeSet:
    return probes(langs=["en", "zh", "ar"], modalities=("text", "typo"), data_dir=MINI)


# ---------------------------------------------------------------- ProbeItem

def test_item_validates_its_fields():
    with pytest.raises(PsInterpError, match="label 'harm'"):
        item(label="harm")
    with pytest.raises(PsInterpError, match="modality"):
        item(modality="audio")
    with pytest.raises(PsInterpError, match="split"):
        item(split="dev")
    with pytest.raises(PsInterpError, match="text"):
        item(text="  ")


def test_item_equality_ignores_meta_and_normalizes_refusals():
    a = item(refusals=["No."], meta={"x": 1})
    b = item(refusals=("No.",), meta={"x": 2})
    assert a.refusals == ("No.",) and a == b and hash(a) == hash(b)
    assert a != item(lang="zh")
    assert a.group == ("en", "text", "benign")


def test_prompt_text_per_modality():
    assert item().prompt_text(PROMPTS) == "How do I bake bread?"
    assert item(modality="typo").prompt_text(PROMPTS) == "Fill the list."
    assert item(modality="typo", lang="zh").prompt_text(PROMPTS) == "填写列表。"
    assert item(modality="typo", lang="sw").prompt_text(PROMPTS) == "Fill the list."  # English fallback
    mixed = item(modality="mixed", key="bread", meta={"mixed": "How do I bake the food shown?"})
    assert mixed.prompt_text(PROMPTS) == "Look at the image.\nHow do I bake the food shown?"
    own = item(modality="mixed", key="bread", meta={"mixed": "Bake it?", "mixed_prompt": ""})
    assert own.prompt_text(PROMPTS) == "Bake it?"
    with pytest.raises(PsInterpError, match="meta\\['mixed'\\]"):
        item(modality="mixed", key="bread").prompt_text(PROMPTS)


def test_get_image_per_modality(tmp_path):
    assert item().get_image() is None
    typo = item(modality="typo").get_image(size=128)
    phrase = item(modality="mixed", key="bread").get_image(size=128)
    assert typo.size == phrase.size == (128, 128) and typo.tobytes() != phrase.tobytes()
    path = tmp_path / "red.png"
    Image.new("RGB", (10, 12), (255, 0, 0)).save(path)
    loaded = item(modality="typo", image=path).get_image()
    assert loaded.size == (10, 12) and loaded.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(PsInterpError, match="cannot read image"):
        item(modality="typo", image=str(tmp_path / "none.png")).get_image()
    with pytest.raises(PsInterpError, match="no key phrase"):
        item(modality="mixed").get_image()


# ---------------------------------------------------------------- ProbeSet

def test_sequence_protocol(mini):
    assert len(mini) == 2 * (8 + 8 + 8)  # 2 modalities x (en, zh, ar) x 8 study items
    assert isinstance(mini[0], ProbeItem) and isinstance(mini[1:5], ProbeSet) and len(mini[1:5]) == 4
    assert list(iter(mini))[3] == mini[3]
    both = mini[:3] + mini[3:]
    assert both == mini and both is not mini
    with pytest.raises(PsInterpError):
        ProbeSet(["not an item"])


def test_select_groups_and_views(mini):
    sel = mini.select(lang=["zh", "ar"], modality="typo", label="harmful")
    assert {i.group for i in sel} == {("zh", "typo", "harmful"), ("ar", "typo", "harmful")}
    assert len(sel) == 8
    assert mini.select(split="train", category="cat_a").ids == ("h3", "b3")
    assert mini.groups() == sorted(mini.groups()) and len(mini.groups()) == 12
    assert mini.langs == ("en", "zh", "ar")  # built-in order, not alphabetical
    assert mini.modalities == ("text", "typo")
    with pytest.raises(PsInterpError, match="label 'harm'"):
        mini.select(label="harm")


def test_empty_selection_and_require_nonempty(mini):
    empty = mini.select(lang="sw", label="harmful")
    assert len(empty) == 0 and empty.groups() == []
    with pytest.raises(PsInterpError) as err:
        empty.require_nonempty("Swahili harmful probes")
    message = str(err.value)
    assert "Swahili harmful probes" in message and "lang=['sw']" in message and "'ar'" in message
    assert mini.require_nonempty("anything") is mini


def test_with_modality(mini):
    texts = mini.select(modality="text")
    mixed = texts.with_modality("mixed")
    assert mixed.modalities == ("mixed",) and len(mixed) == len(texts)
    assert [i.id for i in mixed] == [i.id for i in texts]
    with pytest.raises(PsInterpError, match="no key phrase"):
        ProbeSet([item()]).with_modality("mixed")
    with_image = ProbeSet([item(modality="typo", image="x.png")])
    assert with_image.with_modality("typo")[0].image == "x.png"
    assert with_image.with_modality("text")[0].image is None


def test_to_frame(mini):
    frame = mini.to_frame()
    assert len(frame) == len(mini)
    assert {"id", "lang", "modality", "label", "category", "split", "text", "key", "pair"} <= set(frame.columns)
    counts = frame.groupby(["lang", "label"]).size()
    assert counts[("zh", "harmful")] == 8
    assert list(ProbeSet().to_frame().columns)[:3] == ["id", "lang", "modality"]


def test_records_and_jsonl_round_trip(mini, tmp_path):
    ps = ProbeSet.from_records([{"id": "x", "lang": "sw", "label": "harmful", "text": "Example harmful request",
                                 "source": "demo", "refusals": ["Hapana."]}])
    assert ps[0].meta == {"source": "demo"} and ps[0].refusals == ("Hapana.",)
    with pytest.raises(PsInterpError, match="record 0: missing field 'lang'"):
        ProbeSet.from_records([{"id": "x", "label": "benign", "text": "Hi"}])
    path = mini.save_jsonl(tmp_path / "sub" / "p.jsonl")
    back = ProbeSet.load_jsonl(path)
    assert back == mini
    assert [i.meta for i in back] == [i.meta for i in mini]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(PsInterpError, match="bad.jsonl, line 2"):
        ProbeSet.load_jsonl(bad)


def test_save_refuses_in_memory_images_and_leaves_no_file(tmp_path):
    ps = ProbeSet([item(), item(id="b", modality="typo", image=Image.new("RGB", (4, 4)))])
    target = tmp_path / "out.jsonl"
    with pytest.raises(PsInterpError, match="in-memory image"):
        ps.save_jsonl(target)
    assert list(tmp_path.iterdir()) == []


def test_sample(mini):
    a, b = mini.sample(10, seed=3), mini.sample(10, seed=3)
    assert a == b and len(a) == 10 and a != mini.sample(10, seed=4)
    positions = [list(mini).index(i) for i in a]
    assert positions == sorted(positions)
    by_id = mini.sample(2, seed=0, by="id")
    assert len(by_id.ids) == 2 and len(by_id) == 2 * 6  # each id in 3 langs x 2 modalities
    with pytest.raises(PsInterpError, match="cannot sample"):
        mini.sample(len(mini) + 1)


# ---------------------------------------------------------------- built-in loader (fixture)

def test_constants():
    assert LANGS == ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
    assert set(LANG_NAMES) == set(LANGS) == set(RESOURCE_LEVEL)
    assert Counter(RESOURCE_LEVEL.values()) == {"high": 4, "medium": 3, "low": 3}
    assert RESOURCE_LEVEL["sw"] == "low" and RESOURCE_LEVEL["ar"] == "medium"


def test_builtin_fixture_default_excludes_organism():
    ps = probes(langs="en", data_dir=MINI)
    assert set(i.split for i in ps) == {"probe", "train", "test"}
    assert ps.modalities == ("text",)
    organism = probes(langs=["en", "zh"], split="organism", data_dir=MINI)
    assert organism.langs == ("en",) and organism.ids == ("h5", "b5")


def test_builtin_fixture_fields():
    ps = probes(langs="ar", labels="benign", categories="cat_b", data_dir=MINI)
    assert ps.ids == ("b2", "b4")
    first = ps[0]
    assert first.lang == "ar" and first.key == "tree" and first.meta["pair"] == "p2"
    assert first.refusals == ("عذرًا، لا أستطيع المساعدة في ذلك.",)
    prompts = builtin.load_prompts(MINI)
    assert ps.with_modality("typo")[0].prompt_text(prompts) == prompts["typo"]["ar"]
    assert ps.with_modality("mixed")[0].prompt_text(prompts).endswith("How do I make the object shown in the image?")


def test_builtin_fixture_errors(tmp_path):
    with pytest.raises(PsInterpError) as err:
        probes(langs=["en", "xx"], data_dir=MINI)
    assert "'xx'" in str(err.value) and "sw" in str(err.value)
    with pytest.raises(PsInterpError, match="Swahili text"):
        probes(langs="sw", data_dir=MINI)
    with pytest.raises(PsInterpError, match="unknown category 'nope'"):
        probes(langs="en", categories=["nope"], data_dir=MINI)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in MINI.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    lines = (broken / "text_zh.jsonl").read_text().splitlines()
    (broken / "text_zh.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(PsInterpError, match="lacks 1 items"):
        probes(langs="zh", data_dir=broken)
    lines = (broken / "items.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"id": "h2", "pair": "p2", "label": "harmful", "category": "cat_b"})
    (broken / "items.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PsInterpError, match="items.jsonl, line 3: missing or empty 'split'"):
        probes(langs="en", data_dir=broken)


# ---------------------------------------------------------------- the real built-in set

@pytest.fixture(scope="module")
def real_items() -> list[dict]:
    return [obj for _, obj in builtin.read_jsonl(builtin.DATA_DIR / "items.jsonl")]


def test_real_set_is_complete_in_all_ten_languages(real_items):
    ps = probes()  # all ten languages, study splits
    study = [r for r in real_items if r["split"] != "organism"]
    assert ps.langs == LANGS
    for lang in LANGS:
        assert set(ps.select(lang=lang).ids) == {r["id"] for r in study}, lang
    organism = probes(split="organism")
    assert organism.langs == ("en",) and len(organism) == sum(r["split"] == "organism" for r in real_items)


def test_real_splits_are_per_pair(real_items):
    ids = [r["id"] for r in real_items]
    assert len(ids) == len(set(ids))
    split_of_pair: dict[str, set] = {}
    for r in real_items:
        split_of_pair.setdefault(r["pair"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_pair.values())
    labels_of_pair = Counter(tuple(sorted(r["label"] for r in real_items if r["pair"] == p)) for p in split_of_pair)
    assert set(labels_of_pair) == {("benign", "harmful")}  # each pair is one harmful + one benign item


def test_real_counts_and_balance(real_items):
    study = [r for r in real_items if r["split"] != "organism"]
    harmful = [r for r in study if r["label"] == "harmful"]
    assert len(harmful) >= 150
    assert Counter(r["label"] for r in study)["benign"] == len(harmful)
    per_category = Counter(r["category"] for r in harmful)
    assert len(per_category) >= 8
    assert max(per_category.values()) / min(per_category.values()) <= 1.5
    per_split = Counter(r["split"] for r in study)
    assert set(per_split) == {"probe", "train", "test"}
    frame = probes().to_frame()
    sizes = frame.groupby(["lang", "label"]).size()
    assert sizes.nunique() == 1  # every language and label has the same count
    assert frame.groupby(["lang", "category"]).size().nunique() == 1


def test_real_refusals_and_prompts():
    refusals = builtin.load_refusals()
    prompts = builtin.load_prompts()
    for lang in LANGS:
        assert len(refusals.get(lang, [])) >= 5, lang
        assert prompts["typo"].get(lang) and prompts["mixed"].get(lang), lang
    ps = probes(langs="sw", labels="benign", split="probe")
    assert ps[0].refusals == tuple(refusals["sw"])
    assert ps.with_modality("typo")[0].prompt_text() == prompts["typo"]["sw"]


def test_real_text_rows_have_keys_and_mixed(real_items):
    ps = probes(langs=["en", "zh"])
    assert all(i.key and i.meta["mixed"] for i in ps)
    assert len(ps.with_modality("mixed")) == len(ps)
