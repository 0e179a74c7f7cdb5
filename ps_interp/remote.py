"""Remote execution: run the same nnsight traces on NDIF (the National Deep Inference Fabric).

A :class:`RemoteModel` is a :class:`~ps_interp.models.model.Model` whose weights stay on the
server. Locally it holds the architecture on the ``meta`` device (no weights, no GPU) and the
tokenizer. :func:`ps_interp.record` runs its usual nnsight trace with the remote backend
(``model.trace_options``): the reduction to per-neuron moments happens inside the trace and only the
``[4, G, d_ff]`` sums per layer come back. Saliency needs ``||W_down[:, i]||``, which
:meth:`RemoteModel.down_norms` computes on the server (``d_ff`` numbers per layer come back), and
greedy generation / last-position logits run there too (:meth:`RemoteModel.generate_ids`,
:meth:`RemoteModel.last_logits`). Steps that need the weights here (Shield's update, the baselines,
ablation hooks, attribution) raise a :class:`~ps_interp.errors.PsInterpError` that says what to do
instead (:func:`require_local`, and a guard on the weightless skeleton's forward).

``mode="local"`` is nnsight's serverless dry run: each trace is serialized exactly as for NDIF,
deserialized with ps_interp hidden (as on the server, which has torch/transformers/nnsight but not
ps_interp) and run here on real local weights. Tests use it; nothing in it reaches a server.

Example:
    >>> import ps_interp as ps
    >>> model = ps.remote_model("meta-llama/Llama-3.1-70B-Instruct", api_key="...")   # doctest: +SKIP
    >>> stats = ps.record(model, ps.probes(langs=["en", "sw"]), batch_size=64)         # doctest: +SKIP
    >>> safety = ps.identify(stats, model=model, lang="en", budget=0.0003)            # doctest: +SKIP
"""
from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import PsInterpError
from .models.model import Model

MODES = (True, "local")
_WHAT = {"train": "training (Shield's weight update, LoRA, full fine-tuning)",
         "hooks": "PyTorch hooks (ablation, attribution, backend='hooks'/'lens')",
         "weights": "reading weights locally",
         "forward": "a direct forward of model.hf"}
_INSTEAD = {
    "train": "train a local copy on GPUs: ps.load(<dir or hub id>, device_map='auto', dtype='bfloat16'); "
             "neuron sets identified on the remote model apply to it unchanged (same identity)",
    "hooks": "record with backend='nnsight' (the default, runs remotely); for ablation or attribution "
             "load a local copy with ps.load(..., device_map='auto', dtype='bfloat16')",
    "weights": "the weights stay on the server: use model.down_norms() (computed there) or a local copy",
    "forward": "only nnsight traces run remotely (record, identify, model.generate_ids / last_logits); "
               "load a local copy for the rest: ps.load(..., device_map='auto', dtype='bfloat16')",
}
_serving: contextvars.ContextVar[bool] = contextvars.ContextVar("ps_interp_remote_serving", default=False)


def is_remote(model) -> bool:
    """Whether ``model``'s traces run on a remote server (a :class:`RemoteModel`)."""
    return bool(getattr(model, "remote", False))


def require_local(model, step: str) -> None:
    """Raise a :class:`PsInterpError` naming the alternative if ``model`` is remote; else nothing.

    ``step``: ``train``, ``hooks``, ``weights`` or ``forward``.

    Example:
        >>> from ps_interp.models import tiny
        >>> require_local(tiny.build("llama"), "train")   # a local model: nothing happens
    """
    if is_remote(model):
        raise _remote_error(model.name, step)


def _remote_error(name: str, step: str) -> PsInterpError:
    return PsInterpError(f"{_WHAT.get(step, step)} cannot run on {name}: its weights are on a remote NDIF server, "
                         "where only nnsight traces run", fix=_INSTEAD.get(step, _INSTEAD["forward"]))


def _guard(module, args, kwargs):
    """Forward pre-hook on a remote model's weightless skeleton (meta device)."""
    if not _serving.get():
        raise _remote_error(getattr(module.config, "_name_or_path", "") or type(module).__name__, "forward")


class _Simulation:
    """nnsight's ``LocalSimulationBackend``: serialize, hide local modules, deserialize, run here.

    Counts requests (:attr:`requests`) and their serialized sizes (:attr:`payloads`).
    """

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


class _NDIF:
    """nnsight's blocking ``RemoteBackend`` for one request; a server failure becomes a PsInterpError.

    ``backend.meta`` keeps what the server reported about the job (its cost among others).
    """

    def __init__(self, lm, api_key: str | None):
        from nnsight import CONFIG
        from nnsight.intervention.backends.remote import RemoteBackend

        key = api_key or CONFIG.API.APIKEY
        if not key:
            raise PsInterpError("no NDIF API key", fix="pass api_key= to ps.load(..., remote=True), set $NDIF_API_KEY, "
                                                        "or run nnsight.CONFIG.set_default_api_key(key) once "
                                                        "(keys: https://login.ndif.us)")
        self.name = lm.repo_id
        self.backend = RemoteBackend(lm.to_model_key(), api_key=key, env=lm._remoteable_get_env())

    def __call__(self, tracer):
        from nnsight.intervention.backends.remote import RemoteError

        try:
            return self.backend(tracer)
        except RemoteError as exc:
            raise PsInterpError(f"NDIF could not run the request for {self.name}: {exc}",
                                fix="check that the model is deployed (ps_interp.remote.ndif_models()), your API "
                                    "key, and the batch size (smaller if the server ran out of memory)") from None


def _column_norms(w: torch.Tensor, d_ff: int) -> torch.Tensor:
    """``||W_down[:, i]||_2`` for a down weight stored ``[d_model, d_ff]`` (Linear) or ``[d_ff, d_model]``."""
    w = w if w.shape[-1] == d_ff else w.T
    return w.float().norm(dim=0).double()


def _last_position(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].float()


class RemoteModel(Model):
    """A :class:`Model` whose nnsight traces run on NDIF (or, ``mode="local"``, in a local dry run).

    ``hf`` is the architecture on the meta device (or the local module in ``mode="local"``), so
    sizes, adapters, identities and neuron sets work as for a local model. Build one with
    :func:`remote_model` (``ps.load(name, remote=True)``) or :func:`wrap_remote`.

    Example:
        >>> from ps_interp.models import tiny
        >>> model = wrap_remote(tiny.build("llama"))          # a local dry run
        >>> model.down_norms().shape                          # computed "on the server"
        torch.Size([2, 128])
    """

    remote = True

    def __init__(self, lm, *, name: str = "", mode: bool | str = True, api_key: str | None = None):
        if mode not in MODES:
            raise PsInterpError(f"unknown remote mode {mode!r}",
                                fix="use remote=True (NDIF) or remote='local' (a dry run)")
        name = name or str(getattr(lm, "repo_id", "") or "")
        super().__init__(lm._module, lm.tokenizer, processor=getattr(lm, "processor", None), name=name,
                         source=f"ndif:{name}", validate=False)
        self._nn = lm
        self.mode = mode
        self.api_key = api_key
        self._simulation = _Simulation(lm) if mode == "local" else None
        # A skeleton without weights gets a guard, so that a stray local forward says what to do instead.
        self._guard = (self.hf.register_forward_pre_hook(_guard, with_kwargs=True)
                       if any(p.is_meta for p in self.hf.parameters()) else None)
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        self.validate()

    # ---- where things run -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Inputs are built on the CPU and shipped with the request (the server places them)."""
        return torch.device("cpu")

    @property
    def trace_options(self) -> dict[str, Any]:
        """Keyword arguments for ``model.nn.trace`` / ``generate``: the backend for one request."""
        if self._simulation is not None:
            return {"backend": self._simulation}
        return {"backend": _NDIF(self._nn, self.api_key)}

    @property
    def requests(self) -> int:
        """Requests run so far in a dry run (``mode="local"``)."""
        return self._simulation.requests if self._simulation is not None else 0

    # ---- what runs remotely -----------------------------------------------------------
    def down_norms(self, layers: Sequence[int] | None = None) -> torch.Tensor:
        """``||W_down[:, i]||_2`` as ``[len(layers), d_ff]`` float64 on the CPU, computed on the server."""
        import nnsight

        layers = list(range(self.n_layers)) if layers is None else [int(x) for x in layers]
        sites, d_ff, lm = [self.site_envoy(layer) for layer in layers], self.d_ff, self.nn
        token = torch.tensor([[self.tokenizer.eos_token_id or 0]])
        with lm.trace(input_ids=token, **self.trace_options) as tracer:
            out = nnsight.save([_column_norms(site.weight, d_ff) for site in sites])
            tracer.stop()
        return torch.stack([o.cpu() for o in out])

    def generate_ids(self, batch: dict, **generate_kwargs) -> torch.Tensor:
        """``hf.generate(**batch, **generate_kwargs)`` run on the server: prompt + new token ids."""
        import nnsight

        lm = self.nn
        batch = {k: v for k, v in batch.items() if k != "position_ids"}
        with lm.generate(**batch, **generate_kwargs, **self.trace_options) as tracer:
            ids = nnsight.save(tracer.result)
        return ids.cpu()

    def reduce_logits(self, batch: dict, fn: Callable[..., Any], *args, **forward_kwargs) -> Any:
        """``fn(logits, *args)`` computed on the server inside one forward; only its result comes back.

        ``fn`` must be a module-level function of torch code (it is shipped as source).
        """
        import nnsight

        lm = self.nn
        with lm.trace(**batch, use_cache=False, **forward_kwargs, **self.trace_options):
            out = nnsight.save(fn(lm.output.logits, *args))
        return out

    def last_logits(self, batch: dict) -> torch.Tensor:
        """Float32 logits ``[B, vocab]`` at the last position, computed on the server."""
        return self.reduce_logits(batch, _last_position, logits_to_keep=1).cpu()

    # ---- what does not ----------------------------------------------------------------
    def down_weight(self, layer: int) -> torch.Tensor:
        if any(p.is_meta for p in self.site_module(layer).parameters()):
            require_local(self, "weights")
        return super().down_weight(layer)

    def validate(self) -> None:
        """The structural check only (site width == d_ff): a forward would need the server."""
        site = self.site_module(self.n_layers - 1)
        width = site.weight.shape[1] if isinstance(site, torch.nn.Linear) else site.weight.shape[0]
        if width != self.d_ff:
            raise PsInterpError(f"adapter for {self.architecture}: site width {width} != d_ff {self.d_ff}",
                                fix="check the adapter's `down` and `d_ff_attr` fields")

    def __repr__(self) -> str:
        where = "NDIF" if self.mode is True else "local dry run"
        return (f"RemoteModel({self.name!r} on {where}, {self.architecture}, n_layers={self.n_layers}, "
                f"d_ff={self.d_ff}, d_model={self.d_model})")


def _register_code() -> None:
    """Ship ps_interp's code by value: the server has nnsight/torch/transformers, not ps_interp."""
    import nnsight

    nnsight.register("ps_interp")


def remote_model(name: str, api_key: str | None = None, *, mode: bool | str = True, revision: str | None = None,
                 **nnsight_kwargs) -> RemoteModel:
    """A :class:`RemoteModel` for the Hugging Face repo ``name`` as NDIF serves it.

    Only the config and tokenizer/processor are fetched here (the architecture is built on the meta
    device). ``api_key`` (https://login.ndif.us) is used for this model's requests; without it,
    ``$NDIF_API_KEY`` or the key saved with ``nnsight.CONFIG.set_default_api_key(key)``.
    ``mode="local"`` loads nothing remote: it is for dry runs of a local directory.

    Example:
        >>> model = remote_model("meta-llama/Llama-3.1-70B-Instruct", api_key="...")   # doctest: +SKIP
    """
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    _register_code()
    try:
        # The preprocessor is passed in: nnsight 0.8's meta build cannot infer it under transformers 5.
        multimodal = hasattr(AutoConfig.from_pretrained(name, revision=revision), "vision_config")
        if multimodal:
            processor = AutoProcessor.from_pretrained(name, revision=revision)
            pre = {"processor": processor, "tokenizer": processor.tokenizer}
        else:
            pre = {"tokenizer": AutoTokenizer.from_pretrained(name, revision=revision)}
        lm = TransformersModel(name, task="image-text-to-text" if multimodal else "text-generation",
                               revision=revision, dispatch=mode == "local", **pre, **nnsight_kwargs)
    except OSError as exc:
        raise PsInterpError(f"cannot read the config/tokenizer of {name!r} ({exc})",
                            fix="check the Hugging Face repo id and network access (gated models need "
                                "`hf auth login`); ps_interp.remote.ndif_models() lists what NDIF serves") from None
    return RemoteModel(lm, name=name, mode=mode, api_key=api_key)


def wrap_remote(model: Model, *, mode: bool | str = "local", name: str | None = None) -> RemoteModel:
    """A :class:`RemoteModel` over a local model's module (shared, not copied), for dry runs.

    With ``mode=True`` its traces go to NDIF under the module's ``name_or_path`` as the repo id.

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
    """Repo ids NDIF serves right now (asks the server: needs network).

    Example:
        >>> "meta-llama/Llama-3.1-70B-Instruct" in ndif_models()   # doctest: +SKIP
        True
    """
    from nnsight import ndif

    return sorted(ndif.status().deployments)
