"""Benchmark ``trace-ptune serve``: concurrent clients over loopback vs the engine offline.

Usage::

    python bench/bench_server.py                                   # tiny-random, 1/8/32 clients
    python bench/bench_server.py --model smollm2-135m --requests 64
    python bench/bench_server.py --json results.json

What it does, side by side in one script:

1. A temporary adapter store with four soft prompts (20 virtual tokens; prompt tuning and prefix
   tuning) promoted to four deployments of three tenants; requests cycle through the four
   deployments and the base model, with mixed prompt lengths and ``max_tokens`` (greedy).
2. Offline anchor: the engine's own ``generate()`` on the same requests in batches of 32, in this
   process (no HTTP), giving tokens/s.
3. The server (``trace-ptune serve`` in a subprocess) under closed-loop load from 1, 8 and 32
   concurrent clients (asyncio; a minimal keep-alive HTTP client by default, ``--client httpx``
   for httpx), once per scheduling mode (``iteration`` with gated joins, ``iteration-eager``
   joining at every step, and ``request``):
   throughput (requests/s, generated tokens/s), p50 / p99 latency, and the ratio of tokens/s to
   the offline anchor (goal at 32 clients: >= 0.8x).
4. One-request-at-a-time serving: the same server with ``--max-batch-size 1`` at 32 clients.

Every server and the anchor use ``--torch-threads`` intra-op threads (default 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "How do I reset my password?",
    "Summarise the refund policy for annual plans in two sentences.",
    "hi",
    "Write a short haiku about databases and the sea at night.",
    "What is the status of order 12345? It was due last Tuesday and has not arrived yet.",
    "Translate to French: good morning",
]
DEPLOYMENTS = [
    ("acme/support", "acme/support@prod", "prompt_tuning"),
    ("acme/sales", "acme/sales@prod", "prefix_tuning"),
    ("globex/faq", "globex/faq@prod", "prompt_tuning"),
    ("initech/bot", "initech/bot@prod", "prefix_tuning"),
]


def make_store(base: Any, root: Path, n_virtual: int = 20) -> Any:
    """Four random soft prompts of the base's shape, promoted to their deployments."""
    import torch

    from trace_ptune.adapters.artifact import SoftPrompt
    from trace_ptune.adapters.store import AdapterStore

    store = AdapterStore(root)
    std = float(base.model.get_input_embeddings().weight.float().std())
    for i, (name, deployment, method) in enumerate(DEPLOYMENTS):
        g = torch.Generator().manual_seed(100 + i)
        common = dict(method=method, num_virtual_tokens=n_virtual, token_dim=base.hidden_size,
                      base_model_name=base.name, base_fingerprint=base.fingerprint)  # fmt: skip
        if method == "prefix_tuning":
            shape = (base.num_layers, 2, base.num_kv_heads, n_virtual, base.head_dim)
            sp = SoftPrompt(prefix_kv=torch.randn(shape, generator=g).to(base.dtype), **common)
        else:
            emb = torch.randn(n_virtual, base.hidden_size, generator=g) * std
            sp = SoftPrompt(embeddings=emb.to(base.dtype), **common)
        store.save(sp, name)
        store.promote(name, deployment, tenant=name.split("/")[0])
    return store


def workload(n: int, max_tokens: tuple[int, int], base_name: str) -> list[dict[str, Any]]:
    models = [d for _, d, _ in DEPLOYMENTS] + [base_name]
    lo, hi = max_tokens
    return [
        {
            "model": models[i % len(models)],
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": lo + (i * 7) % (hi - lo + 1),
            "temperature": 0,
        }
        for i in range(n)
    ]


def offline_anchor(
    base: Any, store: Any, bodies: list[dict[str, Any]], batch: int, repeats: int = 3
) -> dict[str, float]:
    """Tokens/s of ``Engine.generate`` on the same requests, ``batch`` at a time (median run)."""
    from trace_ptune.runtime import Engine, GenerationRequest

    engine = Engine(base, store=store, max_batch_size=batch)
    for _, deployment, _ in DEPLOYMENTS:
        engine.register(store.resolve(deployment))

    def request(body: dict[str, Any]) -> Any:
        is_base = body["model"] == base.name
        return GenerationRequest(
            body["prompt"],
            adapter=None if is_base else store.deployment(body["model"])["adapter_hash"],
            deployment=None if is_base else body["model"],
            max_new_tokens=body["max_tokens"],
        )

    engine.generate([request(b) for b in bodies[:batch]])  # warm-up
    runs = []
    for _ in range(repeats):  # the median of a few runs: one run on a shared machine is noisy
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(bodies), batch):
            results = engine.generate([request(b) for b in bodies[i : i + batch]])
            tokens += sum(r.output_tokens for r in results)
        runs.append((time.perf_counter() - start, tokens))
    elapsed, tokens = sorted(runs)[len(runs) // 2]
    return {"seconds": elapsed, "tokens": tokens, "tokens_per_s": tokens / elapsed,
            "requests_per_s": len(bodies) / elapsed, "runs": len(runs)}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, model: str, env: dict[str, str], threads: int, **options: Any) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "trace_ptune.cli.main", "serve", "--model", model,
                   "--port", str(self.port), "--torch-threads", str(threads), "--log-level", "warning"]  # fmt: skip
        for key, value in options.items():
            if value is True:  # a flag
                command.append(f"--{key.replace('_', '-')}")
            else:
                command += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode() if self.proc.stderr else "server died")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (one connection per client).

    It does the least a client can (write one request, read the status line, headers and a
    ``Content-Length`` body), so on two shared cores the load generator takes as little CPU
    away from the server as possible. ``--client httpx`` measures with a full client instead.
    """

    def __init__(self, url: str) -> None:
        host_port = url.removeprefix("http://")
        self.host, port = host_port.split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self._request("POST", path, json.dumps(body).encode())

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return await self._request("GET", path, b"")

    async def _request(self, method: str, path: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length)) if length else {}

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class HttpxClient:
    """The same calls through one shared ``httpx.AsyncClient``."""

    def __init__(self, http: Any) -> None:
        self.http = http

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await self.http.post(path, json=body)
        return response.status_code, response.json()

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        response = await self.http.get(path)
        return response.status_code, response.json()

    async def close(self) -> None:
        pass


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (the engine process), Linux
    ``/proc``; 0 where unavailable."""
    pids = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            pids += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


async def _load(
    url: str, bodies: list[dict[str, Any]], clients: int, *, kind: str = "raw", server_pid: int | None = None
) -> dict[str, Any]:
    import httpx

    queue = list(reversed(bodies))
    latencies: list[float] = []
    tokens = 0
    errors = 0

    async def client(http: RawClient | HttpxClient) -> None:
        nonlocal tokens, errors
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            status, reply = await http.post("/v1/completions", body)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors += 1
                continue
            tokens += reply["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as shared:
        pool: list[RawClient | HttpxClient] = (
            [RawClient(url) for _ in range(clients)]
            if kind == "raw"
            else [HttpxClient(shared) for _ in range(clients)]
        )
        # open every connection (and warm the server) before the clock starts
        await asyncio.gather(*(c.post("/v1/completions", {**bodies[0], "max_tokens": 2}) for c in pool))
        before = (await pool[0].get("/health"))[1]
        server_cpu0, client_cpu0 = _cpu_seconds(server_pid or 0), time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in pool))
        elapsed = time.perf_counter() - start
        server_cpu = _cpu_seconds(server_pid or 0) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
        after = (await pool[0].get("/health"))[1]
        for c in pool:
            await c.close()
    latencies.sort()
    return {
        "clients": clients,
        "client": kind,
        "requests": len(bodies),
        "errors": errors,
        "seconds": elapsed,
        "requests_per_s": len(bodies) / elapsed,
        "tokens_per_s": tokens / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "max_rows_in_a_step": after["max_rows_in_a_step"],
        "step_seconds": after["step_seconds"] - before["step_seconds"],
        "steps": after["steps"] - before["steps"],
        "joins": after.get("joins", 0) - before.get("joins", 0),
        "server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--requests", type=int, default=256, help="requests per run (at 32 clients)")
    parser.add_argument("--single-client-requests", type=int, default=None, help="requests at 1 client")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument(
        "--modes",
        default="iteration,iteration-eager,request",
        help="iteration (gated joins, the default), iteration-eager (join at every step), request; "
        "a +inproc suffix runs the server with --in-process (engine and HTTP in one process)",
    )
    parser.add_argument(
        "--join-fraction",
        type=float,
        default=None,
        help="--join-fraction of the iteration runs (server default)",
    )
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="load generator's HTTP client"
    )
    parser.add_argument("--max-tokens", default="8,32", help="range of max_tokens, lo,hi")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--anchor-repeats", type=int, default=3, help="offline runs (median taken)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--skip-one-at-a-time", action="store_true", help="skip the --max-batch-size 1 server run"
    )
    args = parser.parse_args()
    # a SIGTERM to the benchmark still stops its server subprocesses (their __exit__ runs)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))

    import torch

    from trace_ptune import paths
    from trace_ptune.models import load_model

    torch.set_num_threads(args.torch_threads)
    env = os.environ.copy()
    env.setdefault("TRACE_PTUNE_MODEL_CACHE", str(paths.models_dir()))  # reuse converted presets
    home = tempfile.mkdtemp(prefix="bench-server-")
    env["TRACE_PTUNE_HOME"] = os.environ["TRACE_PTUNE_HOME"] = home
    os.environ["TRACE_PTUNE_MODEL_CACHE"] = env["TRACE_PTUNE_MODEL_CACHE"]
    env["OTEL_TRACES_EXPORTER"] = "none"  # spans are still made; nothing is shipped
    lo, hi = (int(x) for x in args.max_tokens.split(","))

    base = load_model(args.model)
    store = make_store(base, Path(home) / "adapters")
    bodies = workload(args.requests, (lo, hi), base.name)
    anchor = offline_anchor(base, store, bodies, batch=32, repeats=args.anchor_repeats)
    print(f"offline engine.generate, batch 32, median of {anchor['runs']}: {anchor['tokens_per_s']:.1f} tok/s "
          f"({anchor['requests_per_s']:.2f} req/s)", flush=True)  # fmt: skip
    del base

    runs: list[dict[str, Any]] = []
    clients_list = [int(c) for c in args.clients.split(",")]
    configs = [(mode, 32) for mode in args.modes.split(",")]
    if not args.skip_one_at_a_time:
        configs.append(("request", 1))
    for mode, batch in configs:
        base_mode, _, where = mode.partition("+")
        options: dict[str, Any] = {"scheduling": base_mode.removesuffix("-eager")}
        if base_mode.endswith("-eager"):
            options.update(join_fraction=0, join_max_wait_steps=0)
        elif base_mode == "iteration" and args.join_fraction is not None:
            options.update(join_fraction=args.join_fraction)
        if where == "inproc":
            options.update(in_process=True)
        with Server(args.model, env, args.torch_threads, max_batch_size=batch,
                    batch_wait_ms=args.batch_wait_ms, **options) as server:  # fmt: skip
            for clients in clients_list if batch > 1 else [max(clients_list)]:
                n = (
                    args.single_client_requests
                    if clients == 1 and args.single_client_requests
                    else args.requests
                )
                result = asyncio.run(
                    _load(server.url, bodies[:n], clients, kind=args.client, server_pid=server.proc.pid)
                )
                result.update(
                    mode=mode,
                    max_batch_size=batch,
                    vs_offline=result["tokens_per_s"] / anchor["tokens_per_s"],
                )
                runs.append(result)
                print(
                    f"{mode:15s} batch {batch:2d} clients {clients:2d}: {result['tokens_per_s']:8.1f} tok/s "
                    f"{result['requests_per_s']:7.2f} req/s p50 {result['p50_ms']:8.1f} ms p99 {result['p99_ms']:8.1f} ms "
                    f"x{result['vs_offline']:.2f} of offline, rows/step {result['max_rows_in_a_step']}, "
                    f"steps {result['steps']} ({result['joins']} joins) in {result['step_seconds']:.2f} s "
                    f"of {result['seconds']:.2f} s, cpu server {result['server_cpu_s']:.2f} s "
                    f"client {result['client_cpu_s']:.2f} s, errors {result['errors']}",
                    flush=True,
                )
    report = {
        "model": args.model,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {args.torch_threads}",
        "client": args.client,
        "load_average": os.getloadavg(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "offline": anchor,
        "runs": runs,
    }
    print(_markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"model `{report['model']}`, {report['machine']}; offline `Engine.generate` (batch 32): "
        f"{report['offline']['tokens_per_s']:.1f} tok/s; client {report['client']}; "
        f"load average at the end {', '.join(f'{x:.2f}' for x in report['load_average'])}",
        "",
        "| scheduling | max batch | clients | req/s | tok/s | p50 ms | p99 ms | vs offline | steps (joins) "
        "| engine busy | cpu server / client s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['mode']} | {r['max_batch_size']} | {r['clients']} | {r['requests_per_s']:.2f} | "
            f"{r['tokens_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['vs_offline']:.2f}x | "
            f"{r['steps']} ({r['joins']}) | {r['step_seconds'] / r['seconds']:.0%} | "
            f"{r['server_cpu_s']:.2f} / {r['client_cpu_s']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
