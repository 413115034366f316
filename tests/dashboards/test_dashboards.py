"""Every Grafana panel, annotation, variable and the alert rule, run as Grafana would run them.

The SQL is taken from ``dashboards/grafana/*.json`` and the alert provisioning, its macros are
expanded by ``grafana_macros.expand`` the way Grafana's PostgreSQL data source does, and it runs
through the collector's Postgres-wire endpoint with psycopg (simple query protocol, as Grafana
sends raw SQL) against the data of one tiny-random demo run.
"""

from __future__ import annotations

import datetime as dt
import json
import numbers
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.dashboards.grafana_macros import expand
from tests.demo.conftest import DemoRun, shared_demo_run

ROOT = Path(__file__).resolve().parents[2] / "dashboards"
DASHBOARDS = sorted((ROOT / "grafana").glob("*.json"))
ALERT = ROOT / "provisioning" / "alerting" / "regressions.yaml"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in DASHBOARDS:
        for panel in _load(path)["panels"]:
            out.append((f"{path.stem}:{panel['title']}", panel))
    return out


PANELS = _panels()


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[psycopg.Connection, DemoRun]]:
    """A read-only collector on the demo's kept database, and a psycopg connection to it."""
    from trace_ptune.collector.server import Collector, CollectorConfig

    run = shared_demo_run(tmp_path_factory)
    collector = Collector(
        CollectorConfig(db=str(run.db), http="127.0.0.1:0", grpc=None, pg="127.0.0.1:0", quiet=True)
    )
    collector.start()
    try:
        port = int(collector.urls["pg"].rsplit(":", 1)[1].split("/")[0])
        dsn = f"host=127.0.0.1 port={port} user=grafana dbname=traces connect_timeout=10"
        with psycopg.connect(dsn, autocommit=True) as conn:
            yield conn, run
    finally:
        collector.stop()


def _window() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=24), now + dt.timedelta(minutes=5)  # the dashboards' default range


def _run(
    conn: psycopg.Connection, sql: str, tenants: list[str] | None = None
) -> tuple[list[str], list[tuple]]:
    start, end = _window()
    text = expand(sql, start, end, {"tenant": tenants or ["__all"]})
    cur = conn.execute(text, prepare=False)
    columns = [d.name for d in cur.description or []]
    return columns, cur.fetchall()


def test_every_dashboard_is_found_and_uses_the_provisioned_data_source() -> None:
    assert {p.stem for p in DASHBOARDS} == {
        "adapter-overview",
        "regressions",
        "training-runs",
        "latency-tokens",
    }
    for _, panel in PANELS:
        assert panel["datasource"]["uid"] == "trace-ptune"
        assert panel["targets"] and all(t["rawQuery"] for t in panel["targets"])


@pytest.mark.parametrize("title,panel", PANELS, ids=[t for t, _ in PANELS])
def test_panel_sql_returns_what_its_panel_type_needs(
    pg: tuple[psycopg.Connection, DemoRun], title: str, panel: dict
) -> None:
    conn, _ = pg
    for target in panel["targets"]:
        columns, rows = _run(conn, target["rawSql"])
        assert rows, f"{title}: no rows on the demo's data"
        if panel["type"] == "timeseries":
            assert "time" in columns, f"{title}: a time series needs a `time` column, got {columns}"
            t = columns.index("time")
            values = [i for i, c in enumerate(columns) if c not in ("time", "metric")]
            assert values, f"{title}: no value column besides time/metric in {columns}"
            assert all(isinstance(r[t], dt.datetime | numbers.Number) for r in rows)
            assert any(isinstance(r[i], numbers.Number) for r in rows for i in values), title
        else:
            assert panel["type"] == "table", f"{title}: unexpected panel type {panel['type']}"
            assert len(columns) == len(set(columns)), f"{title}: duplicate column names {columns}"


@pytest.mark.parametrize("title,panel", [p for p in PANELS if "${tenant" in json.dumps(p[1])][:2])
def test_tenant_variable_filters_panels(
    pg: tuple[psycopg.Connection, DemoRun], title: str, panel: dict
) -> None:
    conn, _ = pg
    sql = panel["targets"][0]["rawSql"]
    _, everything = _run(conn, sql)
    _, globex = _run(conn, sql, ["globex"])
    _, nobody = _run(conn, sql, ["no-such-tenant"])
    assert everything and nobody == []
    assert 0 < len(globex) <= len(everything)


def test_regressions_panel_finds_the_acme_regression(pg: tuple[psycopg.Connection, DemoRun]) -> None:
    conn, run = pg
    [panel] = [p for t, p in PANELS if t.startswith("regressions:Regressions")]
    columns, rows = _run(conn, panel["targets"][0]["rawSql"])
    found = [dict(zip(columns, r, strict=True)) for r in rows]
    assert [(r["tenant"], r["deployment"], r["cause"]) for r in found] == [
        ("acme", "acme/support@prod", "adapter_changed")
    ]
    v2 = run.output["adapters"]["demo/acme@2"]["hash"]
    assert v2.startswith(found[0]["after_adapter"])


def test_dashboard_variables_and_annotations_run(pg: tuple[psycopg.Connection, DemoRun]) -> None:
    conn, _ = pg
    for path in DASHBOARDS:
        board = _load(path)
        for var in board["templating"]["list"]:
            _, rows = _run(conn, var["query"])
            assert {r[0] for r in rows} == {"acme", "globex"}, path.stem
        for anno in board["annotations"]["list"]:
            columns, rows = _run(conn, anno["target"]["rawSql"])
            assert {"time", "text"} <= set(columns)
            # four rollouts: two v1 promotions, then acme's canary and its full promotion
            assert len(rows) == 4, (path.stem, rows)


def test_alert_rule_sql_fires_on_the_demo_regression(pg: tuple[psycopg.Connection, DemoRun]) -> None:
    import yaml

    conn, _ = pg
    rule = yaml.safe_load(ALERT.read_text())["groups"][0]["rules"][0]
    [query] = [d for d in rule["data"] if d["refId"] == "A"]
    columns, rows = _run(conn, query["model"]["rawSql"])
    assert columns == ["regressions"] and rows == [(1,)]
