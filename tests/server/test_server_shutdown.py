"""`trace-ptune serve` as users run it: a subprocess, an API key file, and SIGTERM mid-request."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("where", ["--engine-process", "--in-process"])
def test_sigterm_finishes_in_flight_requests_then_exits(tmp_path, tmp_home, where):
    keys = tmp_path / "keys.json"
    keys.write_text('{"sk-acme": "acme"}')
    port = _free_port()
    command = [sys.executable, "-m", "trace_ptune.cli.main", "serve", "--model", "tiny-random", where,
               "--port", str(port), "--api-keys", str(keys), "--torch-threads", "1", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(
        command, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)

        auth = {"Authorization": "Bearer sk-acme"}
        body = {"model": "tiny-random", "prompt": "once upon a time", "max_tokens": 120, "temperature": 0}
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 401
        outcome: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: outcome.setdefault(
                "r", httpx.post(f"{url}/v1/completions", json=body, headers=auth, timeout=120)
            )
        )
        thread.start()
        while httpx.get(f"{url}/health").json()["inflight"] == 0:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # a supervisor signalling again must not cut the drain short
        thread.join(120)
        response = outcome["r"]
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] in ("length", "stop")
        assert response.json()["usage"]["completion_tokens"] > 0
        assert proc.wait(60) == 0
        _, stderr = proc.communicate()
        assert "serving tiny-random" in stderr
        assert ("engine process" if where == "--engine-process" else "in process") in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
