"""Training pairs: refusal targets per language, batches with masked prompts, greedy answers."""
import pytest
import torch
import torch.nn.functional as F

from ps_interp.align import target_logits
from ps_interp.data.builtin import load_refusals, probes
from ps_interp.data.probes import ProbeItem, ProbeSet
from ps_interp.errors import PsInterpError
from ps_interp.pairs import IGNORE, collate, epoch_order, greedy_answers, target_ids, training_pairs

MINI = "tests/fixtures/builtin_mini"


def test_refusals_in_the_item_language_cycled_deterministically():
    ps = probes(langs=["en", "zh", "ar"], split=None, data_dir=MINI)
    data = training_pairs(ps, langs=None, split=None, seed=3)
    table = load_refusals(MINI)
    assert {i.label for i in data.harmful} == {"harmful"} and {i.label for i in data.benign} == {"benign"}
    for item, target in zip(data.harmful, data.refusals):
        assert target in table[item.lang]
    en = [t for i, t in zip(data.harmful, data.refusals) if i.lang == "en"]
    assert len(set(en)) == 2 and all(en[k] != en[k + 1] for k in range(len(en) - 1))  # cycled
    assert training_pairs(ps, langs=None, split=None, seed=3).refusals == data.refusals
    offsets = {training_pairs(ps, langs="en", split=None, seed=s).refusals[0] for s in range(8)}
    assert len(offsets) == 2  # the seed picks where the cycle starts
    only_en = training_pairs(ps, langs=("en",), split="train")
    assert {i.lang for i in only_en.harmful} == {"en"} and {i.split for i in only_en.harmful} == {"train"}
    frame = data.to_frame()
    assert "text" not in frame.columns and set(frame.kind) == {"refusal", "retain"}


def test_item_refusals_win_and_missing_language_errors():
    items = [ProbeItem(id="a", lang="sw", label="harmful", text="Hi", split="train", refusals=("Hapana.",)),
             ProbeItem(id="b", lang="xx", label="harmful", text="Hi", split="train")]
    data = training_pairs(ProbeSet(items[:1]), langs=("sw",))
    assert data.refusals == ("Hapana.",) and data.benign == ()
    with pytest.raises(PsInterpError, match="no refusal sentences for language 'xx'"):
        training_pairs(ProbeSet(items), langs=None)
    with pytest.raises(PsInterpError, match="no probes for harmful training prompts"):
        training_pairs(ProbeSet(items), langs=("en",))


def test_collate_masks_prompt_and_padding(tiny_llama):
    items = [ProbeItem(id="a", lang="en", label="benign", text="Hi"),
             ProbeItem(id="b", lang="en", label="benign", text="Tell me a much longer story about the sea.")]
    targets = [target_ids(tiny_llama, "No."), target_ids(tiny_llama, "I can't help with that.")]
    assert targets[0][-1] == tiny_llama.tokenizer.eos_token_id
    batch = collate(tiny_llama, items, targets)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for row, target in enumerate(targets):
        assert labels[row, -len(target):].tolist() == target
        assert (labels[row, :-len(target)] == IGNORE).all()
        assert ids[row, -len(target):].tolist() == target
    assert mask[0, 0] == 0 and mask[1].all()  # left padding on the shorter row
    assert batch["position_ids"][0, -1] == mask[0].sum() - 1
    # padding does not change the loss: batched == one by one
    logits, tgt = target_logits(tiny_llama.hf, batch)
    batched = F.cross_entropy(logits, tgt, reduction="none")
    single = torch.cat([F.cross_entropy(*target_logits(tiny_llama.hf, collate(tiny_llama, [i], [t])),
                                        reduction="none") for i, t in zip(items, targets)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    short = collate(tiny_llama, items, targets, max_length=20)
    assert short["input_ids"].shape[1] <= 20 and (short["labels"] != IGNORE).any(1).all()
    with pytest.raises(PsInterpError, match="one target"):
        collate(tiny_llama, items, targets[:1])


def test_greedy_answers_match_generate(tiny_llama):
    from ps_interp.data.prompting import encode

    items = [ProbeItem(id=str(k), lang="en", label="benign", text=t) for k, t in enumerate(["Hi", "Name a color."])]
    answers = greedy_answers(tiny_llama, items, max_new_tokens=6, batch_size=1)
    eos = tiny_llama.tokenizer.eos_token_id
    for item, answer in zip(items, answers):
        enc = encode(tiny_llama, [item])
        enc.pop("position_ids")
        out = tiny_llama.hf.generate(**enc, do_sample=False, max_new_tokens=6)[0, enc["input_ids"].shape[1]:].tolist()
        expected = out[:out.index(eos) + 1] if eos in out else out
        assert answer == expected and 1 <= len(answer) <= 6
    assert greedy_answers(tiny_llama, items, max_new_tokens=6, batch_size=2) == answers


def test_epoch_order_covers_every_index_each_epoch():
    batches = epoch_order(10, steps=5, batch_size=4, seed=0)
    flat = [i for b in batches for i in b]
    assert all(len(set(b)) == len(b) == 4 for b in batches)
    assert sorted(flat[:10]) == list(range(10))  # the first epoch sees everything once
    assert batches == epoch_order(10, steps=5, batch_size=4, seed=0) != epoch_order(10, steps=5, batch_size=4, seed=1)
    assert epoch_order(2, steps=2, batch_size=4, seed=0)[0] in ([0, 1], [1, 0])  # fewer items than batch_size


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_collate_image_prompts_padding_invariant(family):
    from ps_interp.models import tiny

    model = tiny.build(family)
    items = [ProbeItem(id=str(k), lang="en", label="benign", text=t, modality="typo")
             for k, t in enumerate(["Hi", "Name three colors of the rainbow, please."])]
    targets = [target_ids(model, "No."), target_ids(model, "I can't help with that.")]
    batch = collate(model, items, targets)
    assert (batch["labels"][:, -1] == model.tokenizer.eos_token_id).all()
    for key in ("mm_token_type_ids",):
        if key in batch:
            assert batch[key].shape == batch["input_ids"].shape
    with torch.no_grad():
        batched = F.cross_entropy(*target_logits(model.hf, batch), reduction="none")
        single = torch.cat([F.cross_entropy(*target_logits(model.hf, collate(model, [i], [t])), reduction="none")
                            for i, t in zip(items, targets)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
