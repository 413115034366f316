"""The demo, top to bottom: collector, training, gate, rollout, traffic, bad rollout, regression query.

``run_demo`` works in its own temporary home (``TRACE_PTUNE_HOME`` is set for this process and
the collector child, and restored afterwards), so the user's adapter store and traces are never
touched; the converted base-model cache stays shared so ``smollm2-135m`` is converted only once.
The collector is always stopped, on success and on failure. Run it in a fresh process (the
``trace-ptune demo`` command does): it installs the global OpenTelemetry providers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_ptune import paths, semconv
from trace_ptune.demo import datasets, gate, training
from trace_ptune.demo.collector import CollectorProcess
from trace_ptune.demo.config import REGRESSED, DemoConfig
from trace_ptune.demo.progress import Reporter
from trace_ptune.demo.scoring import LabelMatch
from trace_ptune.demo.traffic import ProductionTraffic
from trace_ptune.errors import DemoError

STEPS = 6


@dataclass
class DemoResult:
    """What the demo did; ``to_dict`` is the ``--json`` output."""

    model: str
    workdir: Path
    db: Path
    kept: bool
    urls: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)  # "acme@1" -> {hash, ...}
    gates: list[gate.GateResult] = field(default_factory=list)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    regressions: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "workdir": str(self.workdir) if self.kept else None,
            "db": str(self.db) if self.kept else None,
            "kept": self.kept,
            "adapters": self.adapters,
            "gates": [g.to_dict() for g in self.gates],
            "traffic": self.traffic,
            "regressions": self.regressions,
            "timings": self.timings,
        }


class _Home:
    """Point TRACE_PTUNE_HOME at the demo's directory for the duration; keep the model cache."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> _Home:
        cache = paths.models_dir()  # the user's cache, resolved before the home moves
        for key, value in (
            (semconv.ENV_HOME, str(self.home)),
            ("TRACE_PTUNE_MODEL_CACHE", str(cache)),
            (semconv.ENV_COLLECTOR, None),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
        ):
            self.saved[key] = os.environ.get(key)
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return self

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the whole story; raises :class:`DemoError` (or another ``TracePtuneError``) on failure."""
    workdir = (
        Path(config.workdir).expanduser()
        if config.workdir
        else Path(tempfile.mkdtemp(prefix="trace-ptune-demo-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    result = DemoResult(model=config.model, workdir=workdir, db=workdir / "traces.duckdb", kept=config.keep)
    report = Reporter(config.quiet, total=STEPS)
    collector = CollectorProcess(result.db, workdir / "collector.log")
    started = time.perf_counter()
    try:
        with _Home(workdir / "home"):
            with report.step("Starting a collector on a temporary DuckDB file"):
                collector.start()
                result.urls = dict(collector.urls)
                report.info(f"OTLP/HTTP {collector.http}   Postgres wire {collector.pg}")
                telemetry = _configure(collector.http)
            _Story(config, result, report).run()
            with report.step("Flushing telemetry and asking which version regressed"):
                if not telemetry.force_flush(timeout_s=60.0):
                    raise DemoError(
                        "telemetry could not be flushed to the collector within 60 s; see collector.log."
                    )
                result.regressions = _query(collector.http, config)
    finally:
        collector.stop()
        result.timings["total_s"] = round(time.perf_counter() - started, 2)
        if not config.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _configure(endpoint: str) -> Any:
    import trace_ptune

    telemetry = trace_ptune.configure(
        service_name="trace-ptune-demo", endpoint=endpoint, discover_local=False
    )
    if telemetry.endpoint != endpoint or "otlp" not in telemetry.exporters.get("traces", ()):
        raise DemoError(
            "OpenTelemetry was already set up in this process, so the demo cannot send its spans to "
            "its own collector; run it in a fresh process with `trace-ptune demo`."
        )
    return telemetry


def _query(url: str, config: DemoConfig) -> list[dict[str, Any]]:
    from trace_ptune.query import regressions

    return regressions(collector=url, min_n=config.min_n, alpha=config.alpha)


class _Story:
    """Steps 2-5: everything that happens while telemetry flows to the collector."""

    def __init__(self, config: DemoConfig, result: DemoResult, report: Reporter) -> None:
        assert config.profile is not None
        self.cfg, self.profile, self.result, self.report = config, config.profile, result, report
        self.workdir = result.workdir
        self.tenants = list(config.tenants)

    def run(self) -> None:
        from trace_ptune.adapters.store import AdapterStore
        from trace_ptune.models import load_model
        from trace_ptune.runtime import Engine

        report, profile = self.report, self.profile
        if profile.threads:
            import torch

            torch.set_num_threads(profile.threads)
        names = [t.name for t in self.tenants]
        with report.step(f"Training soft prompts for {', '.join(names)} in one multi-tenant job"):
            t0 = time.perf_counter()
            base = load_model(self.cfg.model)
            report.info(f"base model {base.name} ({base.fingerprint[:19]})")
            v1, _ = training.train_v1(base, profile, names, self.workdir, quiet=self.cfg.quiet)
            for tenant, sp in v1.items():
                self._record(tenant, sp)
            self.result.timings["train_v1_s"] = round(time.perf_counter() - t0, 2)

        store = AdapterStore()
        engine = Engine(base, store=store, max_batch_size=max(profile.serve_batch, 8))
        golden = {t.name: datasets.write_golden(t.name, self.workdir) for t in self.tenants}
        scorers = {t.name: LabelMatch(datasets.labels(t.name)) for t in self.tenants}
        evals: dict[str, Any] = {}
        with report.step("Gating each adapter against its base-model baseline (eval split)"):
            for t in self.tenants:
                baseline = gate.evaluate(
                    engine, golden[t.name], scorers[t.name], profile.max_new_tokens,
                    tenant=t.name, instruction=t.instruction,
                )  # fmt: skip
                evals[t.name] = gate.evaluate(
                    engine, golden[t.name], scorers[t.name], profile.max_new_tokens,
                    tenant=t.name, adapter=v1[t.name].hash,
                )  # fmt: skip
                verdict = gate.compare(
                    t.name, _label(v1[t.name]), "base model + instruction", baseline, evals[t.name]
                )
                self.result.gates.append(verdict)
                report.info(verdict.line())

        traffic = ProductionTraffic(
            engine, self.tenants, max_new_tokens=profile.max_new_tokens, batch_size=profile.serve_batch
        )
        n = profile.requests_per_phase
        with report.step(f"Promoting v1 and serving mixed production traffic ({n} requests per tenant)"):
            for t in self.tenants:
                store.promote(v1[t.name].hash, t.deployment, tenant=t.name)
                report.info(f"{t.deployment} <- {_label(v1[t.name])} {v1[t.name].hash12}")
            self._serve(traffic, "v1", n)

        bad = next(t for t in self.tenants if t.name == REGRESSED)
        with report.step(f"Rolling {bad.name} to v2, trained on noisy labels"):
            t0 = time.perf_counter()
            v2, _ = training.train_noisy_v2(
                base, profile, bad.name, v1[bad.name], self.workdir, quiet=self.cfg.quiet
            )
            self._record(bad.name, v2)
            self.result.timings["train_v2_s"] = round(time.perf_counter() - t0, 2)
            candidate = gate.evaluate(
                engine, golden[bad.name], scorers[bad.name], profile.max_new_tokens,
                tenant=bad.name, adapter=v2.hash,
            )  # fmt: skip
            verdict = gate.compare(bad.name, _label(v2), _label(v1[bad.name]), evals[bad.name], candidate)
            self.result.gates.append(verdict)
            report.info(verdict.line())
            report.info("rolled out anyway: first as a canary, then to all traffic")
            store.promote(v2.hash, bad.deployment, canary_percent=profile.canary_percent, tenant=bad.name)
            report.info(f"{bad.deployment} canary {profile.canary_percent:.0f}% <- {_label(v2)} {v2.hash12}")
            self._serve(traffic, "canary", n)
            store.promote(v2.hash, bad.deployment, tenant=bad.name)
            report.info(f"{bad.deployment} <- {_label(v2)} {v2.hash12}")
            self._serve(traffic, "v2", n)

    def _serve(self, traffic: ProductionTraffic, phase: str, n: int) -> None:
        t0 = time.perf_counter()
        stats = traffic.serve(phase, n)
        if stats.errors:
            raise DemoError(f"{stats.errors} production requests failed in phase {phase!r}; see the traces.")
        for row in stats.rows():
            label = self._label_of(row["adapter_hash"])
            self.result.traffic.append({"phase": phase, **row, "adapter": label})
            self.report.info(
                f"{phase:>6}  {row['tenant']:<7} {label:<14} {row['requests']:>4} requests  accuracy {row['accuracy']:.3f}"
            )
        self.result.timings[f"serve_{phase}_s"] = round(time.perf_counter() - t0, 2)

    def _record(self, tenant: str, sp: Any) -> None:
        self.result.adapters[_label(sp)] = {
            "tenant": tenant,
            "name": sp.name,
            "version": sp.version,
            "hash": sp.hash,
            "parent_hash": sp.parent_hash,
        }

    def _label_of(self, adapter_hash: str) -> str:
        for label, info in self.result.adapters.items():
            if info["hash"] == adapter_hash:
                return label
        return adapter_hash[:19] or "base"


def _label(sp: Any) -> str:
    return f"{sp.name}@{sp.version}"
