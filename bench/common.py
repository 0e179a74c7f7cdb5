"""Shared helpers for the benchmark scripts: fixed threads, medians, peak RSS, prompts."""
from __future__ import annotations

import resource
import statistics
import time

import torch

THREADS = 1  # fixed; one thread gives stable timings on a shared 2-core machine


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


def english_prompts(n: int, distinct: int | None = None):
    """``n`` text probes from the built-in set, languages interleaved (en, zh, ..., jv, en, ...).

    ``distinct``: cycle through only the first ``distinct`` prompts, so runs of different sizes see the
    same prompt-length distribution (memory then depends on the count alone).
    """
    from ps_interp.data import LANGS, ProbeSet, probes
    from ps_interp.data.builtin import DATA_DIR

    langs = [lang for lang in LANGS if (DATA_DIR / f"text_{lang}.jsonl").exists()]
    by_lang = [list(probes(langs=[lang], modalities=("text",))) for lang in langs]
    pool = [items[i] for i in range(min(map(len, by_lang))) for items in by_lang]
    pool = pool[:distinct] if distinct else pool
    return ProbeSet([pool[i % len(pool)] for i in range(n)])
