"""Execute both notebooks end to end on the tiny random model (nbclient) and check their figures.

The kernel is this interpreter (a kernelspec written into a temp JUPYTER_PATH), so the test works
on a fresh machine without `ipykernel install`.
"""
import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "ps-interp-test"
PLOTLY = "application/vnd.plotly.v1+json"
# A lighter variant of configs/tiny.toml: every stage runs, on two languages and few prompts.
SMALL_CONFIG = """name = "nbtest"
model = "tiny-llama"
langs = ["en", "zh"]
budget = 0.01
n_random = 2
steps = 2
train_batch_size = 4
eval_per_lang = 2
max_new_tokens = 4
baselines = ["random"]
"""


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for sys.executable in a temp JUPYTER_PATH, the tiny model, cwd = a temp dir."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ps_interp test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PS_INTERP_NB_MODEL", "tiny-llama")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    work = tmp_path / "work"
    work.mkdir()
    return work


def execute(name: str, cwd: Path):
    """Run a notebook; nbclient raises CellExecutionError (with the cell and traceback) on any error."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                     resources={"metadata": {"path": str(cwd)}})
    t0 = time.monotonic()
    client.execute()
    print(f"{name}: {time.monotonic() - t0:.1f} s")
    return nb


def figures(nb) -> list[dict]:
    """The plotly figures (as JSON) displayed by the notebook, in order."""
    return [out["data"][PLOTLY] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if PLOTLY in out.get("data", {})]


def errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def titles(figs: list[dict]) -> list[str]:
    return [str(f.get("layout", {}).get("title", {}).get("text", "")) for f in figs]


@pytest.mark.slow
def test_explore_notebook_runs_on_tiny(kernel_env):
    nb = execute("01_explore_safety_neurons.ipynb", kernel_env)
    assert errors(nb) == []
    figs = figures(nb)
    got = titles(figs)
    # layer distribution, Jaccard heatmap, upset, refusal box plot, causal check histogram
    assert len(figs) == 5, got
    assert all(f.get("data") for f in figs), got
    assert got[0] == "Neurons per layer"
    assert got[1].startswith("Jaccard overlap")
    assert got[4].startswith("Ablation of")
    heat = figs[1]["data"][0]
    assert heat["type"] == "heatmap" and heat["x"] == ["en/text", "zh/text", "ar/text"]
    # the ablated set is not empty: the causal check figure names its size
    assert not got[4].startswith("Ablation of 0 ")


@pytest.mark.slow
def test_paper_figures_notebook_runs_study_then_plots(kernel_env, monkeypatch):
    config = kernel_env / "small.toml"
    config.write_text(SMALL_CONFIG)
    monkeypatch.setenv("PS_INTERP_NB_CONFIG", str(config))
    nb = execute("02_paper_figures.ipynb", kernel_env)
    assert errors(nb) == []
    run = kernel_env / "runs" / "nbtest"
    assert (run / "report.html").is_file() and (run / "tables" / "jaccard.csv").is_file()
    figs = figures(nb)
    got = titles(figs)
    # layer distribution, Jaccard, upset, ablation, ASR, transfer: every figure of the report
    assert len(figs) == 6, got
    assert all(f.get("data") for f in figs), got
    assert got[0] == "Neurons per layer" and got[3].startswith("Ablation of") and "Attack success" in got[4]
    layer_traces = [t["name"].split(" ")[0] for t in figs[0]["data"]]
    assert layer_traces == ["en/text", "zh/text"]
