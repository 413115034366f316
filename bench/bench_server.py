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
   concurrent clients (asyncio + httpx), once per scheduling mode (``iteration`` and ``request``):
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


def offline_anchor(base: Any, store: Any, bodies: list[dict[str, Any]], batch: int) -> dict[str, float]:
    """Tokens/s of ``Engine.generate`` on the same requests, ``batch`` at a time."""
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
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(bodies), batch):
        results = engine.generate([request(b) for b in bodies[i : i + batch]])
        tokens += sum(r.output_tokens for r in results)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "tokens": tokens, "tokens_per_s": tokens / elapsed,
            "requests_per_s": len(bodies) / elapsed}  # fmt: skip


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


async def _load(url: str, bodies: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    import httpx

    queue = list(reversed(bodies))
    latencies: list[float] = []
    tokens = 0
    errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            response = await http.post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - t0)
            if response.status_code != 200:
                errors += 1
                continue
            tokens += response.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await http.post("/v1/completions", json={**bodies[0], "max_tokens": 2})  # connection warm-up
        before = (await http.get("/health")).json()
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
        after = (await http.get("/health")).json()
    health = {k: after[k] - before[k] for k in ("step_seconds", "steps")}
    health["max_rows_in_a_step"] = after["max_rows_in_a_step"]
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(bodies),
        "errors": errors,
        "seconds": elapsed,
        "requests_per_s": len(bodies) / elapsed,
        "tokens_per_s": tokens / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "max_rows_in_a_step": health["max_rows_in_a_step"],
        "step_seconds": health.get("step_seconds"),
        "steps": health.get("steps"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--requests", type=int, default=256, help="requests per run (at 32 clients)")
    parser.add_argument("--single-client-requests", type=int, default=None, help="requests at 1 client")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--modes", default="iteration,request")
    parser.add_argument("--max-tokens", default="8,32", help="range of max_tokens, lo,hi")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
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
    anchor = offline_anchor(base, store, bodies, batch=32)
    print(f"offline engine.generate, batch 32: {anchor['tokens_per_s']:.1f} tok/s "
          f"({anchor['requests_per_s']:.2f} req/s)", flush=True)  # fmt: skip
    del base

    runs: list[dict[str, Any]] = []
    clients_list = [int(c) for c in args.clients.split(",")]
    configs = [(mode, 32) for mode in args.modes.split(",")] + [("request", 1)]
    for mode, batch in configs:
        with Server(args.model, env, args.torch_threads, scheduling=mode, max_batch_size=batch,
                    batch_wait_ms=args.batch_wait_ms) as server:  # fmt: skip
            for clients in clients_list if batch > 1 else [max(clients_list)]:
                n = (
                    args.single_client_requests
                    if clients == 1 and args.single_client_requests
                    else args.requests
                )
                result = asyncio.run(_load(server.url, bodies[:n], clients))
                result.update(
                    mode=mode,
                    max_batch_size=batch,
                    vs_offline=result["tokens_per_s"] / anchor["tokens_per_s"],
                )
                runs.append(result)
                print(
                    f"{mode:9s} batch {batch:2d} clients {clients:2d}: {result['tokens_per_s']:8.1f} tok/s "
                    f"{result['requests_per_s']:7.2f} req/s p50 {result['p50_ms']:8.1f} ms p99 {result['p99_ms']:8.1f} ms "
                    f"x{result['vs_offline']:.2f} of offline, rows/step {result['max_rows_in_a_step']}, "
                    f"steps {result['steps']} in {result['step_seconds']:.2f} s, errors {result['errors']}",
                    flush=True,
                )
    report = {
        "model": args.model,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {args.torch_threads}",
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
        f"{report['offline']['tokens_per_s']:.1f} tok/s",
        "",
        "| scheduling | max batch | clients | req/s | tok/s | p50 ms | p99 ms | vs offline | max rows/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['mode']} | {r['max_batch_size']} | {r['clients']} | {r['requests_per_s']:.2f} | "
            f"{r['tokens_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['vs_offline']:.2f}x | "
            f"{r['max_rows_in_a_step']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
