"""External loaders on small fixtures with the upstream columns, and on malformed variants."""
import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ps_interp.data import ProbeSet, load_probes
from ps_interp.data import loaders
from ps_interp.errors import PsInterpError

FIX = Path(__file__).parent / "fixtures"
TEN = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]


def rewrite_csv(src: Path, dst: Path, edit) -> Path:
    """Copy a CSV through ``edit(header, rows) -> (header, rows)``."""
    with src.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    header, rows = edit(header, rows)
    with dst.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return dst


def drop_column(name):
    def edit(header, rows):
        i = header.index(name)
        return header[:i] + header[i + 1:], [r[:i] + r[i + 1:] for r in rows]
    return edit


def blank(row_index, name):
    def edit(header, rows):
        rows[row_index][header.index(name)] = " "
        return header, rows
    return edit


# ---------------------------------------------------------------- MultiJail

def test_multijail():
    ps = load_probes(FIX / "multijail.csv", format="multijail")
    assert len(ps) == 30 and ps.langs == tuple(TEN)
    assert {i.label for i in ps} == {"harmful"}
    sw = ps.select(lang="sw")
    assert sw.ids == ("multijail-0", "multijail-1", "multijail-2")
    assert sw[1].text == "Example harmful request 1 (sw)" and sw[1].category == "Example tag 1"
    assert set(ps.select(lang="en").ids) == set(sw.ids)  # translations share ids
    assert len(load_probes(FIX / "multijail.csv", langs=["en", "bn"])) == 6


def test_multijail_malformed(tmp_path):
    missing = rewrite_csv(FIX / "multijail.csv", tmp_path / "mj.csv", drop_column("jv"))
    with pytest.raises(PsInterpError, match=r"mj\.csv, line 1: missing column 'jv'"):
        load_probes(missing, format="multijail")
    assert len(load_probes(missing, format="multijail", langs=["en"])) == 3  # jv not needed
    empty = rewrite_csv(FIX / "multijail.csv", tmp_path / "mj2.csv", blank(1, "th"))
    with pytest.raises(PsInterpError, match=r"mj2\.csv, line 3: empty 'th'"):
        load_probes(empty, format="multijail")
    with pytest.raises(PsInterpError, match="no language xx"):
        load_probes(FIX / "multijail.csv", format="multijail", langs=["xx"])


# ---------------------------------------------------------------- AdvBench / HarmBench

def test_advbench():
    ps = load_probes(FIX / "advbench_harmful_behaviors.csv", split="test")
    assert ps.ids == ("advbench-0", "advbench-1", "advbench-2")
    assert ps[0].text == "Example harmful request 1" and ps[0].split == "test" and ps[0].lang == "en"
    assert ps[2].meta["target"] == "Sure, here is example response 3"


def test_advbench_malformed(tmp_path):
    bad = rewrite_csv(FIX / "advbench_harmful_behaviors.csv", tmp_path / "adv.csv", drop_column("target"))
    with pytest.raises(PsInterpError, match=r"adv\.csv, line 1: missing column 'target'"):
        load_probes(bad, format="advbench")
    short = tmp_path / "short.csv"
    short.write_text("goal,target\nExample harmful request 1,Sure\nExample harmful request 2\n")
    with pytest.raises(PsInterpError, match=r"short\.csv, line 3: missing column 'target'"):
        load_probes(short, format="advbench")
    long = tmp_path / "long.csv"
    long.write_text("goal,target\nExample harmful request 1,Sure,extra\n")
    with pytest.raises(PsInterpError, match=r"long\.csv, line 2: more fields"):
        load_probes(long, format="advbench")


def test_harmbench():
    ps = load_probes(FIX / "harmbench_behaviors.csv")
    assert ps.ids == ("example_behavior_1", "example_behavior_2", "example_behavior_3")
    assert ps[0].text == "Example harmful request 1" and ps[0].category == "example_category_a"
    assert ps[1].text == "Example context paragraph.\n\n---\n\nExample harmful request 2"
    assert ps[1].meta["functional_category"] == "contextual"
    standard = load_probes(FIX / "harmbench_behaviors.csv", functional_categories=["standard"])
    assert standard.ids == ("example_behavior_1",)


def test_harmbench_malformed(tmp_path):
    bad = rewrite_csv(FIX / "harmbench_behaviors.csv", tmp_path / "hb.csv", drop_column("BehaviorID"))
    with pytest.raises(PsInterpError, match=r"hb\.csv, line 1: missing column 'BehaviorID'"):
        load_probes(bad, format="harmbench")
    empty = rewrite_csv(FIX / "harmbench_behaviors.csv", tmp_path / "hb2.csv", blank(2, "Behavior"))
    with pytest.raises(PsInterpError, match=r"hb2\.csv, line 4: empty 'Behavior'"):
        load_probes(empty, format="harmbench")


# ---------------------------------------------------------------- XSafety

def test_xsafety_folder():
    ps = load_probes(FIX / "xsafety")
    assert ps.langs == ("en", "zh", "es")  # 'sp' upstream folder read as Spanish
    assert {i.category for i in ps} == {"Insult", "Mental_Health"}  # '_n' suffix dropped
    en, zh = ps.select(lang="en"), ps.select(lang="zh")
    assert en.ids == zh.ids and "xsafety-Insult-0" in en.ids
    assert en[0].text == "Example harmful request 1, Insult (en)"  # quoted comma kept
    assert load_probes(FIX / "xsafety", format="xsafety", langs=["zh"]).langs == ("zh",)


def test_xsafety_single_files(tmp_path):
    one = load_probes(FIX / "xsafety" / "zh" / "Insult.csv", format="xsafety")
    assert one.langs == ("zh",) and len(one) == 2
    js = load_probes(FIX / "xsafety_en.json", format="xsafety")
    assert js.langs == ("en",) and js[1].category == "Insult" and js[0].text == "Example harmful request 1"
    odd = tmp_path / "prompts.json"
    odd.write_text(json.dumps(["Example harmful request"]))
    with pytest.raises(PsInterpError, match="cannot tell the language"):
        load_probes(odd, format="xsafety")
    assert load_probes(odd, format="xsafety", lang="de").langs == ("de",)


def test_xsafety_malformed(tmp_path):
    root = tmp_path / "xs"
    shutil.copytree(FIX / "xsafety", root)
    (root / "zh" / "Insult.csv").write_text("Example harmful request 1\n\nExample harmful request 2\n")
    with pytest.raises(PsInterpError, match=r"Insult\.csv, line 2: empty prompt"):
        load_probes(root, format="xsafety")
    (root / "zh" / "Insult.csv").unlink()
    (root / "zh" / "Insult.xlsx").write_bytes(b"not really excel")
    with pytest.raises(PsInterpError, match="Excel files are not read"):
        load_probes(root, format="xsafety")
    bad_json = tmp_path / "en.json"
    bad_json.write_text('[\n "Example harmful request",\n {"category": "Insult"}\n]')
    with pytest.raises(PsInterpError, match=r"entry 1: missing column 'text'"):
        load_probes(bad_json, format="xsafety")


# ---------------------------------------------------------------- FigStep SafeBench

def test_figstep(tmp_path):
    ps = load_probes(FIX / "figstep_safebench.csv")
    assert ps.ids == ("safebench-1-1", "safebench-1-2", "safebench-2-1")
    assert ps[0].text == "Example harmful request 1?" and ps[2].category == "Other Category"
    assert [i.meta["typo"] for i in ps] == ["Steps to do example 1.", "Methods for example 2.", "List of example 3."]
    typo = load_probes(FIX / "figstep_safebench.csv", modality="typo")
    assert typo.modalities == ("typo",) and typo[0].get_image(size=128).size == (128, 128)
    Image.new("RGB", (8, 8), "white").save(tmp_path / "query_SafeBench_1_2_6.png")
    with_images = load_probes(FIX / "figstep_safebench.csv", image_dir=tmp_path)
    assert with_images[0].image is None and with_images[1].image.endswith("query_SafeBench_1_2_6.png")


def test_figstep_malformed(tmp_path):
    bad = rewrite_csv(FIX / "figstep_safebench.csv", tmp_path / "fs.csv", drop_column("instruction"))
    with pytest.raises(PsInterpError, match=r"fs\.csv, line 1: missing column 'instruction'"):
        load_probes(bad, format="figstep")
    # the first row spans lines 2-5 (a multi-line instruction): the second row is on line 6
    empty = rewrite_csv(FIX / "figstep_safebench.csv", tmp_path / "fs2.csv", blank(1, "question"))
    with pytest.raises(PsInterpError, match=r"fs2\.csv, line 6: empty 'question'"):
        load_probes(empty, format="figstep")


# ---------------------------------------------------------------- MM-SafetyBench

def test_mmsafetybench(tmp_path):
    ps = load_probes(FIX / "mmsafetybench")
    assert len(ps) == 5 and ps[0].id == "mmsb-Illegal_Activitiy-0" and ps[0].category == "Illegal_Activitiy"
    assert ps[0].key == "example phrase 0" and ps[0].text == "Example harmful request 0?"
    mixed = ps.with_modality("mixed")
    assert mixed[0].prompt_text() == ps[0].meta["mixed"]  # no extra prefix: it already points at the image
    assert mixed[0].get_image(size=128).size == (128, 128)
    one = load_probes(FIX / "mmsafetybench" / "02-HateSpeech.json", modality="mixed")
    assert one.ids == ("mmsb-HateSpeech-0", "mmsb-HateSpeech-1")
    images = tmp_path / "imgs" / "02-HateSpeech" / "SD_TYPO"
    images.mkdir(parents=True)
    for n in (0, 1):
        Image.new("RGB", (8, 8), "white").save(images / f"{n}.jpg")
    attached = load_probes(FIX / "mmsafetybench" / "02-HateSpeech.json", image_dir=tmp_path / "imgs")
    assert attached[1].image.endswith("SD_TYPO/1.jpg")
    with pytest.raises(PsInterpError, match="image .* not found"):
        load_probes(FIX / "mmsafetybench" / "01-Illegal_Activitiy.json", image_dir=tmp_path / "imgs")


def test_mmsafetybench_malformed(tmp_path):
    data = json.loads((FIX / "mmsafetybench" / "01-Illegal_Activitiy.json").read_text())
    del data["1"]["Key Phrase"]
    bad = tmp_path / "01-Illegal_Activitiy.json"
    bad.write_text(json.dumps(data, indent=4))
    raw_line = bad.read_text().splitlines().index('    "1": {') + 1
    with pytest.raises(PsInterpError, match=rf"line {raw_line}: entry '1' has no 'Key Phrase'"):
        load_probes(bad, format="mmsafetybench")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n "0": {\n  "Question": "x"\n  "Key Phrase": "y"}}')
    with pytest.raises(PsInterpError, match=r"broken\.json, line 4: invalid JSON"):
        load_probes(broken, format="mmsafetybench")


# ---------------------------------------------------------------- generic tables and dispatch

def test_table_csv_and_jsonl():
    ps = load_probes(FIX / "table.csv", format="table",
                     mapping={"text": "prompt", "label": "is_unsafe", "lang": "language", "category": "topic"})
    assert [i.label for i in ps] == ["harmful", "benign", "harmful"]
    assert ps.langs == ("en", "sw") and ps.ids == ("table-0", "table-1", "table-2")
    assert ps[1].category == "cooking"
    js = load_probes(FIX / "table.jsonl", format="table", mapping={"id": "uid", "text": "prompt", "label": "harm"},
                     defaults={"lang": "en"}, split="train")
    assert js.ids == ("t1", "t2") and [i.label for i in js] == ["harmful", "benign"]
    assert {i.split for i in js} == {"train"}


def test_table_malformed(tmp_path):
    with pytest.raises(PsInterpError, match=r"table\.csv, line 1: missing column 'question'"):
        load_probes(FIX / "table.csv", format="table", mapping={"text": "question"})
    with pytest.raises(PsInterpError, match=r"table\.jsonl, line 1: missing column 'lang'"):
        load_probes(FIX / "table.jsonl", format="table", mapping={"text": "prompt", "label": "harm"})
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"prompt": "Hi", "harm": "maybe", "lang": "en"}\n')
    with pytest.raises(PsInterpError, match=r"t\.jsonl, line 1: label 'maybe'"):
        load_probes(bad, format="table", mapping={"text": "prompt", "label": "harm"})
    holes = tmp_path / "h.jsonl"
    holes.write_text('{"prompt": "Hi", "harm": 0, "lang": "en"}\n{"harm": 1, "lang": "en"}\n')
    with pytest.raises(PsInterpError, match=r"h\.jsonl, line 2: missing column 'prompt'"):
        load_probes(holes, format="table", mapping={"text": "prompt", "label": "harm"})


@pytest.mark.parametrize("name, expected", [
    ("multijail.csv", "multijail"), ("advbench_harmful_behaviors.csv", "advbench"),
    ("harmbench_behaviors.csv", "harmbench"), ("figstep_safebench.csv", "figstep"),
    ("mmsafetybench", "mmsafetybench"), ("mmsafetybench/02-HateSpeech.json", "mmsafetybench"),
    ("xsafety", "xsafety")])
def test_format_detection(name, expected):
    assert loaders.detect_format(FIX / name) == expected


def test_dispatch_errors_and_saved_jsonl(tmp_path):
    with pytest.raises(PsInterpError, match="cannot tell the format"):
        load_probes(FIX / "table.csv")
    with pytest.raises(PsInterpError, match="unknown probe format 'nope'"):
        load_probes(FIX / "table.csv", format="nope")
    with pytest.raises(PsInterpError, match="takes no option langs"):
        load_probes(FIX / "advbench_harmful_behaviors.csv", langs=["en"])
    with pytest.raises(PsInterpError, match="file not found"):
        load_probes(tmp_path / "missing.csv", format="advbench")
    ps = load_probes(FIX / "advbench_harmful_behaviors.csv")
    saved = ps.save_jsonl(tmp_path / "saved.jsonl")
    again = load_probes(saved)
    assert isinstance(again, ProbeSet) and again == ps and again[0].meta["target"] == ps[0].meta["target"]
