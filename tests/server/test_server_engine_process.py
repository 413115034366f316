"""The engine in its own process (``trace-ptune serve``'s default): the same outputs as the
engine in process, spans exported from the engine process as children of the caller's trace,
and clear failures when the engine process cannot start or dies."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time

import pytest

from tests.server.conftest import Fleet, ServerThread
from trace_ptune.errors import ConfigError
from trace_ptune.runtime import Engine, GenerationRequest
from trace_ptune.runtime.server import create_app
from trace_ptune.runtime.server.engine_process import EngineSpec, RemoteScheduler


def _remote(fleet: Fleet, **scheduler) -> RemoteScheduler:
    spec = EngineSpec(
        model="tiny-random",
        dtype="float64",
        store=str(fleet.store.root),
        torch_threads=1,
        scheduler={"batch_wait_ms": 20, **scheduler},
    )
    remote = RemoteScheduler(spec, start_timeout=120)
    remote.start()
    return remote


def _serve(fleet: Fleet, remote: RemoteScheduler) -> ServerThread:
    app = create_app(remote.engine_view(), store=fleet.store, scheduler=remote, batch_wait_ms=20)
    return ServerThread(app).__enter__()


PROMPTS = ["hello there", "the cat sat on", "a b c d e f g", "once upon a time in a land"]
MODELS = ["acme/support@prod", "globex/faq@prod", "tiny-random"]


def test_engine_process_serves_what_the_engine_in_process_serves(base, fleet):
    remote = _remote(fleet)
    server = _serve(fleet, remote)
    try:
        jobs = [(m, p) for m in MODELS for p in PROMPTS]
        with server.client() as client, cf.ThreadPoolExecutor(len(jobs)) as pool:
            bodies = [{"model": m, "prompt": p, "max_tokens": 8, "temperature": 0} for m, p in jobs]
            responses = list(pool.map(lambda b: client.post("/v1/completions", json=b), bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        health = server.client().get("/health").json()
        assert health["status"] == "ok" and health["rows"] == len(jobs)
        assert health["max_rows_in_a_step"] > 1  # concurrent requests shared forward passes
        ready = server.client().get("/ready").json()
        assert ready["model"] == base.name and ready["fingerprint"] == base.fingerprint
    finally:
        server.__exit__(None, None, None)
    assert not remote.running  # the app's shutdown drained and stopped the engine process

    engine = Engine(base, store=fleet.store)
    hashes = {"acme/support@prod": fleet.acme_v1, "globex/faq@prod": fleet.globex, "tiny-random": None}
    expected = engine.generate([GenerationRequest(p, adapter=hashes[m], max_new_tokens=8) for m, p in jobs])
    got = [r.json()["choices"][0]["text"] for r in responses]
    assert got == [e.text for e in expected]
    assert len(set(got[: len(PROMPTS)]) | set(got[-len(PROMPTS) :])) > len(PROMPTS)  # adapters matter


def test_engine_process_spans_are_children_of_the_callers_trace(fleet, tmp_path, monkeypatch):
    from trace_ptune.collector import Collector, CollectorConfig
    from trace_ptune.collector.client import CollectorClient

    collector = Collector(
        CollectorConfig(db=tmp_path / "traces.duckdb", http="127.0.0.1:0", grpc=None)
    ).start()
    try:
        # the engine process inherits the environment it is spawned with
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.urls["http"])
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        remote = _remote(fleet)
        server = _serve(fleet, remote)
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "X-Tenant": "acme"}
        try:
            body = {"model": "acme/support@prod", "prompt": "hello", "max_tokens": 4}
            response = server.client().post("/v1/completions", json=body, headers=headers)
            assert response.status_code == 200, response.text
        finally:
            server.__exit__(None, None, None)  # drains the engine process, which flushes its spans
        client = CollectorClient(collector.urls["http"])
        deadline = time.monotonic() + 20
        rows: list = []
        while time.monotonic() < deadline and not rows:
            _, rows = client.query(
                "SELECT TraceId, ParentSpanId, tenant, deployment, adapter_hash, ServiceName FROM spans "
                "WHERE operation = 'text_completion'"
            )
            time.sleep(0.2)
        assert [tuple(r) for r in rows] == [
            (trace_id, "00f067aa0ba902b7", "acme", "acme/support@prod", fleet.acme_v1, "trace-ptune-serve")
        ]
    finally:
        collector.stop()


def test_an_engine_that_cannot_load_is_a_clear_error(fleet):
    spec = EngineSpec(model="no-such-model", store=str(fleet.store.root))
    with pytest.raises(ConfigError, match="no-such-model"):
        RemoteScheduler(spec, start_timeout=120).start()


def test_a_dead_engine_process_fails_requests_and_health_not_the_server(fleet):
    remote = _remote(fleet)
    server = _serve(fleet, remote)
    try:
        with server.client() as client:
            body = {"model": "tiny-random", "prompt": "hello", "max_tokens": 4}
            assert client.post("/v1/completions", json=body).status_code == 200
            os.kill(remote._proc.pid, signal.SIGKILL)
            remote._proc.join(10)
            response = client.post("/v1/completions", json=body)
            assert response.status_code == 503
            assert "engine process stopped" in response.json()["error"]["message"]
            assert client.get("/health").status_code == 503
            assert client.get("/ready").status_code == 503
    finally:
        server.__exit__(None, None, None)
