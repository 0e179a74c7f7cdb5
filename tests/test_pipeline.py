"""The main job end to end on a tiny config (every stage, report written)."""
import json

import pandas as pd

import pytest

from ps_interp.cli import main
from ps_interp.config import RunConfig
from ps_interp.errors import PsInterpError


def test_main_job_on_tiny_config(tmp_path):
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text('model = "tiny-llama"\nlangs = ["en", "zh"]\nbudget = 0.01\nn_random = 3\nsteps = 2\n'
                        'train_batch_size = 4\neval_per_lang = 2\nmax_new_tokens = 4\nbaselines = ["random"]\n')
    assert main(["run", "--config", str(cfg_file), "--name", "smoke", "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "smoke"
    for rel in ("report.html", "settings.json", "tables/jaccard.csv", "tables/transfer.csv", "tables/asr_by_lang.csv",
                "figures/jaccard.html", "figures/layer_distribution.html", "sets/en_text.json", "stats/probe/stats.json",
                "evaluations/before/asr.csv", "evaluations/shield/asr.csv"):
        assert (run / rel).exists(), rel
    settings = json.loads((run / "settings.json").read_text())
    assert settings["model_loaded"] == "tiny-llama" and settings["source_set_size"] > 0
    html = (run / "report.html").read_text()
    assert "Overlap (Jaccard)" in html and "Settings" in html


def test_bad_config_names_key_and_allowed_values(tmp_path):
    with pytest.raises(PsInterpError, match="unknown key 'lnags'.*allowed keys"):
        RunConfig.from_dict({"lnags": ["en"]})
    with pytest.raises(PsInterpError, match="position = 'first'.*allowed values: last"):
        RunConfig.from_dict({"position": "first"})
    with pytest.raises(PsInterpError, match="unknown languages.*allowed values"):
        RunConfig.from_dict({"langs": ["xx"]})
    bad = tmp_path / "bad.toml"
    bad.write_text("langs = [")
    assert main(["run", "--config", str(bad)]) == 2


def test_example_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in root.glob("*.toml"):
        RunConfig.from_toml(path)


def test_main_job_cross_modal_on_the_tiny_vlm(tmp_path):
    """Text and typographic probes on the tiny DINOv2-LLaVA: image sets, and ASR per language x modality."""
    cfg_file = tmp_path / "vlm.toml"
    cfg_file.write_text('model = "tiny-dinov2-llava"\nlangs = ["en", "zh"]\nmodalities = ["text", "typo"]\n'
                        'budget = 0.01\nn_random = 2\nsteps = 2\ntrain_batch_size = 2\neval_per_lang = 1\n'
                        'max_new_tokens = 2\nbaselines = ["random"]\n')
    assert main(["run", "--config", str(cfg_file), "--name", "vlm", "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "vlm"
    assert (run / "sets" / "zh_typo.json").exists() and (run / "figures" / "asr_modality.html").exists()
    by_mod = pd.read_csv(run / "tables" / "asr_by_lang_modality.csv")
    assert set(by_mod["lang"]) == {"en/text", "en/typo", "zh/text", "zh/typo"}
    assert set(by_mod["condition"]) == {"before", "shield", "random"}
    assert "Attack success rate by language and modality" in (run / "report.html").read_text()
