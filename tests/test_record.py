"""Streaming statistics: batching, padding, resume, positions, errors."""
import warnings

import pytest
import torch

from ps_interp.errors import PsInterpError
from ps_interp.models import tiny
from ps_interp.record import record
from ps_interp.stats import ActivationStats

from .conftest import make_probes


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_batch_size_and_padding_do_not_change_stats(family):
    model = tiny.build(family)
    probes = make_probes(n=24)
    ref = record(model, probes, batch_size=len(probes), progress=False)
    for bs in (1, 7, 32):
        for side in ("left", "right"):
            got = record(model, probes, batch_size=bs, padding_side=side, progress=False)
            assert got.allclose(ref, tol=1e-6), (bs, side, got.max_rel_diff(ref))


@pytest.mark.parametrize("position", ["mean", "all"])
def test_positions_padding_invariant(tiny_llama, position):
    probes = make_probes(n=12)
    a = record(tiny_llama, probes, position=position, batch_size=12, progress=False)
    b = record(tiny_llama, probes, position=position, batch_size=5, padding_side="right", progress=False)
    assert a.allclose(b, tol=1e-6)


def test_streamed_stats_equal_one_big_batch_from_raw_activations(tiny_llama):
    """Moments equal those computed directly from the full activation matrix (last token)."""
    from ps_interp.data.prompting import encode

    probes = make_probes(n=10)
    stats = record(tiny_llama, probes, batch_size=3, progress=False)
    acts = {}
    h = tiny_llama.site_module(1).register_forward_pre_hook(lambda m, a: acts.__setitem__("h", a[0].detach()))
    try:
        for i, item in enumerate(probes):
            tiny_llama.hf(**encode(tiny_llama, [item]))
            acts[item.id] = acts["h"][0, -1].double()
    finally:
        h.remove()
    for gi, group in enumerate(stats.groups):
        rows = torch.stack([acts[it.id] for it in probes if it.group == group])
        torch.testing.assert_close(stats.moments["sum"][gi, 1], rows.sum(0), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(stats.moments["sumsq"][gi, 1], (rows ** 2).sum(0), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(stats.moments["npos"][gi, 1], (rows > 0).double().sum(0))
        assert stats.count[gi] == len(rows)
    g = stats.groups[0]
    sel = dict(lang=g[0], modality=g[1], label=g[2])
    rows = torch.stack([acts[it.id] for it in probes if it.group == g])
    torch.testing.assert_close(stats.std(**sel)[1], rows.std(0), rtol=1e-4, atol=1e-7)


def test_resume_after_interrupt_gives_identical_stats(tiny_llama, tmp_path, monkeypatch):
    import importlib

    rec = importlib.import_module("ps_interp.record")

    probes = make_probes(n=20)
    full = record(tiny_llama, probes, batch_size=4, progress=False)
    real_encode, calls = rec.encode, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(rec, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        record(tiny_llama, probes, batch_size=4, checkpoint=tmp_path / "ck", checkpoint_every=0, progress=False)
    monkeypatch.setattr(rec, "encode", real_encode)
    import json

    assert json.loads((tmp_path / "ck" / "progress.json").read_text())["batches_done"] == 3
    resumed = record(tiny_llama, probes, batch_size=4, checkpoint=tmp_path / "ck", progress=False)
    assert resumed.groups == full.groups
    for k in full.moments:
        assert torch.equal(resumed.moments[k], full.moments[k])
    assert torch.equal(resumed.count, full.count)


def test_checkpoint_of_another_run_is_refused(tiny_llama, tmp_path):
    record(tiny_llama, make_probes(n=6), checkpoint=tmp_path / "ck", progress=False)
    with pytest.raises(PsInterpError, match="another run"):
        record(tiny_llama, make_probes(n=8), checkpoint=tmp_path / "ck", progress=False)


def test_save_load_merge_select(tiny_llama, tmp_path):
    a = record(tiny_llama, make_probes(n=8, langs=("en",)), progress=False)
    b = record(tiny_llama, make_probes(n=8, langs=("sw",)), progress=False)
    merged = a.merge(b)
    assert [g[0] for g in merged.groups] == ["en", "en", "sw", "sw"]
    merged.save(tmp_path / "s")
    back = ActivationStats.load(tmp_path / "s")
    assert back.allclose(merged, tol=0) and back.meta["position"] == "last"
    torch.testing.assert_close(back.select(lang="sw").mean(), b.mean())
    assert merged.n(lang="en") == 8
    assert merged.p_active(label="harmful").shape == (2, tiny_llama.d_ff)


def test_empty_group_error(tiny_llama):
    stats = record(tiny_llama, make_probes(n=4, langs=("en",)), progress=False)
    with pytest.raises(PsInterpError, match="empty group.*'lang': 'sw'"):
        stats.mean(lang="sw", label="harmful")


def test_bad_inputs(tiny_llama):
    with pytest.raises(PsInterpError, match="unknown position"):
        record(tiny_llama, make_probes(n=2), position="first", progress=False)
    with pytest.raises(PsInterpError, match="no probes"):
        record(tiny_llama, make_probes(n=0), progress=False)
    with pytest.raises(PsInterpError, match="image"):
        record(tiny_llama, make_probes(n=2), position="image", progress=False)


def test_tokenizer_without_chat_template_falls_back_with_warning():
    model = tiny.build("llama")
    model.tokenizer = __import__("copy").deepcopy(model.tokenizer)
    model.tokenizer.chat_template = None
    with pytest.warns(UserWarning, match="no chat template"):
        stats = record(model, make_probes(n=4), progress=False)
    assert stats.count.sum() == 4


def test_vlm_image_and_text_positions():
    model = tiny.build("llava")
    probes = make_probes(n=4, modality="typo")
    try:
        probes[0].get_image()
    except Exception as exc:  # fonts missing on this machine
        pytest.skip(f"typographic rendering unavailable: {exc}")
    img = record(model, probes, position="image", progress=False)
    txt = record(model, probes, position="text", progress=False)
    assert img.count.sum() == 4 and txt.count.sum() == 4
    assert not torch.allclose(img.moments["sum"], txt.moments["sum"])
