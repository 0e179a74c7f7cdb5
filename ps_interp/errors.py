"""Errors that name the problem and the fix.

Every error raised on bad user input is a :class:`PsInterpError` (a ``ValueError``), so a
notebook user sees one clear line instead of a stack trace from deep inside torch.

Example:
    >>> raise PsInterpError("empty group ('sw', 'text', 'harmful')", fix="add probes in 'sw'")
    Traceback (most recent call last):
    ...
    ps_interp.errors.PsInterpError: empty group ('sw', 'text', 'harmful'). Fix: add probes in 'sw'
"""
from __future__ import annotations


class PsInterpError(ValueError):
    """Bad input: the message says what is wrong and, with ``fix=``, what to do."""

    def __init__(self, problem: str, *, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. Fix: {fix}" if fix else problem)


class MissingDependencyError(ImportError):
    """An optional package is missing; the message names the pip command that installs it."""

    def __init__(self, package: str, purpose: str, extra: str | None = None):
        how = f"pip install 'ps-interp[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the '{package}' package, which is not installed. Fix: {how}")
        self.package = package


def require(module: str, purpose: str, *, package: str | None = None, extra: str | None = None):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the install command.

    Example:
        >>> gguf = require("gguf", "loading a .gguf file", extra="gguf")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise MissingDependencyError(package or module, purpose, extra) from exc
