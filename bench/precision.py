"""Benchmark: bf16 autocast vs float32 on this CPU, for the three costly stages of the main job.

Prints, for SmolLM2-135M-Instruct (the embedded default) and ``--threads`` torch threads:

1. forward of a batch of 16 built-in prompts (10 languages interleaved): fp32 time / bf16 time;
2. greedy generation of 16 tokens for the same batch: fp32 / bf16;
3. one Shield training step (0.03% neurons of the last layers, batch 8): fp32 / bf16.

A ratio > 1 means bf16 autocast is faster. Measured on the project's 2-core Xeon with AVX512-BF16 (idle,
torch 2.13, 2 threads): 0.62 / 0.61 / 0.65, i.e. bf16 is ~1.6x *slower*; with 1 thread 0.62 / 0.64 / 0.64.
So ``autocast="auto"`` (the main job's default) uses bf16 only on GPUs. Fp32 and bf16 runs are interleaved in one
process (medians of ``--repeats`` runs after a warm-up) so background load hits both alike.

Run:  .venv/bin/python bench/precision.py [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import english_prompts, setup_threads  # noqa: E402


def interleaved(fns: dict, repeats: int) -> dict:
    """Median time of each callable, runs interleaved (one warm-up each first)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    setup_threads(args.threads)

    import ps_interp as ps
    from ps_interp.data.prompting import encode
    from ps_interp.generate import generate
    from ps_interp.pairs import training_pairs
    from ps_interp.precision import autocast_context, native_bf16

    model = ps.load("smollm2-135m-instruct")
    items = list(english_prompts(16))
    batch = encode(model, items)
    batch.pop("position_ids", None)
    print(f"threads {args.threads}; native bf16 on this CPU: {native_bf16(model.device)}")

    def forward(ac):
        def run():
            with torch.inference_mode(), autocast_context(model.device, ac):
                model.hf(**batch, use_cache=False)
        return run

    def gen(ac):
        return lambda: generate(model, items, max_new_tokens=16, autocast=ac, progress=False)

    probes = ps.probes(langs=["en"], split="train")
    data = training_pairs(probes, langs=["en"], split="train")
    stats_layers = {model.n_layers - 2: range(0, 1536, 128), model.n_layers - 1: range(0, 1536, 128)}
    neurons = ps.NeuronSet(stats_layers, model.identity)
    shields = {ac: ps.Shield(model, neurons, lr=1e-3, autocast=ac) for ac in (False, True)}
    batches = {ac: next(iter(s.batches(data, steps=1, batch_size=8))) for ac, s in shields.items()}

    def step(ac):
        return lambda: shields[ac].step(batches[ac])

    rows = []
    for name, make in (("forward (16 prompts)", forward), ("generate 16 tokens (16 prompts)", gen),
                       ("Shield step (batch 8)", step)):
        t = interleaved({"fp32": make(False), "bf16": make(True)}, args.repeats)
        rows.append((name, t["fp32"], t["bf16"]))
    for s in shields.values():
        s.restore()
    print(f"{'stage':34s} {'fp32 s':>8s} {'bf16 s':>8s} {'fp32/bf16':>10s}")
    for name, a, b in rows:
        print(f"{name:34s} {a:8.2f} {b:8.2f} {a / b:10.2f}")


if __name__ == "__main__":
    main()
