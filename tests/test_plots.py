"""Figures build from small synthetic inputs; save_figure writes atomically and degrades without Chrome."""
import warnings

import numpy as np
import pandas as pd
import pytest

from ps_interp import figio, plots
from ps_interp.errors import PsInterpError
from ps_interp.neurons import ModelIdentity, NeuronSet
from ps_interp.overlap_stats import jaccard_matrix

IDENT = ModelIdentity("LlamaForCausalLM", n_layers=4, d_ff=10, d_model=8)


@pytest.fixture
def sets():
    return {"en": NeuronSet({0: [0, 1, 2], 1: [5], 3: [7, 8]}, IDENT),
            "de": NeuronSet({0: [1, 2], 1: [5, 6]}, IDENT),
            "sw": NeuronSet({2: [9], 3: [8]}, IDENT)}


def test_layer_distribution(sets):
    fig = plots.layer_distribution(sets)
    assert len(fig.data) == 3
    assert fig.data[0].y.tolist() == [3, 1, 0, 2] and fig.data[2].y.tolist() == [0, 0, 1, 1]
    assert fig.data[0].name.startswith("en")
    norm = plots.layer_distribution(sets, normalize=True, kind="bar")
    assert norm.data[0].type == "bar"
    np.testing.assert_allclose([t.y.sum() for t in norm.data], 1.0)
    with pytest.raises(PsInterpError):
        plots.layer_distribution({})


def test_jaccard_heatmap_cells_and_stars(sets):
    j, _, p = jaccard_matrix(sets)
    p.loc["en", "de"] = p.loc["de", "en"] = 0.001  # force one significant pair
    p.loc["en", "sw"] = p.loc["sw", "en"] = 0.5
    fig = plots.jaccard_heatmap(j, p, alpha=0.05)
    text = fig.data[0].text
    assert text.shape == (3, 3)
    assert text[0][1] == f"{j.loc['en', 'de']:.2f}*" and text[0][2] == f"{j.loc['en', 'sw']:.2f}"
    assert text[0][0] == "1.00"  # diagonal p is NaN: no star
    assert list(fig.data[0].x) == ["en", "de", "sw"]
    assert "*" not in "".join(plots.jaccard_heatmap(j).data[0].text.ravel())


def test_upset_patterns_and_traces(sets):
    patterns = dict(plots.membership_patterns(sets))
    # en-only {0:0, 3:7}, en&de {0:1,0:2,1:5}, de-only {1:6}, en&sw {3:8}, sw-only {2:9}
    assert patterns == {(True, True, False): 3, (True, False, False): 2, (False, True, False): 1,
                        (True, False, True): 1, (False, False, True): 1}
    fig = plots.upset(sets)
    assert len(fig.data) == 3
    assert list(fig.data[0].y) == [3, 2, 1, 1, 1]
    assert len(fig.data[1].x) == 5 * 3  # grey dot for every (pattern, set)
    assert sum(v is not None for v in fig.data[2].x) == sum(sum(p) for p in patterns)
    short = plots.upset(sets, max_bars=2)
    assert list(short.data[0].y) == [3, 2] and "5 of 8 neurons" in short.layout.title.text


def test_ablation_effect():
    fig = plots.ablation_effect(0.6, [0.0, 0.1, 0.2], title="Refusal drop")
    assert len(fig.data) == 1 and fig.data[0].type == "histogram"
    assert fig.layout.shapes[0].x0 == 0.6
    assert "z = 5.00" in fig.layout.title.text and "p = 0.25" in fig.layout.title.text
    assert "n/a" in plots.ablation_effect(1.0, [0.5, 0.5]).layout.title.text
    with pytest.raises(PsInterpError):
        plots.ablation_effect(1.0, [])


def test_asr_bars():
    df = pd.DataFrame({"lang": ["en", "sw", "en", "sw"], "condition": ["before", "before", "after", "after"],
                       "asr": [0.4, 0.7, 0.1, 0.5], "lo": [0.3, 0.6, 0.05, np.nan], "hi": [0.5, 0.8, 0.2, np.nan]})
    fig = plots.asr_bars(df)
    assert [t.name for t in fig.data] == ["before", "after"]
    assert list(fig.data[1].x) == ["en", "sw"] and fig.data[1].y.tolist() == [0.1, 0.5]
    np.testing.assert_allclose(fig.data[0].error_y.array, [0.1, 0.1])
    np.testing.assert_allclose(fig.data[1].error_y.arrayminus, [0.05, 0.0])
    with pytest.raises(PsInterpError, match="missing"):
        plots.asr_bars(df.drop(columns="hi"))


def test_transfer_scatter():
    df = pd.DataFrame({"lang": ["de", "sw", "zh", "ar"], "jaccard": [0.5, 0.1, 0.3, 0.2],
                       "asr_drop": [0.3, 0.05, 0.2, 0.1]})
    fig = plots.transfer_scatter(df)
    assert len(fig.data) == 1 and list(fig.data[0].text) == ["de", "sw", "zh", "ar"]
    assert "rho = 1.00" in fig.layout.title.text
    with pytest.raises(PsInterpError):
        plots.transfer_scatter(df.rename(columns={"jaccard": "J"}))


def _fig():
    import plotly.graph_objects as go

    return go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))


def test_save_figure_html_json_atomic(tmp_path):
    paths = figio.save_figure(_fig(), tmp_path / "out" / "fig.html", formats=("json",))
    assert [p.name for p in paths] == ["fig.html", "fig.json"]  # HTML always, suffix stripped
    html = paths[0].read_text()
    # plotly.js is embedded (works offline), not loaded from a CDN
    assert "<html>" in html and '<script src="https' not in html and len(html) > 1_000_000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fig.html", "fig.json"]
    with pytest.raises(PsInterpError, match="format"):
        figio.save_figure(_fig(), tmp_path / "x", formats=("gif",))


def test_png_failure_writes_html_warns_once_and_leaves_no_image(tmp_path, monkeypatch):
    def broken(fig, fmt, scale):
        raise RuntimeError("no Chrome found")

    monkeypatch.setattr(figio, "_to_image", broken)
    monkeypatch.setitem(figio._png_state, "available", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = figio.save_figure(_fig(), tmp_path / "fig", formats=("html", "png", "svg"))
    assert [p.name for p in paths] == ["fig.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.html"]
    export_warnings = [w for w in caught if issubclass(w.category, figio.FigureExportWarning)]
    assert len(export_warnings) == 1 and "apt-get install chromium" in str(export_warnings[0].message)


def test_png_export(tmp_path):
    if not figio.png_available():
        pytest.skip(f"static export unavailable ({figio.png_unavailable_reason()}); "
                    "fix: apt-get install chromium and pip install kaleido")
    with figio.export_session():  # one Chrome for both images
        paths = figio.save_figure(_fig(), tmp_path / "fig", formats=("html", "png", "svg"))
    assert [p.suffix for p in paths] == [".html", ".png", ".svg"]
    assert paths[1].read_bytes().startswith(b"\x89PNG") and "<svg" in paths[2].read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
