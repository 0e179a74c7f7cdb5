"""ps_interp.estimate: numbers from a config scale as they should; bench/gpu.py runs on a tiny config."""
import importlib.util
import math
from pathlib import Path

import pytest

from ps_interp.errors import PsInterpError
from ps_interp.estimate import DEVICES, Estimate, calibrate_cpu, estimate, prompt_lengths

from .conftest import make_probes

SMOL = "smollm2-135m"


def test_numbers_are_positive_and_table_is_complete():
    est = estimate(SMOL, n_prompts=200, mean_tokens=50)
    t = est.table()
    assert isinstance(est, Estimate)
    assert list(t["stage"]) == ["record", "align", "align", "align", "evaluate"]
    assert list(t.loc[t["stage"] == "align", "method"]) == ["shield", "lora", "full"]
    for col in ("tokens", "tflop", "time_s", "memory_gb", "weights_gb"):
        assert (t[col] > 0).all(), col
    assert (t["memory_gb"] >= t["weights_gb"]).all()
    assert t["fits"].isna().all()  # CPU memory is not checked
    assert est.n_params == 134515008  # SmolLM2-135M, tied embeddings


def test_double_prompts_double_record_and_evaluate_time():
    one = estimate(SMOL, n_prompts=256, mean_tokens=40)
    two = estimate(SMOL, n_prompts=512, mean_tokens=40)
    for stage in ("record", "evaluate"):
        ratio = two.row(stage)["time_s"] / one.row(stage)["time_s"]
        assert 1.9 < ratio < 2.1, (stage, ratio)
    # training cost depends on steps, not on the number of probes recorded
    assert two.row("align", "shield")["time_s"] == pytest.approx(one.row("align", "shield")["time_s"])
    longer = estimate(SMOL, n_prompts=256, mean_tokens=80)
    assert longer.row("record")["time_s"] > 1.9 * one.row("record")["time_s"]


def test_shield_state_is_tiny_next_to_full_finetuning():
    est = estimate(SMOL, n_prompts=100, mean_tokens=40)
    shield, lora, full = (est.row("align", m) for m in ("shield", "lora", "full"))
    assert shield["optimizer_gb"] < full["optimizer_gb"] / 1000
    assert shield["grads_gb"] < full["grads_gb"] / 1000
    assert shield["memory_gb"] < lora["memory_gb"] < full["memory_gb"]
    assert full["time_s"] > shield["time_s"]  # weight gradients: 3 passes instead of 2
    # AdamW state in fp32: 8 bytes per trained number (SmolLM2: 5 neurons at 0.03% x 3 x 576)
    n_trained = est.assumptions["shield_neurons"] * 3 * 576
    sgd = estimate(SMOL, n_prompts=100, mean_tokens=40, optimizer="sgd").row("align", "shield")
    assert (shield["optimizer_gb"] - sgd["optimizer_gb"]) * 1e9 == pytest.approx(8 * n_trained)


def test_dtype_and_devices():
    fp32 = estimate("llama-3-8b", n_prompts=1000, mean_tokens=60, dtype="float32", device="h100")
    bf16 = estimate("llama-3-8b", n_prompts=1000, mean_tokens=60, dtype="bfloat16", device="h100")
    assert fp32.row("record")["weights_gb"] == pytest.approx(2 * bf16.row("record")["weights_gb"])
    assert bf16.row("record")["time_s"] < fp32.row("record")["time_s"]
    cpu = estimate("llama-3-8b", n_prompts=1000, mean_tokens=60, dtype="bfloat16", device="cpu")
    assert cpu.row("record")["time_s"] > 1000 * bf16.row("record")["time_s"]
    # full fine-tuning of 8B with AdamW (+ the restore copy) does not fit one 80 GB card; two do
    assert bf16.row("align", "full")["fits"] is False and bf16.row("align", "shield")["fits"] is True
    two = estimate("llama-3-8b", n_prompts=1000, mean_tokens=60, dtype="bfloat16", device="h100", n_devices=2)
    assert two.row("align", "full")["fits"] is True
    assert "DOES NOT FIT" in str(bf16) and "DOES NOT FIT" not in str(two)


def test_remote_has_request_overhead_and_no_training():
    est = estimate("llama-3-8b", n_prompts=640, mean_tokens=60, dtype="bfloat16", device="ndif", batch_size=64)
    assert est.row("record")["time_s"] >= 10 * DEVICES["ndif"].overhead_s
    assert "align" not in set(est.table()["stage"])
    with pytest.raises(PsInterpError, match="align"):
        est.row("align", "shield")
    assert "does not run remotely" in str(est)
    # every request returns the moments of the groups in its batch; locally they are copied once
    local = estimate("llama-3-8b", n_prompts=640, mean_tokens=60, device="h100", batch_size=64, n_groups=4)
    remote = estimate("llama-3-8b", n_prompts=640, mean_tokens=60, device="ndif", batch_size=64, n_groups=4)
    one_group = 4 * 8 * 32 * 14336 / 1e9
    assert local.row("record")["transfer_gb"] == pytest.approx(4 * one_group)
    assert remote.row("record")["transfer_gb"] == pytest.approx(10 * 2 * one_group)  # 10 requests, ~2 groups each
    assert remote.dtype == local.dtype == "bfloat16" and estimate(SMOL, n_prompts=1, mean_tokens=9).dtype == "float32"


def test_probe_lengths_from_tokenizer_and_from_chars(tiny_llama):
    from ps_interp.data.prompting import encode

    probes = make_probes(n=6)
    lengths = prompt_lengths(probes, tiny_llama)
    real = encode(tiny_llama, list(probes), padding_side="right")["attention_mask"].sum(1).tolist()
    assert lengths == real
    est = estimate(tiny_llama, probes)
    assert est.mean_tokens == pytest.approx(sum(real) / len(real))
    assert est.n_prompts == 6 and est.assumptions["groups"] == 4
    assert prompt_lengths(["x" * 400]) == [100 + 24]
    assert estimate(SMOL, probes).mean_tokens == pytest.approx(
        sum(math.ceil(len(it.text) / 4) + 24 for it in probes) / 6)


def test_str_and_errors():
    text = str(estimate(SMOL, n_prompts=10, mean_tokens=30))
    assert text.startswith("Estimate for smollm2-135m") and "align (shield)" in text and "record" in text
    with pytest.raises(PsInterpError, match="n_prompts"):
        estimate(SMOL)
    with pytest.raises(PsInterpError, match="unknown device"):
        estimate(SMOL, n_prompts=10, mean_tokens=30, device="tpu")
    with pytest.raises(PsInterpError, match="dtype"):
        estimate(SMOL, n_prompts=10, mean_tokens=30, dtype="int8")
    with pytest.raises(PsInterpError, match="no config"):
        estimate("no-such-model", n_prompts=10, mean_tokens=30)


def test_calibrated_cpu_is_used():
    dev = calibrate_cpu(seconds=0.05)
    est = estimate(SMOL, n_prompts=10, mean_tokens=30, device=dev)
    assert est.assumptions["flops_per_s"] == dev.flops["float32"] > 0


def test_bench_gpu_runs_on_a_tiny_config(one_thread):
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--tiny", "--models", "llama-3-8b", "--threads", "1"])
    (r,) = results
    assert r["record_tok_s"] > 0 and r["bare_tok_s"] > 0 and r["gen_tok_s"] > 0
    methods = {t["method"]: t for t in r["train"]}
    assert set(methods) == {"shield", "lora r=8 (mlp)", "full (sgd)"}
    assert methods["shield"]["trainable"] < methods["lora r=8 (mlp)"]["trainable"] < methods["full (sgd)"]["trainable"]
    assert all(t["step_s"] > 0 for t in r["train"])
    assert "| shield |" in bench.markdown(results)


def test_h100_estimates_are_within_1_5x_of_bench_gpu_measurements():
    """bench/gpu.py on one H100 (2026-11-26; 64 prompts x 215 tokens, batch 16, 64 new tokens, bf16, random
    weights): record 20,499 / 23,116 tok/s, generation 486 / 347 new tok/s for Llama-3-8B / Qwen2.5-7B."""
    measured = {"llama-3-8b": (13774 / 20499, 64 * 64 / 486), "qwen2.5-7b": (13774 / 23116, 64 * 64 / 347)}
    for name, (record_s, generate_s) in measured.items():
        t = estimate(name, n_prompts=64, mean_tokens=215, device="h100", batch_size=16, max_new_tokens=64).table()
        est = dict(zip(t["stage"], t["time_s"]))
        for got, want in ((est["record"], record_s), (est["evaluate"], generate_s)):
            assert want / 1.5 < got < want * 1.5, (name, got, want)
