"""ps_interp: neuron-level safety analysis and alignment (Precise Shield) for LLMs and VLMs.

Example:
    >>> import ps_interp as ps
    >>> model = ps.load("smollm2-135m-instruct")            # doctest: +SKIP
    >>> stats = ps.record(model, ps.probes(langs=["en"]))   # doctest: +SKIP
"""
from .data import LANGS, ProbeItem, ProbeSet, load_probes, probes
from .errors import MissingDependencyError, PsInterpError
from .models import Adapter, Model, load, register_adapter, supported_architectures, wrap
from .record import record
from .stats import ActivationStats

__version__ = "0.1.0"

__all__ = ["LANGS", "ProbeItem", "ProbeSet", "load_probes", "probes", "MissingDependencyError", "PsInterpError",
           "Adapter", "Model", "load", "register_adapter", "supported_architectures", "wrap", "record",
           "ActivationStats"]
