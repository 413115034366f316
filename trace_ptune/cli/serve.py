"""``trace-ptune serve``: an OpenAI-compatible HTTP API over the runtime engine.

    trace-ptune serve --model smollm2-135m [--host 127.0.0.1] [--port 8000] [--api-keys FILE]
                      [--max-batch-size 32] [--batch-wait-ms 5] [--scheduling iteration|request]

See docs/serving.md for the endpoints, the ``model`` field, tenants and rollouts.
"""

from __future__ import annotations

import errno
import signal
import socket
from pathlib import Path

import click

from trace_ptune.cli._telemetry import configure_telemetry
from trace_ptune.cli.generate import (
    allow_base_mismatch_option,
    capture_content_option,
    dtype_option,
    model_option,
    store_option,
)
from trace_ptune.cli.output import handle_errors


@click.command()
@model_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one)."
)
@click.option(
    "--api-keys",
    "api_keys_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="File mapping API keys to tenants (JSON or 'KEY TENANT' lines); turns tenancy checks on.",
)
@click.option(
    "--max-batch-size", default=32, show_default=True, type=click.IntRange(1), help="Rows decoding together."
)
@click.option(
    "--batch-wait-ms",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="How long a new batch waits for more requests.",
)
@click.option(
    "--scheduling",
    type=click.Choice(["iteration", "request"]),
    default="iteration",
    show_default=True,
    help="iteration: new requests join the running batch between decode steps (gated by --join-fraction); "
    "request: batches run to their end.",
)
@dtype_option
@store_option
@click.option(
    "--canary-seed",
    type=int,
    default=None,
    help="Pick canary traffic at random from this seed (default: by request id).",
)
@click.option(
    "--memory-budget-mb",
    type=float,
    default=1024.0,
    show_default=True,
    help="Loaded adapters + cached prefixes.",
)
@allow_base_mismatch_option
@capture_content_option
@click.option(
    "--torch-threads",
    type=click.IntRange(1),
    default=None,
    help="Intra-op threads for the model (default: torch's choice; 1 is best on small shared machines).",
)
@click.option(
    "--join-fraction",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Iteration scheduling: arrivals join a running batch once they are this share of the rows "
    "in flight (0: at every step).",
)
@click.option(
    "--join-max-wait-steps",
    type=click.IntRange(0),
    default=8,
    show_default=True,
    help="Iteration scheduling: ... or once the oldest arrival has waited this many decode steps.",
)
@click.option(
    "--engine-process/--in-process",
    default=True,
    show_default=True,
    help="Run the model and its scheduler in a process of their own, beside the HTTP server "
    "(they then use two cores instead of sharing one interpreter lock).",
)
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@handle_errors
def serve(
    model_spec: str,
    host: str,
    port: int,
    api_keys_file: Path | None,
    max_batch_size: int,
    batch_wait_ms: float,
    scheduling: str,
    dtype: str | None,
    store: Path | None,
    canary_seed: int | None,
    memory_budget_mb: float,
    allow_base_mismatch: bool,
    capture_content: bool,
    torch_threads: int | None,
    join_fraction: float,
    join_max_wait_steps: int,
    engine_process: bool,
    log_level: str,
) -> None:
    """Serve soft prompts over an OpenAI-compatible HTTP API (SIGTERM drains and exits)."""
    import uvicorn

    from trace_ptune.adapters.store import AdapterStore
    from trace_ptune.runtime.server import ApiKeys, create_app

    keys = ApiKeys.load(api_keys_file) if api_keys_file is not None else None
    _check_listen(host, port)
    adapter_store = AdapterStore(store)
    scheduler_options = dict(
        batch_wait_ms=batch_wait_ms,
        mode=scheduling,
        join_fraction=join_fraction,
        join_max_wait_steps=join_max_wait_steps,
    )
    engine_options = dict(
        memory_budget_mb=memory_budget_mb,
        max_batch_size=max_batch_size,
        allow_base_mismatch=allow_base_mismatch,
        capture_content=True if capture_content else None,
    )
    if engine_process:
        from trace_ptune.runtime.server.engine_process import EngineSpec, RemoteScheduler

        remote = RemoteScheduler(
            EngineSpec(
                model=model_spec,
                dtype=dtype,
                store=str(adapter_store.root),
                torch_threads=torch_threads,
                scheduler=scheduler_options,
                **engine_options,
            )
        )
        remote.start()  # loads the model in the engine process, which emits the spans
        engine, scheduler, on_shutdown = remote.engine_view(), remote, None
    else:
        from trace_ptune.models import load_model
        from trace_ptune.runtime import Engine

        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
        telemetry = configure_telemetry(service_name="trace-ptune-serve")
        engine = Engine(load_model(model_spec, dtype=dtype), store=adapter_store, **engine_options)
        scheduler, on_shutdown = None, telemetry.force_flush if telemetry is not None else None
    app = create_app(
        engine,
        store=adapter_store,
        api_keys=keys,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
        scheduling=scheduling,
        join_fraction=join_fraction,
        join_max_wait_steps=join_max_wait_steps,
        canary_seed=canary_seed,
        on_shutdown=on_shutdown,
        scheduler=scheduler,
    )
    tenants = f", {len(keys)} API keys" if keys is not None else ""
    where = "engine process" if engine_process else "in process"
    click.echo(
        f"serving {engine.base.name} ({engine.base.fingerprint[:19]}) on http://{host}:{port}/v1 "
        f"[{scheduling} scheduling, batch {max_batch_size}, wait {batch_wait_ms:g} ms, {where}{tenants}]",
        err=True,
    )
    # uvicorn handles SIGINT/SIGTERM: stop accepting, finish open requests, then the app's
    # lifespan shutdown drains the scheduler and flushes telemetry. Afterwards uvicorn raises
    # the signal again; these handlers turn that into a clean exit (status 0) after the drain.
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=120)
    uvicorn.Server(config).run()
    for sig in (signal.SIGINT, signal.SIGTERM):  # drained: a late signal must not turn exit 0 into a kill
        signal.signal(sig, signal.SIG_IGN)
    if received:
        click.echo(f"stopped on {signal.Signals(received[0]).name}: in-flight requests finished", err=True)


def _check_listen(host: str, port: int) -> None:
    """Fail before loading the model when HOST:PORT cannot be bound (busy port, unknown host)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.create_server(info[4], family=info[0]):
            pass
    except OSError as exc:
        reason = (
            "the port is in use" if getattr(exc, "errno", None) == errno.EADDRINUSE else exc.strerror or exc
        )
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({reason}); pass --port with a free port or a valid --host."
        ) from None
