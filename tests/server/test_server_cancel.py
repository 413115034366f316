"""A client that goes away stops its rows: streaming or not, in process or in the engine process."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.server.test_server_engine_process import _remote, _serve
from trace_ptune import semconv

LONG = {"model": "tiny-random", "prompt": "once upon a time", "max_tokens": 480, "temperature": 0}


def _wait_idle(client: httpx.Client, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = client.get("/health").json()
        if health["inflight"] == 0:
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.02)


def _cancelled_rows(spans) -> list:
    return [
        s
        for s in spans.get_finished_spans()
        if s.name.startswith("text_completion")
        and s.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("cancelled",)
    ]


def _disconnect_mid_stream(url: str) -> None:
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # one chunk, then hang up


def _disconnect_while_waiting(url: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=0.1))


@pytest.mark.parametrize("disconnect", [_disconnect_mid_stream, _disconnect_while_waiting])
def test_a_client_that_disconnects_stops_its_rows(start_server, spans, disconnect):
    server = start_server(batch_wait_ms=1)
    spans.clear()
    disconnect(server.url)
    with server.client() as client:
        _wait_idle(client)
        (span,) = _cancelled_rows(spans)
        assert 0 < span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] < LONG["max_tokens"]
        # and the server goes on serving
        ok = client.post("/v1/completions", json={**LONG, "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_the_engine_process_stops_rows_of_clients_that_left(fleet):
    remote = _remote(fleet)
    server = _serve(fleet, remote)
    try:
        _disconnect_mid_stream(server.url)
        _disconnect_while_waiting(server.url)
        with server.client() as client:
            health = _wait_idle(client)
        # two rows of up to 480 tokens each would take 960 decode steps run to their end
        assert health["rows"] == 2 and health["steps"] < 480
    finally:
        server.__exit__(None, None, None)
