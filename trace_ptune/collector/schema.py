"""The DuckDB schema: table and column names are a contract (dashboards and users' SQL use them).

Column names of ``spans`` follow the OpenTelemetry Collector's ClickHouse exporter
(``otel_traces``) so dashboards port with small changes; the snake_case columns after them are
promoted from attributes because every query filters on them. Attributes, events and links are
JSON text: DuckDB's appender takes ~400k rows/s of flat/JSON columns but ~20k rows/s with
MAP/LIST<STRUCT> columns.

Timestamps are ``TIMESTAMP`` in UTC (microseconds); ``Duration`` is nanoseconds.

Migrations are numbered, forward-only, and applied in order inside one transaction each; the
applied version lives in ``schema_migrations``. Never edit a released migration: add one.
"""

from __future__ import annotations

import re
from typing import Final

SPANS_DDL: Final = """
CREATE TABLE IF NOT EXISTS spans (
    Timestamp          TIMESTAMP NOT NULL,   -- span start, UTC
    TraceId            VARCHAR NOT NULL,     -- 32 lowercase hex
    SpanId             VARCHAR NOT NULL,     -- 16 lowercase hex
    ParentSpanId       VARCHAR,              -- '' or NULL for roots
    TraceState         VARCHAR,
    SpanName           VARCHAR NOT NULL,
    SpanKind           VARCHAR,              -- Internal, Server, Client, Producer, Consumer, Unspecified
    ServiceName        VARCHAR,
    ResourceAttributes JSON,
    ScopeName          VARCHAR,
    ScopeVersion       VARCHAR,
    SpanAttributes     JSON,
    Duration           BIGINT,               -- nanoseconds
    StatusCode         VARCHAR,              -- Unset, Ok, Error
    StatusMessage      VARCHAR,
    Events             JSON,                 -- [{"Timestamp": iso, "Name": str, "Attributes": {...}}]
    Links              JSON,                 -- [{"TraceId", "SpanId", "TraceState", "Attributes"}]
    -- promoted from attributes
    adapter_hash       VARCHAR,              -- ptune.adapter.hash
    adapter_name       VARCHAR,              -- ptune.adapter.name
    adapter_version    INTEGER,              -- ptune.adapter.version
    deployment         VARCHAR,              -- ptune.deployment
    tenant             VARCHAR,              -- ptune.tenant
    traffic            VARCHAR,              -- ptune.traffic (NULL means production)
    base_model_name    VARCHAR,              -- ptune.base_model.name
    base_fingerprint   VARCHAR,              -- ptune.base_model.fingerprint
    operation          VARCHAR,              -- gen_ai.operation.name
    request_model      VARCHAR,              -- gen_ai.request.model
    response_id        VARCHAR,              -- gen_ai.response.id
    input_tokens       BIGINT,               -- gen_ai.usage.input_tokens
    output_tokens      BIGINT,               -- gen_ai.usage.output_tokens
    virtual_tokens     BIGINT,               -- ptune.usage.virtual_tokens
    train_run_id       VARCHAR               -- ptune.train.run_id
)
"""

EVALUATIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS evaluations (
    Timestamp          TIMESTAMP NOT NULL,   -- when the score was recorded, UTC
    TraceId            VARCHAR,              -- trace of the scored span
    SpanId             VARCHAR,              -- the scored (generation) span
    EvalSpanId         VARCHAR,              -- the evaluation span itself (child-span encoding)
    source             VARCHAR NOT NULL,     -- 'span_event' | 'log' | 'span'
    name               VARCHAR NOT NULL,     -- gen_ai.evaluation.name (the metric)
    score_value        DOUBLE,               -- gen_ai.evaluation.score.value
    score_label        VARCHAR,              -- gen_ai.evaluation.score.label
    explanation        VARCHAR,              -- gen_ai.evaluation.explanation
    response_id        VARCHAR,              -- gen_ai.response.id
    -- copied from the evaluation or, when missing, from the scored span
    adapter_hash       VARCHAR,
    adapter_name       VARCHAR,
    deployment         VARCHAR,
    tenant             VARCHAR,
    traffic            VARCHAR,
    base_fingerprint   VARCHAR,
    ServiceName        VARCHAR,
    Attributes         JSON
)
"""

ADAPTERS_DDL: Final = """
CREATE TABLE IF NOT EXISTS adapters (
    adapter_hash       VARCHAR PRIMARY KEY,  -- sha256:<64 hex>
    adapter_name       VARCHAR,
    adapter_version    INTEGER,
    parent_hash        VARCHAR,
    method             VARCHAR,
    num_virtual_tokens INTEGER,
    base_model_name    VARCHAR,
    base_fingerprint   VARCHAR,
    first_seen         TIMESTAMP,
    last_seen          TIMESTAMP
)
"""

METRICS_DDL: Final = """
CREATE TABLE IF NOT EXISTS metrics (
    Timestamp          TIMESTAMP NOT NULL,
    StartTimestamp     TIMESTAMP,
    ServiceName        VARCHAR,
    ResourceAttributes JSON,
    ScopeName          VARCHAR,
    MetricName         VARCHAR NOT NULL,
    MetricDescription  VARCHAR,
    MetricUnit         VARCHAR,
    MetricType         VARCHAR NOT NULL,     -- Gauge, Sum, Histogram, ExponentialHistogram, Summary
    Attributes         JSON,
    Value              DOUBLE,               -- gauge/sum value
    Count              BIGINT,               -- histogram/summary
    Sum                DOUBLE,
    Min                DOUBLE,
    Max                DOUBLE,
    BucketCounts       JSON,
    ExplicitBounds     JSON,
    IsMonotonic        BOOLEAN,
    AggregationTemporality VARCHAR
)
"""

LOGS_DDL: Final = """
CREATE TABLE IF NOT EXISTS logs (
    Timestamp          TIMESTAMP NOT NULL,
    ObservedTimestamp  TIMESTAMP,
    TraceId            VARCHAR,
    SpanId             VARCHAR,
    SeverityText       VARCHAR,
    SeverityNumber     INTEGER,
    ServiceName        VARCHAR,
    ResourceAttributes JSON,
    ScopeName          VARCHAR,
    EventName          VARCHAR,
    Body               JSON,
    LogAttributes      JSON
)
"""


def _rebuild(table: str, ddl: str, version: int, zstd: tuple[str, ...] | None) -> tuple[str, ...]:
    """Statements that copy ``table`` into a new one whose JSON columns named in ``zstd`` (every
    JSON column when None) are compressed with ZSTD; the other columns keep DuckDB's choice.

    Same column names, types and order; only the storage changes. DuckDB cannot change a
    column's compression in place, so the table is copied.
    """
    new = f"{table}__ptune_v{version}"
    body = ddl.replace(f"CREATE TABLE IF NOT EXISTS {table} (", f"CREATE TABLE {new} (", 1)

    def compress(m: re.Match[str]) -> str:
        if zstd is not None and m.group(2) not in zstd:
            return m.group(0)
        return f"{m.group(1)}JSON USING COMPRESSION zstd{m.group(3)}{m.group(4)}"

    body = re.sub(r"^(\s*(\w+)\s+)JSON(,?)(\s*--|\s*$)", compress, body, flags=re.M)
    return (
        body,
        f"INSERT INTO {new} SELECT * FROM {table}",
        f"DROP TABLE {table}",
        f"ALTER TABLE {new} RENAME TO {table}",
    )


def _zstd_rebuild(table: str, ddl: str) -> tuple[str, ...]:
    """Migration 2: every JSON column with ZSTD. DuckDB's default string compression (dictionary
    + FSST) stores the attribute JSON of a typical span in ~128 bytes and its events in ~44; ZSTD
    stores them in ~18 and ~9, at about the same insert and scan cost."""
    return _rebuild(table, ddl, 2, None)


# (version, statements). Forward-only.
MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (1, (SPANS_DDL, EVALUATIONS_DDL, ADAPTERS_DDL, METRICS_DDL, LOGS_DDL)),
    # 2: JSON columns of the signal tables stored with ZSTD (about 250 -> 100 bytes per span).
    (
        2,
        (
            *_zstd_rebuild("spans", SPANS_DDL),
            *_zstd_rebuild("evaluations", EVALUATIONS_DDL),
            *_zstd_rebuild("metrics", METRICS_DDL),
            *_zstd_rebuild("logs", LOGS_DDL),
        ),
    ),
    # 3: ZSTD only where values are long and differ from row to row. A ZSTD column takes whole
    # 256 KB blocks per row group whatever its contents, so on columns that are nearly constant
    # (resource attributes, links, an evaluation's extra attributes, metric attributes and
    # buckets) it cost ~5 bytes per span where DuckDB's own choice costs ~0.1.
    (
        3,
        (
            *_rebuild("spans", SPANS_DDL, 3, ("SpanAttributes", "Events")),
            *_rebuild("evaluations", EVALUATIONS_DDL, 3, ()),
            *_rebuild("metrics", METRICS_DDL, 3, ()),
            *_rebuild("logs", LOGS_DDL, 3, ("Body", "LogAttributes")),
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1][0]
