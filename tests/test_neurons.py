"""NeuronSet: set algebra, validation, masks, random sets, parameters and JSON round trip."""
import json

import numpy as np
import pytest

from ps_interp.errors import PsInterpError
from ps_interp.neurons import ModelIdentity, NeuronSet

IDENT = ModelIdentity("LlamaForCausalLM", n_layers=4, d_ff=16, d_model=8, name="tiny")


def make(d, ident=IDENT, **meta):
    return NeuronSet(d, ident, meta=meta)


def as_pyset(s):
    return set(s)


def test_construction_sorts_dedups_and_drops_empty_layers():
    s = make({2: [5, 1, 5, 3], 0: np.array([7]), 3: []})
    assert s.layers == [0, 2]
    assert s.indices(2).tolist() == [1, 3, 5]
    assert s.indices(2).dtype == np.int64
    assert s.indices(1).tolist() == []
    assert len(s) == 4
    assert list(s) == [(0, 7), (2, 1), (2, 3), (2, 5)]
    assert (2, 3) in s and (2, 4) not in s and (1, 3) not in s and "x" not in s
    assert s.per_layer().tolist() == [1, 0, 3, 0]
    with pytest.raises(ValueError):  # read-only: a set cannot be mutated behind its back
        s.indices(2)[0] = 9


@pytest.mark.parametrize("bad", [{0: [16]}, {0: [-1]}, {4: [0]}, {-1: [0]}, {0: [1.5]}, {0: [True, False]},
                                 {"a": [1]}, {0: 3}, {0: ["x"]}])
def test_out_of_range_or_malformed_indices_raise(bad):
    with pytest.raises(PsInterpError):
        make(bad)


def test_set_operations_match_python_sets():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = make({l: rng.choice(16, rng.integers(0, 9), replace=False) for l in range(4)})
        b = make({l: rng.choice(16, rng.integers(0, 9), replace=False) for l in range(4)})
        pa, pb = as_pyset(a), as_pyset(b)
        assert as_pyset(a | b) == pa | pb
        assert as_pyset(a & b) == pa & pb
        assert as_pyset(a - b) == pa - pb
        assert as_pyset(a ^ b) == pa ^ pb
        assert a.intersection_size(b) == len(pa & pb)
        union = pa | pb
        assert a.jaccard(b) == pytest.approx(len(pa & pb) / len(union) if union else 0.0)


def test_jaccard_edge_cases():
    a = make({0: [1, 2]})
    assert a.jaccard(a) == 1.0
    assert make({}).jaccard(make({})) == 0.0
    assert a.jaccard(make({1: [1, 2]})) == 0.0


@pytest.mark.parametrize("field,value", [("architecture", "Qwen2ForCausalLM"), ("n_layers", 5), ("d_ff", 32),
                                         ("d_model", 4), ("gated", False), ("name", "other")])
def test_different_models_cannot_be_combined(field, value):
    other = ModelIdentity(**{**IDENT.to_dict(), field: value})
    a, b = make({0: [1]}), make({0: [1]}, ident=other)
    for op in (lambda: a | b, lambda: a & b, lambda: a - b, lambda: a ^ b, lambda: a.jaccard(b)):
        with pytest.raises(PsInterpError, match=f"{field} differs.*same model"):
            op()


def test_unnamed_identity_is_compatible_and_relabel_works():
    unnamed = ModelIdentity("LlamaForCausalLM", n_layers=4, d_ff=16, d_model=8)
    assert len(make({0: [1]}) | make({0: [2]}, ident=unnamed)) == 2
    renamed = make({0: [1]}, ident=ModelIdentity(**{**IDENT.to_dict(), "name": "instruct"}))
    assert renamed.with_identity(IDENT).jaccard(make({0: [1]})) == 1.0
    with pytest.raises(PsInterpError):
        make({0: [15]}).with_identity(ModelIdentity("LlamaForCausalLM", n_layers=4, d_ff=8, d_model=8))


def test_mask_round_trip_and_shape_check():
    s = make({1: [0, 15], 3: [4]})
    mask = s.to_mask()
    assert mask.shape == (4, 16) and mask.sum() == 3 and mask[1, 15] and not mask[0, 0]
    assert NeuronSet.from_mask(mask, IDENT) == s
    with pytest.raises(PsInterpError, match="shape"):
        NeuronSet.from_mask(mask[:3], IDENT)
    with pytest.raises(PsInterpError, match="boolean"):
        NeuronSet.from_mask(mask.astype(int), IDENT)


def test_random_like_keeps_per_layer_counts_and_is_seeded():
    s = make({0: range(10), 2: [3]})
    r1, r2, r3 = s.random_like(1), s.random_like(1), s.random_like(2)
    assert r1.per_layer().tolist() == s.per_layer().tolist()
    assert r1 == r2 and r1 != r3
    # uniform: every neuron of layer 0 is picked about 10/16 of the time
    hits = np.mean([s.random_like(seed).to_mask()[0] for seed in range(400)], axis=0)
    assert np.all(np.abs(hits - 10 / 16) < 0.1)


def test_param_count_gated_and_non_gated():
    s = make({0: [1, 2], 3: [0]})
    assert s.param_count() == 3 * 3 * 8
    assert s.param_fraction(720) == pytest.approx(0.1)
    gpt2 = ModelIdentity("GPT2LMHeadModel", n_layers=4, d_ff=16, d_model=8, gated=False)
    assert make({0: [1, 2], 3: [0]}, ident=gpt2).param_count() == 3 * (2 * 8 + 1)
    with pytest.raises(PsInterpError):
        s.param_fraction(0)


def test_to_frame():
    df = make({2: [5, 1], 0: [7]}).to_frame()
    assert list(df.columns) == ["layer", "neuron"]
    assert df.values.tolist() == [[0, 7], [2, 1], [2, 5]]
    assert len(make({}).to_frame()) == 0
    s = make({2: [5, 1], 0: [7]})
    assert NeuronSet.from_frame(s.to_frame(), IDENT) == s
    with pytest.raises(PsInterpError, match="columns"):
        NeuronSet.from_frame(df.rename(columns={"neuron": "idx"}), IDENT)


def test_accepts_torch_and_integral_floats():
    torch = pytest.importorskip("torch")
    assert make({0: torch.tensor([3, 1])}).indices(0).tolist() == [1, 3]
    assert make({0: np.array([2.0, 4.0])}).indices(0).tolist() == [2, 4]


def test_save_load_round_trip_with_meta(tmp_path):
    s = make({1: [3, 2], 3: [0]}, method="saliency", rho=np.float64(0.01), position="last",
             group=("en", "text", "harmful"))
    path = s.save(tmp_path / "sub" / "en.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["neurons"] == {"1": [2, 3], "3": [0]}
    back = NeuronSet.load(path)
    assert back == s and back.identity == IDENT
    assert back.meta == {"method": "saliency", "rho": 0.01, "position": "last", "group": ["en", "text", "harmful"]}
    assert [p.name for p in path.parent.iterdir()] == ["en.json"]  # no temp file left behind


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(PsInterpError, match="no NeuronSet file"):
        NeuronSet.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PsInterpError, match="not valid JSON"):
        NeuronSet.load(bad)
    data = make({0: [1]}).to_dict()
    bad.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(PsInterpError, match="schema_version"):
        NeuronSet.load(bad)
    bad.write_text(json.dumps({**data, "neurons": {"0": [99]}}))
    with pytest.raises(PsInterpError, match="out of range"):
        NeuronSet.load(bad)


def test_unserialisable_meta_leaves_no_file(tmp_path):
    s = make({0: [1]}, model=object())
    with pytest.raises(PsInterpError, match="meta"):
        s.save(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


def test_summary_mentions_size_share_and_meta():
    text = make({1: [0, 1, 2], 2: [5]}, method="saliency").summary()
    assert "4 neurons" in text and "6.2500% of FFN neurons" in text and "96 parameters" in text
    assert "L1 (3)" in text and "method=saliency" in text
