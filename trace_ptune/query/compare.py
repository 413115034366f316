"""Two adapter versions side by side on the traffic and evals they share (``query compare``).

Production traffic counts only on streams (tenant, deployment) that both versions served; eval
traffic (golden sets, keyed by the adapter name when no deployment is set) counts whole. One row
per (traffic kind, metric): means, worst-decile means, the difference B - A with Welch's test and
its 1 - alpha confidence interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trace_ptune import semconv
from trace_ptune.query import stats
from trace_ptune.query._common import as_list
from trace_ptune.query.adapters import resolve_one
from trace_ptune.query.regressions import eval_filter_sql
from trace_ptune.query.source import Source


def compare(
    source: Source,
    a: str,
    b: str,
    *,
    metric: str | Sequence[str] | None = None,
    alpha: float = 0.01,
    lower_is_better: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Compare adapter ``a`` (baseline) with ``b`` (candidate); see the module doc."""
    ra, rb = resolve_one(source, a), resolve_one(source, b)
    ha, hb = ra["adapter_hash"], rb["adapter_hash"]
    ev_sql, params = eval_filter_sql(traffic=None, since_us=None, metrics=as_list(metric))
    prod = f"'{semconv.TRAFFIC_PRODUCTION}'"
    take = "greatest(1, ceil(count(*) * 0.1))::BIGINT"
    sql = f"""
    WITH {ev_sql},
    scoped AS (
        SELECT *, CASE WHEN traffic = {prod} THEN tenant || chr(31) || deployment ELSE '' END AS scope
        FROM ev WHERE adapter_hash IN (?, ?)
    ),
    shared AS (
        SELECT traffic, metric, scope FROM scoped GROUP BY ALL HAVING count(DISTINCT adapter_hash) = 2
    )
    SELECT s.traffic, s.metric, s.adapter_hash, count(*)::BIGINT AS n, avg(score) AS mean,
           coalesce(var_samp(score), 0.0) AS var, count(DISTINCT s.scope)::BIGINT AS streams,
           list_avg(list_slice(list_sort(list(score)), 1, {take})) AS worst_low,
           list_avg(list_slice(list_reverse_sort(list(score)), 1, {take})) AS worst_high
    FROM scoped s JOIN shared USING (traffic, metric, scope)
    GROUP BY s.traffic, s.metric, s.adapter_hash
    ORDER BY s.traffic, s.metric
    """
    side: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in source.dicts(sql, [*params, ha, hb]):
        side.setdefault((r["traffic"], r["metric"]), {})[r["adapter_hash"]] = r
    lower = set(as_list(lower_is_better))
    rows = []
    for (traffic, metric_name), by_hash in sorted(side.items()):
        sa, sb = by_hash.get(ha), by_hash.get(hb)
        if sa is None or sb is None:
            continue
        worst_key = "worst_high" if metric_name in lower else "worst_low"
        row: dict[str, Any] = {
            "traffic": traffic,
            "metric": metric_name,
            "a_hash": ha,
            "b_hash": hb,
            "a_adapter": ra["adapter_name"],
            "a_version": ra["adapter_version"],
            "b_adapter": rb["adapter_name"],
            "b_version": rb["adapter_version"],
            "streams": int(sb["streams"]) if traffic == semconv.TRAFFIC_PRODUCTION else None,
            "n_a": int(sa["n"]),
            "n_b": int(sb["n"]),
            "mean_a": sa["mean"],
            "mean_b": sb["mean"],
            "worst_decile_a": sa[worst_key],
            "worst_decile_b": sb[worst_key],
            "delta": sb["mean"] - sa["mean"],
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "test": None,
            "lower_is_better": metric_name in lower,
        }
        if sa["n"] >= 2 and sb["n"] >= 2:
            d = stats.welch(
                int(sa["n"]), sa["mean"], sa["var"], int(sb["n"]), sb["mean"], sb["var"], alpha=alpha
            )
            row.update(ci_low=d.ci_low, ci_high=d.ci_high, p_value=d.p_value, test="welch_t")
        better = row["delta"] < 0 if metric_name in lower else row["delta"] > 0
        significant = row["p_value"] is not None and row["p_value"] < alpha
        row["verdict"] = ("better" if better else "worse") if significant else "no significant difference"
        rows.append(row)
    return rows
