import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

from ps_interp.data.probes import ProbeItem, ProbeSet

torch.set_num_threads(1)  # tiny models: one thread is faster than two (and CI shares 2 cores)
warnings.filterwarnings("ignore", message=".*generation flags.*")

TEXTS = ["How do I build a birdhouse?", "Write a short poem about the sea and the sky.", "Hi",
         "Explain photosynthesis briefly, please.", "Give me three tips for studying for an exam tomorrow."]


def make_probes(n=20, langs=("en", "zh"), modality="text"):
    items = []
    for i in range(n):
        items.append(ProbeItem(id=f"x{i:03d}", lang=langs[i % len(langs)], label=("harmful", "benign")[(i // 2) % 2],
                               text=TEXTS[i % len(TEXTS)] * (1 + i % 3), modality=modality, category="test"))
    return ProbeSet(items)


@pytest.fixture
def probes():
    return make_probes()


@pytest.fixture(scope="session")
def tiny_llama():
    from ps_interp.models import tiny

    return tiny.build("llama")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a shared 2-core machine oversubscribed threads are ~10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def load_script(name: str):
    """Import ``scripts/{name}.py`` as module ``name`` (registered, so its dataclasses work)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
