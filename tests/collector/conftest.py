"""Fixtures for collector tests: an in-process collector on free loopback ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from trace_ptune.collector import Collector, CollectorConfig
from trace_ptune.collector.client import CollectorClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_collector(tmp_path: Path) -> Iterator:
    started: list[Collector] = []

    def make(**kwargs) -> Collector:
        kwargs.setdefault("db", tmp_path / "traces.duckdb")
        kwargs.setdefault("http", "127.0.0.1:0")
        kwargs.setdefault("grpc", "127.0.0.1:0")
        c = Collector(CollectorConfig(**kwargs)).start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def collector(make_collector) -> Collector:
    return make_collector(pg="127.0.0.1:0")


@pytest.fixture
def client(collector: Collector) -> CollectorClient:
    return CollectorClient(collector.urls["http"])


def pg_port(c: Collector) -> int:
    return int(c.urls["pg"].rsplit(":", 1)[1].split("/")[0])


def grpc_target(c: Collector) -> str:
    return c.urls["grpc"].removeprefix("http://")


PB = {"Content-Type": "application/x-protobuf"}


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_pb(url: str, message) -> int:
    """POST an OTLP protobuf message to ``url``; the HTTP status."""
    return post(url, message.SerializeToString(), PB)[0]


def start_subprocess(db: Path, *extra: str) -> tuple[subprocess.Popen, dict]:
    """``trace-ptune collector run`` in a child process; returns it and its side file."""
    side = db.with_name(db.name + ".collector.json")
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trace_ptune.cli.main", "collector", "run", "--db", str(db),
         "--http", "127.0.0.1:0", "--grpc", "off", "--quiet", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if side.exists():
            try:
                info = json.loads(side.read_text())
                if info.get("pid") == proc.pid:
                    return proc, info
            except ValueError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"collector exited: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("collector did not start in 30 s")
