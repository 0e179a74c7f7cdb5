"""Figures of the analysis, as pure functions returning plotly ``go.Figure`` (save with figio).

Example:
    >>> from ps_interp.neurons import ModelIdentity, NeuronSet
    >>> ident = ModelIdentity("LlamaForCausalLM", n_layers=3, d_ff=8, d_model=4)
    >>> fig = layer_distribution({"en": NeuronSet({0: [1], 2: [3, 4]}, ident)})
    >>> fig.data[0].y.tolist()
    [1, 0, 2]
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ps_interp.errors import PsInterpError
from ps_interp.neurons import NeuronSet

_TEMPLATE = "plotly_white"


def _go():
    import plotly.graph_objects as go

    return go


def _check_sets(sets: Mapping[str, NeuronSet]) -> list[str]:
    names = list(sets)
    if not names:
        raise PsInterpError("no neuron sets to plot", fix="pass a dict like {'en': set_en, 'sw': set_sw}")
    first = sets[names[0]]
    for name in names[1:]:
        why = first.identity.mismatch(sets[name].identity)
        if why:
            raise PsInterpError(f"set {name!r} comes from a different model than {names[0]!r}: {why}")
    return names


def _require_columns(df: Any, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PsInterpError(f"{what} needs columns {list(columns)}; missing {missing}",
                            fix=f"rename the DataFrame columns (have {list(df.columns)})")


def layer_distribution(sets: Mapping[str, NeuronSet], normalize: bool = False, *, kind: str = "line",
                       title: str = "Neurons per layer"):
    """Neurons per layer, one trace per set (``normalize=True``: share of each set's neurons).

    Example:
        >>> from ps_interp.neurons import ModelIdentity, NeuronSet
        >>> ident = ModelIdentity("LlamaForCausalLM", n_layers=2, d_ff=4, d_model=2)
        >>> layer_distribution({"en": NeuronSet({1: [0, 1]}, ident)}, normalize=True).data[0].y.tolist()
        [0.0, 1.0]
    """
    go = _go()
    if kind not in ("line", "bar"):
        raise PsInterpError(f"kind must be 'line' or 'bar', got {kind!r}")
    names = _check_sets(sets)
    layers = np.arange(sets[names[0]].identity.n_layers)
    fig = go.Figure()
    for name in names:
        counts = sets[name].per_layer()
        y = counts / max(counts.sum(), 1) if normalize else counts
        label = f"{name} ({len(sets[name]):,})"
        if kind == "bar":
            fig.add_trace(go.Bar(x=layers, y=y, name=label))
        else:
            fig.add_trace(go.Scatter(x=layers, y=y, name=label, mode="lines+markers"))
    fig.update_layout(template=_TEMPLATE, title=title, barmode="group", legend_title_text="set",
                      xaxis_title="layer", yaxis_title="share of the set's neurons" if normalize else "neurons")
    if normalize:
        fig.update_yaxes(tickformat=".0%")
    return fig


def jaccard_heatmap(jaccard_df: Any, pvalues_df: Any = None, alpha: float = 0.05, *,
                    title: str = "Jaccard overlap of neuron sets", digits: int = 2):
    """Heatmap of a Jaccard matrix; cells show the value and ``*`` when ``p < alpha``.

    Example:
        >>> import pandas as pd
        >>> j = pd.DataFrame([[1.0, 0.3], [0.3, 1.0]], index=["en", "sw"], columns=["en", "sw"])
        >>> p = pd.DataFrame([[float("nan"), 0.01], [0.01, float("nan")]], index=j.index, columns=j.columns)
        >>> jaccard_heatmap(j, p).data[0].text.tolist()
        [['1.00', '0.30*'], ['0.30*', '1.00']]
    """
    go = _go()
    values = np.asarray(jaccard_df, dtype=float)
    stars = np.zeros(values.shape, dtype=bool)
    if pvalues_df is not None:
        pvals = pvalues_df.reindex(index=jaccard_df.index, columns=jaccard_df.columns) \
            if hasattr(pvalues_df, "reindex") else pvalues_df
        pvals = np.asarray(pvals, dtype=float)
        if pvals.shape != values.shape:
            raise PsInterpError(f"p-value matrix has shape {pvals.shape}, Jaccard matrix {values.shape}")
        stars = np.nan_to_num(pvals, nan=1.0) < alpha
    text = np.array([[("" if math.isnan(v) else f"{v:.{digits}f}") + ("*" if s else "")
                      for v, s in zip(row, srow)] for row, srow in zip(values, stars)], dtype=object)
    labels_x = [str(c) for c in getattr(jaccard_df, "columns", range(values.shape[1]))]
    labels_y = [str(i) for i in getattr(jaccard_df, "index", range(values.shape[0]))]
    fig = go.Figure(go.Heatmap(z=values, x=labels_x, y=labels_y, text=text, texttemplate="%{text}",
                               colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="J"),
                               hovertemplate="%{y} vs %{x}: J = %{z:.3f}<extra></extra>"))
    note = f" (* p < {alpha:g} vs random sets)" if pvalues_df is not None else ""
    fig.update_layout(template=_TEMPLATE, title=title + note)
    fig.update_yaxes(autorange="reversed")
    return fig


def membership_patterns(sets: Mapping[str, NeuronSet]) -> list[tuple[tuple[bool, ...], int]]:
    """Neurons per exact membership pattern (in these sets, not in the others).

    Largest first; ties: more sets first.

    Example:
        >>> from ps_interp.neurons import ModelIdentity, NeuronSet
        >>> ident = ModelIdentity("LlamaForCausalLM", n_layers=1, d_ff=8, d_model=2)
        >>> membership_patterns({"a": NeuronSet({0: [0, 1]}, ident), "b": NeuronSet({0: [1]}, ident)})
        [((True, True), 1), ((True, False), 1)]
    """
    names = _check_sets(sets)
    masks = np.stack([sets[n].to_mask().ravel() for n in names])  # [n_sets, n_layers * d_ff]
    masks = masks[:, masks.any(axis=0)]
    codes = (masks.astype(np.int64) << np.arange(len(names), dtype=np.int64)[:, None]).sum(axis=0)
    uniq, counts = np.unique(codes, return_counts=True)
    order = sorted(range(uniq.size), key=lambda i: (-counts[i], -bin(int(uniq[i])).count("1"), int(uniq[i])))
    return [(tuple(bool(int(uniq[i]) >> k & 1) for k in range(len(names))), int(counts[i])) for i in order]


def upset(sets: Mapping[str, NeuronSet], max_bars: int = 20, *,
          title: str = "Shared and set-specific neurons"):
    """UpSet plot: bars = neurons in exactly that combination of sets; dot matrix below.

    Traces: the bars, the grey background dots, the filled dots joined by lines (one trace).

    Example:
        >>> from ps_interp.neurons import ModelIdentity, NeuronSet
        >>> ident = ModelIdentity("LlamaForCausalLM", n_layers=1, d_ff=8, d_model=2)
        >>> fig = upset({"a": NeuronSet({0: [0, 1]}, ident), "b": NeuronSet({0: [1]}, ident)})
        >>> list(fig.data[0].y)
        [1, 1]
    """
    go = _go()
    from plotly.subplots import make_subplots

    names = _check_sets(sets)
    patterns = membership_patterns(sets)[:max_bars]
    x = list(range(len(patterns)))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.03)
    fig.add_trace(go.Bar(x=x, y=[c for _, c in patterns], text=[c for _, c in patterns], textposition="outside",
                         marker_color="#333", name="neurons", showlegend=False,
                         hovertext=[" & ".join(n for n, m in zip(names, pat) if m) + " only" for pat, _ in patterns],
                         hoverinfo="text+y"), row=1, col=1)
    rows = list(range(len(names)))
    fig.add_trace(go.Scatter(x=[i for i in x for _ in rows], y=[r for _ in x for r in rows], mode="markers",
                             marker=dict(color="#ddd", size=11), hoverinfo="skip", showlegend=False),
                  row=2, col=1)
    dot_x: list[float | None] = []
    dot_y: list[float | None] = []
    for i, (pat, _) in enumerate(patterns):
        members = [r for r, m in enumerate(pat) if m]
        dot_x += [i] * len(members) + [None]
        dot_y += members + [None]
    fig.add_trace(go.Scatter(x=dot_x, y=dot_y, mode="markers+lines", marker=dict(color="#333", size=11),
                             line=dict(color="#333", width=2), hoverinfo="skip", showlegend=False), row=2, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, row=2, col=1)
    fig.update_yaxes(tickvals=rows, ticktext=[f"{n} ({len(sets[n]):,})" for n in names], showgrid=False,
                     zeroline=False, range=[-0.5, len(names) - 0.5], row=2, col=1)
    fig.update_yaxes(title_text="neurons", row=1, col=1)
    shown = sum(c for _, c in patterns)
    total = sum(c for _, c in membership_patterns(sets)) if len(patterns) == max_bars else shown
    fig.update_layout(template=_TEMPLATE, title=f"{title} ({shown:,} of {total:,} neurons shown)",
                      bargap=0.3)
    return fig


def ablation_effect(effect_of_set: float, random_effects: Sequence[float], title: str = "Ablation effect", *,
                    xaxis_title: str = "change in refusal rate", set_label: str = "safety neurons"):
    """Histogram of random-set ablation effects, a vertical line at the set's effect, z in the title.

    The title also gives the empirical one-sided p-value ``(1 + #{random >= set}) / (1 + n)``.

    Example:
        >>> fig = ablation_effect(0.5, [0.0, 0.1, -0.1, 0.05])
        >>> len(fig.data), len(fig.layout.shapes), "z = " in fig.layout.title.text
        (1, 1, True)
    """
    go = _go()
    rand = np.asarray(list(random_effects), dtype=float)
    if rand.size == 0 or not np.all(np.isfinite(rand)):
        raise PsInterpError("random_effects must be a non-empty list of finite numbers",
                            fix="ablate a few random sets with NeuronSet.random_like(seed)")
    sd = rand.std(ddof=1) if rand.size > 1 else 0.0
    z = (effect_of_set - rand.mean()) / sd if sd > 0 else math.nan
    p_emp = (1 + int(np.sum(rand >= effect_of_set))) / (1 + rand.size)
    z_text = f"z = {z:.2f}" if math.isfinite(z) else "z = n/a (random effects have no spread)"
    fig = go.Figure(go.Histogram(x=rand, name=f"random sets (n={rand.size})", marker_color="#9aa"))
    fig.add_vline(x=effect_of_set, line=dict(color="crimson", width=3),
                  annotation_text=f"{set_label}: {effect_of_set:.3g}", annotation_position="top")
    fig.update_layout(template=_TEMPLATE, title=f"{title}: {z_text}, empirical p = {p_emp:.3g}",
                      xaxis_title=xaxis_title, yaxis_title="random sets", showlegend=False)
    return fig


def asr_bars(df: Any, *, title: str = "Attack success rate by language"):
    """Grouped bars of ASR per language, one trace per condition, error bars from ``lo``/``hi``.

    ``df`` columns: ``lang, condition, asr, lo, hi`` (lo/hi: interval bounds, NaN for none).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"lang": ["en", "en"], "condition": ["before", "after"],
        ...                    "asr": [0.4, 0.1], "lo": [0.3, 0.05], "hi": [0.5, 0.2]})
        >>> [t.name for t in asr_bars(df).data]
        ['before', 'after']
    """
    go = _go()
    _require_columns(df, ("lang", "condition", "asr", "lo", "hi"), "asr_bars")
    langs = list(dict.fromkeys(df["lang"].tolist()))
    fig = go.Figure()
    for cond in dict.fromkeys(df["condition"].tolist()):
        sub = df[df["condition"] == cond].drop_duplicates("lang", keep="last").set_index("lang").reindex(langs)
        asr = sub["asr"].to_numpy(float)
        fig.add_trace(go.Bar(x=langs, y=asr, name=str(cond),
                             error_y=dict(type="data", symmetric=False,
                                          array=np.nan_to_num(sub["hi"].to_numpy(float) - asr),
                                          arrayminus=np.nan_to_num(asr - sub["lo"].to_numpy(float)))))
    fig.update_layout(template=_TEMPLATE, title=title, barmode="group", xaxis_title="language",
                      yaxis_title="ASR", legend_title_text="condition")
    if df["asr"].max() <= 1:
        fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return fig


def transfer_scatter(df: Any, *, x: str = "jaccard", y: str = "asr_drop", label: str = "lang",
                     title: str = "Safety transfer vs neuron overlap"):
    """One labelled point per language: overlap with the source set vs ASR drop; Spearman rho in title.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"lang": ["de", "sw", "zh"], "jaccard": [0.5, 0.1, 0.3], "asr_drop": [0.3, 0.05, 0.2]})
        >>> list(transfer_scatter(df).data[0].text)
        ['de', 'sw', 'zh']
    """
    go = _go()
    _require_columns(df, (label, x, y), "transfer_scatter")
    fig = go.Figure(go.Scatter(x=df[x], y=df[y], text=df[label].astype(str), mode="markers+text",
                               textposition="top center", marker=dict(size=10), name="languages",
                               hovertemplate="%{text}: " + x + " = %{x:.3f}, " + y + " = %{y:.3f}<extra></extra>"))
    ok = df[[x, y]].dropna()
    if len(ok) >= 3 and ok[x].nunique() > 1 and ok[y].nunique() > 1:
        from scipy.stats import spearmanr

        rho = spearmanr(ok[x], ok[y]).statistic
        title = f"{title} (Spearman rho = {rho:.2f}, n = {len(ok)})"
    fig.update_layout(template=_TEMPLATE, title=title, showlegend=False,
                      xaxis_title="Jaccard with source set" if x == "jaccard" else x,
                      yaxis_title="ASR drop" if y == "asr_drop" else y)
    return fig
