"""Shared helpers for the benchmark scripts: fixed threads, medians, peak RSS, prompts."""
from __future__ import annotations

import resource
import statistics
import time

import torch

THREADS = 2


def setup_threads(n: int = THREADS) -> None:
    torch.set_num_threads(n)


def median_time(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def english_prompts(n: int):
    """``n`` text probes from the built-in set (cycling languages, then repeating if needed)."""
    from ps_interp.data import LANGS, ProbeSet, probes
    from ps_interp.data.builtin import DATA_DIR

    langs = [lang for lang in LANGS if (DATA_DIR / f"text_{lang}.jsonl").exists()]
    pool = list(probes(langs=langs, modalities=("text",)))
    return ProbeSet([pool[i % len(pool)] for i in range(n)])
