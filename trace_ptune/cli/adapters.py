"""``trace-ptune adapters``: the local soft-prompt store.

    trace-ptune adapters list [--json]
    trace-ptune adapters show REF [--json]
    trace-ptune adapters verify [REF|DIR ...] [--base MODEL] [--allow-base-mismatch] [--json]
    trace-ptune adapters import-peft DIR --name NAME [--base MODEL]
    trace-ptune adapters export-peft REF OUT_DIR [--base MODEL]
    trace-ptune adapters promote REF DEPLOYMENT [--canary PERCENT] [--tenant TENANT]
    trace-ptune adapters rollback DEPLOYMENT
    trace-ptune adapters deployments [--history DEPLOYMENT] [--json]

REF is a name (latest version), ``name@version``, a deployment, or a hash / 12+ hex-digit prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from trace_ptune.cli.output import emit, emit_record, handle_errors, output_options

LIST_COLUMNS = ("name", "version", "hash12", "method", "num_virtual_tokens", "base_model_name", "created_at",
                "deployments")  # fmt: skip
DEPLOYMENT_COLUMNS = ("deployment", "adapter_hash12", "canary_hash", "canary_percent", "tenant", "action",
                      "updated_at", "rollback_depth")  # fmt: skip


def _store(ctx: click.Context) -> Any:
    from trace_ptune.adapters.store import AdapterStore

    return AdapterStore(ctx.obj.get("store") if ctx.obj else None)


@click.group()
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Adapter store root (default: $TRACE_PTUNE_HOME/adapters).",
)
@click.pass_context
def adapters(ctx: click.Context, store: Path | None) -> None:
    """Manage the local soft-prompt adapter store."""
    ctx.ensure_object(dict)
    ctx.obj["store"] = store


@adapters.command("list")
@output_options
@click.pass_context
@handle_errors
def list_cmd(ctx: click.Context, fmt: str) -> None:
    """List stored adapters: one row per name and version."""
    emit(_store(ctx).list(), fmt, columns=LIST_COLUMNS, title="adapters")


@adapters.command()
@click.argument("ref")
@output_options
@click.pass_context
@handle_errors
def show(ctx: click.Context, ref: str, fmt: str) -> None:
    """Show an adapter's manifest (REF: name, name@version, deployment or hash prefix)."""
    emit_record(_store(ctx).describe(ref), fmt, title=ref)


@adapters.command()
@click.argument("refs", nargs=-1)
@click.option("--base", "base_spec", default=None, help="Also check the adapters fit this base model.")
@click.option("--allow-base-mismatch", is_flag=True, help="With --base: accept another base fingerprint.")
@output_options
@click.pass_context
@handle_errors
def verify(
    ctx: click.Context, refs: tuple[str, ...], base_spec: str | None, allow_base_mismatch: bool, fmt: str
) -> None:
    """Re-hash adapters and check their files (REFS: store references or artifact directories; default: all)."""
    from trace_ptune.adapters.artifact import SoftPrompt
    from trace_ptune.errors import TracePtuneError

    store = _store(ctx)
    base = _load_base(base_spec) if base_spec else None
    targets = list(refs) or sorted({row["hash"] for row in store.list()})

    def check(ref: str) -> dict[str, Any]:
        path = Path(ref)
        sp = SoftPrompt.load(path) if path.is_dir() else store.resolve(ref)
        if base is not None:
            sp.check_compatible(base, allow_base_mismatch=allow_base_mismatch)
        return {"ref": ref, "name": sp.name, "version": sp.version, "hash": sp.hash, "status": "ok"}

    if len(targets) == 1:  # one adapter: its error is the message
        rows = [check(targets[0])]
    else:
        rows = []
        for ref in targets:
            try:
                rows.append(check(ref))
            except TracePtuneError as exc:
                rows.append({"ref": ref, "name": None, "version": None, "hash": None, "status": str(exc)})
    emit(rows, fmt, columns=("ref", "name", "version", "hash", "status"), title="verified")
    failed = sum(row["status"] != "ok" for row in rows)
    if failed:
        raise click.ClickException(
            f"{failed} of {len(rows)} adapters failed verification; see the status column."
        )


@adapters.command("import-peft")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Store the adapter under this name.")
@click.option(
    "--base", "base_spec", default=None, help="Base model it belongs to (needed for foreign prefix tuning)."
)
@output_options
@click.pass_context
@handle_errors
def import_peft_cmd(ctx: click.Context, directory: Path, name: str, base_spec: str | None, fmt: str) -> None:
    """Import a PEFT prompt-tuning, prefix-tuning or P-tuning directory into the store."""
    from trace_ptune.adapters.peft_interop import import_peft

    base = _load_base(base_spec) if base_spec else None
    stored = _store(ctx).save(import_peft(directory, base=base), name)
    emit_record(_store(ctx).describe(f"{stored.name}@{stored.version}"), fmt, title="imported")


@adapters.command("export-peft")
@click.argument("ref")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", "base_spec", default=None, help="Base model to check the adapter against.")
@click.pass_context
@handle_errors
def export_peft_cmd(ctx: click.Context, ref: str, out_dir: Path, base_spec: str | None) -> None:
    """Write an adapter as a PEFT directory (adapter_config.json + adapter_model.safetensors)."""
    from trace_ptune.adapters.peft_interop import export_peft

    sp = _store(ctx).resolve(ref)
    base = _load_base(base_spec) if base_spec else None
    path = export_peft(sp, out_dir, base)
    click.echo(str(path))
    click.echo(
        f"exported {sp.name or sp.hash12}@{sp.version} ({sp.hash12}) as a PEFT {sp.method} adapter", err=True
    )


@adapters.command()
@click.argument("ref")
@click.argument("deployment", required=False)
@click.option(
    "--deployment",
    "deployment_option",
    default=None,
    help="Deployment to point at REF, e.g. acme/support@prod (same as the DEPLOYMENT argument).",
)
@click.option(
    "--canary", "canary_percent", type=float, default=None, help="Serve it beside the primary at this %."
)
@click.option("--tenant", default=None, help="Tenant the deployment belongs to.")
@output_options
@click.pass_context
@handle_errors
def promote(
    ctx: click.Context,
    ref: str,
    deployment: str | None,
    deployment_option: str | None,
    canary_percent: float | None,
    tenant: str | None,
    fmt: str,
) -> None:
    """Serve REF on DEPLOYMENT (default: the adapter's name); --canary keeps the primary."""
    if deployment and deployment_option and deployment != deployment_option:
        raise click.UsageError(
            f"Two deployments were given ({deployment!r} and --deployment {deployment_option!r}); pass one."
        )
    deployment = deployment or deployment_option
    state = _store(ctx).promote(ref, deployment, canary_percent=canary_percent, tenant=tenant)
    emit_record(state, fmt, title="promoted")


@adapters.command()
@click.argument("deployment")
@output_options
@click.pass_context
@handle_errors
def rollback(ctx: click.Context, deployment: str, fmt: str) -> None:
    """Restore DEPLOYMENT's state before its last promote, canary or rollback."""
    emit_record(_store(ctx).rollback(deployment), fmt, title="rolled back")


@adapters.command()
@click.option("--history", "history_of", default=None, help="Show the earlier states of this deployment.")
@output_options
@click.pass_context
@handle_errors
def deployments(ctx: click.Context, history_of: str | None, fmt: str) -> None:
    """List deployments and the adapters they serve."""
    store = _store(ctx)
    rows = store.deployment_history(history_of) if history_of else store.deployments()
    emit(rows, fmt, columns=DEPLOYMENT_COLUMNS, title="deployments")


def _load_base(spec: str) -> Any:
    from trace_ptune.models import load_model

    return load_model(spec)
