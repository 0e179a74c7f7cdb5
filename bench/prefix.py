"""Benchmark: Shield steps with the frozen-prefix cache vs full forwards (SmolLM2-135M-Instruct, CPU).

The safety set of the default run sits in layers 28-29 of 30 (23 neurons); this script trains the same
layout (12 neurons in each of the two last layers, ``--layers`` to change) on the built-in English train
split, batch 8 with KL retention, and prints the median step time with ``fast_prefix=True`` and
``False`` (interleaved in one process, after a warm-up that also fills the cache) and their ratio.
The first fast steps pay for the cache (one prefix pass per new training sequence); the ratio is for
steps whose sequences are cached, which is every step once the ~90 sequences have been seen.

Run:  .venv/bin/python bench/prefix.py [--threads 2] [--steps 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import setup_threads  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--layers", default="28,29")
    args = p.parse_args(argv)
    setup_threads(args.threads)

    import ps_interp as ps
    from ps_interp.pairs import training_pairs

    model = ps.load("smollm2-135m-instruct")
    layers = [int(x) for x in args.layers.split(",")]
    neurons = ps.NeuronSet({layer: range(0, 1536, 128) for layer in layers}, model.identity)
    data = training_pairs(ps.probes(langs=["en"], split="train"), langs=["en"], split="train")
    shields = {fast: ps.Shield(model, neurons, lr=1e-4, fast_prefix=fast) for fast in (True, False)}
    batches = {fast: list(s.batches(data, steps=args.steps, batch_size=8)) for fast, s in shields.items()}
    for fast, s in shields.items():  # warm-up; fills the cache for these batches
        for b in batches[fast]:
            s.step(b)
        s.restore()
    times = {True: [], False: []}
    for i in range(args.steps):
        for fast, s in shields.items():
            t = time.perf_counter()
            s.step(batches[fast][i])
            times[fast].append(time.perf_counter() - t)
            s.restore()
    fast, full = statistics.median(times[True]), statistics.median(times[False])
    print(f"threads {args.threads}; neurons in layers {layers}; fast path enabled: {shields[True].prefix.enabled}")
    print(f"Shield step, cached prefix: {fast:.3f} s; full forwards: {full:.3f} s; speed-up {full / fast:.1f}x")


if __name__ == "__main__":
    main()
