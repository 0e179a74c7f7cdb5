"""Atomic file and folder writes: a failure never leaves a half-written output behind.

Example:
    >>> from pathlib import Path
    >>> with atomic_dir("/tmp/ps_interp_doc_dir") as tmp:
    ...     _ = (tmp / "a.txt").write_text("hi")
    >>> Path("/tmp/ps_interp_doc_dir/a.txt").read_text()
    'hi'
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then rename it into place.

    A failure leaves neither a partial ``path`` nor the temp file. The file gets the usual
    permissions (umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder next to ``path``; on success it replaces ``path`` (an existing one is swapped out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    old = None
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
                old = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shipped_asset(directory: str | os.PathLike, weights: str, meta_name: str, tensors: dict,
                        meta: dict) -> Path:
    """Write ``weights`` (safetensors) then ``meta_name`` (JSON with the weights' sha256 and size), each atomically.

    Example:
        >>> import torch
        >>> d = write_shipped_asset("/tmp/ps_interp_doc_asset", "w.safetensors", "w.json",
        ...                         {"x": torch.zeros(2)}, {"format": "demo", "version": 1})
        >>> read_shipped_asset(d, "w.safetensors", "w.json", fmt="demo", version=1, what="demo",
        ...                    rebuild="rerun the doctest")[1]["bytes"] > 0
        True
    """
    import json

    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / weights, lambda tmp: save_file(tensors, tmp))
    info = {**meta, "sha256": sha256_file(d / weights), "bytes": (d / weights).stat().st_size}
    atomic_write_text(d / meta_name, json.dumps(info, indent=1, default=str) + "\n")
    return d


def read_shipped_asset(directory: str | os.PathLike, weights: str, meta_name: str, *, fmt: str, version: int,
                       what: str, rebuild: str) -> tuple[dict, dict]:
    """``(tensors, meta)`` of a weights + JSON pair after checking both exist, the format/version and the sha256.

    ``what`` names the asset in errors ("adapter"), ``rebuild`` says how to rebuild it.
    """
    import json

    from safetensors.torch import load_file

    from .errors import PsInterpError

    d = Path(directory)
    if not (d / weights).is_file() or not (d / meta_name).is_file():
        raise PsInterpError(f"no {what} in {d} (needs {weights} and {meta_name})",
                            fix=f"reinstall ps-interp, or {rebuild}")
    try:
        meta = json.loads((d / meta_name).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PsInterpError(f"{d / meta_name} is not valid JSON ({exc.msg})", fix=rebuild) from None
    if meta.get("format") != fmt or meta.get("version") != version:
        raise PsInterpError(f"{d / meta_name}: format {meta.get('format')!r} v{meta.get('version')} is not "
                            f"{fmt!r} v{version}", fix=rebuild)
    if sha256_file(d / weights) != meta.get("sha256"):
        raise PsInterpError(f"{d / weights} does not match the checksum in {meta_name}",
                            fix=f"the {what} files are from different runs: {rebuild}")
    return load_file(str(d / weights)), meta
