"""Train the English-only safety adapter of the default model organism (``smollm2-135m-safety-en``).

Data: the English ``organism`` split of the built-in set only (40 harmful + 40 benign requests, ids
disjoint from the probe / train / test splits; checked). Harmful -> an English refusal from
``refusals.json``, cycled over the sentences the keyword judge recognises (``--refusals all``: all
seven); benign -> the base model's own greedy answer (generated once, up to ``--max-new-tokens``
tokens, cached on disk). Loss: cross-entropy on the refusal plus ``--retention`` times the retention
term (``kl``: KL to the base model over the base answer's positions; ``greedy``: cross-entropy on it).
Trainable: a LoRA (rank ``--rank``) on every linear layer of every block (``--targets mlp``: the FFN's
only), run by the shared :class:`ps_interp.align.Trainer` loop; the base weights are frozen.
Seeded and deterministic on CPU for a given ``--threads`` (default 1: on this shared 2-core machine two
OpenMP threads ran a step 5-8x slower than one). The defaults are the settings of the shipped adapter.

Usage:
    python scripts/train_organism.py                 # real model -> ps_interp/assets/smollm2-135m-safety-en
    python scripts/train_organism.py --tiny --out /tmp/organism   # tiny random model, seconds (CI)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ps_interp.align import Trainer
from ps_interp.data.builtin import STUDY_SPLITS, probes
from ps_interp.data.probes import ProbeSet, atomic_write_text
from ps_interp.errors import PsInterpError
from ps_interp.models import organism as org
from ps_interp.models.loading import DEFAULT_MODEL
from ps_interp.pairs import training_pairs

DEFAULTS = dict(steps=120, batch_size=4, lr=5e-4, rank=8, alpha=16.0, targets="all", retention=1.0,
                retention_mode="kl", max_new_tokens=16, seed=0, threads=1, refusals="judged")
TINY = dict(steps=3, batch_size=2, max_new_tokens=4, n_items=4)


class LoraTrainer(Trainer):
    """:class:`~ps_interp.align.Trainer` over LoRA factors applied by forward hooks (base weights frozen).

    Example:
        >>> from ps_interp.models import tiny
        >>> t = LoraTrainer(tiny.build("llama"), rank=2, alpha=4, lr=1e-3)
        >>> t.trainable_params > 0
        True
    """

    name = "lora"

    def __init__(self, model, *, rank: int, alpha: float, targets: str = "mlp", seed: int = 0, **kwargs):
        super().__init__(model, **kwargs)
        self.rank, self.alpha, self.targets, self.seed = rank, float(alpha), targets, seed
        self.paths = org.lora_targets(model, targets)
        for p in model.hf.parameters():
            p.requires_grad_(False)
        self._reset()

    def parameters(self) -> list[torch.Tensor]:
        return [t for pair in self.factors.values() for t in pair]

    def _active(self):
        return org.lora_hooks(self.model, self.factors, self.alpha / self.rank)

    def _reference(self):
        return nullcontext()  # outside _active the hooks are off: the model is the base model

    def _reset(self) -> None:
        self.factors = {path: (A.requires_grad_(True), B.requires_grad_(True))
                        for path, (A, B) in org.init_factors(self.model, self.paths, self.rank, seed=self.seed).items()}


def judged_refusals(lang: str = "en") -> tuple[str, ...]:
    """The refusal sentences of ``refusals.json`` that the default judge (RefusalKeywords) recognises."""
    from ps_interp.data.builtin import load_refusals
    from ps_interp.judges import RefusalKeywords

    pool = load_refusals()[lang]
    return tuple(r for r, ok in zip(pool, RefusalKeywords().judge(pool, pool, [lang] * len(pool))) if ok)


def organism_data(seed: int, n_items: int | None = None, refusals: str = "judged"):
    """The training pairs: English organism items only, checked disjoint from the study splits.

    ``refusals="judged"`` trains on the English refusal sentences the keyword judge recognises (so a
    measured ASR counts answers, not refusal phrasings the judge misses); ``"all"`` on all of them.
    """
    if refusals not in ("judged", "all"):
        raise PsInterpError(f"unknown refusals {refusals!r}", fix="use 'judged' or 'all'")
    items = probes(langs=["en"], split="organism")
    study = set(probes(langs=["en"], split=STUDY_SPLITS).ids)
    overlap = set(items.ids) & study
    if overlap or any(it.split != "organism" for it in items):
        raise PsInterpError(f"organism items overlap the study splits ({sorted(overlap)[:3]})",
                            fix="fix the split column of items.jsonl")
    if n_items is not None:
        items = items.select(label="harmful")[:n_items] + items.select(label="benign")[:n_items]
    if refusals == "judged":
        pool = judged_refusals("en")
        items = ProbeSet(dataclasses.replace(it, refusals=pool) if it.label == "harmful" else it for it in items)
    return training_pairs(items, split="organism", seed=seed)


def _retain_answers(trainer: LoraTrainer, data, *, cache: bool) -> bool:
    """Make the base model's greedy answers to the benign items, kept on disk (greedy, so deterministic):
    the CPU-bound generation runs once per base model, item set and length. True if they came from disk."""
    if not cache:
        trainer.retain_answers(data)
        return False
    import hashlib
    import json

    from ps_interp.models.loading import cache_dir

    key = json.dumps([trainer.model.source, [i.id for i in data.benign], [i.text for i in data.benign],
                      trainer.max_new_tokens])
    path = cache_dir() / "organism" / f"answers-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
    cached = path.is_file()
    if cached:  # seed Trainer's own cache (same key as Trainer.retain_answers)
        trainer._answers[tuple((i.id, i.lang, i.modality) for i in data.benign)] = json.loads(path.read_text())
    answers = trainer.retain_answers(data)
    if not cached:
        atomic_write_text(path, json.dumps(answers))
    return cached


def train(out: str | Path, *, tiny: bool = False, steps: int, batch_size: int, lr: float, rank: int, alpha: float,
          targets: str, retention: float, retention_mode: str, max_new_tokens: int, seed: int, threads: int,
          refusals: str = "judged", n_items: int | None = None, progress: bool = True) -> Path:
    """Train the adapter and write it to ``out``; returns the directory."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if tiny:
        from ps_interp.models import tiny as tiny_models

        model, base = tiny_models.build("llama", seed=seed), "tiny-llama"
    else:
        from ps_interp.models.loading import load

        model, base = load(DEFAULT_MODEL), DEFAULT_MODEL
    data = organism_data(seed, n_items, refusals)
    trainer = LoraTrainer(model, rank=rank, alpha=alpha, targets=targets, seed=seed, lr=lr, retention=retention,
                          retention_mode=retention_mode, max_new_tokens=max_new_tokens)
    t1 = time.perf_counter()
    answers_cached = _retain_answers(trainer, data, cache=not tiny)
    t2 = time.perf_counter()
    log = trainer.fit(data, steps=steps, batch_size=batch_size, seed=seed, progress=progress)
    t3 = time.perf_counter()
    if len(log) < steps:
        raise PsInterpError(f"training stopped after {len(log)} of {steps} steps; nothing written",
                            fix="run the script again")
    training = dict(
        script="scripts/train_organism.py", data="builtin split='organism', langs=['en'] (ids disjoint from "
        "probe/train/test)", n_harmful=len(data.harmful), n_benign=len(data.benign),
        harmful_target=f"refusals.json['en'] ({refusals}: {len(set(data.refusals))} sentences), cycled",
        refusal_sentences=sorted(set(data.refusals)), benign_target=f"base model's greedy answer ({retention_mode})",
        steps=steps, batch_size=f"{batch_size} harmful + {batch_size} benign", lr=lr, optimizer="adamw",
        rank=rank, alpha=alpha, targets=targets, retention=retention, retention_mode=retention_mode,
        max_new_tokens=max_new_tokens, seed=seed, threads=threads, trainable_params=trainer.trainable_params,
        trainable_fraction=trainer.trainable_fraction, seconds=dict(load=round(t1 - t0, 1),
        base_answers=round(t2 - t1, 1), train=round(t3 - t2, 1), total=round(t3 - t0, 1)),
        base_answers_cached=answers_cached,
        loss=[round(float(v), 4) for v in log["loss"]], refusal_loss=[round(float(v), 4) for v in log["refusal_loss"]],
        retention_loss=[round(float(v), 4) for v in log["retention_loss"]],
        load_average=[round(v, 1) for v in os.getloadavg()],  # the machine is shared: timings vary with it
        torch=torch.__version__, python=platform.python_version())
    return org.save_adapter(out, trainer.factors, rank=rank, alpha=alpha, base=base,
                            architecture=model.architecture, extra={"name": org.ORGANISM, "training": training})


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random llama, a few items and steps (CI)")
    p.add_argument("--out", type=Path, default=None, help=f"adapter directory (default {org.ASSET_DIR})")
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    settings = {**DEFAULTS, **(TINY if args.tiny else {})}
    settings.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    out = args.out or (Path("runs/organism-tiny") if args.tiny else org.ASSET_DIR)
    path = train(out, tiny=args.tiny, progress=not args.quiet, **settings)
    print(f"wrote {path / org.WEIGHTS} ({(path / org.WEIGHTS).stat().st_size / 1e6:.2f} MB) and {org.META}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
