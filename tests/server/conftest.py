"""Fixtures of the server tests: tiny-random in float64, a store with two tenants' deployments,
and real uvicorn servers on free loopback ports (in threads, so the ``spans`` fixture sees spans)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from trace_ptune import semconv
from trace_ptune.adapters.artifact import SoftPrompt
from trace_ptune.adapters.store import AdapterStore
from trace_ptune.models import BaseModel, load_model
from trace_ptune.runtime import Engine
from trace_ptune.runtime.server import ApiKeys, create_app

KEYS = {"sk-acme": "acme", "sk-globex": "globex"}


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaseModel]:
    # One intra-op thread: on two shared cores, more threads spin against the server's own
    # threads and make every decode step an order of magnitude slower.
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACE_PTUNE_MODEL_CACHE", str(tmp_path_factory.mktemp("server-models")))
        mp.setenv("TRACE_PTUNE_HOME", str(tmp_path_factory.mktemp("server-home")))
        yield load_model("tiny-random", dtype=torch.float64)


def make_adapter(base: BaseModel, method: str, n: int, seed: int) -> SoftPrompt:
    """Random soft prompts large enough to change greedy outputs."""
    g = torch.Generator().manual_seed(seed)
    common = dict(method=method, num_virtual_tokens=n, token_dim=base.hidden_size,
                  base_model_name=base.name, base_fingerprint=base.fingerprint)  # fmt: skip
    if method == semconv.METHOD_PREFIX_TUNING:
        shape = (base.num_layers, 2, base.num_kv_heads, n, base.head_dim)
        return SoftPrompt(prefix_kv=torch.randn(shape, generator=g, dtype=torch.float64) * 2, **common)
    std = float(base.model.get_input_embeddings().weight.std())
    emb = torch.randn(n, base.hidden_size, generator=g, dtype=torch.float64) * std * 4
    return SoftPrompt(embeddings=emb, **common)


@dataclass
class Fleet:
    """The adapters every server test serves."""

    store: AdapterStore
    acme_v1: str
    acme_v2: str
    globex: str


@pytest.fixture(scope="module")
def fleet(base: BaseModel, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    store = AdapterStore(tmp_path_factory.mktemp("store"))
    v1 = store.save(make_adapter(base, semconv.METHOD_PROMPT_TUNING, 4, seed=1), "acme/support")
    v2 = store.save(make_adapter(base, semconv.METHOD_PROMPT_TUNING, 4, seed=2), "acme/support")
    gx = store.save(make_adapter(base, semconv.METHOD_PREFIX_TUNING, 3, seed=3), "globex/faq")
    store.promote("acme/support@1", "acme/support@prod", tenant="acme")
    store.promote("globex/faq@1", "globex/faq@prod")  # owner from the name prefix
    return Fleet(store=store, acme_v1=v1.hash, acme_v2=v2.hash, globex=gx.hash)


class ServerThread:
    """uvicorn serving an app on a free loopback port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True  # what uvicorn's SIGTERM handler does
        self.thread.join(30)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.sock.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


StartServer = Callable[..., ServerThread]


@pytest.fixture(scope="module")
def start_server(base: BaseModel, fleet: Fleet) -> Iterator[StartServer]:
    """Start servers with the given app options; all stop at the end of the module."""
    started: list[ServerThread] = []

    def start(*, keys: dict[str, str] | None = None, **options: Any) -> ServerThread:
        engine = Engine(base, store=fleet.store, max_batch_size=options.get("max_batch_size", 32))
        app = create_app(engine, store=fleet.store, api_keys=ApiKeys(keys) if keys else None, **options)
        server = ServerThread(app).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def server(start_server: StartServer) -> ServerThread:
    """An open server (no API keys)."""
    return start_server(batch_wait_ms=2)


@pytest.fixture(scope="module")
def keyed_server(start_server: StartServer) -> ServerThread:
    return start_server(keys=KEYS, batch_wait_ms=1)
