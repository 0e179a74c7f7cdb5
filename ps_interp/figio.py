"""Write plotly figures to disk: HTML always, static images when a Chrome is available.

HTML files embed plotly.js (``include_plotlyjs=True``, ~4.5 MB each): a figure must open offline,
on a cluster node or after being copied out of the run folder alone, which rules out ``'cdn'``
(needs internet) and ``'directory'`` (breaks when the file is moved without its plotly.min.js).

Static formats (png, svg, pdf, jpeg, webp) go through kaleido, which drives a headless Chrome.
Without one, :func:`save_figure` still writes the HTML, warns once naming the fix, and leaves no
partial image behind. Every file is written to a temp file and renamed into place.

Example:
    >>> import plotly.graph_objects as go
    >>> paths = save_figure(go.Figure(go.Bar(y=[1, 2])), "/tmp/ps_interp_doc_fig", formats=("html",))
    >>> [p.name for p in paths]
    ['ps_interp_doc_fig.html']
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ps_interp._io import atomic_write
from ps_interp.errors import PsInterpError

STATIC_FORMATS = ("png", "svg", "pdf", "jpeg", "jpg", "webp")
FORMATS = ("html", "json", *STATIC_FORMATS)
CHROME_FIX = "apt-get install chromium (Debian/Ubuntu; or run `plotly_get_chrome`)"

_png_state: dict[str, Any] = {"available": None, "reason": ""}
_session = {"depth": 0}


class FigureExportWarning(UserWarning):
    """A static image could not be written (the HTML was)."""


def _to_image(fig: Any, fmt: str, scale: float) -> bytes:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")  # harmless, in sessions
        return fig.to_image(format=fmt, scale=scale)


@contextlib.contextmanager
def export_session() -> Iterator[None]:
    """Keep one headless Chrome open for the static exports inside (~0.2 s each instead of ~3 s).

    Nested sessions share the browser; without kaleido this does nothing.

    Example:
        >>> import plotly.graph_objects as go
        >>> with export_session():
        ...     paths = save_figure(go.Figure(), "/tmp/ps_interp_doc_session", formats=("html",))
    """
    try:
        import kaleido
    except ImportError:
        yield
        return
    if _session["depth"] == 0:
        kaleido.start_sync_server(silence_warnings=True)
    _session["depth"] += 1
    try:
        yield
    finally:
        _session["depth"] -= 1
        if _session["depth"] == 0:
            kaleido.stop_sync_server(silence_warnings=True)


def _export_fix() -> str:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "pip install 'ps-interp[export]' (kaleido), then " + CHROME_FIX
    return CHROME_FIX


def png_available() -> bool:
    """Whether static export works here (kaleido + Chrome); probed once per process, ~3 s.

    Example:
        >>> isinstance(png_available(), bool)
        True
    """
    if _png_state["available"] is None:
        try:
            import plotly.graph_objects as go

            ok = _to_image(go.Figure(go.Bar(y=[1])), "png", 1.0).startswith(b"\x89PNG")
            _png_state.update(available=ok, reason="" if ok else "kaleido returned no PNG")
        except Exception as exc:  # kaleido missing, Chrome missing or broken: all mean "no PNG"
            _png_state.update(available=False, reason=f"{type(exc).__name__}: {exc}".strip()[:300])
    return bool(_png_state["available"])


def png_unavailable_reason() -> str:
    """Why :func:`png_available` is False ('' when it is True or was not probed)."""
    return _png_state["reason"]


def _stem(path_stem: str | os.PathLike) -> Path:
    stem = Path(path_stem)
    if stem.suffix.lstrip(".").lower() in FORMATS:
        stem = stem.with_suffix("")
    return stem


def save_figure(fig: Any, path_stem: str | os.PathLike, formats: Sequence[str] = ("html", "png"), *,
                scale: float = 2.0) -> list[Path]:
    """Write ``fig`` as ``{path_stem}.{fmt}`` for each format; returns the paths written.

    HTML is always written (added if missing from ``formats``). Static images that cannot be
    exported (no kaleido / Chrome) are skipped with one :class:`FigureExportWarning`; after a
    failure, later calls in this process skip static formats at once (no repeated Chrome timeouts).

    Example:
        >>> import plotly.graph_objects as go
        >>> save_figure(go.Figure(), "/tmp/ps_interp_doc_empty", formats=("html", "json"))[-1].suffix
        '.json'
    """
    fmts = [f.lower().lstrip(".") for f in ([formats] if isinstance(formats, str) else formats)]
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise PsInterpError(f"unknown figure format(s) {bad}", fix=f"use some of {list(FORMATS)}")
    if "html" not in fmts:
        fmts.insert(0, "html")
    stem = _stem(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: list[str] = []
    for fmt in dict.fromkeys(fmts):  # de-duplicated, order kept
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "html":
            written.append(atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True,
                                                                          full_html=True)))
        elif fmt == "json":
            written.append(atomic_write(path, lambda tmp: Path(tmp).write_text(fig.to_json(), encoding="utf-8")))
        elif _png_state["available"] is False:
            failed.append(fmt)
        else:
            try:  # render fully in memory first: a failure leaves no file behind
                data = _to_image(fig, "jpeg" if fmt == "jpg" else fmt, scale)
            except Exception as exc:
                _png_state.update(available=False, reason=f"{type(exc).__name__}: {exc}".strip()[:300])
                failed.append(fmt)
                continue
            written.append(atomic_write(path, lambda tmp: Path(tmp).write_bytes(data)))
    if failed:
        why = f" ({png_unavailable_reason()})" if png_unavailable_reason() else ""
        warnings.warn(f"could not export {', '.join(failed)} for {stem.name}: static image export needs "
                      f"kaleido and a Chrome/Chromium{why}; the HTML was written. Fix: {_export_fix()}",
                      FigureExportWarning, stacklevel=2)
    return written
