"""Build the Grafana dashboards (JSON) for trace-ptune's collector.

The dashboards read the collector's DuckDB tables through its read-only Postgres-wire endpoint,
using Grafana's built-in PostgreSQL data source and raw SQL panels. Table and column names are
the storage contract (``trace_ptune/collector/schema.py``).

    python dashboards/build.py        # rewrites dashboards/grafana/*.json

Every panel's SQL is checked by ``tests/dashboards``: Grafana's macros are expanded the way
Grafana expands them, the SQL runs through the Postgres-wire endpoint with psycopg against the
demo's data, and the result has the columns the panel type needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "grafana"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "trace-ptune"}

# Generation spans: the GenAI operation is set; production traffic is NULL or 'production'.
GEN = "operation IS NOT NULL"
PROD = "coalesce(traffic, 'production') = 'production'"
TENANT = "(coalesce(tenant, '') IN (${tenant:sqlstring}) OR '__all' IN (${tenant:sqlstring}))"
ADAPTER_LABEL = "coalesce(adapter_name, 'base') || '@' || coalesce(CAST(adapter_version AS VARCHAR), left(coalesce(adapter_hash, ''), 19))"


def attr(key: str, cast: str = "DOUBLE") -> str:
    """An attribute from the SpanAttributes JSON (keys contain dots, so they are quoted)."""
    return f"CAST(json_extract_string(SpanAttributes, '$.\"{key}\"') AS {cast})"


def panel(
    title: str, sql: str, kind: str, x: int, y: int, w: int = 12, h: int = 8, fmt: str = "table", **extra: Any
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "rawQuery": True,
                "editorMode": "code",
                "format": fmt,
                "rawSql": sql.strip(),
            }
        ],
    }
    p.update(extra)
    return p


def variables() -> list[dict[str, Any]]:
    return [
        {
            "name": "tenant",
            "label": "Tenant",
            "type": "query",
            "datasource": DATASOURCE,
            "query": "SELECT DISTINCT coalesce(tenant, '') AS __text FROM spans WHERE tenant IS NOT NULL ORDER BY 1",
            "includeAll": True,
            "allValue": "__all",
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "refresh": 2,
        }
    ]


def rollout_annotation() -> dict[str, Any]:
    return {
        "name": "Rollouts",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": "orange",
        "target": {
            "refId": "Anno",
            "rawQuery": True,
            "format": "table",
            "rawSql": (
                "SELECT Timestamp AS time, 'rollout ' || coalesce(deployment, '?') || ' -> ' || "
                "left(coalesce(adapter_hash, ''), 19) AS text, coalesce(tenant, '') AS tags "
                "FROM spans WHERE SpanName = 'ptune.rollout' AND $__timeFilter(Timestamp) ORDER BY 1"
            ),
        },
    }


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], annotations: bool = True) -> dict[str, Any]:
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "uid": uid,
        "title": title,
        "tags": ["trace-ptune"],
        "timezone": "utc",
        "schemaVersion": 39,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": variables()},
        "annotations": {"list": [rollout_annotation()] if annotations else []},
        "panels": panels,
    }


def adapter_overview() -> dict[str, Any]:
    return dashboard(
        "ptune-adapters",
        "trace-ptune / Adapter overview",
        [
            panel(
                "Adapters",
                """
SELECT a.adapter_name AS name, a.adapter_version AS version, left(a.adapter_hash, 19) AS hash,
       left(coalesce(a.parent_hash, ''), 19) AS parent, a.method, a.base_model_name AS base_model,
       a.first_seen, a.last_seen,
       (SELECT count(*) FROM spans s WHERE s.adapter_hash = a.adapter_hash AND s.operation IS NOT NULL
          AND coalesce(s.traffic, 'production') = 'production') AS requests,
       (SELECT avg(e.score_value) FROM evaluations e WHERE e.adapter_hash = a.adapter_hash) AS mean_score
FROM adapters a ORDER BY a.adapter_name, a.adapter_version
""",
                "table",
                0,
                0,
                24,
                8,
            ),
            panel(
                "Production requests per adapter version",
                f"""
SELECT $__timeGroupAlias(Timestamp, '1m'), {ADAPTER_LABEL} AS metric, count(*) AS requests
FROM spans WHERE $__timeFilter(Timestamp) AND {GEN} AND {PROD} AND {TENANT}
GROUP BY 1, 2 ORDER BY 1
""",
                "timeseries",
                0,
                8,
                12,
                8,
                fmt="time_series",
            ),
            panel(
                "Mean score per adapter version and metric",
                f"""
SELECT $__timeGroupAlias(Timestamp, '1m'),
       name || ' · ' || coalesce(adapter_name, 'base') || ' ' || left(coalesce(adapter_hash, ''), 19) AS metric,
       avg(score_value) AS score
FROM evaluations WHERE $__timeFilter(Timestamp) AND {PROD} AND {TENANT}
GROUP BY 1, 2 ORDER BY 1
""",
                "timeseries",
                12,
                8,
                12,
                8,
                fmt="time_series",
            ),
            panel(
                "Scores by deployment and version",
                f"""
SELECT coalesce(tenant, '') AS tenant, coalesce(deployment, adapter_name) AS deployment,
       left(coalesce(adapter_hash, ''), 19) AS adapter, name AS metric, count(*) AS n,
       avg(score_value) AS mean, min(Timestamp) AS first_seen, max(Timestamp) AS last_seen
FROM evaluations WHERE $__timeFilter(Timestamp) AND {PROD} AND {TENANT}
GROUP BY 1, 2, 3, 4 ORDER BY 2, 7
""",
                "table",
                0,
                16,
                24,
                8,
            ),
        ],
    )


# A SQL rendering of the regression table: consecutive versions of each (tenant, deployment,
# metric) stream compared with Welch's z on the means. `trace-ptune query regressions` is the
# exact report (paired windows, change points, false-discovery-rate control); this panel and the
# alert rule give Grafana the same signal.
REGRESSIONS_SQL = f"""
WITH scored AS (
    SELECT coalesce(tenant, '') AS tenant, coalesce(deployment, adapter_name, '') AS deployment,
           name AS metric, coalesce(adapter_hash, '') AS adapter_hash,
           coalesce(base_fingerprint, '') AS base_fingerprint, score_value, Timestamp
    FROM evaluations
    WHERE $__timeFilter(Timestamp) AND {PROD} AND score_value IS NOT NULL
), versions AS (
    SELECT tenant, deployment, metric, adapter_hash, base_fingerprint, min(Timestamp) AS first_seen,
           count(*) AS n, avg(score_value) AS mean, coalesce(var_samp(score_value), 0) AS var
    FROM scored GROUP BY ALL
), paired AS (
    SELECT *, lag(adapter_hash) OVER w AS before_hash, lag(base_fingerprint) OVER w AS before_base,
           lag(mean) OVER w AS before_mean, lag(n) OVER w AS n_before, lag(var) OVER w AS before_var
    FROM versions WINDOW w AS (PARTITION BY tenant, deployment, metric ORDER BY first_seen)
)
SELECT first_seen AS changed_at, tenant, deployment, metric,
       CASE WHEN before_hash <> adapter_hash AND before_base <> base_fingerprint THEN 'adapter_and_base_changed'
            WHEN before_hash <> adapter_hash THEN 'adapter_changed'
            ELSE 'base_model_changed' END AS cause,
       left(before_hash, 19) AS before_adapter, left(adapter_hash, 19) AS after_adapter,
       before_mean, mean AS after_mean, mean - before_mean AS delta, n_before, n AS n_after,
       (mean - before_mean) / sqrt(greatest(before_var / n_before + var / n, 1e-12)) AS z
FROM paired
WHERE before_hash IS NOT NULL AND n_before >= 30 AND n >= 30
  AND (mean - before_mean) / sqrt(greatest(before_var / n_before + var / n, 1e-12)) < -3
ORDER BY changed_at DESC
"""


def regressions() -> dict[str, Any]:
    return dashboard(
        "ptune-regressions",
        "trace-ptune / Regressions",
        [
            panel("Regressions by version change (z < -3)", REGRESSIONS_SQL, "table", 0, 0, 24, 10),
            panel(
                "Score per stream over time",
                f"""
SELECT $__timeGroupAlias(Timestamp, '5m'),
       coalesce(tenant, '') || '/' || coalesce(deployment, adapter_name, '') || ' · ' || name AS metric,
       avg(score_value) AS score
FROM evaluations WHERE $__timeFilter(Timestamp) AND {PROD} AND {TENANT}
GROUP BY 1, 2 ORDER BY 1
""",
                "timeseries",
                0,
                10,
                24,
                9,
                fmt="time_series",
            ),
        ],
    )


def training() -> dict[str, Any]:
    return dashboard(
        "ptune-training",
        "trace-ptune / Training runs",
        [
            panel(
                "Training runs",
                f"""
SELECT Timestamp AS started, train_run_id AS run_id, adapter_name AS adapter,
       {attr("ptune.adapter.method", "VARCHAR")} AS method, left(coalesce(adapter_hash, ''), 19) AS result_hash,
       base_model_name AS base_model, Duration / 1e9 AS seconds, StatusCode AS status
FROM spans WHERE SpanName = 'ptune.train' AND $__timeFilter(Timestamp) ORDER BY Timestamp DESC
""",
                "table",
                0,
                0,
                24,
                7,
            ),
            panel(
                "Training loss per run",
                f"""
SELECT Timestamp AS time, coalesce(adapter_name, train_run_id) || ' ' || left(train_run_id, 8) AS metric,
       {attr("ptune.train.loss")} AS loss
FROM spans WHERE SpanName = 'ptune.train.step' AND $__timeFilter(Timestamp) ORDER BY 1
""",
                "timeseries",
                0,
                7,
                12,
                8,
                fmt="time_series",
            ),
            panel(
                "Eval metrics per run",
                """
SELECT s.Timestamp AS time,
       json_extract_string(ev.value, '$.Attributes."gen_ai.evaluation.name"') || ' ' || left(coalesce(s.adapter_hash, ''), 19) AS metric,
       CAST(json_extract_string(ev.value, '$.Attributes."ptune.eval.mean"') AS DOUBLE) AS value
FROM spans s, json_each(s.Events) ev
WHERE s.SpanName = 'ptune.eval' AND $__timeFilter(s.Timestamp)
  AND json_extract_string(ev.value, '$.Name') = 'ptune.eval.metric'
ORDER BY 1
""",
                "timeseries",
                12,
                7,
                12,
                8,
                fmt="time_series",
            ),
            panel(
                "Tokens per second per run",
                f"""
SELECT Timestamp AS time, left(train_run_id, 8) AS metric, {attr("ptune.train.tokens_per_second")} AS tokens_per_second
FROM spans WHERE SpanName = 'ptune.train.step' AND $__timeFilter(Timestamp) ORDER BY 1
""",
                "timeseries",
                0,
                15,
                24,
                7,
                fmt="time_series",
            ),
        ],
        annotations=False,
    )


def latency() -> dict[str, Any]:
    return dashboard(
        "ptune-latency",
        "trace-ptune / Latency and tokens",
        [
            panel(
                "Latency p50 / p95 per adapter (ms)",
                f"""
SELECT $__timeGroupAlias(Timestamp, '1m'), {ADAPTER_LABEL} || ' p50' AS metric,
       quantile_cont(Duration / 1e6, 0.5) AS ms
FROM spans WHERE $__timeFilter(Timestamp) AND {GEN} AND {TENANT} GROUP BY 1, 2
UNION ALL
SELECT $__timeGroupAlias(Timestamp, '1m'), {ADAPTER_LABEL} || ' p95' AS metric,
       quantile_cont(Duration / 1e6, 0.95) AS ms
FROM spans WHERE $__timeFilter(Timestamp) AND {GEN} AND {TENANT} GROUP BY 1, 2
ORDER BY 1
""",
                "timeseries",
                0,
                0,
                12,
                8,
                fmt="time_series",
            ),
            panel(
                "Tokens per tenant",
                f"""
SELECT $__timeGroupAlias(Timestamp, '1m'), coalesce(tenant, '(none)') AS metric,
       sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens
FROM spans WHERE $__timeFilter(Timestamp) AND {GEN} AND {TENANT} GROUP BY 1, 2 ORDER BY 1
""",
                "timeseries",
                12,
                0,
                12,
                8,
                fmt="time_series",
            ),
            panel(
                "Virtual-token overhead per adapter",
                f"""
SELECT {ADAPTER_LABEL} AS adapter, coalesce(tenant, '') AS tenant, count(*) AS requests,
       avg(virtual_tokens) AS virtual_tokens, avg(input_tokens) AS input_tokens, avg(output_tokens) AS output_tokens,
       sum(coalesce(virtual_tokens, 0)) / greatest(sum(coalesce(virtual_tokens, 0) + coalesce(input_tokens, 0)), 1) AS virtual_share,
       quantile_cont(Duration / 1e6, 0.5) AS p50_ms
FROM spans WHERE $__timeFilter(Timestamp) AND {GEN} AND {TENANT} GROUP BY 1, 2 ORDER BY 3 DESC
""",
                "table",
                0,
                8,
                24,
                8,
            ),
        ],
    )


DASHBOARDS = {
    "adapter-overview.json": adapter_overview,
    "regressions.json": regressions,
    "training-runs.json": training,
    "latency-tokens.json": latency,
}


ALERT_PATH = HERE / "provisioning" / "alerting" / "regressions.yaml"


def alert_rule() -> str:
    """Grafana alert provisioning: fires when the regressions query returns any row."""
    sql = "\n".join("                  " + line for line in REGRESSIONS_SQL.strip().splitlines())
    return f"""# Fires when a deployment's scores fell after a version change: the same SQL as the
# Regressions dashboard's table (Welch z < -3 on consecutive versions, n >= 30 each).
# Generated by dashboards/build.py.
apiVersion: 1
groups:
  - orgId: 1
    name: trace-ptune
    folder: trace-ptune
    interval: 5m
    rules:
      - uid: ptune-new-regression
        title: Soft-prompt regression
        condition: C
        for: 0m
        labels: {{severity: warning, team: ml-platform}}
        annotations:
          summary: A deployment's scores fell after an adapter or base-model change.
          description: Run `trace-ptune query regressions` for the attribution with FDR control.
        data:
          - refId: A
            datasourceUid: trace-ptune
            relativeTimeRange: {{from: 86400, to: 0}}
            model:
              refId: A
              rawQuery: true
              editorMode: code
              format: table
              rawSql: |
                SELECT count(*) AS regressions FROM (
{sql}
                ) r
          - refId: B
            datasourceUid: __expr__
            model:
              refId: B
              type: reduce
              expression: A
              reducer: last
          - refId: C
            datasourceUid: __expr__
            model:
              refId: C
              type: threshold
              expression: B
              conditions: [{{evaluator: {{type: gt, params: [0]}}}}]
"""


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (OUT / name).write_text(json.dumps(build(), indent=2) + "\n")
        print(f"wrote {OUT / name}")
    ALERT_PATH.write_text(alert_rule())
    print(f"wrote {ALERT_PATH}")


if __name__ == "__main__":
    main()
