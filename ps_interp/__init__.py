"""ps_interp: neuron-level safety analysis and alignment (Precise Shield) for LLMs and VLMs.

Example:
    >>> import ps_interp as ps
    >>> model = ps.load("smollm2-135m-instruct")            # doctest: +SKIP
    >>> stats = ps.record(model, ps.probes(langs=["en"]))   # doctest: +SKIP
"""
from .align import Shield
from .baselines import full_finetune, layer_neurons_baseline, lora_baseline, random_neurons_baseline
from .budget import neurons_for_budget, param_budget
from .data import LANGS, ProbeItem, ProbeSet, load_probes, probes
from .delta import apply_delta
from .errors import MissingDependencyError, PsInterpError
from .estimate import Estimate, estimate
from .evaluate import Evaluation, evaluate
from .identify import identify
from .intervene import ablate, causal_check, refusal_score
from .judges import ClassifierJudge, RefusalKeywords
from .models import Adapter, Model, load, register_adapter, supported_architectures, wrap
from .neurons import ModelIdentity, NeuronSet
from .overlap import overlap
from .pairs import training_pairs
from .record import record
from .remote import RemoteModel, remote_model
from .stats import ActivationStats
from .transfer import leave_one_language_out, transfer

__version__ = "0.1.0"

__all__ = ["Shield", "full_finetune", "layer_neurons_baseline", "lora_baseline", "random_neurons_baseline",
           "neurons_for_budget", "param_budget", "LANGS", "ProbeItem", "ProbeSet", "load_probes", "probes",
           "apply_delta", "MissingDependencyError", "PsInterpError", "Evaluation", "evaluate", "identify", "ablate",
           "causal_check", "refusal_score", "ClassifierJudge", "RefusalKeywords", "Adapter", "Model", "load",
           "register_adapter", "supported_architectures", "wrap", "ModelIdentity", "NeuronSet", "overlap",
           "training_pairs", "record", "ActivationStats", "leave_one_language_out", "transfer", "Estimate", "estimate",
           "RemoteModel", "remote_model"]
