"""Regression attribution: which adapter version (or base-model change) made a metric worse.

A **stream** is (tenant, deployment); the deployment defaults to the adapter name when the
evaluation carries none, and evaluations without a traffic kind count as production. A **version**
is (adapter hash, base-model fingerprint). For each stream and metric:

- the versions it served are ordered by first appearance, and each is compared with the one it
  replaced: when the two ran side by side (a canary) over the overlap window first, then the
  replacement's traffic after the old version stopped against the old version's traffic before the
  new one started; otherwise all of the new version's traffic against the old one's before it;
- inside one version, the CUSUM change-point test finds the best split of its time-ordered scores
  (a worsening there is ``unattributed``: neither the adapter nor the base changed).

Pair comparisons use Welch's t-test; every p-value of the report (every comparison made, not
only the reported ones) is adjusted with Benjamini–Hochberg, and a row is reported only when the
adjusted p-value is below ``alpha`` and the change is in the worse direction. Aggregation runs in
SQL, so the same statements serve a DuckDB file and a collector's query API.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trace_ptune import semconv
from trace_ptune.errors import ConfigError
from trace_ptune.query import stats
from trace_ptune.query._common import as_list, iso_from_us, parse_since, to_epoch_us, values_cte
from trace_ptune.query.source import Source, open_source

_KEY = ("tenant", "deployment", "metric", "adapter_hash", "base_fp")

TEST_WELCH = "welch_t"
TEST_CUSUM = "cusum"
COMPARISON_CANARY = "canary"
COMPARISON_REPLACEMENT = "replacement"
COMPARISON_CHANGE_POINT = "change_point"


@dataclass
class _Version:
    key: tuple[str, ...]
    gk: int
    n: int
    mean: float
    var: float
    first: int
    last: int
    total: float
    total_sq: float
    adapter_name: str | None
    cusum: float | None = None
    split_n: int | None = None
    split_sum: float | None = None
    split_sumsq: float | None = None
    split_last: int | None = None
    split_next: int | None = None

    @property
    def stream(self) -> tuple[str, str, str]:
        return self.key[0], self.key[1], self.key[2]


@dataclass
class _Side:
    gk: int
    lo: int
    hi: int
    n: int = 0
    mean: float = math.nan
    var: float = math.nan


@dataclass
class _Comparison:
    before: _Version
    after: _Version
    comparison: str
    test: str
    n_before: int
    n_after: int
    mean_before: float
    mean_after: float
    diff: stats.Difference
    changed_at: int
    window: tuple[int, int]
    sides: tuple[_Side, _Side]
    p_adjusted: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


SOURCE_LOG = "log"  # evaluations.source of a late score sent as a log event


def eval_filter_sql(
    *,
    traffic: str | None,
    since_us: int | None,
    until_us: int | None = None,
    metrics: Sequence[str] = (),
    tenants: Sequence[str] = (),
    deployments: Sequence[str] = (),
) -> tuple[str, list[Any]]:
    """The ``ev`` CTE: scored evaluations with the stream/version columns (NULLs made '').

    A late score (a log event) is placed at the time of the generation it scores, and takes the
    adapter, tenant, deployment and base fingerprint of that span when it lacks them; the other
    encodings are recorded while the generation runs, so no join is paid for them.
    """
    where = ["score IS NOT NULL", "isfinite(score)"]
    params: list[Any] = []
    if traffic:
        where.append("traffic = ?")
        params.append(traffic)
    if since_us is not None:
        where.append("ts >= make_timestamp(?::BIGINT)")
        params.append(since_us)
    if until_us is not None:
        where.append("ts < make_timestamp(?::BIGINT)")
        params.append(until_us)
    for column, values in (("metric", metrics), ("tenant", tenants), ("deployment", deployments)):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    production = f"'{semconv.TRAFFIC_PRODUCTION}'"

    def cols(pick: Any) -> str:
        return f"""coalesce({pick("tenant")}, '') AS tenant,
                   coalesce({pick("deployment")}, {pick("adapter_name")}, '') AS deployment,
                   e.name AS metric,
                   coalesce({pick("adapter_hash")}, '') AS adapter_hash,
                   coalesce({pick("base_fingerprint")}, '') AS base_fp,
                   {pick("adapter_name")} AS adapter_name,
                   coalesce({pick("traffic")}, {production}) AS traffic,
                   e.score_value::DOUBLE AS score"""

    # gk: one integer per version (hash of its five key columns, kept within 53 bits so it
    # survives JSON); windows and joins on it cost a quarter of those on the five strings
    sql = f"""ev AS NOT MATERIALIZED (
        SELECT tenant, deployment, metric, adapter_hash, base_fp, adapter_name, traffic,
               (hash(tenant, deployment, metric, adapter_hash, base_fp) >> 11)::BIGINT AS gk,
               epoch_us(ts) AS t, score
        FROM (
            SELECT {cols(lambda c: f"e.{c}")}, e.Timestamp AS ts
            FROM {semconv.TABLE_EVALUATIONS} e WHERE e.source <> '{SOURCE_LOG}'
            UNION ALL
            SELECT {cols(lambda c: f"coalesce(e.{c}, s.{c})")}, coalesce(s.Timestamp, e.Timestamp) AS ts
            FROM {semconv.TABLE_EVALUATIONS} e
            LEFT JOIN {semconv.TABLE_SPANS} s ON s.SpanId = e.SpanId AND s.TraceId = e.TraceId
            WHERE e.source = '{SOURCE_LOG}'
        )
        WHERE {" AND ".join(where)})"""
    return sql, params


def _versions_sql(ev_sql: str, min_n: int) -> str:
    # One pass: per-version summary plus the CUSUM statistic of its time-ordered scores, keeping
    # the split (with at least min_n scores on each side) that maximises it.
    keys = ", ".join(_KEY)
    dev = "abs(cs - k * mu)"
    ok = f"k >= {int(min_n)} AND k <= n - {int(min_n)}"
    return f"""WITH {ev_sql},
    o AS (
        SELECT gk, t, score,
               row_number() OVER w AS k,
               sum(score) OVER w AS cs,
               sum(score * score) OVER w AS cs2,
               lead(t) OVER w AS t_next,
               count(*) OVER g AS n,
               avg(score) OVER g AS mu
        FROM ev
        WINDOW w AS (PARTITION BY gk ORDER BY t, score ROWS UNBOUNDED PRECEDING),
               g AS (PARTITION BY gk)
    ),
    agg AS (
        SELECT gk,
               count(*)::BIGINT AS n, avg(score) AS mean, coalesce(var_samp(score), 0.0) AS var,
               min(t)::BIGINT AS first_t, max(t)::BIGINT AS last_t,
               sum(score) AS total, sum(score * score) AS total_sq,
               max({dev}) FILTER (WHERE {ok}) AS cusum,
               arg_max(k, {dev}) FILTER (WHERE {ok})::BIGINT AS split_n,
               arg_max(cs, {dev}) FILTER (WHERE {ok}) AS split_sum,
               arg_max(cs2, {dev}) FILTER (WHERE {ok}) AS split_sumsq,
               arg_max(t, {dev}) FILTER (WHERE {ok})::BIGINT AS split_last,
               arg_max(t_next, {dev}) FILTER (WHERE {ok})::BIGINT AS split_next
        FROM o GROUP BY gk
    ),
    names AS (SELECT gk, {keys}, any_value(adapter_name) AS adapter_name FROM ev GROUP BY gk, {keys})
    SELECT names.*, agg.* EXCLUDE (gk) FROM agg JOIN names USING (gk)"""


def _sides_sql(ev_sql: str, sides: list[_Side], *, worst: bool) -> str:
    cte = values_cte("sides", ("sid", "gk", "lo", "hi"), ((i, s.gk, s.lo, s.hi) for i, s in enumerate(sides)))
    cols = "count(*)::BIGINT AS n, avg(score) AS mean, coalesce(var_samp(score), 0.0) AS var"
    if worst:
        take = "greatest(1, ceil(count(*) * 0.1))::BIGINT"
        cols += (
            f", list_avg(list_slice(list_sort(list(score)), 1, {take})) AS worst_low"
            f", list_avg(list_slice(list_reverse_sort(list(score)), 1, {take})) AS worst_high"
        )
    return f"""WITH {ev_sql}, {cte}
    SELECT sides.sid, {cols}
    FROM ev JOIN sides ON ev.gk = sides.gk AND ev.t BETWEEN sides.lo AND sides.hi
    GROUP BY sides.sid"""


def _welch_sides(a: _Side, b: _Side, alpha: float, *, interval: bool = False) -> stats.Difference:
    return stats.welch(a.n, a.mean, a.var, b.n, b.mean, b.var, alpha=alpha, interval=interval)


def regressions(
    source: Source | None = None,
    *,
    metric: str | Sequence[str] | None = None,
    since: str | dt.datetime | None = None,
    until: str | dt.datetime | None = None,
    deployment: str | Sequence[str] | None = None,
    tenant: str | Sequence[str] | None = None,
    traffic: str | None = semconv.TRAFFIC_PRODUCTION,
    min_n: int = 30,
    alpha: float = 0.01,
    lower_is_better: Sequence[str] = (),
    db: str | None = None,
    collector: str | None = None,
    token: str | None = None,
) -> list[dict[str, Any]]:
    """Every significant worsening per stream and metric, with its cause (see the module doc).

    ``source`` is an open :class:`~trace_ptune.query.source.Source`; without one, ``db`` /
    ``collector`` / ``token`` resolve it as the CLI does. Rows are JSON-ready dicts, ordered by
    ``changed_at``.
    """
    if min_n < 2:
        raise ConfigError(f"min_n must be at least 2, got {min_n}; pass --min-n 2 or more.")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must lie between 0 and 1, got {alpha}; pass e.g. --alpha 0.01.")
    if source is None:
        with open_source(db=db, collector=collector, token=token) as opened:
            return regressions(
                opened,
                metric=metric,
                since=since,
                until=until,
                deployment=deployment,
                tenant=tenant,
                traffic=traffic,
                min_n=min_n,
                alpha=alpha,
                lower_is_better=lower_is_better,
            )

    since_dt, until_dt = parse_since(since), parse_since(until)
    ev_sql, ev_params = eval_filter_sql(
        traffic=traffic,
        since_us=to_epoch_us(since_dt) if since_dt else None,
        until_us=to_epoch_us(until_dt) if until_dt else None,
        metrics=as_list(metric),
        tenants=as_list(tenant),
        deployments=as_list(deployment),
    )
    lower = set(as_list(lower_is_better))

    # 1. versions per (stream, metric), with each one's best change point
    by_stream: dict[tuple[str, str, str], list[_Version]] = {}
    for r in source.dicts(_versions_sql(ev_sql, min_n), ev_params):

        def opt(name: str, cast: Any, r: dict[str, Any] = r) -> Any:
            return None if r[name] is None else cast(r[name])

        v = _Version(
            key=tuple(r[k] for k in _KEY),
            gk=int(r["gk"]),
            n=int(r["n"]),
            mean=float(r["mean"]),
            var=float(r["var"]),
            first=int(r["first_t"]),
            last=int(r["last_t"]),
            total=float(r["total"]),
            total_sq=float(r["total_sq"]),
            adapter_name=r["adapter_name"],
            cusum=opt("cusum", float),
            split_n=opt("split_n", int),
            split_sum=opt("split_sum", float),
            split_sumsq=opt("split_sumsq", float),
            split_last=opt("split_last", int),
            split_next=opt("split_next", int),
        )
        by_stream.setdefault(v.stream, []).append(v)

    comparisons: list[_Comparison] = []
    pairs: list[tuple[_Version, _Version, dict[str, _Side]]] = []
    sides: list[_Side] = []
    for versions in by_stream.values():
        versions.sort(key=lambda v: (v.first, v.key))
        for v in versions:
            cp = _change_point(v, alpha)
            if cp is not None:
                comparisons.append(cp)
        for prev, cur in itertools.pairwise(versions):
            wanted: dict[str, _Side] = {}
            if prev.first < cur.first:
                wanted["seq_before"] = _Side(prev.gk, prev.first, cur.first - 1)
            if prev.last >= cur.first:  # they overlapped: a canary, or a short hand-over
                end = min(cur.last, prev.last)
                wanted["conc_before"] = _Side(prev.gk, cur.first, end)
                wanted["conc_after"] = _Side(cur.gk, cur.first, end)
                if prev.last < cur.last:
                    wanted["seq_after"] = _Side(cur.gk, prev.last + 1, cur.last)
            pairs.append((prev, cur, wanted))
            sides.extend(wanted.values())

    # 2. n / mean / variance of every window a pair comparison needs, in one statement
    if sides:
        _, side_rows = source.query(_sides_sql(ev_sql, sides, worst=False), ev_params)
        for sid, n, mean, var in side_rows:
            s = sides[int(sid)]
            s.n, s.mean, s.var = int(n), float(mean), float(var)

    for prev, cur, w in pairs:
        comparisons.extend(_pair_comparisons(prev, cur, w, min_n, alpha))

    # 3. Benjamini–Hochberg over every comparison made, then keep significant worsenings
    adjusted = stats.bh_adjust([c.diff.p_value for c in comparisons])
    reported: dict[tuple[Any, ...], _Comparison] = {}
    for c, p_adj in zip(comparisons, adjusted, strict=True):
        c.p_adjusted = p_adj
        metric_name = c.before.key[2]
        worse = c.diff.delta > 0 if metric_name in lower else c.diff.delta < 0
        if p_adj >= alpha or not worse:
            continue
        ident = (c.before.key, c.after.key, c.comparison == COMPARISON_CHANGE_POINT)
        kept = reported.get(ident)
        # one row per version change: the canary window (both versions side by side) wins
        if kept is None or (c.comparison == COMPARISON_CANARY and kept.comparison != COMPARISON_CANARY):
            reported[ident] = c
    chosen = sorted(reported.values(), key=lambda c: (c.changed_at, c.before.key))
    if not chosen:
        return []

    # 4. worst-decile means and adapter names/versions, for the reported rows only
    worst_sides = [s for c in chosen for s in c.sides]
    _, worst_rows = source.query(_sides_sql(ev_sql, worst_sides, worst=True), ev_params)
    worst: dict[int, tuple[float, float]] = {int(r[0]): (r[4], r[5]) for r in worst_rows}
    names = _adapter_names(source, {c.before.key[3] for c in chosen} | {c.after.key[3] for c in chosen})
    out = []
    for i, c in enumerate(chosen):
        # the interval of the reported delta (computed only here: it needs a t quantile)
        ci = _welch_sides(c.sides[0], c.sides[1], alpha, interval=True)
        c.diff = stats.Difference(
            c.diff.delta, ci.ci_low, ci.ci_high, c.diff.p_value, c.diff.statistic, c.diff.df
        )
        metric_name = c.before.key[2]
        pick = 1 if metric_name in lower else 0
        wb, wa = worst.get(2 * i), worst.get(2 * i + 1)
        out.append(_row(c, names, wb[pick] if wb else None, wa[pick] if wa else None, metric_name in lower))
    return out


def _pair_comparisons(
    prev: _Version, cur: _Version, w: dict[str, _Side], min_n: int, alpha: float
) -> list[_Comparison]:
    out: list[_Comparison] = []

    def make(kind: str, a: _Side, b: _Side) -> None:
        if a.n < min_n or b.n < min_n:
            return
        diff = _welch_sides(a, b, alpha)
        out.append(
            _Comparison(
                before=prev,
                after=cur,
                comparison=kind,
                test=TEST_WELCH,
                n_before=a.n,
                n_after=b.n,
                mean_before=a.mean,
                mean_after=b.mean,
                diff=diff,
                changed_at=cur.first,
                window=(a.lo, b.hi),
                sides=(a, b),
            )
        )

    conc_a, conc_b = w.get("conc_before"), w.get("conc_after")
    concurrent = conc_a is not None and conc_b is not None and conc_a.n >= min_n and conc_b.n >= min_n
    seq_a = w.get("seq_before")
    if concurrent:
        make(COMPARISON_CANARY, conc_a, conc_b)  # type: ignore[arg-type]
        seq_b = w.get("seq_after")
    else:
        seq_b = _Side(cur.gk, cur.first, cur.last, cur.n, cur.mean, cur.var)
    if seq_a is not None and seq_b is not None:
        make(COMPARISON_REPLACEMENT, seq_a, seq_b)
    return out


def _change_point(v: _Version, alpha: float) -> _Comparison | None:
    if v.cusum is None or v.split_n is None or v.split_last is None or v.split_next is None:
        return None
    k, n = v.split_n, v.n
    left_sum, left_sq = v.split_sum or 0.0, v.split_sumsq or 0.0
    right_sum, right_sq = v.total - left_sum, v.total_sq - left_sq
    mean_l, mean_r = left_sum / k, right_sum / (n - k)
    ss_l = max(left_sq - left_sum * left_sum / k, 0.0)
    ss_r = max(right_sq - right_sum * right_sum / (n - k), 0.0)
    sigma = math.sqrt((ss_l + ss_r) / max(n - 2, 1))  # within-segment spread: robust to the shift
    p = stats.cusum_p_value(v.cusum, sigma, n)
    before = _Side(v.gk, v.first, v.split_last, k, mean_l, ss_l / (k - 1))
    after = _Side(v.gk, v.split_last + 1, v.last, n - k, mean_r, ss_r / (n - k - 1))
    welch = _welch_sides(before, after, alpha)
    diff = stats.Difference(welch.delta, welch.ci_low, welch.ci_high, p, welch.statistic, welch.df)
    return _Comparison(
        before=v,
        after=v,
        comparison=COMPARISON_CHANGE_POINT,
        test=TEST_CUSUM,
        n_before=k,
        n_after=n - k,
        mean_before=mean_l,
        mean_after=mean_r,
        diff=diff,
        changed_at=v.split_next,
        window=(v.first, v.last),
        sides=(before, after),
    )


def _adapter_names(source: Source, hashes: set[str]) -> dict[str, tuple[str | None, int | None]]:
    hashes = {h for h in hashes if h}
    if not hashes:
        return {}
    marks = ", ".join("?" for _ in hashes)
    _, rows = source.query(
        f"SELECT adapter_hash, adapter_name, adapter_version FROM {semconv.TABLE_ADAPTERS} "
        f"WHERE adapter_hash IN ({marks})",
        sorted(hashes),
    )
    return {r[0]: (r[1], None if r[2] is None else int(r[2])) for r in rows}


def cause_of(before: tuple[str, ...], after: tuple[str, ...]) -> str:
    """The cause of a change between two versions (adapter hash, base fingerprint) keys."""
    adapter_changed = before[3] != after[3]
    base_changed = before[4] != after[4]
    if adapter_changed and base_changed:
        return semconv.CAUSE_ADAPTER_AND_BASE_CHANGED
    if adapter_changed:
        return semconv.CAUSE_ADAPTER_CHANGED
    if base_changed:
        return semconv.CAUSE_BASE_MODEL_CHANGED
    return semconv.CAUSE_UNATTRIBUTED


def _row(
    c: _Comparison,
    names: dict[str, tuple[str | None, int | None]],
    worst_before: float | None,
    worst_after: float | None,
    lower_is_better: bool,
) -> dict[str, Any]:
    tenant, deployment, metric, before_hash, before_base = c.before.key
    after_hash, after_base = c.after.key[3], c.after.key[4]
    bn = names.get(before_hash, (c.before.adapter_name, None))
    an = names.get(after_hash, (c.after.adapter_name, None))
    return {
        "stream": f"{tenant}/{deployment}" if tenant else deployment,
        "tenant": tenant or None,
        "deployment": deployment or None,
        "metric": metric,
        "cause": cause_of(c.before.key, c.after.key),
        "comparison": c.comparison,
        "before_hash": before_hash or None,
        "after_hash": after_hash or None,
        "before_adapter": bn[0] or c.before.adapter_name,
        "before_version": bn[1],
        "after_adapter": an[0] or c.after.adapter_name,
        "after_version": an[1],
        "before_base_fingerprint": before_base or None,
        "after_base_fingerprint": after_base or None,
        "before_mean": c.mean_before,
        "after_mean": c.mean_after,
        "delta": c.diff.delta,
        "ci_low": c.diff.ci_low,
        "ci_high": c.diff.ci_high,
        "p_value": c.p_adjusted,
        "p_value_raw": c.diff.p_value,
        "test": c.test,
        "n_before": c.n_before,
        "n_after": c.n_after,
        "worst_decile_before": worst_before,
        "worst_decile_after": worst_after,
        "lower_is_better": lower_is_better,
        "changed_at": iso_from_us(c.changed_at),
        "window_start": iso_from_us(c.window[0]),
        "window_end": iso_from_us(c.window[1]),
    }
