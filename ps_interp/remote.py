"""Remote execution: run the same nnsight traces on NDIF (the National Deep Inference Fabric).

A :class:`RemoteModel` is a :class:`~ps_interp.models.model.Model` whose weights stay on the
server. Locally it holds the architecture on the ``meta`` device (no weights, no GPU) and the
tokenizer; :func:`ps_interp.record` runs its usual nnsight trace with ``remote=True``, the
reduction to per-neuron moments happens inside the trace, and only the ``[4, G, d_ff]`` sums per
layer come back. Steps that need the weights here (Shield's update, the baselines, generation,
ablation hooks) raise a :class:`~ps_interp.errors.PsInterpError` that says what to do instead.

``mode="local"`` is nnsight's serverless dry run: each trace is serialized exactly as for NDIF,
deserialized with ps_interp hidden (as on the server) and run here on real local weights. Tests
use it; nothing in it reaches a server.

Example:
    >>> import ps_interp as ps
    >>> model = ps.remote_model("meta-llama/Llama-3.1-70B-Instruct", api_key="...")   # doctest: +SKIP
    >>> stats = ps.record(model, ps.probes(langs=["en", "sw"]), batch_size=64)         # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import torch

from .errors import PsInterpError
from .models.model import Model

MODES = (True, "local")
#: what each step needs and what to do instead (used by :func:`require_local`)
_INSTEAD = {
    "shield": "train on a local GPU copy: ps.load(<local dir>, device_map='auto', dtype='bfloat16'), "
              "identify the neurons from the remote stats (they index the same weights), then Shield(...)",
    "train": "train on a local GPU copy: ps.load(<local dir>, device_map='auto', dtype='bfloat16')",
    "generate": "evaluate on a local copy (ps.load(..., device_map='auto')), or use "
                "ps_interp.remote.generate_remote(model, prompts) for greedy completions on NDIF",
    "hooks": "use backend='nnsight' (the default) for record; ablation/attribution need a local copy "
             "(ps.load(..., device_map='auto'))",
    "forward": "only nnsight traces run remotely (ps.record); load a local copy for anything that calls "
               "model.hf directly (ps.load(..., device_map='auto', dtype='bfloat16'))",
}
_serving: contextvars.ContextVar[bool] = contextvars.ContextVar("ps_interp_remote_serving", default=False)


def is_remote(model) -> bool:
    """Whether ``model``'s traces run on a remote server (a :class:`RemoteModel`)."""
    return bool(getattr(model, "remote", False))


def require_local(model, step: str) -> None:
    """Raise a clear error if ``model`` is remote and ``step`` needs its weights here.

    ``step`` is one of ``shield``, ``train``, ``generate``, ``hooks``, ``forward``.

    Example:
        >>> from ps_interp.models import tiny
        >>> require_local(tiny.build("llama"), "shield")   # a local model: nothing happens
    """
    if is_remote(model):
        what = {"shield": "Shield's weight update", "train": "fine-tuning", "generate": "generation",
                "hooks": "PyTorch hooks", "forward": "a direct forward of model.hf"}.get(step, step)
        raise PsInterpError(f"{what} cannot run on {model.name}: its weights are on a remote NDIF server "
                            "and only nnsight traces run there", fix=_INSTEAD.get(step, _INSTEAD["forward"]))


def _guard(module, args, kwargs):
    """Forward pre-hook on a remote model's local skeleton: it has no weights, so no local forward."""
    if not _serving.get():
        raise PsInterpError("a direct forward of a remote model's local skeleton (meta device, no weights)",
                            fix=_INSTEAD["forward"])


class _Simulation:
    """nnsight's ``LocalSimulationBackend`` (serialize, hide ps_interp, deserialize, run here),
    with the local-forward guard lifted while the deserialized trace runs."""

    def __init__(self, lm):
        from nnsight.intervention.backends.local import LocalSimulationBackend

        self._backend = LocalSimulationBackend(lm)
        self.requests = 0

    def __call__(self, tracer):
        token = _serving.set(True)
        try:
            self.requests += 1
            return self._backend(tracer)
        finally:
            _serving.reset(token)


class RemoteModel(Model):
    """A :class:`Model` whose nnsight traces run on NDIF (or, ``mode="local"``, in a local dry run).

    ``hf`` is the architecture on the meta device (or the local module in ``mode="local"``), so
    sizes, adapters, identities and neuron sets work as for a local model. Build one with
    :func:`remote_model`.

    Example:
        >>> model = remote_model("meta-llama/Llama-3.1-8B-Instruct")   # doctest: +SKIP
        >>> model.trace_options["backend"]                              # doctest: +SKIP
        <nnsight.intervention.backends.remote.RemoteBackend object at ...>
    """

    remote = True

    def __init__(self, lm, *, name: str = "", mode: bool | str = True, api_key: str | None = None):
        if mode not in MODES:
            raise PsInterpError(f"unknown remote mode {mode!r}", fix="use mode=True (NDIF) or mode='local' (dry run)")
        super().__init__(lm._module, lm.tokenizer, processor=getattr(lm, "processor", None),
                         name=name or str(getattr(lm, "repo_id", "") or ""), source=f"ndif:{name}", validate=False)
        self._nn = lm
        self.mode = mode
        self.api_key = api_key
        self._simulation = _Simulation(lm) if mode == "local" else None
        self._guard = self.hf.register_forward_pre_hook(_guard, with_kwargs=True)
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"

    @property
    def device(self) -> torch.device:
        """Inputs are built on the CPU and shipped with the request (the server places them)."""
        return torch.device("cpu")

    @property
    def trace_options(self) -> dict[str, Any]:
        """Keyword arguments for ``model.nn.trace``: a fresh backend for each trace."""
        if self._simulation is not None:
            return {"backend": self._simulation}
        from nnsight.intervention.backends.remote import RemoteBackend

        lm = self._nn
        return {"backend": RemoteBackend(lm.to_model_key(), api_key=self.api_key, env=lm._remoteable_get_env())}

    def validate(self) -> None:
        """Only the structural check: a forward would need the server."""
        layer = self.n_layers - 1
        site = self.site_module(layer)
        if site.weight.shape[1] != self.d_ff:
            raise PsInterpError(f"adapter for {self.architecture}: site width {site.weight.shape[1]} != d_ff "
                                f"{self.d_ff}", fix="check the adapter's `down` and `d_ff_attr` fields")

    def __repr__(self) -> str:
        where = "NDIF" if self.mode is True else "local dry run"
        return f"RemoteModel({self.name!r} on {where}, n_layers={self.n_layers}, d_ff={self.d_ff})"


def _register_code() -> None:
    """Ship ps_interp's code by value: the server has nnsight/torch/transformers but not ps_interp."""
    import nnsight

    nnsight.register("ps_interp")


def remote_model(name: str, api_key: str | None = None, *, revision: str | None = None,
                 mode: bool | str = True, **nnsight_kwargs) -> RemoteModel:
    """A :class:`RemoteModel` for the Hugging Face repo ``name`` as deployed on NDIF.

    Only the config and tokenizer are fetched (the architecture is built on the meta device);
    ``api_key`` (from https://login.ndif.us) is used for this model's requests only. Set it once
    for every session with ``nnsight.CONFIG.set_default_api_key(key)`` or ``$NDIF_API_KEY``.

    Example:
        >>> model = remote_model("meta-llama/Llama-3.1-70B-Instruct", api_key="...")   # doctest: +SKIP
    """
    from nnsight.modeling.transformers import TransformersModel

    _register_code()
    try:
        lm = TransformersModel(name, task="text-generation", revision=revision, **nnsight_kwargs)
    except OSError as exc:
        raise PsInterpError(f"cannot fetch the config/tokenizer of {name!r} from the Hugging Face hub ({exc})",
                            fix="check the repo id, network access and (for gated models) `huggingface-cli login`; "
                                "see ps_interp.ndif_models() for what NDIF serves") from None
    return RemoteModel(lm, name=name, mode=mode, api_key=api_key)


def wrap_remote(model: Model, *, mode: bool | str = "local", name: str | None = None) -> RemoteModel:
    """A :class:`RemoteModel` over a local model's module, for dry runs (``mode="local"``).

    With ``mode=True`` traces are shipped to NDIF under the model's hub id (``hf.name_or_path``).

    Example:
        >>> from ps_interp.models import tiny
        >>> wrap_remote(tiny.build("llama")).mode
        'local'
    """
    from nnsight.modeling.transformers import TransformersModel

    _register_code()
    lm = TransformersModel(model.hf, tokenizer=model.tokenizer, task="text-generation")
    return RemoteModel(lm, name=name or model.name, mode=mode)


def ndif_models() -> list[str]:
    """Repo ids NDIF serves right now (asks the server: needs network)."""
    from nnsight import ndif

    return sorted(ndif.status().deployments)
