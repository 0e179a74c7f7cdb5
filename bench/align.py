"""Benchmark: Shield (masked neuron) step vs full fine-tuning and LoRA on SmolLM2-135M-Instruct, on CPU.

Prints three ratios with their targets:

1. step time of Shield / step time of full fine-tuning (target <= 0.8): one process, both models in
   memory, steps interleaved (masked, full, masked, ...) so that load from other processes hits both
   alike; medians over ``--steps`` steps after one warm-up step each.
2. optimizer state bytes of Shield / of full fine-tuning (AdamW) at a 0.03% parameter budget
   (target <= 0.01).
3. peak memory of one Shield step vs one LoRA r=8 step (target Shield <= LoRA). Method: each step type
   runs in its own fresh subprocess (same model, batch and warm-up); before each measured step the
   kernel's peak-RSS counter is reset (``echo 5 > /proc/self/clear_refs``), and the step's cost is
   ``VmHWM - VmRSS`` (peak resident memory during the step minus resident memory before it). glibc's
   mmap threshold is fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so freed tensors go back to the OS and
   RSS follows live memory. Median over ``--memory-steps`` steps (LoRA on the FFNs and on every
   linear layer; ``--full-memory`` adds full fine-tuning).

The batch is 8 harmful prompts of the built-in English train split with their refusals, chat-formatted
and cut to 64 tokens (loss on the refusal tokens; no retention term, so every method runs one forward
and one backward). The 0.03% neurons are drawn uniformly over all layers (seed 0): the lowest selected
layer sets how deep the backward pass goes, and a uniform draw reaches the first layers (pessimistic for
Shield; real safety neurons sit mostly in middle and late layers).

Threads: fixed with ``torch.set_num_threads`` (default 1). On a machine shared with other busy
processes, 2 OpenMP threads on 2 cores made every small elementwise op wait ~15 ms for a descheduled
thread (a 135M forward took 7-15 s with 2 threads vs 1.5 s with 1), so 1 thread measures the model,
not the scheduler. Pass ``--threads N`` on a quiet machine.

Run:  .venv/bin/python bench/align.py [--threads 1] [--steps 5] [--memory-steps 2] [--full-memory]
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET = 0.0003
METHODS = ("masked", "full", "lora-mlp", "lora-all")


def setup(threads: int):
    import numpy as np
    import torch

    from ps_interp.budget import neurons_for_budget
    from ps_interp.data.builtin import probes
    from ps_interp.models import load
    from ps_interp.neurons import NeuronSet
    from ps_interp.pairs import collate, target_ids, training_pairs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load("smollm2-135m-instruct")
    data = training_pairs(probes(langs="en"), split="train")
    batch = dict(refusal=collate(model, data.harmful[:8], [target_ids(model, t) for t in data.refusals[:8]],
                                 max_length=64), retain=None)
    n = neurons_for_budget(model.hf.config, BUDGET)
    flat = np.random.default_rng(0).choice(model.n_layers * model.d_ff, size=n, replace=False)
    mask = np.zeros(model.n_layers * model.d_ff, dtype=bool)
    mask[flat] = True
    neurons = NeuronSet.from_mask(mask.reshape(model.n_layers, model.d_ff), model.identity,
                                  meta={"name": f"random {BUDGET:.2%} budget"})
    return model, batch, neurons


def trainer(method: str, model, neurons):
    from ps_interp.align import Shield
    from ps_interp.baselines import FullFinetune, LoraTrainer

    if method == "masked":
        return Shield(model, neurons, lr=1e-3, retention=0)
    if method == "full":
        return FullFinetune(model, lr=1e-5, retention=0)
    return LoraTrainer(model, rank=8, target=method.split("-")[1], lr=1e-4, retention=0)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(method: str, threads: int, steps: int) -> None:
    """One step type in this fresh process: print JSON with per-step peak memory and time."""
    model, batch, neurons = setup(threads)
    tr = trainer(method, model, neurons)
    tr.step(batch)  # warm-up: optimizer state and lazy buffers exist from now on
    peaks, times = [], []
    for _ in range(steps):
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status("VmRSS")
        t0 = time.perf_counter()
        tr.step(batch)
        times.append(time.perf_counter() - t0)
        peaks.append(_status("VmHWM") - before)
    print(json.dumps(dict(method=method, peak_bytes=peaks, seconds=times, trainable=tr.trainable_params,
                          total=tr.total_params, state_bytes=tr.optimizer_state_bytes())))


def run_child(method: str, threads: int, steps: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, "--child", method, "--threads", str(threads),
                          "--memory-steps", str(steps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timing(threads: int, steps: int) -> dict:
    import torch

    model, batch, neurons = setup(threads)
    other = copy.copy(model)
    other.hf = copy.deepcopy(model.hf)
    masked, full = trainer("masked", model, neurons), trainer("full", other, neurons)
    times = {"masked": [], "full": []}
    for i in range(steps + 1):
        for name, tr in (("masked", masked), ("full", full)):
            t0 = time.perf_counter()
            tr.step(batch)
            if i:  # the first step of each is a warm-up
                times[name].append(time.perf_counter() - t0)
    grads = [n for n, p in model.hf.named_parameters() if p.grad is not None]
    return dict(times=times, masked_state=masked.optimizer_state_bytes(), full_state=full.optimizer_state_bytes(),
                trainable=masked.trainable_params, total=masked.total_params, n_neurons=len(neurons),
                layers=neurons.layers, shape=tuple(batch["refusal"]["input_ids"].shape), base_grads=len(grads),
                torch=torch.__version__)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=2, help="measured steps per memory subprocess")
    parser.add_argument("--full-memory", action="store_true", help="also measure a full fine-tuning step's memory")
    parser.add_argument("--child", choices=METHODS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads, args.memory_steps)
        return
    start = time.perf_counter()
    t = timing(args.threads, args.steps)
    med = {k: statistics.median(v) for k, v in t["times"].items()}
    print(f"SmolLM2-135M-Instruct, CPU, torch {t['torch']}, {args.threads} threads, batch {t['shape'][0]} x "
          f"{t['shape'][1]} tokens, loss on the refusal tokens, AdamW")
    print(f"neurons: {t['n_neurons']} random (0.03% budget) in {len(t['layers'])} layers, lowest layer "
          f"{min(t['layers'])}; trainable {t['trainable']:,} of {t['total']:,} = {t['trainable'] / t['total']:.4%}; "
          f"base weights with a gradient after a masked step: {t['base_grads']}")
    ratio = med["masked"] / med["full"]
    print(f"[1] step time: masked {med['masked']:.3f} s, full fine-tuning {med['full']:.3f} s (medians of "
          f"{args.steps}, interleaved) -> ratio {ratio:.3f} (target <= 0.8: {verdict(ratio <= 0.8)})")
    print(f"    all masked steps: {[round(x, 3) for x in t['times']['masked']]}")
    print(f"    all full steps:   {[round(x, 3) for x in t['times']['full']]}")
    state = t["masked_state"] / t["full_state"]
    print(f"[2] optimizer state: masked {t['masked_state']:,} B, full fine-tuning {t['full_state']:,} B -> ratio "
          f"{state:.2e} (target <= 0.01: {verdict(state <= 0.01)})")
    kinds = ("masked", "lora-mlp", "lora-all") + (("full",) if args.full_memory else ())
    mem = {m: run_child(m, args.threads, args.memory_steps) for m in kinds}
    mib = {m: statistics.median(r["peak_bytes"]) / 2**20 for m, r in mem.items()}
    print("[3] peak memory of one step (VmHWM - VmRSS before the step, fresh subprocess per step type, "
          f"clear_refs reset, MALLOC_MMAP_THRESHOLD_=64KiB, median of {args.memory_steps} after 1 warm-up):")
    for m, r in mem.items():
        print(f"    {m:9s} {mib[m]:8.1f} MiB  (steps {[round(b / 2**20, 1) for b in r['peak_bytes']]} MiB; "
              f"step time {statistics.median(r['seconds']):.3f} s; trainable {r['trainable']:,} = "
              f"{r['trainable'] / r['total']:.4%}; optimizer state {r['state_bytes']:,} B)")
    print(f"    masked / LoRA r=8 (mlp): {mib['masked'] / mib['lora-mlp']:.3f}; masked / LoRA r=8 (all linear): "
          f"{mib['masked'] / mib['lora-all']:.3f} (target masked <= LoRA: "
          f"{verdict(mib['masked'] <= mib['lora-mlp'] and mib['masked'] <= mib['lora-all'])})")
    print(f"total bench time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
