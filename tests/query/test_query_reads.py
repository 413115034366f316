"""adapters, lineage, traces, trace, sql and compare on the seeded traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.query.traffic import Traffic, adapter_hash
from trace_ptune.errors import QueryError
from trace_ptune.query import open_source
from trace_ptune.query.adapters import adapters, resolve_adapter, resolve_one
from trace_ptune.query.compare import compare
from trace_ptune.query.lineage import lineage
from trace_ptune.query.traces import run_sql, trace, traces


def test_adapters_lists_every_hash_with_requests_and_score_means(traffic: Traffic, traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        rows = adapters(source)
    by_hash = {r["adapter_hash"]: r for r in rows}
    assert set(by_hash) == {r.adapter_hash for r in traffic.requests}
    acme2 = by_hash[adapter_hash("acme-support", 2)]
    served = [r for r in traffic.requests if r.adapter_hash == acme2["adapter_hash"]]
    assert acme2["requests"] == len(served)
    assert (acme2["adapter_name"], acme2["adapter_version"]) == ("acme-support", 2)
    assert acme2["parent_hash"] == adapter_hash("acme-support", 1)
    assert acme2["scores"]["f1"] == pytest.approx(sum(r.scores["f1"] for r in served) / len(served))
    assert acme2["first_seen"] < acme2["last_seen"]


def test_adapter_references_resolve(traffic_db: Path) -> None:
    h2 = adapter_hash("acme-support", 2)
    with open_source(db=traffic_db) as source:
        assert [m["adapter_version"] for m in resolve_adapter(source, "acme-support")] == [1, 2, 3]
        assert resolve_one(source, "acme-support")["adapter_version"] == 3
        assert resolve_one(source, "acme-support@2")["adapter_hash"] == h2
        assert resolve_one(source, h2[7:19])["adapter_hash"] == h2
        assert resolve_one(source, h2)["adapter_hash"] == h2
        with pytest.raises(QueryError, match="No adapter matches 'nope'"):
            resolve_adapter(source, "nope")
        with pytest.raises(QueryError, match="name@VERSION"):
            resolve_adapter(source, "acme-support@latest")


def test_lineage_follows_train_checkpoint_eval_rollout_production(traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        rows = lineage(source, "acme-support@2")
    v2 = [r for r in rows if r["adapter_version"] == 2]
    assert [r["stage"] for r in v2] == ["train", "checkpoint", "eval", "rollout", "production"]
    assert v2[0]["run_id"] == "run-acme-2" and v2[0]["parent_hash"] == adapter_hash("acme-support", 1)
    assert v2[2]["metrics"]["exact_match"]["mean"] == pytest.approx(0.6)
    assert v2[3]["deployment"] == "support@prod" and v2[3]["previous_hash"] == adapter_hash("acme-support", 1)
    assert v2[4]["tenant"] == "acme" and v2[4]["requests"] > 0
    # the ancestor (version 1) is part of the chain; the sibling version 3 is not
    assert {r["adapter_version"] for r in rows} == {1, 2}
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)


def test_traces_filter_by_adapter_tenant_and_score(traffic: Traffic, traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        rows = traces(source, adapter="acme-support@2", metric="exact_match", max_score=0.0, limit=1000)
        assert rows and all(r["min_score"] == 0.0 for r in rows)
        failed = [
            r for r in traffic.requests
            if r.adapter_hash == adapter_hash("acme-support", 2) and r.scores["exact_match"] == 0.0
        ]  # fmt: skip
        assert len(rows) == len(failed)
        newest = traces(source, tenant="globex", limit=3)
        assert len(newest) == 3 and newest[0]["start"] >= newest[1]["start"] >= newest[2]["start"]
        assert all(r["tenant"] == "globex" for r in newest)
        assert traces(source, since="2000d", tenant="nobody") == []
        assert all(r["min_score"] >= 0.9 for r in traces(source, min_score=0.9, limit=20))


def test_trace_returns_the_span_tree_with_scores(traffic: Traffic, traffic_db: Path) -> None:
    req = traffic.requests[5]
    with open_source(db=traffic_db) as source:
        (span,) = trace(source, req.trace_id)
        with pytest.raises(QueryError, match="not a trace id"):
            trace(source, "xyz")
        with pytest.raises(QueryError, match="No trace"):
            trace(source, "f" * 32)
    assert span["depth"] == 0 and span["adapter_hash"] == req.adapter_hash
    assert {s["metric"]: s["value"] for s in span["scores"]} == req.scores


def test_train_trace_nests_the_checkpoint(traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        (row,) = [r for r in lineage(source, "acme-support@1") if r["stage"] == "train"]
        spans = trace(source, row["trace_id"])
        assert trace(source, row["trace_id"][:10]) == spans  # a unique prefix is enough
    assert [(s["name"], s["depth"]) for s in spans] == [("ptune.train", 0), ("ptune.checkpoint", 1)]


def test_sql_is_read_only(traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        assert run_sql(source, "SELECT count(*) AS n FROM adapters")[0]["n"] > 0
        for bad in ("DELETE FROM spans", "SELECT 1; SELECT 2", "COPY spans TO 'x.csv'", "SELEC 1", ""):
            with pytest.raises(QueryError):
                run_sql(source, bad)


def test_compare_two_versions_on_shared_traffic(traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        rows = compare(source, "acme-support@1", "acme-support@2")
        by_metric = {(r["traffic"], r["metric"]): r for r in rows}
        assert by_metric[("production", "exact_match")]["verdict"] == "worse"
        assert by_metric[("production", "contains")]["verdict"] == "no significant difference"
        assert by_metric[("production", "f1")]["streams"] == 1
        evals = compare(source, "acme-support@1", "acme-support@3", metric="exact_match")
        assert [(r["traffic"], r["verdict"]) for r in evals] == [("eval", "worse")]
        # versions that never served the same stream share nothing
        assert compare(source, "acme-support@1", "globex-chat@1") == []
