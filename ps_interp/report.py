"""`report.html`: every figure and table of a run, with the settings used, in one self-contained page.

Example:
    >>> write_report("runs/default", title="ps_interp run", settings={"model": "smollm2"},
    ...              sections=[("ASR", "<p>...</p>")])   # doctest: +SKIP
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}.note{color:#555;font-size:14px}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:12px}"""


def table_html(df: pd.DataFrame, floatfmt: str = "{:.3f}", max_rows: int = 200) -> str:
    """A DataFrame as a compact HTML table."""
    return df.head(max_rows).to_html(index=False, float_format=lambda x: floatfmt.format(x), border=0,
                                     na_rep="–")


def figure_html(fig, first: bool) -> str:
    """A plotly figure as an HTML fragment (plotly.js embedded once, so the page works offline)."""
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False)


def write_report(folder: str | Path, *, title: str, settings: dict, sections: list[tuple[str, str]],
                 name: str = "report.html") -> Path:
    """Write ``folder/report.html`` (atomically) from (heading, html) sections and the settings."""
    folder = Path(folder)
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, fragment in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>\n{fragment}")
    body.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=1, default=str)) + "</pre>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    tmp = folder / f".{name}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(folder / name)
    return folder / name
