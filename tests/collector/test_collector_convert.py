"""The trace converter on its own: repeated events served from its cache stay per-span correct."""

from __future__ import annotations

import json

from tests.collector.otlp_data import generation_attrs, span_request
from trace_ptune import semconv
from trace_ptune.collector import otlp

EVAL = semconv.EVENT_EVALUATION_RESULT


def _score(metric: str, value: float, **extra) -> tuple[str, dict]:
    return EVAL, {
        semconv.GEN_AI_EVALUATION_NAME: metric,
        semconv.GEN_AI_EVALUATION_SCORE_VALUE: value,
        **extra,
    }


def test_repeated_evaluation_events_keep_each_spans_identity_and_extra_attributes():
    spans = [
        {"attrs": generation_attrs(**{semconv.PTUNE_TENANT: f"t{i}"}), "events": [_score("em", 1.0)]}
        for i in range(3)
    ]
    spans.append(
        {
            "attrs": generation_attrs(**{semconv.PTUNE_TENANT: "t3"}),
            "events": [_score("em", 1.0), _score("judge", 0.5, note="long"), ("other", {"x": 1})],
        }
    )
    conv = otlp.TraceConverter()
    for _ in range(2):  # the second pass is served from the event cache
        batch = conv.convert(span_request(spans)).freeze()
        ev = batch.tables[semconv.TABLE_EVALUATIONS].to_pylist()
        sp = batch.tables[semconv.TABLE_SPANS].to_pylist()
        assert [(e["name"], e["score_value"], e["tenant"]) for e in ev] == [
            ("em", 1.0, "t0"),
            ("em", 1.0, "t1"),
            ("em", 1.0, "t2"),
            ("em", 1.0, "t3"),
            ("judge", 0.5, "t3"),
        ]
        assert [e["SpanId"] for e in ev] == [s["SpanId"] for s in sp] + [sp[3]["SpanId"]]
        assert json.loads(ev[4]["Attributes"]) == {"note": "long"} and ev[0]["Attributes"] == "{}"
        events = json.loads(sp[3]["Events"])
        assert [e["Name"] for e in events] == [EVAL, EVAL, "other"]
        assert events[2]["Attributes"] == {"x": 1} and events[0]["Timestamp"].endswith("Z")
        assert json.loads(sp[0]["SpanAttributes"])[semconv.PTUNE_TENANT] == "t0"
    schema = batch.tables[semconv.TABLE_SPANS].schema
    assert (
        "json" in str(schema.field("SpanAttributes").type) or schema.field("SpanAttributes").type == "string"
    )
