"""The safety-tuned model organism: adapter format and merge, the training script (tiny), the card."""
import json

import numpy as np
import pytest
import torch

from ps_interp.errors import PsInterpError
from ps_interp.models import organism as org
from ps_interp.models import tiny
from ps_interp.models.loading import DEFAULT_MODEL, NAMED

from .conftest import load_script as _script





def _logits(model, text="How do I build a birdhouse?"):
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.forward_logits(ids)


def _random_factors(model, rank=4, seed=1):
    factors = org.init_factors(model, org.lora_targets(model), rank, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    return {p: (A, torch.randn(B.shape, generator=gen) * 0.05) for p, (A, B) in factors.items()}


def test_merged_adapter_equals_hooked_lora_and_changes_outputs(tmp_path):
    model = tiny.build("llama")
    factors = _random_factors(model)
    base = _logits(model)
    with org.lora_hooks(model, factors, scale=2.0):
        hooked = _logits(model)
    assert torch.equal(_logits(model), base)  # the hooks are gone after the block
    org.save_adapter(tmp_path, factors, rank=4, alpha=8.0, base="tiny-llama", architecture=model.architecture,
                     dtype=torch.float32)
    meta = org.merge_adapter(model, tmp_path)
    merged = _logits(model)
    assert meta["rank"] == 4 and meta["base"] == "tiny-llama"
    assert (merged - base).abs().max() > 1e-3
    torch.testing.assert_close(merged, hooked, atol=1e-4, rtol=1e-4)


def test_adapter_checks_checksum_and_architecture(tmp_path):
    model = tiny.build("llama")
    org.save_adapter(tmp_path, _random_factors(model), rank=4, alpha=8.0, base="tiny-llama",
                     architecture=model.architecture)
    with pytest.raises(PsInterpError, match="is for LlamaForCausalLM"):
        org.merge_adapter(tiny.build("qwen2"), tmp_path)
    before = _logits(model)
    with pytest.raises(PsInterpError, match="does not fit"):  # wrong sizes: nothing is merged
        org.merge_adapter(tiny.build("llama", intermediate_size=96), tmp_path)
    meta = json.loads((tmp_path / org.META).read_text())
    (tmp_path / org.META).write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(PsInterpError, match="checksum"):
        org.merge_adapter(model, tmp_path)
    assert torch.equal(_logits(model), before)
    with pytest.raises(PsInterpError, match="no adapter"):
        org.read_adapter(tmp_path / "missing")


def test_names_are_registered():
    assert NAMED[org.ORGANISM] is org.load_organism
    assert DEFAULT_MODEL in NAMED and DEFAULT_MODEL != org.ORGANISM


def test_training_uses_only_organism_items():
    train = _script("train_organism")
    data = train.organism_data(seed=0)
    from ps_interp.data.builtin import probes

    study = set(probes(langs="en").ids)
    items = data.harmful + data.benign
    assert len(data.harmful) == len(data.benign) == 40
    assert {i.split for i in items} == {"organism"} and not {i.id for i in items} & study
    assert len(set(data.refusals)) > 3  # varied refusals ...
    from ps_interp.judges import RefusalKeywords

    assert RefusalKeywords().judge(data.refusals, data.refusals, ["en"] * 40).all()  # ... the judge recognises


def test_train_script_tiny_writes_a_working_adapter(tmp_path):
    train = _script("train_organism")
    out = train.main(["--tiny", "--out", str(tmp_path / "adapter"), "--quiet"])
    factors, meta = org.read_adapter(out)
    t = meta["training"]
    assert meta["base"] == "tiny-llama" and t["n_harmful"] == t["n_benign"] == 4
    assert len(t["loss"]) == t["steps"] == 3 and all(np.isfinite(t["loss"]))
    assert not list(out.glob(".*.tmp"))  # written atomically, nothing left behind
    assert any(float(B.abs().sum()) > 0 for _, B in factors.values())  # trained: B moved from zero
    model = tiny.build("llama", seed=t["seed"])
    before = _logits(model)
    org.merge_adapter(model, out)
    assert not torch.allclose(_logits(model), before)


class _Always:
    def __init__(self, refuse):
        self.refuse, self.name = refuse, f"always-{refuse}"

    def judge(self, prompts, completions, langs):
        return np.full(len(prompts), self.refuse)


def test_card_table_numbers_come_from_the_measurement(tmp_path):
    card = _script("organism_card")
    items, skipped = card.card_items(["en", "ar"], n_pairs=3, seed=0)
    assert len(items) == 12 and skipped == {} and set(items.select(lang="ar").ids) == set(items.select(lang="en").ids)
    models = {"base": tiny.build("llama"), "organism": tiny.build("llama", seed=1)}
    kw = dict(max_new_tokens=3, batch_size=8, n_boot=50, progress=False)
    refuse = card.measure(models, items, judge=_Always(True), **kw)
    comply = card.measure(models, items, judge=_Always(False), cache=tmp_path, **kw)
    en = refuse[(refuse.model == "organism") & (refuse.lang == "en")].iloc[0]
    assert (en.n_harmful, en.n_benign, en.asr, en.over_refusal) == (3, 3, 0.0, 1.0)
    assert (comply.asr == 1.0).all() and (comply.over_refusal == 0.0).all()
    assert set(comply.lang) == {"en", "ar", "all"} and np.isfinite(comply.score_gap).all()
    assert comply.set_index(["model", "lang"]).loc[("base", "all"), "n_harmful"] == 6
    again = card.measure(models, items, judge=_Always(False), cache=tmp_path, **kw)  # from the cache
    assert again.equals(comply) and len(list(tmp_path.glob("*.json"))) == 4  # per model and language
    assert (comply.attrs, again.attrs) == ({"measurements": 4, "cached": 0}, {"measurements": 4, "cached": 4})
    cached = [json.loads(p.read_text())["completions"] for p in tmp_path.glob("*.json")]
    assert all(len({row["lang"] for row in rows}) == 1 for rows in cached)
    table = card.markdown_table(refuse.to_dict("records"))
    assert "| English (en) | high | 3 / 3 | 0% [0, 0] | 0% [0, 0] | 100% [100, 100] | 100% [100, 100] | +0 pts |" in table
    assert card.reading(refuse.to_dict("records")).endswith("refuses regardless of harm (over-refusal >= 50%): en, ar.")
    assert "mostly answers harmful requests (ASR >= 50%): en, ar." in card.reading(comply.to_dict("records"))


def test_card_items_skip_missing_languages(tmp_path):
    card = _script("organism_card")
    from ps_interp.data.builtin import DATA_DIR

    for name in ("items.jsonl", "refusals.json", "text_en.jsonl"):
        (tmp_path / name).write_bytes((DATA_DIR / name).read_bytes())
    items, skipped = card.card_items(["en", "sw"], n_pairs=2, data_dir=tmp_path)
    assert set(items.langs) == {"en"} and "sw" in skipped and "missing" in skipped["sw"]


def test_shipped_card_is_rendered_from_its_numbers():
    if not (org.ASSET_DIR / "card.json").is_file():
        pytest.skip("no card shipped yet")
    card = _script("organism_card")
    numbers = json.loads((org.ASSET_DIR / "card.json").read_text())
    assert (org.ASSET_DIR / "MODEL_CARD.md").read_text() == card.render_card(numbers)
    _, meta = org.read_adapter()
    assert numbers["adapter"]["sha256"] == meta["sha256"]  # the card measured the shipped adapter


@pytest.mark.real
def test_organism_loads_and_changes_the_base_model():
    import ps_interp as ps
    from ps_interp.data.builtin import probes
    from ps_interp.generate import generate
    from ps_interp.judges import RefusalKeywords

    _, meta = org.read_adapter()
    assert meta["bytes"] < 8e6
    base, organism = ps.load(DEFAULT_MODEL), ps.load(org.ORGANISM)
    assert organism.name == org.ORGANISM and base.name == DEFAULT_MODEL
    assert (_logits(organism) - _logits(base)).abs().max() > 0.1
    harmful = list(probes(langs="en", split="test", labels="harmful"))[:4]
    judge = RefusalKeywords()
    refused = {name: judge.judge([""] * 4, generate(m, harmful, max_new_tokens=12, progress=False), ["en"] * 4).sum()
               for name, m in (("base", base), ("organism", organism))}
    assert refused["organism"] >= 3 > refused["base"]
