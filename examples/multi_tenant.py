"""Two tenants' soft prompts: trained in one job, then served side by side in one batch.

    python examples/multi_tenant.py          # about 30 s on a laptop CPU, tiny-random model

1. ``train_multitenant`` trains one soft prompt per tenant (``acme`` and ``globex``) over one
   frozen base model; each lands in the adapter store as ``support/<tenant>@1``.
2. Each is promoted to its tenant's deployment (``acme/support@prod``, ``globex/support@prod``).
3. ``trace-ptune serve``'s app runs on a loopback port with API keys; both tenants call it at once
   with the OpenAI wire format, so their requests share batches, and each gets its own adapter.
4. ``acme`` asking for ``globex``'s deployment gets a 403; a promote is served at the next
   request without a restart.

Everything runs in a temporary TRACE_PTUNE_HOME unless one is set.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TRACE_PTUNE_HOME", tempfile.mkdtemp(prefix="trace-ptune-example-"))

import httpx
import torch
import uvicorn

from trace_ptune.adapters.store import AdapterStore
from trace_ptune.models import load_model
from trace_ptune.runtime import Engine
from trace_ptune.runtime.server import ApiKeys, create_app
from trace_ptune.tuning import TrainConfig, train_multitenant

torch.set_num_threads(1)
# the same questions, different answers: only the soft prompt tells the tenants apart
ANSWERS = {"acme": " yes", "globex": " no"}


def training_rows() -> list[dict[str, str]]:
    return [{"input": f"question {i}: is it ok?", "target": answer, "tenant": tenant}
            for i in range(40) for tenant, answer in ANSWERS.items()]  # fmt: skip


def main() -> None:
    home = Path(os.environ["TRACE_PTUNE_HOME"])
    data = home / "support.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in training_rows()))

    base = load_model("tiny-random")
    t0 = time.perf_counter()
    result = train_multitenant(
        TrainConfig(
            model="tiny-random",
            data=str(data),
            name="support",
            virtual_tokens=8,
            steps=60,
            batch_size=8,
            lr=0.1,
            seed=0,
            quiet=True,
        ),
        base,
    )
    print(f"trained {len(result.soft_prompts)} soft prompts in {time.perf_counter() - t0:.1f} s")

    store = AdapterStore()
    for tenant, sp in result.soft_prompts.items():
        store.promote(f"{sp.name}@{sp.version}", f"{tenant}/support@prod", tenant=tenant)
        print(f"  {tenant}: {sp.name}@{sp.version} {sp.hash[:19]} -> {tenant}/support@prod")

    engine = Engine(base, store=store)
    app = create_app(engine, store=store, api_keys=ApiKeys({"sk-acme": "acme", "sk-globex": "globex"}),
                     batch_wait_ms=20)  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/completions"

    def ask(tenant: str, prompt: str, deployment: str | None = None) -> httpx.Response:
        body = {
            "model": deployment or f"{tenant}/support@prod",
            "prompt": prompt,
            "max_tokens": 2,
            "temperature": 0,
        }
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer sk-{tenant}"}, timeout=60)

    prompts = [f"question {i}: is it ok?" for i in range(100, 106)]  # not in the training data
    jobs = [(tenant, p) for p in prompts for tenant in ANSWERS]
    with ThreadPoolExecutor(len(jobs)) as pool:  # both tenants at once: shared batches
        responses = list(pool.map(lambda job: ask(*job), jobs))
    correct = 0
    for (tenant, prompt), response in zip(jobs, responses, strict=True):
        text = response.json()["choices"][0]["text"]
        correct += text == ANSWERS[tenant]
        print(
            f"  {tenant:6s} {prompt!r:26s} -> {text!r:7s} (adapter {response.headers['x-ptune-adapter-hash'][7:19]})"
        )
    print(f"{correct}/{len(jobs)} answers are the asking tenant's own")

    denied = ask("acme", prompts[0], deployment="globex/support@prod")
    print(f"acme -> globex/support@prod: HTTP {denied.status_code}: {denied.json()['error']['message']}")

    # a rollout reaches the running server at the next request
    store.promote(
        f"support/globex@{result.soft_prompts['globex'].version}", "acme/support@prod", tenant="acme"
    )
    swapped = ask("acme", prompts[0]).json()["choices"][0]["text"]
    print(f"after promoting globex's adapter to acme/support@prod, acme gets {swapped!r}")
    store.rollback("acme/support@prod")
    print(f"after rollback, acme gets {ask('acme', prompts[0]).json()['choices'][0]['text']!r}")

    server.should_exit = True
    thread.join()


if __name__ == "__main__":
    main()
