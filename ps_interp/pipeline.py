"""The main job (`ps-interp run`): record, identify, overlap, causal check, align, evaluate, report.

Writes ``runs/<name>/``: stats/, sets/*.json, tables/*.csv, figures/*.html|png and report.html.

Example:
    >>> from ps_interp.config import RunConfig
    >>> folder = run_study(RunConfig(name="demo"))   # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from .config import RunConfig


class _Log:
    """Progress lines with elapsed time (the progress bars show the rest)."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}
        self._last = self.t0

    def __call__(self, msg: str) -> None:
        now = time.monotonic()
        print(f"[{now - self.t0:6.0f}s] {msg}", flush=True)

    def stage(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self._last, 1)
        self._last = now


def run_study(cfg: RunConfig) -> Path:
    """Run the whole study described by ``cfg`` and return the run folder."""
    import torch

    from . import plots
    from .data import probes as builtin_probes
    from .estimate import estimate
    from .figio import export_session, save_figure
    from .identify import identify
    from .intervene import causal_check
    from .models import load
    from .overlap_stats import jaccard_matrix
    from .precision import resolve_autocast
    from .record import record
    from .report import figure_html, table_html, write_report
    from .transfer import transfer

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    log = _Log()
    folder = Path(cfg.out_dir) / cfg.name
    for sub in ("stats", "sets", "tables", "figures"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    log(f"loading {cfg.model}")
    model = load(cfg.model, dtype=cfg.dtype, device_map=cfg.device_map)
    probes = builtin_probes(langs=cfg.langs, modalities=tuple(cfg.modalities))
    log(f"{model}; {len(probes)} probes in {len(cfg.langs)} languages x {cfg.modalities}")
    log.stage("load")
    autocast = resolve_autocast(cfg.autocast, model.device)
    log(f"autocast: {autocast} (config: {cfg.autocast!r})")

    probe_split = probes.select(split="probe").require_nonempty("probe split")
    print(estimate(model, probe_split, batch_size=cfg.batch_size, steps=cfg.steps,
                   train_batch_size=cfg.train_batch_size, max_new_tokens=cfg.max_new_tokens), flush=True)
    stats = record(model, probe_split, position=cfg.position, batch_size=cfg.batch_size, autocast=autocast,
                   system_prompt=cfg.system_prompt, checkpoint=folder / "stats" / "checkpoint")
    stats.save(folder / "stats" / "probe")
    log.stage("record")
    log("identifying safety neurons per language and modality")
    sel = dict(budget=cfg.budget) if cfg.budget is not None else dict(rho=cfg.rho)
    sets = {f"{lang}/{mod}": identify(stats, method=cfg.method, lang=lang, modality=mod, model=model, **sel)
            for lang in cfg.langs for mod in cfg.modalities}
    for key, s in sets.items():
        s.save(folder / "sets" / f"{key.replace('/', '_')}.json")
    jac, expected, pval = jaccard_matrix(sets)
    jac.to_csv(folder / "tables" / "jaccard.csv")
    expected.to_csv(folder / "tables" / "jaccard_expected.csv")
    pval.to_csv(folder / "tables" / "jaccard_pvalue.csv")
    layer_df = pd.DataFrame({k: s.per_layer() for k, s in sets.items()})
    layer_df.index.name = "layer"
    layer_df.to_csv(folder / "tables" / "layer_distribution.csv")
    log.stage("identify")

    source_key = f"{cfg.source_langs[0]}/{cfg.source_modalities[0]}"
    log(f"causal check of the {source_key} set vs {cfg.n_random} random sets")
    check_probes = probe_split.select(lang=cfg.source_langs, modality=cfg.source_modalities)
    check = causal_check(model, sets[source_key], check_probes, n_random=cfg.n_random, seed=cfg.seed,
                         autocast=autocast)
    (folder / "tables" / "causal_check.json").write_text(json.dumps(check.to_dict(), indent=1, default=float))
    log.stage("causal_check")

    log("aligning on the source (Shield + baselines) and evaluating every language before/after")
    result = transfer(model, source={"langs": cfg.source_langs, "modalities": cfg.source_modalities},
                      targets={"langs": cfg.langs, "modalities": cfg.modalities}, probes=probes, stats=stats,
                      method=cfg.method, budget=cfg.budget, rho=None if cfg.budget is not None else cfg.rho,
                      baselines=tuple(cfg.baselines), steps=cfg.steps, lr=cfg.lr, batch_size=cfg.train_batch_size,
                      retention=cfg.retention, eval_per_lang=cfg.eval_per_lang, max_new_tokens=cfg.max_new_tokens,
                      language_scale=cfg.language_scale, position=cfg.position, autocast=autocast, seed=cfg.seed)
    result.table.to_csv(folder / "tables" / "transfer.csv", index=False)
    result.correlation.to_csv(folder / "tables" / "transfer_correlation.csv", index=False)
    asr_rows = []
    for cond, ev in result.evaluations.items():
        ev.save(folder / "evaluations" / cond)
        t = ev.asr("lang").assign(condition=cond)
        asr_rows.append(t)
    asr = pd.concat(asr_rows, ignore_index=True)
    asr.to_csv(folder / "tables" / "asr_by_lang.csv", index=False)
    log.stage("align_evaluate")

    log("figures and report")
    figs = {
        "layer_distribution": plots.layer_distribution(sets),
        "jaccard": plots.jaccard_heatmap(jac, pval),
        "upset": plots.upset(sets),
        "ablation": check.figure(),
        "asr": plots.asr_bars(asr.rename(columns={"asr_lo": "lo", "asr_hi": "hi"})[
            ["lang", "condition", "asr", "lo", "hi"]]),
        "transfer": plots.transfer_scatter(result.targets_only[result.targets_only["condition"] == "shield"],
                                           title=f"Zero-shot transfer of Shield ({source_key}) vs neuron overlap"),
    }
    if len(cfg.modalities) > 1:  # the cross-modal view: one bar group per language x modality
        by_mod = asr_by_group({c: ev.table for c, ev in result.evaluations.items()})
        by_mod.to_csv(folder / "tables" / "asr_by_lang_modality.csv", index=False)
        figs["asr_modality"] = plots.asr_bars(by_mod, title="Attack success rate by language and modality")
    with export_session():
        for name, fig in figs.items():
            save_figure(fig, folder / "figures" / name)
    log.stage("figures")
    settings = {**cfg.to_dict(), "model_loaded": model.name, "architecture": model.architecture,
                "n_layers": model.n_layers, "d_ff": model.d_ff, "source_set_size": len(sets[source_key]),
                "source_set_param_fraction": _fraction(model, sets[source_key]),
                "training": result.training, "timings_s": log.timings}
    (folder / "settings.json").write_text(json.dumps(settings, indent=1, default=str))
    summary = {"causal_check": check.summary() if hasattr(check, "summary") else str(check),
               "correlation": result.correlation.to_dict("records")}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    sections = _report_sections(figs, sets, jac, expected, pval, check, result, asr, figure_html, table_html)
    write_report(folder, title=f"ps_interp run '{cfg.name}' on {model.name}", settings=settings, sections=sections)
    log(f"wrote {folder / 'report.html'}")
    return folder


def asr_by_group(tables: dict, level: str = "lang+modality") -> pd.DataFrame:
    """``{condition: Evaluation.table}`` -> rows ``lang`` (= "lang/modality"), condition, asr, lo, hi for
    :func:`ps_interp.plots.asr_bars`; works on saved ``evaluations/<condition>/asr.csv`` tables too.

    Example:
        >>> t = pd.DataFrame({"level": ["lang+modality"], "lang": ["en"], "modality": ["typo"], "asr": [0.5],
        ...                   "asr_lo": [0.2], "asr_hi": [0.8]})
        >>> asr_by_group({"before": t})["lang"].tolist()
        ['en/typo']
    """
    rows = []
    for cond, table in tables.items():
        t = table[table["level"] == level]
        rows.append(pd.DataFrame({"lang": t["lang"] + "/" + t["modality"], "condition": cond, "asr": t["asr"],
                                  "lo": t["asr_lo"], "hi": t["asr_hi"]}))
    return pd.concat(rows, ignore_index=True)


def _fraction(model, neurons) -> float:
    total = sum(p.numel() for p in model.hf.parameters())
    return neurons.param_count() / total


def _report_sections(figs, sets, jac, expected, pval, check, result, asr, figure_html, table_html):
    first = iter([True] + [False] * 100)
    src = result.source_set
    return [
        ("Safety neurons per layer", f"<p class='note'>{len(src)} source neurons "
         f"({src.meta.get('method', '')}); counts per layer for each language set.</p>"
         + figure_html(figs["layer_distribution"], next(first))),
        ("Overlap (Jaccard) between language sets", "<p class='note'>* = more overlap than random sets with the "
         "same per-layer sizes (exact hypergeometric null, p < 0.05).</p>" + figure_html(figs["jaccard"], next(first))
         + "<h3>Expected Jaccard under the null</h3>" + table_html(expected.reset_index())),
        ("Shared vs language-specific neurons", figure_html(figs["upset"], next(first))),
        ("Causal check: ablating the source set vs random sets",
         f"<p class='note'>{check.summary() if hasattr(check, 'summary') else check}</p>"
         + figure_html(figs["ablation"], next(first))),
        ("Attack success rate before/after alignment", figure_html(figs["asr"], next(first))
         + table_html(asr[["condition", "lang", "n_harmful", "asr", "asr_lo", "asr_hi", "over_refusal"]])),
        *([("Attack success rate by language and modality", figure_html(figs["asr_modality"], next(first)))]
          if "asr_modality" in figs else []),
        ("Transfer: overlap with the source set vs ASR drop", figure_html(figs["transfer"], next(first))
         + table_html(result.table) + table_html(result.correlation)),
    ]
