"""Tenants (API keys, X-Tenant, baggage) and the caller's trace context."""

from __future__ import annotations

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from trace_ptune import semconv

GREEDY = {"prompt": "hello", "max_tokens": 3, "temperature": 0}


def _generation_spans(spans):
    return [s for s in spans.get_finished_spans() if s.name.startswith(("text_completion", "chat"))]


def test_api_keys_map_to_tenants_and_tenants_use_only_their_deployments(keyed_server, fleet, spans):
    fleet.store.promote("acme/support@2", "shared/bot@prod", tenant="globex")
    with keyed_server.client() as client:
        body = {**GREEDY, "model": "acme/support@prod"}
        missing = client.post("/v1/completions", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
        wrong = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer sk-nope"})
        assert wrong.status_code == 401

        acme = {"Authorization": "Bearer sk-acme"}
        assert client.post("/v1/completions", json=body, headers=acme).status_code == 200
        # the X-Tenant header cannot override the key's tenant
        spoof = client.post("/v1/completions", json=body, headers={**acme, "X-Tenant": "globex"})
        assert spoof.status_code == 200
        for model in ("globex/faq@prod", "globex/faq@1", "globex/faq"):
            denied = client.post("/v1/completions", json={**body, "model": model}, headers=acme)
            assert denied.status_code == 403, model
            assert "acme" in denied.json()["error"]["message"]
        # the deployment's tenant recorded at promote wins over the name; the name prefix is the fallback
        globex = {"Authorization": "Bearer sk-globex"}
        assert (
            client.post(
                "/v1/completions", json={**body, "model": "globex/faq@prod"}, headers=globex
            ).status_code
            == 200
        )
        assert client.post("/v1/completions", json=body, headers=globex).status_code == 403
        shared = {**body, "model": "shared/bot@prod"}
        assert client.post("/v1/completions", json=shared, headers=acme).status_code == 403
        assert client.post("/v1/completions", json=shared, headers=globex).status_code == 200
        # the base model is open to every tenant
        base = client.post("/v1/chat/completions", headers=globex,
                           json={"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})  # fmt: skip
        assert base.status_code == 200
    tenants = [(s.attributes.get(semconv.PTUNE_TENANT), s.attributes.get(semconv.PTUNE_DEPLOYMENT))
               for s in _generation_spans(spans)]  # fmt: skip
    assert tenants == [
        ("acme", "acme/support@prod"),
        ("acme", "acme/support@prod"),
        ("globex", "globex/faq@prod"),
        ("globex", "shared/bot@prod"),
        ("globex", None),
    ]


def test_without_keys_the_tenant_comes_from_header_or_baggage(server, spans):
    with server.client() as client:
        body = {**GREEDY, "model": "globex/faq@prod"}
        assert client.post("/v1/completions", json=body, headers={"X-Tenant": "acme"}).status_code == 200
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=baggage.set_baggage(semconv.PTUNE_TENANT, "initech"))
        assert client.post("/v1/completions", json=body, headers=carrier).status_code == 200
        assert client.post("/v1/completions", json=body).status_code == 200
        assert (
            client.post("/v1/completions", json=body, headers={"X-Tenant": "bad tenant!"}).status_code == 400
        )
    got = [s.attributes.get(semconv.PTUNE_TENANT) for s in _generation_spans(spans)]
    assert got == ["acme", "initech", None]


def test_incoming_traceparent_makes_generation_spans_children_of_the_callers_trace(server, spans):
    caller = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(caller), context.Context()))
    assert carrier["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with server.client() as client:
        response = client.post("/v1/completions", headers=carrier,
                               json={**GREEDY, "model": "acme/support@prod", "n": 2, "stream": True})  # fmt: skip
        assert response.status_code == 200
        plain = client.post("/v1/completions", json={**GREEDY, "model": "acme/support@prod"}).json()
    rows = _generation_spans(spans)
    assert len(rows) == 3
    for span in rows[:2]:
        assert span.context.trace_id == caller.trace_id
        assert span.parent is not None and span.parent.span_id == caller.span_id
    # without a traceparent each generation starts its own trace, reported back to the client
    assert rows[2].context.trace_id != caller.trace_id and rows[2].parent is None
    assert plain["x_ptune"]["choices"][0]["trace_id"] == format(rows[2].context.trace_id, "032x")
