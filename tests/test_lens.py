"""backend='lens' (TransformerLens 4.x TransformerBridge): same stats as nnsight, the user's model untouched, no pip."""
import subprocess

import pytest
import torch

pytest.importorskip("transformer_lens")

from ps_interp.backends import lens  # noqa: E402
from ps_interp.errors import PsInterpError  # noqa: E402
from ps_interp.models import tiny  # noqa: E402
from ps_interp.record import record  # noqa: E402

from .conftest import make_probes  # noqa: E402


@pytest.fixture(scope="module")
def models():
    return {}


def _model(models, family):
    if family not in models:
        models[family] = tiny.build(family)
    return models[family]


def _snapshot(model):
    tensors = {**model.hf.state_dict(), **{f"buffer:{k}": v for k, v in model.hf.named_buffers()}}
    return ({k: v.clone() for k, v in tensors.items()},
            [(n, type(m)) for n, m in model.hf.named_modules()], model.hf.config.to_dict())


@pytest.mark.parametrize("family", ["llama", "qwen2", "llava", "gpt2"])
def test_lens_equals_nnsight_with_left_and_right_padding(models, family):
    model = _model(models, family)
    probes = make_probes(n=12)
    before = _snapshot(model)
    ref = record(model, probes, backend="nnsight", batch_size=12, progress=False)
    for side, bs in (("left", 5), ("right", 4)):
        got = record(model, probes, backend="lens", batch_size=bs, padding_side=side, progress=False)
        assert got.meta["backend"] == "lens"
        assert got.allclose(ref, tol=1e-5), (side, got.max_rel_diff(ref))
    after = _snapshot(model)  # booting rewrote a copy, never the user's model
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1] and before[2] == after[2]


@pytest.mark.parametrize("position", ["mean", "all"])
def test_lens_positions_over_padding(models, position):
    model = _model(models, "qwen2")
    probes = make_probes(n=6)
    ref = record(model, probes, position=position, batch_size=6, progress=False)
    got = record(model, probes, backend="lens", position=position, batch_size=4, padding_side="right",
                 progress=False)
    assert got.allclose(ref, tol=1e-5), got.max_rel_diff(ref)


def test_lens_llava_images(models):
    model = _model(models, "llava")
    probes = make_probes(n=4, modality="typo")
    try:
        probes[0].get_image()
    except Exception as exc:  # fonts missing on this machine
        pytest.skip(f"typographic rendering unavailable: {exc}")
    for position in ("last", "image"):
        ref = record(model, probes, position=position, batch_size=4, progress=False)
        got = record(model, probes, backend="lens", position=position, batch_size=3, padding_side="right",
                     progress=False)
        assert got.allclose(ref, tol=1e-5), (position, got.max_rel_diff(ref))


def test_site_hook_is_the_input_of_down_proj(models):
    from ps_interp.data.prompting import encode

    model = _model(models, "qwen2")
    batch = encode(model, make_probes(n=3), padding_side="left")
    want = {}
    handles = [model.site_module(layer).register_forward_pre_hook(
        lambda m, a, layer=layer: want.__setitem__(layer, a[0].detach())) for layer in range(model.n_layers)]
    try:
        with torch.no_grad():
            model.hf(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        got = lens._run(lens.lens_bridge(model), batch, [0, 1], lambda layer, h: h.detach().clone())
    real = batch["attention_mask"].bool()
    for layer in (0, 1):
        torch.testing.assert_close(got[layer][real], want[layer][real], rtol=1e-5, atol=1e-6)


def test_bridge_is_cached_shares_weights_and_follows_updates():
    model = tiny.build("llama")
    probes = make_probes(n=6)
    bridge = lens.lens_bridge(model)
    assert lens.lens_bridge(model) is bridge
    with torch.no_grad():  # an in-place update (as align does) reaches the cached bridge
        model.mlp(0).up_proj.weight.mul_(3.0)
    assert lens.lens_bridge(model) is bridge
    got = record(model, probes, backend="lens", progress=False)
    assert got.allclose(record(model, probes, progress=False), tol=1e-5)
    model.mlp(0).up_proj.weight = torch.nn.Parameter(model.mlp(0).up_proj.weight.detach().clone())
    assert lens.lens_bridge(model) is not bridge  # a replaced parameter: rebuilt


def test_forward_stops_after_last_recorded_layer(models):
    model = _model(models, "llama")
    bridge = lens.lens_bridge(model)
    calls = {"block1": 0, "unembed": 0}
    handles = [bridge.blocks[1].register_forward_pre_hook(lambda m, a: calls.__setitem__("block1", 1)),
               bridge.unembed.register_forward_pre_hook(lambda m, a: calls.__setitem__("unembed", 1))]
    try:
        record(model, make_probes(n=4), backend="lens", layers=[0], progress=False)
        assert calls == {"block1": 0, "unembed": 0}
        record(model, make_probes(n=4), backend="lens", layers=[1], progress=False)
        assert calls == {"block1": 1, "unembed": 0}
    finally:
        for h in handles:
            h.remove()


def test_unsupported_architecture_is_a_clear_error():
    model = tiny.build("qwen2_vl")
    with pytest.raises(PsInterpError, match="Qwen2VLForConditionalGeneration.*backend='nnsight'"):
        record(model, make_probes(n=2), backend="lens", progress=False)


def test_active_hooks_on_the_users_model_are_refused(models):
    model = _model(models, "llama")
    handle = model.site_module(0).register_forward_pre_hook(lambda m, a: (a[0] * 0,))
    try:
        with pytest.raises(PsInterpError, match="ignore the forward hooks"):
            record(model, make_probes(n=2), backend="lens", progress=False)
    finally:
        handle.remove()


@pytest.fixture
def no_pip(monkeypatch):
    """Fail the test if anything runs pip."""
    calls = []

    def spy(real):
        def run(args, *a, **k):
            if "pip" in " ".join(map(str, args if not isinstance(args, str) else [args])):
                calls.append(args)
                raise AssertionError(f"pip was called: {args}")
            return real(args, *a, **k)
        return run

    for name in ("check_call", "run", "call", "check_output"):
        monkeypatch.setattr(subprocess, name, spy(getattr(subprocess, name)))
    return calls


def test_boot_of_a_multimodal_model_never_runs_pip(no_pip):
    model = tiny.build("llava")
    lens.lens_bridge(model)
    assert no_pip == []


def test_torchvision_install_is_refused(no_pip, monkeypatch):
    """TransformerLens' processor fallback (pip install torchvision) raises instead, inside the guard."""
    import transformers
    from transformer_lens.model_bridge.sources.transformers import helpers

    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed: TransformerLens would not install it")
    except ImportError:
        pass
    real = helpers._ensure_torchvision

    def processor_needing_torchvision(*a, **k):
        raise OSError("this processor needs torchvision")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", processor_needing_torchvision)
    cfg = type("Cfg", (), {"is_multimodal": True})()
    with lens.no_runtime_installs():
        with pytest.raises(PsInterpError, match="install torchvision"):
            helpers.load_modality_processor(object(), cfg, "tiny-llava", False, None)
        with pytest.raises(PsInterpError, match="pip"):  # the subprocess backstop
            subprocess.Popen(["/nonexistent/bin/pip", "install", "torchvision"])
    assert helpers._ensure_torchvision is real and subprocess.Popen is not lens._NoInstallPopen
    assert no_pip == []
