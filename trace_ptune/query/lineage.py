"""Lineage of an adapter: training run -> checkpoint -> eval -> rollout -> production.

``lineage(source, "support")`` follows every version of a name; a hash (or ``name@version``)
follows that version and its ancestors through ``parent_hash``. One row per stage, in time order.
"""

from __future__ import annotations

from typing import Any

from trace_ptune import semconv
from trace_ptune.query._common import iso_from_us, short_hash
from trace_ptune.query.adapters import json_value, resolve_adapter
from trace_ptune.query.source import Source

STAGE_TRAIN = "train"
STAGE_CHECKPOINT = "checkpoint"
STAGE_EVAL = "eval"
STAGE_ROLLOUT = "rollout"
STAGE_PRODUCTION = "production"
_STAGE_OF_SPAN = {
    semconv.SPAN_TRAIN: STAGE_TRAIN,
    semconv.SPAN_CHECKPOINT: STAGE_CHECKPOINT,
    semconv.SPAN_EVAL: STAGE_EVAL,
    semconv.SPAN_ROLLOUT: STAGE_ROLLOUT,
}
_ORDER = {
    s: i for i, s in enumerate((STAGE_TRAIN, STAGE_CHECKPOINT, STAGE_EVAL, STAGE_ROLLOUT, STAGE_PRODUCTION))
}


def _ancestors(source: Source, hashes: list[str]) -> list[str]:
    """``hashes`` plus every parent reachable through the adapters table and checkpoint spans."""
    seen = list(hashes)
    frontier = list(hashes)
    while frontier:
        marks = ", ".join("?" for _ in frontier)
        sql = f"""
        SELECT parent_hash FROM {semconv.TABLE_ADAPTERS} WHERE adapter_hash IN ({marks})
        UNION
        SELECT json_extract_string(SpanAttributes, '$."{semconv.PTUNE_ADAPTER_PARENT_HASH}"')
        FROM {semconv.TABLE_SPANS}
        WHERE SpanName IN ('{semconv.SPAN_CHECKPOINT}', '{semconv.SPAN_TRAIN}') AND adapter_hash IN ({marks})
        """
        parents = [r[0] for r in source.query(sql, frontier * 2)[1] if r[0]]
        frontier = [p for p in parents if p not in seen]
        seen.extend(frontier)
    return seen


def lineage(source: Source, ref: str) -> list[dict[str, Any]]:
    """Stage rows for the adapter(s) ``ref`` names; see the module doc."""
    matches = resolve_adapter(source, ref)
    hashes = [m["adapter_hash"] for m in matches]
    if len(matches) == 1:
        hashes = _ancestors(source, hashes)
    marks = ", ".join("?" for _ in hashes)
    names = {m["adapter_hash"]: (m["adapter_name"], m["adapter_version"]) for m in matches}
    known = f"SELECT adapter_hash, adapter_name, adapter_version FROM {semconv.TABLE_ADAPTERS} WHERE adapter_hash IN ({marks})"
    for h, name, version in source.query(known, hashes)[1]:
        names.setdefault(h, (name, version))

    span_sql = f"""
    WITH runs AS (
        SELECT DISTINCT train_run_id FROM {semconv.TABLE_SPANS}
        WHERE SpanName = '{semconv.SPAN_CHECKPOINT}' AND adapter_hash IN ({marks}) AND train_run_id IS NOT NULL
    )
    SELECT SpanName, epoch_us(Timestamp) AS t, TraceId, SpanId, adapter_hash, adapter_name,
           adapter_version, train_run_id, deployment, tenant, Duration, StatusCode,
           SpanAttributes, Events
    FROM {semconv.TABLE_SPANS}
    WHERE SpanName IN ({", ".join(f"'{n}'" for n in _STAGE_OF_SPAN)})
      AND (adapter_hash IN ({marks}) OR train_run_id IN (SELECT train_run_id FROM runs))
    ORDER BY Timestamp
    """
    rows: list[dict[str, Any]] = []
    run_hash: dict[str, str] = {}
    for s in source.dicts(span_sql, hashes * 2):
        attrs = json_value(s["SpanAttributes"]) or {}
        stage = _STAGE_OF_SPAN[s["SpanName"]]
        h = s["adapter_hash"]
        if stage == STAGE_CHECKPOINT and s["train_run_id"] and h:
            run_hash[s["train_run_id"]] = h
        row: dict[str, Any] = {
            "stage": stage,
            "time": iso_from_us(s["t"]),
            "adapter_hash": h,
            "adapter_name": s["adapter_name"] or attrs.get(semconv.PTUNE_ADAPTER_NAME),
            "adapter_version": s["adapter_version"],
            "trace_id": s["TraceId"],
            "span_id": s["SpanId"],
            "status": s["StatusCode"],
            "duration_s": (s["Duration"] or 0) / 1e9,
        }
        if stage == STAGE_TRAIN:
            row["run_id"] = s["train_run_id"] or attrs.get(semconv.PTUNE_TRAIN_RUN_ID)
            row["dataset_hash"] = attrs.get(semconv.PTUNE_TRAIN_DATASET_HASH)
            row["parent_hash"] = attrs.get(semconv.PTUNE_ADAPTER_PARENT_HASH)
            row["base_model_name"] = attrs.get(semconv.PTUNE_BASE_MODEL_NAME)
            row["base_fingerprint"] = attrs.get(semconv.PTUNE_BASE_MODEL_FINGERPRINT)
            row["method"] = attrs.get(semconv.PTUNE_ADAPTER_METHOD)
            row["detail"] = (
                f"run {row['run_id']}, {row['duration_s']:.0f}s, data {short_hash(row['dataset_hash'])}"
            )
        elif stage == STAGE_CHECKPOINT:
            row["run_id"] = s["train_run_id"]
            row["step"] = attrs.get(semconv.PTUNE_TRAIN_STEP)
            row["parent_hash"] = attrs.get(semconv.PTUNE_ADAPTER_PARENT_HASH)
            row["detail"] = f"saved as {row['adapter_name']}@{row['adapter_version']} at step {row['step']}"
        elif stage == STAGE_EVAL:
            row["run_id"] = attrs.get(semconv.PTUNE_EVAL_RUN_ID)
            row["dataset_hash"] = attrs.get(semconv.PTUNE_EVAL_DATASET_HASH)
            row["metrics"] = _eval_metrics(json_value(s["Events"]) or [])
            row["detail"] = (
                ", ".join(
                    f"{m}={_fmt(v.get('mean'))} (worst10% {_fmt(v.get('worst_decile'))}, n={v.get('n')})"
                    for m, v in row["metrics"].items()
                )
                or f"eval {row['run_id']}"
            )
        else:
            row["deployment"] = s["deployment"] or attrs.get(semconv.PTUNE_DEPLOYMENT)
            row["tenant"] = s["tenant"] or attrs.get(semconv.PTUNE_TENANT)
            row["previous_hash"] = attrs.get(semconv.PTUNE_ADAPTER_PREVIOUS_HASH)
            canary = attrs.get(semconv.PTUNE_ROLLOUT_CANARY_PERCENT)
            row["canary_percent"] = canary
            row["detail"] = (
                f"promoted to {row['deployment']}"
                + (f" for {row['tenant']}" if row["tenant"] else "")
                + (f" ({canary}% canary)" if canary is not None else "")
                + (f", replacing {short_hash(row['previous_hash'])}" if row["previous_hash"] else "")
            )
        rows.append(row)
    for row in rows:  # a train span ends with the hash; older runs only name it on the checkpoint
        if row["stage"] == STAGE_TRAIN and not row["adapter_hash"]:
            row["adapter_hash"] = run_hash.get(row.get("run_id") or "")

    rows.extend(_production(source, hashes, marks))
    for row in rows:
        name, version = names.get(row["adapter_hash"], (None, None))
        row["adapter_name"] = row.get("adapter_name") or name
        row["adapter_version"] = (
            row.get("adapter_version") if row.get("adapter_version") is not None else version
        )
    rows.sort(key=lambda r: (r["time"] or "", _ORDER.get(r["stage"], len(_ORDER))))
    return rows


def _eval_metrics(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("Name") != semconv.EVENT_EVAL_METRIC:
            continue
        attrs = event.get("Attributes") or {}
        metric = attrs.get(semconv.GEN_AI_EVALUATION_NAME)
        if metric:
            out[metric] = {
                "mean": attrs.get(semconv.PTUNE_EVAL_MEAN),
                "worst_decile": attrs.get(semconv.PTUNE_EVAL_WORST_DECILE),
                "n": attrs.get(semconv.PTUNE_EVAL_N),
            }
    return out


def _production(source: Source, hashes: list[str], marks: str) -> list[dict[str, Any]]:
    """One row per (adapter, traffic kind, tenant, deployment) that served generations."""
    sql = f"""
    WITH gen AS (
        SELECT adapter_hash, any_value(adapter_name) AS adapter_name, max(adapter_version) AS adapter_version,
               coalesce(traffic, '{semconv.TRAFFIC_PRODUCTION}') AS traffic, tenant, deployment,
               epoch_us(min(Timestamp)) AS first_t, epoch_us(max(Timestamp)) AS last_t, count(*) AS requests,
               any_value(base_fingerprint) AS base_fingerprint
        FROM {semconv.TABLE_SPANS}
        WHERE operation IS NOT NULL AND adapter_hash IN ({marks})
        GROUP BY adapter_hash, coalesce(traffic, '{semconv.TRAFFIC_PRODUCTION}'), tenant, deployment
    )
    SELECT * FROM gen ORDER BY first_t
    """
    score_sql = f"""
    SELECT adapter_hash, coalesce(traffic, '{semconv.TRAFFIC_PRODUCTION}') AS traffic, tenant, deployment,
           name, avg(score_value) AS mean, count(*) AS n
    FROM {semconv.TABLE_EVALUATIONS}
    WHERE adapter_hash IN ({marks}) AND score_value IS NOT NULL
    GROUP BY ALL ORDER BY name
    """
    scores: dict[tuple[Any, ...], dict[str, float]] = {}
    for h, traffic, tenant, deployment, metric, mean, _n in source.query(score_sql, hashes)[1]:
        scores.setdefault((h, traffic, tenant, deployment), {})[metric] = float(mean)
    rows = []
    for g in source.dicts(sql, hashes):
        key = (g["adapter_hash"], g["traffic"], g["tenant"], g["deployment"])
        stage_scores = scores.get(key, {})
        where = "/".join(x for x in (g["tenant"], g["deployment"]) if x) or "(no deployment)"
        rows.append(
            {
                "stage": STAGE_PRODUCTION if g["traffic"] == semconv.TRAFFIC_PRODUCTION else g["traffic"],
                "time": iso_from_us(g["first_t"]),
                "adapter_hash": g["adapter_hash"],
                "adapter_name": g["adapter_name"],
                "adapter_version": g["adapter_version"],
                "traffic": g["traffic"],
                "tenant": g["tenant"],
                "deployment": g["deployment"],
                "base_fingerprint": g["base_fingerprint"],
                "first_seen": iso_from_us(g["first_t"]),
                "last_seen": iso_from_us(g["last_t"]),
                "requests": int(g["requests"]),
                "scores": stage_scores,
                "detail": f"{int(g['requests'])} {g['traffic']} requests on {where} until {iso_from_us(g['last_t'])}"
                + "".join(f", {m}={v:.3f}" for m, v in stage_scores.items()),
            }
        )
    return rows


def _fmt(value: object) -> str:
    """A metric value for the detail column; absent values (older senders) print as '-'."""
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
