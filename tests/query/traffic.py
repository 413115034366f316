"""A seeded traffic generator with known injected regressions, for tests and benchmarks.

``scenario()`` describes streams (tenant, deployment) served by adapter versions over ten days,
with injected changes of every cause plus many no-change streams; ``generate(scenario, seed)``
draws the requests and their scores; ``write_duckdb(path, traffic)`` stores them through the
collector's schema; ``send_otel(traffic, tracer_provider, logger_provider)`` emits the same
traffic as real OpenTelemetry spans (scores as span events, late scores as log events).
``traffic.expected`` lists the regressions a correct ``regressions()`` must report.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trace_ptune import semconv

START = dt.datetime(2025, 3, 1)
DAYS = 10
BASE_NAME = "smollm2-135m"

# metric -> (kind, baseline mean); binary metrics are Bernoulli draws, continuous ones clipped normals
METRICS: dict[str, tuple[str, float]] = {
    "exact_match": ("binary", 0.80),
    "contains": ("binary", 0.70),
    "f1": ("continuous", 0.65),
    "toxicity": ("continuous", 0.10),
}
DEFAULT_METRICS = ("exact_match", "contains", "f1")


@functools.cache
def adapter_hash(name: str, version: int) -> str:
    return "sha256:" + hashlib.sha256(f"{name}@{version}".encode()).hexdigest()


@functools.cache
def base_fingerprint(label: str) -> str:
    return "sha256:" + hashlib.sha256(f"base:{label}".encode()).hexdigest()


@dataclass
class Phase:
    """Version ``version`` of the stream's adapter on base ``base`` serves [start, end) of the period
    (fractions of it) with relative weight ``weight`` among the phases active at a time."""

    start: float
    end: float
    version: int
    base: str = "a"
    weight: float = 1.0


@dataclass
class StreamSpec:
    tenant: str | None
    deployment: str | None
    adapter: str
    requests: int
    phases: list[Phase]
    effects: dict[tuple[int, str], dict[str, float]] = field(default_factory=dict)
    drift: list[tuple[float, str, float]] = field(default_factory=list)  # (from fraction, metric, offset)
    metrics: tuple[str, ...] = DEFAULT_METRICS
    traffic: str | None = None  # None: no ptune.traffic attribute (counts as production)
    late_scores: bool = False  # scores arrive later as log events without adapter columns

    @property
    def stream(self) -> str:
        deployment = self.deployment or self.adapter
        return f"{self.tenant}/{deployment}" if self.tenant else deployment


@dataclass
class Expected:
    stream: str
    metric: str
    cause: str
    before_hash: str
    after_hash: str
    before_base: str
    after_base: str
    comparison: str | None = None
    traffic: str = semconv.TRAFFIC_PRODUCTION
    lower_is_better: bool = False
    changed_near: float | None = None  # fraction of the period, for change points


def scenario(no_change_streams: int = 50, neutral_swaps: int = 20) -> tuple[list[StreamSpec], list[Expected]]:
    """Streams with one injected change of each cause, and ``no_change_streams`` unchanged ones
    (the first ``neutral_swaps`` of them swap to a new adapter of equal quality half-way)."""
    specs: list[StreamSpec] = []
    exp: list[Expected] = []
    a, b = base_fingerprint("a"), base_fingerprint("b")

    # adapter swapped for a worse version: exact_match and f1 drop, contains unchanged
    s = StreamSpec(
        "acme",
        "support@prod",
        "acme-support",
        800,
        [Phase(0.0, 0.5, 1), Phase(0.5, 1.0, 2)],
        effects={(2, "a"): {"exact_match": -0.20, "f1": -0.12}},
    )
    specs.append(s)
    h1, h2 = adapter_hash("acme-support", 1), adapter_hash("acme-support", 2)
    exp += [
        Expected(s.stream, "exact_match", semconv.CAUSE_ADAPTER_CHANGED, h1, h2, a, a, "replacement"),
        Expected(s.stream, "f1", semconv.CAUSE_ADAPTER_CHANGED, h1, h2, a, a, "replacement"),
    ]

    # canary: a worse version serves 30% beside the old one, then takes over
    s = StreamSpec(
        "globex",
        "chat@prod",
        "globex-chat",
        1500,
        [Phase(0.0, 0.7, 1, weight=0.65), Phase(0.4, 0.7, 2, weight=0.35), Phase(0.7, 1.0, 2)],
        effects={(2, "a"): {"exact_match": -0.22}},
    )
    specs.append(s)
    g1, g2 = adapter_hash("globex-chat", 1), adapter_hash("globex-chat", 2)
    exp.append(Expected(s.stream, "exact_match", semconv.CAUSE_ADAPTER_CHANGED, g1, g2, a, a, "canary"))

    # base model changed (re-quantized) under an unchanged adapter; its scores arrive late as logs
    s = StreamSpec(
        "initech",
        "qa@prod",
        "initech-qa",
        800,
        [Phase(0.0, 0.55, 1, "a"), Phase(0.55, 1.0, 1, "b")],
        effects={(1, "b"): {"f1": -0.12}},
        late_scores=True,
    )
    specs.append(s)
    i1 = adapter_hash("initech-qa", 1)
    exp.append(Expected(s.stream, "f1", semconv.CAUSE_BASE_MODEL_CHANGED, i1, i1, a, b, "replacement"))

    # both changed at once; no tenant and no deployment: the stream is the adapter name
    s = StreamSpec(
        None,
        None,
        "hooli-search",
        800,
        [Phase(0.0, 0.5, 3, "a"), Phase(0.5, 1.0, 4, "b")],
        effects={(4, "b"): {"contains": -0.20}},
    )
    specs.append(s)
    exp.append(
        Expected(
            s.stream,
            "contains",
            semconv.CAUSE_ADAPTER_AND_BASE_CHANGED,
            adapter_hash("hooli-search", 3),
            adapter_hash("hooli-search", 4),
            a,
            b,
            "replacement",
        )
    )

    # drift in the traffic: nothing changed, exact_match falls at 60% of the period
    s = StreamSpec(
        "umbrella",
        "triage@prod",
        "umbrella-triage",
        800,
        [Phase(0.0, 1.0, 1)],
        drift=[(0.6, "exact_match", -0.22)],
    )
    specs.append(s)
    u1 = adapter_hash("umbrella-triage", 1)
    exp.append(
        Expected(
            s.stream,
            "exact_match",
            semconv.CAUSE_UNATTRIBUTED,
            u1,
            u1,
            a,
            a,
            "change_point",
            changed_near=0.6,
        )
    )

    # an improvement: must not be reported
    specs.append(
        StreamSpec(
            "stark",
            "notes@prod",
            "stark-notes",
            800,
            [Phase(0.0, 0.5, 1), Phase(0.5, 1.0, 2)],
            effects={(2, "a"): {"exact_match": +0.12, "f1": +0.1}},
        )
    )

    # a lower-is-better metric that rises: a regression only with lower_is_better=["toxicity"]
    s = StreamSpec(
        "wayne",
        "assist@prod",
        "wayne-assist",
        600,
        [Phase(0.0, 0.5, 1), Phase(0.5, 1.0, 2)],
        effects={(2, "a"): {"toxicity": +0.05}},
        metrics=("exact_match", "toxicity"),
    )
    specs.append(s)
    exp.append(
        Expected(
            s.stream,
            "toxicity",
            semconv.CAUSE_ADAPTER_CHANGED,
            adapter_hash("wayne-assist", 1),
            adapter_hash("wayne-assist", 2),
            a,
            a,
            "replacement",
            lower_is_better=True,
        )
    )

    # eval traffic: a worse candidate on the golden set; production analysis must ignore it
    s = StreamSpec(
        None,
        None,
        "acme-support",
        600,
        [Phase(0.0, 0.5, 1), Phase(0.5, 1.0, 3)],
        effects={(3, "a"): {"exact_match": -0.25}},
        traffic=semconv.TRAFFIC_EVAL,
        metrics=("exact_match",),
    )
    specs.append(s)
    exp.append(
        Expected(
            s.stream,
            "exact_match",
            semconv.CAUSE_ADAPTER_CHANGED,
            h1,
            adapter_hash("acme-support", 3),
            a,
            a,
            "replacement",
            traffic=semconv.TRAFFIC_EVAL,
        )
    )

    for i in range(no_change_streams):
        name = f"svc{i:02d}"
        phases = [Phase(0.0, 0.5, 1), Phase(0.5, 1.0, 2)] if i < neutral_swaps else [Phase(0.0, 1.0, 1)]
        traffic = semconv.TRAFFIC_PRODUCTION if i % 2 else None  # explicit and implicit production
        specs.append(StreamSpec(f"tenant{i:02d}", f"{name}@prod", name, 400, phases, traffic=traffic))
    return specs, exp


@dataclass
class Request:
    time: dt.datetime
    trace_id: str
    span_id: str
    spec: StreamSpec
    version: int
    base: str
    scores: dict[str, float]

    @property
    def adapter_hash(self) -> str:
        return adapter_hash(self.spec.adapter, self.version)

    @property
    def base_fingerprint(self) -> str:
        return base_fingerprint(self.base)


@dataclass
class Traffic:
    requests: list[Request]
    expected: list[Expected]
    specs: list[StreamSpec]

    def adapters(self) -> list[dict[str, Any]]:
        """One row per adapter hash, as the collector's ``adapters`` table holds them."""
        seen: dict[str, dict[str, Any]] = {}
        for r in self.requests:
            row = seen.setdefault(
                r.adapter_hash,
                {
                    "adapter_hash": r.adapter_hash,
                    "adapter_name": r.spec.adapter,
                    "adapter_version": r.version,
                    "parent_hash": adapter_hash(r.spec.adapter, r.version - 1) if r.version > 1 else None,
                    "method": semconv.METHOD_PROMPT_TUNING,
                    "num_virtual_tokens": 20,
                    "base_model_name": BASE_NAME,
                    "base_fingerprint": r.base_fingerprint,
                    "first_seen": r.time,
                    "last_seen": r.time,
                },
            )
            row["first_seen"] = min(row["first_seen"], r.time)
            row["last_seen"] = max(row["last_seen"], r.time)
        return list(seen.values())


def generate(specs: list[StreamSpec], expected: list[Expected], seed: int = 7) -> Traffic:
    """Draw every stream's requests (evenly spread over the period, jittered) and their scores."""
    rng = np.random.default_rng(seed)
    requests: list[Request] = []
    period = dt.timedelta(days=DAYS).total_seconds()
    counter = 0
    for spec in specs:
        fracs = np.sort(rng.uniform(0.0, 1.0, spec.requests))
        for frac in fracs:
            active = [p for p in spec.phases if p.start <= frac < p.end]
            phase = active[0]
            if len(active) > 1:
                pick = rng.random() * sum(p.weight for p in active)
                for phase in active:
                    pick -= phase.weight
                    if pick < 0:
                        break
            scores = {}
            for metric in spec.metrics:
                kind, mean = METRICS[metric]
                mean += spec.effects.get((phase.version, phase.base), {}).get(metric, 0.0)
                mean += sum(off for start, m, off in spec.drift if m == metric and frac >= start)
                if kind == "binary":
                    scores[metric] = float(rng.random() < mean)
                else:
                    scores[metric] = float(np.clip(rng.normal(mean, 0.15), 0.0, 1.0))
            counter += 1
            requests.append(
                Request(
                    time=START + dt.timedelta(seconds=float(frac) * period),
                    trace_id=f"{counter:032x}",
                    span_id=f"{counter:016x}",
                    spec=spec,
                    version=phase.version,
                    base=phase.base,
                    scores=scores,
                )
            )
    requests.sort(key=lambda r: r.time)
    return Traffic(requests, expected, specs)


def default_traffic(seed: int = 7, **kwargs: Any) -> Traffic:
    specs, exp = scenario(**kwargs)
    return generate(specs, exp, seed)


# ------------------------------------------------------------------ writers


def _iso(t: dt.datetime) -> str:
    return t.isoformat() + "Z"


def generation_attributes(r: Request) -> dict[str, Any]:
    spec = r.spec
    attrs: dict[str, Any] = {
        semconv.GEN_AI_OPERATION_NAME: semconv.GEN_AI_OPERATION_TEXT_COMPLETION,
        semconv.GEN_AI_PROVIDER_NAME: semconv.GEN_AI_PROVIDER_TRANSFORMERS,
        semconv.GEN_AI_REQUEST_MODEL: BASE_NAME,
        semconv.GEN_AI_RESPONSE_MODEL: f"{BASE_NAME}+ptune:{r.adapter_hash[7:19]}",
        semconv.GEN_AI_RESPONSE_ID: f"resp-{r.span_id}",
        semconv.GEN_AI_USAGE_INPUT_TOKENS: 24,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 12,
        semconv.PTUNE_USAGE_VIRTUAL_TOKENS: 20,
        semconv.PTUNE_ADAPTER_HASH: r.adapter_hash,
        semconv.PTUNE_ADAPTER_NAME: spec.adapter,
        semconv.PTUNE_ADAPTER_VERSION: r.version,
        semconv.PTUNE_BASE_MODEL_NAME: BASE_NAME,
        semconv.PTUNE_BASE_MODEL_FINGERPRINT: r.base_fingerprint,
    }
    if spec.tenant:
        attrs[semconv.PTUNE_TENANT] = spec.tenant
    if spec.deployment:
        attrs[semconv.PTUNE_DEPLOYMENT] = spec.deployment
    if spec.traffic:
        attrs[semconv.PTUNE_TRAFFIC] = spec.traffic
    return attrs


def lineage_spans() -> list[dict[str, Any]]:
    """ptune.train / ptune.checkpoint / ptune.eval / ptune.rollout spans for acme-support."""
    a = base_fingerprint("a")
    out = []
    for version, day in ((1, -3), (2, 3)):
        h = adapter_hash("acme-support", version)
        run = f"run-acme-{version}"
        t0 = START + dt.timedelta(days=day)
        trace = hashlib.md5(run.encode()).hexdigest()
        parent = adapter_hash("acme-support", version - 1) if version > 1 else None
        train_attrs = {
            semconv.PTUNE_TRAIN_RUN_ID: run,
            semconv.PTUNE_ADAPTER_NAME: "acme-support",
            semconv.PTUNE_ADAPTER_METHOD: semconv.METHOD_PROMPT_TUNING,
            semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS: 20,
            semconv.PTUNE_BASE_MODEL_NAME: BASE_NAME,
            semconv.PTUNE_BASE_MODEL_FINGERPRINT: a,
            semconv.PTUNE_TRAIN_DATASET_HASH: f"sha256:{'d' * 64}",
            semconv.PTUNE_ADAPTER_HASH: h,
        }
        if parent:
            train_attrs[semconv.PTUNE_ADAPTER_PARENT_HASH] = parent
        out.append(
            {
                "time": t0,
                "trace_id": trace,
                "span_id": trace[:16],
                "parent": "",
                "name": semconv.SPAN_TRAIN,
                "duration_s": 600.0,
                "attrs": train_attrs,
                "events": [],
            }
        )
        out.append(
            {
                "time": t0 + dt.timedelta(seconds=590),
                "trace_id": trace,
                "span_id": trace[16:],
                "parent": trace[:16],
                "name": semconv.SPAN_CHECKPOINT,
                "duration_s": 0.1,
                "attrs": {
                    semconv.PTUNE_ADAPTER_HASH: h,
                    semconv.PTUNE_ADAPTER_NAME: "acme-support",
                    semconv.PTUNE_ADAPTER_VERSION: version,
                    semconv.PTUNE_TRAIN_RUN_ID: run,
                    semconv.PTUNE_TRAIN_STEP: 500,
                    **({semconv.PTUNE_ADAPTER_PARENT_HASH: parent} if parent else {}),
                },
                "events": [],
            }
        )
        etrace = hashlib.md5(f"eval-{run}".encode()).hexdigest()
        out.append(
            {
                "time": t0 + dt.timedelta(hours=1),
                "trace_id": etrace,
                "span_id": etrace[:16],
                "parent": "",
                "name": semconv.SPAN_EVAL,
                "duration_s": 30.0,
                "attrs": {
                    semconv.PTUNE_ADAPTER_HASH: h,
                    semconv.PTUNE_EVAL_RUN_ID: f"eval-{run}",
                    semconv.PTUNE_EVAL_DATASET_HASH: f"sha256:{'e' * 64}",
                    semconv.PTUNE_TRAFFIC: semconv.TRAFFIC_EVAL,
                },
                "events": [
                    {
                        "name": semconv.EVENT_EVAL_METRIC,
                        "attrs": {
                            semconv.GEN_AI_EVALUATION_NAME: "exact_match",
                            semconv.PTUNE_EVAL_MEAN: 0.8 if version == 1 else 0.6,
                            semconv.PTUNE_EVAL_WORST_DECILE: 0.0,
                            semconv.PTUNE_EVAL_N: 200,
                        },
                    }
                ],
            }
        )
        rtrace = hashlib.md5(f"rollout-{run}".encode()).hexdigest()
        out.append(
            {
                "time": START + dt.timedelta(days=0 if version == 1 else DAYS * 0.5),
                "trace_id": rtrace,
                "span_id": rtrace[:16],
                "parent": "",
                "name": semconv.SPAN_ROLLOUT,
                "duration_s": 0.01,
                "attrs": {
                    semconv.PTUNE_DEPLOYMENT: "support@prod",
                    semconv.PTUNE_TENANT: "acme",
                    semconv.PTUNE_ADAPTER_HASH: h,
                    **({semconv.PTUNE_ADAPTER_PREVIOUS_HASH: parent} if parent else {}),
                },
                "events": [],
            }
        )
    return out


_PROMOTED = {
    "adapter_hash": semconv.PTUNE_ADAPTER_HASH,
    "adapter_name": semconv.PTUNE_ADAPTER_NAME,
    "adapter_version": semconv.PTUNE_ADAPTER_VERSION,
    "deployment": semconv.PTUNE_DEPLOYMENT,
    "tenant": semconv.PTUNE_TENANT,
    "traffic": semconv.PTUNE_TRAFFIC,
    "base_model_name": semconv.PTUNE_BASE_MODEL_NAME,
    "base_fingerprint": semconv.PTUNE_BASE_MODEL_FINGERPRINT,
    "operation": semconv.GEN_AI_OPERATION_NAME,
    "request_model": semconv.GEN_AI_REQUEST_MODEL,
    "response_id": semconv.GEN_AI_RESPONSE_ID,
    "input_tokens": semconv.GEN_AI_USAGE_INPUT_TOKENS,
    "output_tokens": semconv.GEN_AI_USAGE_OUTPUT_TOKENS,
    "virtual_tokens": semconv.PTUNE_USAGE_VIRTUAL_TOKENS,
    "train_run_id": semconv.PTUNE_TRAIN_RUN_ID,
}


def _span_row(
    time: dt.datetime,
    trace_id: str,
    span_id: str,
    parent: str,
    name: str,
    duration_s: float,
    attrs: dict[str, Any],
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "Timestamp": time,
        "TraceId": trace_id,
        "SpanId": span_id,
        "ParentSpanId": parent,
        "TraceState": "",
        "SpanName": name,
        "SpanKind": "Internal",
        "ServiceName": "traffic-generator",
        "ResourceAttributes": json.dumps({"service.name": "traffic-generator"}),
        "ScopeName": semconv.INSTRUMENTATION_NAME,
        "ScopeVersion": "0.1.0",
        "SpanAttributes": json.dumps(attrs),
        "Duration": int(duration_s * 1e9),
        "StatusCode": "Unset",
        "StatusMessage": "",
        "Events": json.dumps(
            [{"Timestamp": _iso(time), "Name": e["name"], "Attributes": e["attrs"]} for e in events]
        ),
        "Links": "[]",
    }
    for column, key in _PROMOTED.items():
        row[column] = attrs.get(key)
    return row


def write_duckdb(path: str | Path, traffic: Traffic, *, lineage: bool = True) -> Path:
    """Store the traffic in a new DuckDB file with the collector's schema (as the collector would)."""
    import duckdb
    import pyarrow as pa

    from trace_ptune.collector.schema import MIGRATIONS

    path = Path(path)
    con = duckdb.connect(str(path))
    try:
        for _, statements in MIGRATIONS:
            for ddl in statements:
                con.execute(ddl)
        spans: list[dict[str, Any]] = []
        evals: list[dict[str, Any]] = []
        for r in traffic.requests:
            attrs = generation_attributes(r)
            events = []
            late = r.spec.late_scores
            for metric, value in r.scores.items():
                if not late:
                    events.append(
                        {
                            "name": semconv.EVENT_EVALUATION_RESULT,
                            "attrs": {
                                semconv.GEN_AI_EVALUATION_NAME: metric,
                                semconv.GEN_AI_EVALUATION_SCORE_VALUE: value,
                            },
                        }
                    )
                evals.append(
                    {
                        # a late score is recorded an hour after the generation, and (like a log
                        # event from another process) carries no copy of the span's columns
                        "Timestamp": r.time + dt.timedelta(hours=1 if late else 0, milliseconds=5),
                        "TraceId": r.trace_id,
                        "SpanId": r.span_id,
                        "EvalSpanId": None,
                        "source": "log" if late else "span_event",
                        "name": metric,
                        "score_value": value,
                        "score_label": None,
                        "explanation": None,
                        "response_id": attrs[semconv.GEN_AI_RESPONSE_ID],
                        "adapter_hash": None if late else r.adapter_hash,
                        "adapter_name": None if late else r.spec.adapter,
                        "deployment": None if late else r.spec.deployment,
                        "tenant": None if late else r.spec.tenant,
                        "traffic": None if late else r.spec.traffic,
                        "base_fingerprint": None if late else r.base_fingerprint,
                        "ServiceName": "traffic-generator",
                        "Attributes": "{}",
                    }
                )
            spans.append(
                _span_row(
                    r.time,
                    r.trace_id,
                    r.span_id,
                    "",
                    semconv.generation_span_name(semconv.GEN_AI_OPERATION_TEXT_COMPLETION, BASE_NAME),
                    0.2,
                    attrs,
                    events,
                )
            )
        if lineage:
            for s in lineage_spans():
                spans.append(
                    _span_row(
                        s["time"],
                        s["trace_id"],
                        s["span_id"],
                        s["parent"],
                        s["name"],
                        s["duration_s"],
                        s["attrs"],
                        s["events"],
                    )
                )
        for table, rows in (("spans", spans), ("evaluations", evals), ("adapters", traffic.adapters())):
            if not rows:
                continue
            arrow = pa.Table.from_pylist(rows)
            con.register("incoming", arrow)
            cols = ", ".join(f'"{c}"' for c in arrow.column_names)
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming")
            con.unregister("incoming")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return path


def send_otel(traffic: Traffic, tracer_provider: Any, logger_provider: Any | None = None) -> int:
    """Emit the traffic through the OpenTelemetry SDK: one span per generation with its scores as
    ``gen_ai.evaluation.result`` span events; late scores as log events in the span's context."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    tracer = tracer_provider.get_tracer(semconv.INSTRUMENTATION_NAME, schema_url=semconv.SCHEMA_URL)
    otel_logger = logger_provider.get_logger(semconv.INSTRUMENTATION_NAME) if logger_provider else None
    epoch = dt.datetime(1970, 1, 1)
    late: list[tuple[Request, Any]] = []
    for r in traffic.requests:
        start_ns = int((r.time - epoch).total_seconds() * 1e9)
        span = tracer.start_span(
            semconv.generation_span_name(semconv.GEN_AI_OPERATION_TEXT_COMPLETION, BASE_NAME),
            attributes=generation_attributes(r),
            start_time=start_ns,
        )
        if r.spec.late_scores and otel_logger is not None:
            late.append((r, span.get_span_context()))
        else:
            for metric, value in r.scores.items():
                span.add_event(
                    semconv.EVENT_EVALUATION_RESULT,
                    {semconv.GEN_AI_EVALUATION_NAME: metric, semconv.GEN_AI_EVALUATION_SCORE_VALUE: value},
                    timestamp=start_ns + 5_000_000,
                )
        span.end(end_time=start_ns + 200_000_000)
    for r, ctx in late:
        parent = trace.set_span_in_context(
            NonRecordingSpan(SpanContext(ctx.trace_id, ctx.span_id, False, TraceFlags(TraceFlags.SAMPLED)))
        )
        for metric, value in r.scores.items():
            _emit_log(otel_logger, parent, r, metric, value, epoch)
    return len(traffic.requests)


def _emit_log(
    otel_logger: Any, context: Any, r: Request, metric: str, value: float, epoch: dt.datetime
) -> None:
    ts = int((r.time + dt.timedelta(hours=1) - epoch).total_seconds() * 1e9)
    otel_logger.emit(
        timestamp=ts,
        context=context,
        event_name=semconv.EVENT_EVALUATION_RESULT,
        attributes={semconv.GEN_AI_EVALUATION_NAME: metric, semconv.GEN_AI_EVALUATION_SCORE_VALUE: value},
    )
