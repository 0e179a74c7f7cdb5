"""Recording cost on SmolLM2-135M-Instruct: overhead vs a bare forward, and memory vs probe count.

Run: .venv/bin/python bench/record.py
Prints: record / bare HF no_grad forward (same batches, 256 prompts, position last; target <= 1.10)
and peak RSS recording 1024 prompts vs 128 prompts (target <= +5%), each measured in a fresh process.
The memory runs cycle through the same 128 prompts (languages interleaved), so both sizes see the same
prompt lengths: peak memory follows the longest batch, and only the count may not add to it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from common import english_prompts, median_time, peak_rss_mib, setup_threads  # noqa: E402


def overhead(n_prompts: int = 256, batch_size: int = 16, repeats: int = 3, autocast: bool = False) -> dict:
    import ps_interp as ps
    from ps_interp.data.prompting import encode
    from ps_interp.record import _batches

    setup_threads()
    model = ps.load("smollm2-135m-instruct")
    probes = english_prompts(n_prompts)
    items = list(probes)
    batches = [encode(model, [items[i] for i in idx]) for idx in _batches(model, items, batch_size)]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)

    def bare():
        with torch.no_grad(), ctx:
            for b in batches:
                model.hf(**b, use_cache=False)

    def rec():
        ps.record(model, probes, batch_size=batch_size, progress=False, autocast=autocast)

    t_bare, t_rec = median_time(bare, repeats), median_time(rec, repeats)
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return {"prompts": n_prompts, "tokens": n_tokens, "bare_s": t_bare, "record_s": t_rec,
            "ratio": t_rec / t_bare, "autocast_bf16": autocast}


def memory(n_prompts: int) -> dict:
    import ps_interp as ps

    setup_threads()
    model = ps.load("smollm2-135m-instruct")
    probes = english_prompts(n_prompts, distinct=128)  # same lengths at every size: only the count changes
    base = peak_rss_mib()
    ps.record(model, probes, batch_size=16, progress=False)
    return {"prompts": n_prompts, "rss_before_mib": base, "peak_rss_mib": peak_rss_mib()}


def _child(kind: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, n = sys.argv[2], int(sys.argv[3])
        print(json.dumps(overhead(n) if kind == "overhead" else
                         overhead(n, autocast=True) if kind == "overhead_bf16" else memory(n)))
        return
    if "--memory-only" not in sys.argv:
        _overhead_report()
    small, large = _child("memory", 128), _child("memory", 1024)
    growth = large["peak_rss_mib"] / small["peak_rss_mib"] - 1
    print(f"peak RSS: 128 prompts {small['peak_rss_mib']:.0f} MiB, 1024 prompts {large['peak_rss_mib']:.0f} MiB, "
          f"growth {100 * growth:+.1f}% (target <= +5%)")


def _overhead_report() -> None:
    o = _child("overhead", 256)
    print(f"record overhead (SmolLM2-135M, {o['prompts']} prompts, {o['tokens']} tokens, position last, fp32): "
          f"bare forward {o['bare_s']:.2f}s, record {o['record_s']:.2f}s, ratio {o['ratio']:.3f} (target <= 1.10)")
    ob = _child("overhead_bf16", 256)
    print(f"  with autocast bf16: bare {ob['bare_s']:.2f}s, record {ob['record_s']:.2f}s, ratio {ob['ratio']:.3f}; "
          f"bf16 record speed-up vs fp32 record: {o['record_s'] / ob['record_s']:.2f}x")


if __name__ == "__main__":
    main()
