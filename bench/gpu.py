"""GPU benchmark on 7B-8B-shaped models with random weights (no downloads): record, training, generation.

For each of Llama-3-8B and Qwen2.5-7B (shapes from ``ps_interp/configs/*.json``) the model is built
on the GPU in bf16 with random weights, wrapped with the offline tokenizer
(``ps_interp.models.tokenizer.train_tokenizer``; prompts are random token ids decoded to text), and
the script prints:

1. tokens/s of ``ps.record`` (nnsight trace, stops after the last layer) vs a bare HF forward
   (``no_grad``, same batches, whole model with the LM head);
2. step time and peak memory (``torch.cuda.max_memory_allocated``) of one training step of Shield
   (0.03% random neurons, AdamW on the slices), LoRA r=8 on the FFNs (AdamW) and full fine-tuning.
   Full fine-tuning of 8B in bf16 with AdamW needs ~64 GB of weights+grads+state plus the weight copy
   ps_interp keeps for restore(): it does not fit one 80 GB card, so it runs with SGD (no state)
   by default (``--full-optimizer adamw --layers 16`` is the AdamW alternative on half the layers);
3. greedy generation tokens/s (HF ``generate``, batch of prompts, fixed number of new tokens).

Peak memory includes what ps_interp's trainers keep for ``restore()``: a copy of every weight (full
fine-tuning), of the wrapped FFN weights (LoRA), of the selected slices (Shield).

Targets one H100 in < 8 minutes. ``--tiny`` runs the same code on a tiny config on the CPU in
seconds (the tests run it).

Run:  .venv/bin/python bench/gpu.py [--models llama-3-8b qwen2.5-7b] [--layers N] [--markdown]
      .venv/bin/python bench/gpu.py --tiny
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("llama-3-8b", "qwen2.5-7b")
BUDGET = 0.0003
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


# ---- setup ----------------------------------------------------------------------------------
def build(name: str, *, device: str, dtype, layers: int | None, tiny: bool):
    """A random-weight ps_interp Model shaped like the bundled config ``name``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ps_interp.budget import load_config
    from ps_interp.models import wrap
    from ps_interp.models.tokenizer import train_tokenizer

    raw = {k: v for k, v in load_config(name).items() if k not in ("_name_or_path", "architectures")}
    model_type = raw.pop("model_type")
    tok = train_tokenizer()
    if tiny:
        raw.update(TINY, vocab_size=len(tok))
    if layers:
        raw["num_hidden_layers"] = min(layers, raw["num_hidden_layers"])
    raw.update(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = AutoConfig.for_model(model_type, **raw)
    cfg.architectures = load_config(name).get("architectures")
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    hf.generation_config.pad_token_id = tok.pad_token_id
    return wrap(hf, tok, name=f"{name}{' (tiny)' if tiny else ''}{f' {layers} layers' if layers else ''}")


def synthetic_probes(model, n: int, tokens: int, seed: int = 0):
    """``n`` probes whose user text is ``tokens`` random token ids decoded (two languages, two labels)."""
    import torch

    from ps_interp.data.probes import ProbeItem, ProbeSet

    tok = model.tokenizer
    special = set(tok.all_special_ids)
    pool = torch.tensor([i for i in range(len(tok)) if i not in special])
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        ids = pool[torch.randint(len(pool), (tokens,), generator=g)]
        text = tok.decode(ids).strip() or "hello"
        items.append(ProbeItem(id=f"s{i}", lang=("en", "sw")[i % 2], label=("harmful", "benign")[(i // 2) % 2],
                               text=text, category="synthetic", refusals=("I cannot help with that.",)))
    return ProbeSet(items)


class Clock:
    """Wall time with device synchronisation, and peak device memory (CUDA only)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn, repeats: int = 3) -> float:
        fn()
        self.sync()
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            self.sync()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    def reset_peak(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 1e9 if self.cuda else None

    def now_gb(self) -> float | None:
        return self.torch.cuda.memory_allocated() / 1e9 if self.cuda else None


# ---- measurements -----------------------------------------------------------------------------
def bench_record(model, probes, batch_size: int, clock: Clock, repeats: int) -> dict:
    import torch

    import ps_interp as ps
    from ps_interp.data.prompting import encode
    from ps_interp.record import _batches

    items = list(probes)
    batches = [encode(model, [items[i] for i in idx]) for idx in _batches(model, items, batch_size)]
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def bare():
        with torch.no_grad():
            for b in batches:
                model.hf(**b, use_cache=False)

    def rec():
        ps.record(model, probes, batch_size=batch_size, progress=False)

    t_bare, t_rec = clock.time(bare, repeats), clock.time(rec, repeats)
    return dict(tokens=n_tokens, bare_tok_s=n_tokens / t_bare, record_tok_s=n_tokens / t_rec,
                record_over_bare=t_rec / t_bare)


def trainers(model, neurons, full_optimizer: str):
    """(name, factory) for each training method, in the order they run (full fine-tuning last)."""
    from ps_interp.align import Shield
    from ps_interp.baselines import FullFinetune, LoraTrainer

    out = [("shield", lambda: Shield(model, neurons, lr=1e-3, retention=0))]
    try:
        import peft  # noqa: F401

        out.append(("lora r=8 (mlp)", lambda: LoraTrainer(model, rank=8, target="mlp", lr=1e-4, retention=0)))
    except ImportError:
        print("  (peft not installed: LoRA skipped)")
    out.append((f"full ({full_optimizer})",
                lambda: FullFinetune(model, lr=1e-5, retention=0, optimizer=full_optimizer)))
    return out


def bench_train(model, probes, *, batch_size: int, max_length: int, steps: int, full_optimizer: str,
                clock: Clock) -> list[dict]:
    import numpy as np

    from ps_interp.budget import neurons_for_budget
    from ps_interp.neurons import NeuronSet
    from ps_interp.pairs import collate, target_ids

    items = [it for it in probes if it.label == "harmful"][:batch_size]
    targets = [target_ids(model, it.refusals[0]) for it in items]
    batch = dict(refusal=collate(model, items, targets, max_length=max_length), retain=None)
    n = max(neurons_for_budget(model.hf.config, BUDGET), 4)  # tiny configs: at least a few
    flat = np.random.default_rng(0).choice(model.n_layers * model.d_ff, size=n, replace=False)
    mask = np.zeros(model.n_layers * model.d_ff, dtype=bool)
    mask[flat] = True
    neurons = NeuronSet.from_mask(mask.reshape(model.n_layers, model.d_ff), model.identity)
    rows = []
    for name, make in trainers(model, neurons, full_optimizer):
        clock.reset_peak()
        base = clock.now_gb()
        tr = make()
        tr.step(batch)  # warm-up: optimizer state exists from here on
        clock.sync()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            tr.step(batch)
            clock.sync()
            times.append(time.perf_counter() - t)
        peak = clock.peak_gb()
        rows.append(dict(method=name, step_s=statistics.median(times), peak_gb=peak,
                         over_weights_gb=None if peak is None else peak - base,
                         trainable=tr.trainable_params, trainable_frac=tr.trainable_fraction,
                         optimizer_state_gb=tr.optimizer_state_bytes() / 1e9,
                         batch=tuple(batch["refusal"]["input_ids"].shape)))
        tr.restore()
        del tr
        gc.collect()
    return rows


def bench_generate(model, probes, *, batch_size: int, new_tokens: int, clock: Clock) -> dict:
    import torch

    from ps_interp.data.prompting import encode

    batch = encode(model, list(probes)[:batch_size])
    batch.pop("position_ids", None)

    def gen():
        with torch.inference_mode():
            model.hf.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=model.tokenizer.pad_token_id)

    t = clock.time(gen, repeats=1)
    return dict(gen_tok_s=batch["input_ids"].shape[0] * new_tokens / t, gen_batch=batch["input_ids"].shape[0],
                new_tokens=new_tokens)


# ---- driver -----------------------------------------------------------------------------------
def run(args) -> list[dict]:
    import torch

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.tiny:
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    if device == "cpu":
        torch.set_num_threads(args.threads)
    clock = Clock(device)
    card = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {card}; torch {torch.__version__}; dtype {str(dtype).replace('torch.', '')}; "
          f"{args.prompts} prompts x ~{args.tokens} tokens, batch {args.batch}; random weights, no downloads")
    results = []
    for name in args.models:
        t0 = time.perf_counter()
        model = build(name, device=device, dtype=dtype, layers=args.layers, tiny=args.tiny)
        clock.sync()
        probes = synthetic_probes(model, args.prompts, args.tokens)
        built = time.perf_counter() - t0
        params = sum(p.numel() for p in model.hf.parameters())
        print(f"\n{model.name}: {params / 1e9:.2f}B parameters, {model.n_layers} layers, built in {built:.0f} s"
              + (f", {clock.now_gb():.1f} GB" if clock.cuda else ""))
        rec = bench_record(model, probes, args.batch, clock, args.repeats)
        print(f"  record {rec['record_tok_s']:,.0f} tok/s vs bare forward {rec['bare_tok_s']:,.0f} tok/s "
              f"(record / bare time {rec['record_over_bare']:.2f}; {rec['tokens']:,} tokens)")
        gen = bench_generate(model, probes, batch_size=args.batch, new_tokens=args.new_tokens, clock=clock)
        print(f"  generation {gen['gen_tok_s']:,.0f} new tok/s (batch {gen['gen_batch']}, {gen['new_tokens']} "
              f"new tokens each, greedy)")
        train = bench_train(model, probes, batch_size=args.train_batch, max_length=args.max_length,
                            steps=args.steps, full_optimizer=args.full_optimizer, clock=clock)
        for r in train:
            mem = "" if r["peak_gb"] is None else f", peak {r['peak_gb']:.1f} GB (+{r['over_weights_gb']:.1f} GB)"
            print(f"  {r['method']:<16} step {r['step_s']:.3f} s{mem}; trainable {r['trainable']:,} "
                  f"({r['trainable_frac']:.4%}); optimizer state {r['optimizer_state_gb']:.3f} GB")
        results.append(dict(model=model.name, params=params, device=card, build_s=built, **rec, **gen,
                            train=train))
        del model
        gc.collect()
        if clock.cuda:
            torch.cuda.empty_cache()
    return results


def markdown(results: list[dict]) -> str:
    """The README table: one row per model and method."""
    lines = ["| model | card | record tok/s | bare fwd tok/s | generate tok/s | method | step s | peak GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for i, t in enumerate(r["train"]):
            head = (f"| {r['model']} | {r['device']} | {r['record_tok_s']:,.0f} | {r['bare_tok_s']:,.0f} | "
                    f"{r['gen_tok_s']:,.0f} |") if i == 0 else "| | | | | |"
            peak = "-" if t["peak_gb"] is None else f"{t['peak_gb']:.1f}"
            lines.append(f"{head} {t['method']} | {t['step_s']:.3f} | {peak} |")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny config on the CPU (seconds), for tests")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="bundled config names")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--tokens", type=int, default=96, help="random tokens per user prompt (+ chat template)")
    p.add_argument("--batch", type=int, default=16, help="record / generation batch")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128, help="training sequence length (prompt + target)")
    p.add_argument("--steps", type=int, default=3, help="measured training steps (after one warm-up)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full-optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (--tiny)")
    p.add_argument("--markdown", action="store_true", help="print the README table at the end")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.tiny:  # seconds on a CPU: fewer, shorter prompts
        args.prompts, args.tokens, args.batch, args.train_batch = min(args.prompts, 8), min(args.tokens, 12), 4, 2
        args.max_length, args.steps, args.new_tokens, args.repeats = 48, 1, 4, 1
    return args


def main(argv=None) -> list[dict]:
    args = parse(argv)
    start = time.perf_counter()
    results = run(args)
    if args.markdown:
        print("\n" + markdown(results))
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(args.json)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
