"""Linear probes on FFN neuron activations: is harmfulness linearly readable, and does a probe
trained on English text transfer to other languages and modalities?

Unlike :func:`ps_interp.record.record`, this keeps one vector per prompt, for a few chosen layers
only (``layers`` is required); on disk it is float16 safetensors.

Example:
    >>> acts = collect_activations(model, probes, layers=[10, 20])     # doctest: +SKIP
    >>> probe_auroc(acts)                                               # doctest: +SKIP
       layer  auroc  auroc_std    n  n_harmful
    0     10  0.97       0.02  240        120
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_dir
from .data.prompting import encode
from .errors import PsInterpError
from .record import position_weights, run_to_sites

ITEM_COLUMNS = ("id", "lang", "modality", "label", "pair")  # pair: the matched harmful/benign pair (CV groups)
FP16_MAX = 65504.0


@dataclass
class Activations:
    """Per-prompt activations ``{layer: [n_prompts, d_ff] float32}`` and one row per prompt."""

    acts: dict[int, np.ndarray]
    items: object  # pandas DataFrame: id, lang, modality, label
    meta: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """1 for harmful, 0 for benign."""
        return (self.items["label"].to_numpy() == "harmful").astype(np.int64)

    @property
    def layers(self) -> list[int]:
        return sorted(self.acts)

    def select(self, **selection) -> "Activations":
        """Rows matching ``lang=``, ``modality=``, ``label=`` (each a value or a list)."""
        keep = np.ones(len(self.items), dtype=bool)
        for key, value in selection.items():
            if key not in ITEM_COLUMNS[1:]:
                raise PsInterpError(f"cannot select on {key!r}", fix="use lang=, modality= or label=")
            if value is not None:
                values = [value] if isinstance(value, str) else list(value)
                keep &= self.items[key].isin(values).to_numpy()
        return Activations({k: v[keep] for k, v in self.acts.items()}, self.items[keep].reset_index(drop=True),
                           dict(self.meta))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``activations.safetensors`` (float16) + ``activations.json`` into folder ``path`` (atomically)."""
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_dir(path) as tmp:
            tensors = {f"layer.{k}": torch.from_numpy(np.clip(v, -FP16_MAX, FP16_MAX)).half().contiguous()
                       for k, v in self.acts.items()}
            save_file(tensors, str(tmp / "activations.safetensors"))
            info = {"items": self.items[list(ITEM_COLUMNS)].to_dict("records"), "layers": self.layers,
                    "meta": self.meta}
            (tmp / "activations.json").write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Activations":
        """Read what :meth:`save` wrote."""
        import pandas as pd
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "activations.json").exists():
            raise PsInterpError(f"no saved activations in {path}",
                                fix="pass the folder that collect_activations(path=) wrote")
        info = json.loads((path / "activations.json").read_text(encoding="utf-8"))
        tensors = load_file(str(path / "activations.safetensors"))
        acts = {int(k.split(".")[1]): v.float().numpy() for k, v in tensors.items()}
        return cls(acts, pd.DataFrame(info["items"], columns=list(ITEM_COLUMNS)), info.get("meta", {}))


def _layers(model, layers) -> list[int]:
    if layers is None:
        raise PsInterpError("collect_activations keeps one vector per prompt and layer: choose the layers",
                            fix=f"pass layers among 0..{model.n_layers - 1}, e.g. layers=[{model.n_layers // 2}]")
    layers = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    if not layers or min(layers) < 0 or max(layers) >= model.n_layers:
        raise PsInterpError(f"layers {layers} out of range", fix=f"use layers in 0..{model.n_layers - 1}")
    return sorted({int(x) for x in layers})


def collect_activations(model, probes, layers, position: str = "last", path: str | os.PathLike | None = None, *,
                        batch_size: int = 16, system_prompt: str | None = None,
                        progress: bool = False) -> Activations:
    """Per-prompt activations of ``layers`` (``position``: ``last`` token or ``mean`` over the prompt;
    ``image`` / ``text`` tokens for VLMs). With ``path``, also saved there as float16 safetensors.

    Example:
        >>> from ps_interp.planted import plant
        >>> p = plant()
        >>> collect_activations(p.model, p.probes, layers=[1]).acts[1].shape
        (48, 128)
    """
    import pandas as pd
    from tqdm.auto import tqdm

    layers = _layers(model, layers)
    if position == "all":
        raise PsInterpError("position='all' has no single vector per prompt", fix="use position='last' or 'mean'")
    items = list(probes)
    if not items:
        raise PsInterpError("no probes", fix="check the selection (e.g. probes.select(lang='en'))")
    out = {layer: np.empty((len(items), model.d_ff), dtype=np.float32) for layer in layers}

    was_training = model.hf.training
    model.hf.eval()
    try:
        for start in tqdm(range(0, len(items), batch_size), desc="activations", disable=not progress):
            chunk = items[start:start + batch_size]
            batch = encode(model, chunk, system_prompt=system_prompt)
            weights = position_weights(batch, position, model.image_token_id).float()
            rows = slice(start, start + len(chunk))

            def keep(layer, h, rows=rows, weights=weights):
                out[layer][rows] = torch.einsum("bt,btf->bf", weights, h.float()).cpu().numpy()

            with torch.inference_mode():
                run_to_sites(model, batch, layers, keep)
    finally:
        model.hf.train(was_training)
    frame = pd.DataFrame([{"id": it.id, "lang": it.lang, "modality": it.modality, "label": it.label,
                           "pair": it.meta.get("pair", it.id)} for it in items])
    acts = Activations(out, frame, {"position": position, "model": model.name, "layers": layers,
                                    "site": "blocks.{layer}.mlp.hook_post"})
    if path is not None:
        acts.save(path)
    return acts


def _labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.dtype.kind in "USO":
        y = (y == "harmful").astype(np.int64)
    y = y.astype(np.int64)
    if y.shape != (n,):
        raise PsInterpError(f"{y.shape[0] if y.ndim else 0} labels for {n} prompts", fix="pass one label per prompt")
    return y


def _classifier(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def _folds(y: np.ndarray, cv: int, seed: int, groups=None):
    """Stratified folds; with ``groups`` (matched pairs), a pair and all its translations stay in one fold.

    Matched harmful/benign twins share their topic: when one twin is trained on and the other tested, the
    probe learns the topic and calls the test twin by the *opposite* label (AUROC below 0.5, seen on the
    built-in set). Grouping by pair removes that.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    smallest = int(min(np.sum(y == 0), np.sum(y == 1)))
    if smallest < 2:
        raise PsInterpError(f"a probe needs >= 2 harmful and >= 2 benign prompts (have {int(y.sum())} harmful, "
                            f"{int((y == 0).sum())} benign)", fix="collect activations on more probes of both labels")
    if groups is not None and len(set(groups)) < len(groups):
        n = min(cv, len(set(groups)))
        if n < 2:
            raise PsInterpError("a grouped probe needs >= 2 pairs", fix="collect activations on more pairs")
        return list(StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed).split(y, y, groups))
    return StratifiedKFold(n_splits=min(cv, smallest), shuffle=True, random_state=seed)


def _groups(acts) -> np.ndarray | None:
    items = acts.items if isinstance(acts, Activations) else None
    if items is None or "pair" not in items or items["pair"].isna().any():
        return None
    return items["pair"].astype(str).to_numpy()


def probe_auroc(acts: Activations | Mapping[int, np.ndarray], labels=None, cv: int = 5, *, C: float = 1.0,
                seed: int = 0):
    """Per layer: logistic-regression probe for harmful vs benign, AUROC under stratified CV.

    Folds keep each matched pair (and its translations) together when the items carry pairs
    (``collect_activations`` records them), so a probe is never tested on the twin of a training item.

    Columns: layer, auroc (mean over folds), auroc_std, n, n_harmful.

    Example:
        >>> from ps_interp.planted import plant
        >>> p = plant()
        >>> float(probe_auroc(collect_activations(p.model, p.probes, layers=[0])).auroc[0])
        1.0
    """
    import pandas as pd
    from sklearn.model_selection import cross_val_score

    if isinstance(acts, Activations):
        table, y = acts.acts, (acts.labels if labels is None else _labels(labels, len(acts.items)))
    else:
        if labels is None:
            raise PsInterpError("labels are needed with a plain {layer: array} mapping",
                                fix="pass labels= (1/'harmful' and 0/'benign') or an Activations object")
        table = dict(acts)
        y = _labels(labels, len(next(iter(table.values()))))
    folds = _folds(y, cv, seed, _groups(acts))
    rows = []
    for layer in sorted(table):
        scores = cross_val_score(_classifier(C), np.asarray(table[layer], dtype=np.float64), y, cv=folds,
                                 scoring="roc_auc")
        rows.append({"layer": layer, "auroc": float(scores.mean()), "auroc_std": float(scores.std()),
                     "n": len(y), "n_harmful": int(y.sum())})
    return pd.DataFrame(rows)


@dataclass
class ProbeTransfer:
    """AUROC of a probe trained on one group, tested on every (lang, modality): ``table`` (langs x
    modalities) and ``long`` (one row per target). The training cell is cross-validated."""

    table: object
    long: object
    layer: int
    train: dict

    def figure(self):
        """Heatmap of the AUROC table (plotly)."""
        import plotly.graph_objects as go

        z = self.table.to_numpy(dtype=float)
        text = [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in z]
        fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in self.table.columns], y=[str(i) for i in self.table.index],
                                   text=text, texttemplate="%{text}", colorscale="Viridis", zmin=0.5, zmax=1,
                                   colorbar=dict(title="AUROC")))
        src = "/".join(str(v) for v in self.train.values())
        fig.update_layout(template="plotly_white", title=f"Probe trained on {src} (layer {self.layer}): AUROC",
                          xaxis_title="modality", yaxis_title="language")
        fig.update_yaxes(autorange="reversed")
        return fig


def _target_list(acts: Activations, targets) -> list[tuple[str, str]]:
    present = list(dict.fromkeys(zip(acts.items["lang"], acts.items["modality"])))
    if targets is None:
        return present
    out = []
    for t in targets:
        if isinstance(t, Mapping):
            out += [g for g in present if all(g[("lang", "modality").index(k)] == v for k, v in t.items())]
        elif isinstance(t, str) and "/" in t:
            out.append(tuple(t.split("/", 1)))
        elif isinstance(t, str):
            out += [g for g in present if g[0] == t]
        else:
            out.append(tuple(t))
    return list(dict.fromkeys(out))


def probe_transfer(model, probes, layer: int, train: Mapping[str, str] | None = None, targets=None, *,
                   position: str = "last", cv: int = 5, C: float = 1.0, seed: int = 0, batch_size: int = 16,
                   acts: Activations | None = None) -> ProbeTransfer:
    """Train a harmful-vs-benign probe on ``train`` (default English text) at ``layer``; AUROC on
    each target (lang, modality): a language code, ``"lang/modality"``, a dict, or None for all.

    Example:
        >>> t = probe_transfer(model, probes, layer=12)   # doctest: +SKIP
        >>> t.table                                        # doctest: +SKIP
        >>> t.figure()                                     # doctest: +SKIP
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_score

    train = dict(train or {"lang": "en", "modality": "text"})
    if acts is None:
        acts = collect_activations(model, probes, [layer], position=position, batch_size=batch_size)
    if layer not in acts.acts:
        raise PsInterpError(f"layer {layer} not among the collected layers {acts.layers}",
                            fix="collect that layer, or pass acts=None")
    src = acts.select(**train)
    if len(src.items) == 0:
        raise PsInterpError(f"no probes match the training group {train}", fix="include them in probes")
    y = src.labels
    folds = _folds(y, cv, seed, _groups(src))
    clf = _classifier(C).fit(src.acts[layer], y)
    key = (train.get("lang"), train.get("modality"))
    rows = []
    for lang, mod in _target_list(acts, targets):
        tgt = acts.select(lang=lang, modality=mod)
        yt = tgt.labels
        n = len(yt)
        if (lang, mod) == key:
            auc = float(cross_val_score(_classifier(C), src.acts[layer], y, cv=folds, scoring="roc_auc").mean())
        elif n and 0 < yt.sum() < n:
            auc = float(roc_auc_score(yt, clf.decision_function(tgt.acts[layer])))
        else:
            auc = float("nan")  # a target needs both labels
        rows.append({"lang": lang, "modality": mod, "auroc": auc, "n": n, "cross_validated": (lang, mod) == key})
    long = pd.DataFrame(rows)
    table = long.pivot(index="lang", columns="modality", values="auroc")
    table = table.reindex(index=list(dict.fromkeys(long["lang"])), columns=list(dict.fromkeys(long["modality"])))
    table.columns.name, table.index.name = None, None
    return ProbeTransfer(table, long, layer, train)
