"""Execute the notebooks in place on the real default model, so they are committed with its outputs.

Notebook 01 runs on ``PS_INTERP_NB_MODEL`` (default: the embedded ``smollm2-135m-safety-en``);
notebook 02 reads an existing main-job folder (``--run``, default ``runs/default`` from ``make demo``)
instead of running the study again. Each notebook is written only after it ran without error
(atomically: a failed run leaves the committed file as it was). CI executes the same notebooks on a
tiny model (``tests/test_notebooks.py``).

Usage:
    make demo && .venv/bin/python scripts/execute_notebooks.py            # ~5 min on 2 CPU cores
    .venv/bin/python scripts/execute_notebooks.py --only 01
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

from ps_interp._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"01": "01_explore_safety_neurons.ipynb", "02": "02_paper_figures.ipynb"}


def kernel_path() -> str:
    """A kernelspec for this interpreter in a temp JUPYTER_PATH (no `ipykernel install` needed)."""
    root = Path(tempfile.mkdtemp(prefix="ps_interp_kernel_"))
    spec = root / "kernels" / "ps-interp"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ps_interp", "language": "python"}))
    return str(root)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/default", help="main-job folder that notebook 02 reads")
    p.add_argument("--only", choices=sorted(NOTEBOOKS), default=None)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = p.parse_args(argv)
    run = (ROOT / args.run).resolve()
    if (args.only in (None, "02")) and not (run / "settings.json").exists():
        sys.exit(f"error: {run} has no settings.json; run `make demo` first (or pass --run)")
    os.environ["JUPYTER_PATH"] = kernel_path()
    os.environ["PS_INTERP_NB_RUN"] = os.path.relpath(run, ROOT / "notebooks")  # no absolute paths in outputs
    for key, name in NOTEBOOKS.items():
        if args.only not in (None, key):
            continue
        path = ROOT / "notebooks" / name
        nb = nbformat.read(path, as_version=4)
        t0 = time.monotonic()
        nbclient.NotebookClient(nb, kernel_name="ps-interp", timeout=args.timeout,
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        atomic_write_text(path, nbformat.writes(nb) + "\n")
        print(f"{name}: executed in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
