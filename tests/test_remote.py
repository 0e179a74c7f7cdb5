"""ps_interp.remote: the same traces run through nnsight's remote path, tested offline.

Nothing here reaches NDIF. Two stand-ins are used and named as such:
- nnsight's own dry run (``remote="local"``): each trace is serialized as for NDIF, deserialized with
  ps_interp hidden and run on local weights;
- ``InProcessServer``: replaces the network step of nnsight's ``RemoteBackend``; the client is a
  weightless meta skeleton, the "server" a separately loaded copy of the weights in this process.
A tripwire makes any socket connection fail the test.
"""
import io
import socket

import pytest
import torch

from ps_interp.align import Shield
from ps_interp.errors import PsInterpError
from ps_interp.intervene import ablate, refusal_score
from ps_interp.models import tiny
from ps_interp.neurons import NeuronSet
from ps_interp.pairs import training_pairs
from ps_interp.record import record
from ps_interp.remote import RemoteModel, is_remote, remote_model, require_local, wrap_remote

from .conftest import make_probes

REPO = "org/tiny-llama"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def local(one_thread):
    return tiny.build("llama")


@pytest.fixture(scope="module")
def saved(local, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    local.hf.save_pretrained(path)
    local.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def client(saved, monkeypatch):
    """A remote model built from config + tokenizer only (meta weights), named like a hub repo."""
    import nnsight.modeling.huggingface as hf_module

    monkeypatch.setitem(hf_module._ID_CACHE, saved, REPO)  # the hub lookup of the canonical id
    return remote_model(saved, api_key="test-key")


class InProcessServer:
    """Stands in for NDIF's network step: runs each serialized request against local weights.

    It does what a server does with a request (deserialize with ps_interp absent, run the block on
    its own model, send back the saved values as compressed ``torch.save`` bytes) and records what
    it received. It is not NDIF and nothing here talks to NDIF.
    """

    def __init__(self, path):
        from nnsight.modeling.transformers import TransformersModel

        self.model = TransformersModel(path, task="text-generation", dispatch=True)
        self.received = []

    def request(self, backend, request, tracer):
        import linecache

        import zstandard
        from nnsight.intervention.backends.local import LocalSimulationBackend
        from nnsight.schema.request import RequestModel
        from nnsight.tracing import tracer as tracing

        blob = backend._serialize(tracer)
        self.received.append(dict(model_key=request.model_key, bytes=len(blob), api_key=backend.api_key,
                                  compress=request.compress, env=request.env))
        cache = dict(linecache.cache)
        hider = LocalSimulationBackend(None)
        hidden = hider._hide_local_modules()  # the server has no ps_interp and no tests package
        try:
            restored = RequestModel.deserialize(blob, self.model._remoteable_persistent_objects(),
                                                compress=request.compress)
        finally:
            hider._restore(hidden)
            linecache.cache.clear()
            linecache.cache.update(cache)
        frame = restored.info.frame
        tracing.inc()
        try:
            restored.execute(restored.info.code)
            result = {k: v for k, v in frame.f_locals.items() if id(v) in tracing._saves()}
        finally:
            tracing.dec()
        self.received[-1]["result_shapes"] = [tuple(t.shape) for v in result.values() if isinstance(v, list)
                                               for t in v if torch.is_tensor(t)]
        buffer = io.BytesIO()
        torch.save(result, buffer)
        data = buffer.getvalue()
        return backend.finalize(zstandard.ZstdCompressor().compress(data) if request.compress else data)


@pytest.fixture
def server(saved, monkeypatch):
    from nnsight.intervention.backends.remote import RemoteBackend

    srv = InProcessServer(saved)
    monkeypatch.setattr(RemoteBackend, "request", lambda self, request, tracer: srv.request(self, request, tracer))
    return srv


# ---- the dry run --------------------------------------------------------------------------------
def test_dry_run_records_the_same_stats_through_serialized_requests(local):
    probes = make_probes(n=12)
    ref = record(local, probes, batch_size=6, progress=False)
    model = wrap_remote(local)
    got = record(model, probes, batch_size=6, progress=False)
    assert model.requests == 2  # one serialized request per batch, run with ps_interp hidden
    assert got.max_rel_diff(ref) < 1e-12
    assert is_remote(model) and not is_remote(local)
    assert local.hf(input_ids=torch.tensor([[1, 2]])).logits.shape[-1] > 0  # the shared module still runs


def test_dry_run_of_what_else_runs_remotely(local):
    from ps_interp.data.prompting import encode_texts

    model = wrap_remote(local)
    norms = model.down_norms()
    want = torch.stack([local.down_weight(layer).float().norm(dim=0).double() for layer in range(2)])
    torch.testing.assert_close(norms, want)
    batch = encode_texts(local, ["Hi", "How do I build a birdhouse?"])
    torch.testing.assert_close(model.last_logits(batch), local.hf(**batch).logits[:, -1].float())
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=local.tokenizer.pad_token_id)
    plain = {k: v for k, v in batch.items() if k != "position_ids"}
    assert torch.equal(model.generate_ids(batch, **kw), local.hf.generate(**plain, **kw))
    assert model.requests == 3


def test_identify_score_and_evaluate_in_a_dry_run(local):
    from ps_interp.evaluate import evaluate
    from ps_interp.identify import identify

    probes = make_probes(n=8)
    model = wrap_remote(local)
    stats = record(local, probes, batch_size=8, progress=False)
    assert identify(stats, model=model, lang="en", rho=0.05) == identify(stats, model=local, lang="en", rho=0.05)
    torch.testing.assert_close(torch.tensor(refusal_score(model, probes)["score"].to_numpy()),
                               torch.tensor(refusal_score(local, probes)["score"].to_numpy()))
    kw = dict(max_new_tokens=3, n_boot=10, progress=False)
    here, there = evaluate(local, probes, **kw), evaluate(model, probes, **kw)
    assert there.completions["completion"].tolist() == here.completions["completion"].tolist()
    assert there.retention["benign_perplexity"] == pytest.approx(here.retention["benign_perplexity"], rel=1e-5)
    assert model.requests > 3  # all of it went through serialized requests


# ---- a weightless client and a stand-in server ---------------------------------------------------
def test_weightless_client_records_through_the_remote_backend(local, client, server):
    assert all(p.is_meta for p in client.hf.parameters())
    probes = make_probes(n=12)
    ref = record(local, probes, batch_size=6, progress=False)
    got = record(client, probes, batch_size=6, progress=False)
    assert got.max_rel_diff(ref) < 1e-12
    assert len(server.received) == 2
    assert len(got.groups) == 4  # 2 languages x 2 labels; batches are group-major for a remote model,
    for req in server.received:  # so each request returns [4, groups in the batch, d_ff] per layer
        assert req["result_shapes"] == [(4, 2, 128)] * 2
    weights_bytes = sum(p.numel() * p.element_size() for p in local.hf.parameters())
    for req in server.received:
        assert REPO in req["model_key"] and "TransformersModel" in req["model_key"]
        assert req["api_key"] == "test-key"
        assert req["bytes"] < min(100_000, weights_bytes / 10)  # the trace and the batch, never the weights


def test_weightless_client_gets_norms_logits_and_generations(local, client, server):
    from ps_interp.data.prompting import encode_texts

    want = torch.stack([local.down_weight(layer).float().norm(dim=0).double() for layer in range(2)])
    torch.testing.assert_close(client.down_norms(), want)
    batch = encode_texts(local, ["Hi there"])
    torch.testing.assert_close(client.last_logits(batch), local.hf(**batch).logits[:, -1].float())
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=local.tokenizer.pad_token_id)
    plain = {k: v for k, v in batch.items() if k != "position_ids"}
    assert torch.equal(client.generate_ids(batch, **kw), local.hf.generate(**plain, **kw))
    assert len(server.received) == 3


def test_server_failure_is_a_clear_error(client, monkeypatch):
    from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

    def fail(self, request, tracer):
        raise RemoteError("model not deployed")

    monkeypatch.setattr(RemoteBackend, "request", fail)
    with pytest.raises(PsInterpError, match="NDIF could not run.*model not deployed.*ndif_models"):
        client.down_norms()


def test_missing_api_key_is_an_error_before_anything_is_sent(saved, monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    model = remote_model(saved)
    with pytest.raises(PsInterpError, match="API key.*NDIF_API_KEY"):
        model.trace_options


def test_load_with_remote(saved, local):
    import ps_interp as ps

    model = ps.load(saved, remote="local")  # the dry run of ps.load(repo_id, remote=True)
    assert isinstance(model, RemoteModel) and model.mode == "local"
    probes = make_probes(n=6)
    assert record(model, probes, progress=False).max_rel_diff(record(local, probes, progress=False)) < 1e-12
    assert model.requests == 1
    with pytest.raises(PsInterpError, match="server's copy"):
        ps.load(saved, remote=True, dtype="bfloat16")


# ---- what cannot run remotely -----------------------------------------------------------------------
def test_steps_that_need_local_weights_say_what_to_do(client):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(PsInterpError, match="direct forward.*local copy"):
        client.hf(input_ids=ids)
    with pytest.raises(PsInterpError, match="weights.*down_norms"):
        client.down_weight(0)
    neurons = NeuronSet({0: [1, 2]}, client.identity)
    with pytest.raises(PsInterpError, match="cannot run on .*local copy"):
        Shield(client, neurons, retention=0).fit(training_pairs(make_probes(n=8), langs=None, split=None), steps=1,
                                                   batch_size=2, progress=False)
    with pytest.raises(PsInterpError, match="cannot run on"):
        record(client, make_probes(n=4), backend="hooks", progress=False)
    with pytest.raises(PsInterpError, match="cannot run on"), ablate(client, neurons):
        refusal_score(client, make_probes(n=4))


def test_require_local_and_modes(local):
    require_local(local, "train")  # a local model: no error
    with pytest.raises(PsInterpError, match="training .*Shield.*ps.load"):
        require_local(wrap_remote(local), "train")
    with pytest.raises(PsInterpError, match="unknown remote mode"):
        wrap_remote(local, mode="cloud")
    model = wrap_remote(local)
    assert isinstance(model, RemoteModel) and model.device == torch.device("cpu")
    assert model.identity == local.identity  # neuron sets carry over between remote and local copies
    assert "local dry run" in repr(model)
