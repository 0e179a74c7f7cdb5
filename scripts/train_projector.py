"""Train the projector of ``smollm2-dinov2-llava`` (vision tower and language model frozen).

Data: typographic (``typo``) and ``mixed`` images of the built-in **train** split, all ten languages
(90 items x 2 modalities x 10 languages = 1800 images; ``--per-group N`` takes the first N items of
each language x modality). ``--val-pairs`` pairs of the train split (in every language and
modality) are held out: the transcription loss on ``--val-images`` of their images is measured
before and after training. The probe and test splits are never read (checked).

Objective: next-token **transcription**. The prompt is the model's own chat format with the image
and a fixed instruction (:data:`INSTRUCTION`); the target is the text drawn in the image (the
request for ``typo``, the key phrase for ``mixed``), cut to ``--max-target-tokens`` tokens, then
``<|im_end|>`` when it was not cut. The loss is the mean over images of each image's mean token
cross-entropy: with a plain token mean, Thai and Bengali (~100 tokens per request) dominated and
after 134 steps the projector answered English images in Thai.

Why transcription: it asks the projector for one thing only, to make the text in the image
readable to the frozen language model, and teaches no behaviour: no refusals, no answers.
Whatever the model then does with an image request (refuse, comply) comes from the language
model's own text-trained behaviour, which is what the cross-modal study measures. (Matching the
model's own answers to the text prompt would also train its reactions into the projector, and
costs a second forward per example.) A cheaper warm-up tried here, aligning image tokens with the
LM's word embeddings of the transcript without an LM pass (1.5 min), left the validation loss
worse after the same number of transcription steps (token-mean loss 3.83 vs 3.56 after 24-25
steps, from 4.04) and was dropped.

Cost on a shared 2-core CPU: the frozen DINOv2 features of every image are computed once (one
torch thread: 5-7x faster here than two) and cached under ``cache_dir()/vlm_features``; a step
then runs only the projector and the language model on ~140 tokens per example, and the LM head
only on the target positions. ``--minutes`` caps the training loop by wall time (the run records
where it stopped; the cosine learning-rate decay follows whichever of steps and minutes runs out
first); ``--minutes 0`` runs exactly ``--steps`` steps, reproducibly for a seed.

``--exercises N`` adds N reading exercises (:mod:`ps_interp.data.reading`): word windows and shuffled
word bags of the same train texts in the same two layouts, so that the projector cannot get by on
recognising 180 sentences per language. Validation pairs are held out before they are drawn.

On a GPU box without the fonts: ``--export DIR`` writes every training and validation image at the
processor's size (greyscale PNG, pixel-identical after preprocessing; tested) with its text, and
``--data DIR`` trains from that folder. The shipped projector's ``projector.json`` records how it was made.

Usage:
    python scripts/train_projector.py                  # real parts -> ps_interp/assets/smollm2-dinov2-llava
    python scripts/train_projector.py --tiny --out /tmp/proj   # tiny random parts, seconds (CI)
    # the GPU recipe (one H100, 6.5 min of training):
    python scripts/train_projector.py --exercises 8000 --export runs/projector-data
    python scripts/train_projector.py --data runs/projector-data --device cuda --autocast bf16 \
        --batch-size 64 --lr 1e-3 --warmup 100 --minutes 6.5 --steps 100000 --threads 8 --no-cache
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

from dataclasses import dataclass

import torch
from PIL import Image

from ps_interp._io import atomic_dir
from ps_interp.data.builtin import LANGS, probes
from ps_interp.data.probes import ProbeItem
from ps_interp.data.prompting import render_prompt
from ps_interp.data.reading import reading_exercises
from ps_interp.errors import PsInterpError
from ps_interp.models import vlm
from ps_interp.models.loading import cache_dir
from ps_interp.precision import autocast_context

INSTRUCTION = vlm.READ_INSTRUCTION
DEFAULTS = dict(minutes=15.0, steps=600, batch_size=8, lr=2e-3, warmup=10, max_target_tokens=32, seed=0,
                threads=1, per_group=0, langs=",".join(LANGS), modalities="typo,mixed", val_pairs=3,
                val_images=48, exercises=0, device="cpu", autocast="auto", vision="")
TINY = dict(minutes=1.0, steps=3, batch_size=2, per_group=3, langs="en,zh", max_target_tokens=8, val_pairs=1,
            val_images=4)


def target_text(item) -> str:
    """The text drawn in the item's image: the request (``typo``), the key phrase (``mixed``), or the
    text of a reading exercise / exported image."""
    if not isinstance(item, ProbeItem):
        return item.text
    if item.modality == "typo":
        return item.meta.get("typo") or item.text
    if item.modality == "mixed":
        return item.key
    raise PsInterpError(f"item {item.id!r} is a {item.modality!r} item: it has no image",
                        fix="train on 'typo' and 'mixed' items")


def training_items(langs, modalities, per_group: int = 0) -> list:
    """The train-split items (first ``per_group`` per language x modality when > 0), checked to be train only."""
    items = list(probes(langs=list(langs), modalities=list(modalities), split="train"))
    if any(it.split != "train" for it in items):
        raise PsInterpError("training items outside the train split", fix="report this as a bug")
    if per_group > 0:
        kept, seen = [], {}
        for it in items:
            key = (it.lang, it.modality)
            if seen.get(key, 0) < per_group:
                kept.append(it)
                seen[key] = seen.get(key, 0) + 1
        items = kept
    return items


@dataclass(frozen=True)
class ExportedImage:
    """An image written by ``--export``: the processor-size greyscale PNG and the text drawn in it."""

    path: Path
    text: str
    lang: str
    kind: str

    def get_image(self) -> Image.Image:
        with Image.open(self.path) as image:
            return image.convert("RGB")


def export_data(out: Path, train_items: list, val_items: list, *, image_size: int, meta: dict) -> Path:
    """Write every training and validation image, already resized to ``image_size`` (bicubic, what the
    processor does; greyscale PNG, lossless for these black-on-white images), with ``examples.jsonl``.

    ``--data`` trains from such a folder on a machine without the fonts (a GPU box). Written atomically.
    """
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for role, group in (("train", train_items), ("val", val_items)):
            for it in group:
                name = f"images/{len(rows):05d}.png"
                image = it.get_image().resize((image_size, image_size), Image.BICUBIC).convert("L")
                image.save(tmp / name, optimize=True)
                rows.append({"file": name, "text": target_text(it), "lang": it.lang, "role": role,
                             "kind": it.modality if isinstance(it, ProbeItem) else f"{it.layout}-{it.kind}"})
        (tmp / "examples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps({**meta, "image_size": image_size, "n": len(rows)}, indent=1))
    return out


def load_exported(folder: Path) -> tuple[list, list, dict]:
    """``(train, val, manifest)`` of a folder written by :func:`export_data`."""
    if not (folder / "examples.jsonl").is_file():
        raise PsInterpError(f"{folder} holds no examples.jsonl", fix="write it with --export on a machine with fonts")
    rows = [json.loads(line) for line in (folder / "examples.jsonl").read_text(encoding="utf-8").splitlines()]
    split = {"train": [], "val": []}
    for r in rows:
        split[r["role"]].append(ExportedImage(folder / r["file"], r["text"], r["lang"], r["kind"]))
    return split["train"], split["val"], json.loads((folder / "manifest.json").read_text())


def prompt_ids(model, n_image_tokens: int) -> tuple[list[int], slice]:
    """Token ids of the training prompt (image placeholder expanded) and the slice of the image tokens."""
    token = model.processor.image_token
    text = render_prompt(model, INSTRUCTION, image=True)
    before, after = text.split(token, 1)
    tok = model.tokenizer
    head = tok(before, add_special_tokens=False)["input_ids"]
    tail = tok(after, add_special_tokens=False)["input_ids"]
    ids = head + [model.image_token_id] * n_image_tokens + tail
    return ids, slice(len(head), len(head) + n_image_tokens)


def target_ids(model, text: str, max_tokens: int) -> list[int]:
    """The transcription target: ``text``'s tokens, cut to ``max_tokens``; ``<|im_end|>`` (eos) if not cut."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:max_tokens] if len(ids) >= max_tokens else ids + [model.tokenizer.eos_token_id]


def _pixels(model, images) -> torch.Tensor:
    return model.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


def compute_features(model, items, *, batch_size: int = 16, cache: Path | None = None,
                     progress: bool = True) -> torch.Tensor:
    """Frozen vision features ``[N, patches, C]`` (float16) of each item's image, cached by content.

    The cache key hashes the vision tower's source and every processed image, so a change of
    renderer, font or weights recomputes them.
    """
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from ps_interp._io import atomic_write

    digest = hashlib.sha1(f"{model.source.split(' + ')[0]}|{vlm._CONVERSION}".encode())
    pixels = []
    for it in items:
        px = _pixels(model, [it.get_image()])
        digest.update(px.numpy().tobytes())
        pixels.append(px)
    path = cache / f"{digest.hexdigest()[:16]}.safetensors" if cache else None
    if path is not None and path.is_file():
        return load_file(str(path))["features"]
    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(items), batch_size), desc="vision features", disable=not progress):
            out.append(vlm.image_features(model, torch.cat(pixels[s:s + batch_size])).to(torch.float16).cpu())
    feats = torch.cat(out)
    if path is not None:
        atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp))
    return feats


def batch_loss(model, projector, feats: torch.Tensor, prompt: list[int], image_slice: slice,
               targets: list[list[int]], *, per_example: bool = True) -> torch.Tensor:
    """Cross-entropy of the targets after ``prompt`` with the projected ``feats`` in its image slot.

    ``per_example=True`` (training): the mean over examples of each example's mean token loss, so an
    English image (~12 target tokens) weighs as much as a Thai one (~100 tokens, cut to 32); a plain
    token mean let the long scripts dominate and the projector answered every image in Thai.
    ``per_example=False``: the token mean, which equals ``LlavaForConditionalGeneration``'s loss on
    the same sequences (tested). Right padding; the LM head runs only on the positions that predict a
    target token.
    """
    hf = model.hf
    dev = model.device
    B, P, T = len(targets), len(prompt), max(len(t) for t in targets)
    pad = model.tokenizer.pad_token_id
    ids = torch.full((B, P + T), pad, dtype=torch.long, device=dev)
    ids[:, :P] = torch.tensor(prompt, device=dev)
    labels = torch.full((B, T), -100, dtype=torch.long, device=dev)
    mask = torch.zeros(B, P + T, dtype=torch.long, device=dev)
    mask[:, :P] = 1
    for b, t in enumerate(targets):
        ids[b, P:P + len(t)] = torch.tensor(t, device=dev)
        labels[b, :len(t)] = torch.tensor(t, device=dev)
        mask[b, P:P + len(t)] = 1
    embeds = hf.get_input_embeddings()(ids)
    image = projector(feats.to(dev, embeds.dtype))
    embeds = torch.cat([embeds[:, :image_slice.start], image, embeds[:, image_slice.stop:]], dim=1)
    hidden = hf.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    logits = hf.lm_head(hidden[:, P - 1:P - 1 + T]).float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    valid = (labels != -100).float()
    if per_example:
        return ((nll * valid).sum(1) / valid.sum(1)).mean()
    return (nll * valid).sum() / valid.sum()


def _lr(step: int, progress: float, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay with ``progress`` in [0, 1]."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def split_validation(items, val_pairs: int, seed: int) -> tuple[list, list]:
    """Hold out ``val_pairs`` pairs of the train split (all their languages and modalities) for a validation loss."""
    pairs = sorted({it.meta.get("pair") for it in items})
    held = set(random.Random(seed).sample(pairs, min(val_pairs, max(0, len(pairs) - 1))))
    return [it for it in items if it.meta.get("pair") not in held], [it for it in items if it.meta.get("pair") in held]


def _run_stage(name, loss_fn, n_items, *, projector, steps, minutes, batch_size, lr, warmup, seed, progress):
    """A seeded, time-capped AdamW loop over shuffled index batches (each item once per epoch); returns
    (losses, stopped_by, seconds)."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.0)
    gen = random.Random(seed)
    order: list[int] = []
    losses, stopped = [], "steps"
    start = time.monotonic()
    bar = tqdm(total=steps, desc=name, disable=not progress)
    for step in range(steps):
        used = time.monotonic() - start
        if minutes > 0 and used > minutes * 60:
            stopped = "minutes"
            break
        # schedule progress: steps done or time used, whichever is further (time only when capped)
        progress_ = max(step / steps, used / (minutes * 60) if minutes > 0 else 0.0)
        if len(order) < batch_size:
            epoch = list(range(n_items))
            gen.shuffle(epoch)
            order += epoch
        idx, order = order[:batch_size], order[batch_size:]
        for group in opt.param_groups:
            group["lr"] = _lr(step, progress_, warmup, lr)
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 4))
        bar.update(1)
        bar.set_postfix(loss=f"{_mean(losses[-10:]):.3f}")
    bar.close()
    return losses, stopped, time.monotonic() - start


def train(out: Path, *, tiny: bool = False, minutes: float, steps: int, batch_size: int, lr: float, warmup: int,
          max_target_tokens: int, seed: int, threads: int, per_group: int, langs: str, modalities: str,
          val_pairs: int, val_images: int, exercises: int = 0, device: str = "cpu", autocast="auto",
          vision: str = "", data: Path | None = None, export: Path | None = None, use_cache: bool = True,
          progress: bool = True) -> Path:
    """Train a fresh projector and save it to ``out`` (or, with ``export``, only write the images); returns
    the folder written."""
    t0 = time.monotonic()
    autocast_arg, autocast = autocast, {"bf16": True, "fp32": False}.get(autocast, autocast)
    if autocast not in ("auto", True, False):
        raise PsInterpError(f"--autocast {autocast!r} is not one of auto, bf16, fp32", fix="use auto, bf16 or fp32")
    torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    lang_list, mod_list = langs.split(","), modalities.split(",")
    if data is not None:
        items, val, data_meta = load_exported(Path(data))
    else:
        items, val = split_validation(training_items(lang_list, mod_list, per_group), val_pairs, seed)
        val = random.Random(seed).sample(val, min(val_images, len(val)))
        n_pairs = len({it.meta.get("pair") for it in items})
        items = items + reading_exercises(items, exercises, seed=seed) if exercises else items
        data_meta = {"split": "train", "langs": lang_list, "modalities": mod_list, "n_pairs": n_pairs,
                     "per_group": per_group or None, "reading_exercises": exercises,
                     "validation": {"held_out_pairs": val_pairs, "n_images": len(val)}}
    if export is not None:
        return export_data(Path(export), items, val, image_size=vlm.TINY_IMAGE_SIZE if tiny else vlm.IMAGE_SIZE,
                           meta={**data_meta, "seed": seed})
    model = vlm.build_tiny(seed=seed) if tiny else vlm.load_vlm(directory=None, seed=seed, vision=vision or None)
    model.hf.to(device)
    for p in model.hf.parameters():
        p.requires_grad_(False)
    projector = model.hf.model.multi_modal_projector
    for p in projector.parameters():
        p.requires_grad_(True)
    model.hf.train(False)
    cache = None if (tiny or not use_cache) else cache_dir() / "vlm_features"
    feats = compute_features(model, items + val, cache=cache, progress=progress)
    feats, val_feats = feats[:len(items)], feats[len(items):]
    t_features = time.monotonic() - t0
    n_tokens = projector(feats[:1].float().to(model.device)).shape[1]
    prompt, image_slice = prompt_ids(model, n_tokens)
    targets = [target_ids(model, target_text(it), max_target_tokens) for it in items]
    val_targets = [target_ids(model, target_text(it), max_target_tokens) for it in val]

    def transcribe(idx):
        with autocast_context(model.device, autocast):
            return batch_loss(model, projector, feats[idx].float(), prompt, image_slice, [targets[i] for i in idx])

    def validate():
        if not val:
            return None
        with torch.no_grad(), autocast_context(model.device, autocast):
            per = [float(batch_loss(model, projector, val_feats[s:s + batch_size].float(), prompt, image_slice,
                                    val_targets[s:s + batch_size])) * len(val_targets[s:s + batch_size])
                   for s in range(0, len(val), batch_size)]
        return round(sum(per) / len(val), 4)

    val_before = validate()
    losses, stopped, secs = _run_stage("transcribe", transcribe, len(items), projector=projector, steps=steps,
                                       minutes=minutes, batch_size=batch_size, lr=lr, warmup=warmup, seed=seed,
                                       progress=progress)
    stages = {"transcribe": _stage_meta(losses, stopped, secs, batch_size, len(items), steps, minutes)}
    meta = {
        "objective": "next-token transcription of the text drawn in the image (see scripts/train_projector.py)",
        "instruction": INSTRUCTION, "tiny": tiny,
        "data": {**data_meta, "n_images": len(items)},
        "settings": {"batch_size": batch_size, "lr": lr, "warmup": warmup,
                     "schedule": "linear warm-up, then cosine decay over max(steps done / steps, time used / minutes)",
                     "optimizer": "AdamW (wd 0), clip 1.0", "max_target_tokens": max_target_tokens, "seed": seed,
                     "threads": threads, "device": _device_name(model.device), "autocast": str(autocast_arg)},
        "image_tokens": n_tokens, "trainable_params": sum(p.numel() for p in projector.parameters()),
        "stages": stages,
        "validation_loss": {"before": val_before, "after": validate(),
                            "what": "transcription cross-entropy (nats/token, mean per image) on held-out train pairs"},
        "seconds": {"features": round(t_features, 1), "total": round(time.monotonic() - t0, 1)},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "command": " ".join(sys.argv)},
    }
    vlm.save_projector(out, projector, model=model.name, **meta)
    return out


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def _stage_meta(losses, stopped, seconds, batch_size, n_items, steps, minutes) -> dict:
    return {"steps": steps, "minutes": minutes, "batch_size": batch_size, "steps_done": len(losses),
            "stopped_by": stopped, "epochs": round(len(losses) * batch_size / max(1, n_items), 3),
            "seconds": round(seconds, 1), "loss_first10": _mean(losses[:10]), "loss_last10": _mean(losses[-10:]),
            "losses": losses}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random parts, a few items and steps (CI)")
    p.add_argument("--out", type=Path, default=None, help=f"projector directory (default {vlm.ASSET_DIR})")
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the vision-feature cache")
    p.add_argument("--export", type=Path, default=None,
                   help="only write the training/validation images (processor size) and texts to this folder")
    p.add_argument("--data", type=Path, default=None, help="train from a folder written by --export (no fonts needed)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    settings = {**DEFAULTS, **(TINY if args.tiny else {})}
    settings.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    out = args.out or (Path("runs/projector-tiny") if args.tiny else vlm.ASSET_DIR)
    path = train(out, tiny=args.tiny, use_cache=not args.no_cache, progress=not args.quiet, data=args.data,
                 export=args.export, **settings)
    if args.export is not None:
        print(f"wrote {path}: {json.loads((path / 'manifest.json').read_text())['n']} images")
        return path
    meta = json.loads((path / vlm.META).read_text())
    done = ", ".join(f"{k} {v['steps_done']} steps ({v['stopped_by']})" for k, v in meta["stages"].items())
    val = meta["validation_loss"]
    print(f"wrote {path / vlm.WEIGHTS} ({meta['bytes'] / 1e6:.2f} MB): {done}; validation loss {val['before']} -> "
          f"{val['after']}; {meta['seconds']['total']} s")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
