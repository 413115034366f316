"""Promote, canary and rollback reach a running server without a restart, and spans show them."""

from __future__ import annotations

from collections import Counter

from trace_ptune import semconv
from trace_ptune.runtime.server.routing import canary_bucket

BODY = {"model": "acme/support@prod", "prompt": "the cat sat", "max_tokens": 6, "temperature": 0}


def _serve(client, request_id: str | None = None) -> tuple[str, str]:
    headers = {"X-Request-Id": request_id} if request_id else {}
    response = client.post("/v1/completions", json=BODY, headers=headers)
    assert response.status_code == 200, response.text
    return response.headers["x-ptune-adapter-hash"], response.json()["choices"][0]["text"]


def test_promote_canary_and_rollback_change_what_is_served_without_restart(server, fleet, spans):
    store = fleet.store
    with server.client() as client:
        v1_hash, v1_text = _serve(client)
        assert v1_hash == fleet.acme_v1

        store.promote("acme/support@2", "acme/support@prod", tenant="acme")
        v2_hash, v2_text = _serve(client)
        assert v2_hash == fleet.acme_v2 and v2_text != v1_text

        # canary: v1 beside the v2 primary at 30 %, split by a stable hash of the request id
        store.promote("acme/support@1", "acme/support@prod", canary_percent=30, tenant="acme")
        ids = [f"r{i}" for i in range(40)]
        served = {rid: _serve(client, rid) for rid in ids}
        expected = {rid: fleet.acme_v1 if canary_bucket(rid) < 30 else fleet.acme_v2 for rid in ids}
        assert {rid: h for rid, (h, _) in served.items()} == expected
        counts = Counter(expected.values())
        assert counts[fleet.acme_v1] > 0 and counts[fleet.acme_v2] > 0
        assert all(text == (v1_text if h == fleet.acme_v1 else v2_text) for h, text in served.values())
        assert _serve(client, "r3") == served["r3"]  # the same request id is sticky

        store.rollback("acme/support@prod")  # drops the canary: back to v2 alone
        assert {_serve(client, rid)[0] for rid in ids[:10]} == {fleet.acme_v2}
        store.rollback("acme/support@prod")  # back to v1
        assert _serve(client) == (fleet.acme_v1, v1_text)
        assert client.get("/v1/models").json()["data"][1]["adapter_hash"] == fleet.acme_v1

    generation = [s for s in spans.get_finished_spans() if s.name.startswith("text_completion")]
    assert {s.attributes[semconv.PTUNE_DEPLOYMENT] for s in generation} == {"acme/support@prod"}
    hashes = [s.attributes[semconv.PTUNE_ADAPTER_HASH] for s in generation]
    assert hashes[0] == fleet.acme_v1 and hashes[1] == fleet.acme_v2 and hashes[-1] == fleet.acme_v1
    versions = {s.attributes[semconv.PTUNE_ADAPTER_HASH]: s.attributes[semconv.PTUNE_ADAPTER_VERSION]
                for s in generation}  # fmt: skip
    assert versions == {fleet.acme_v1: 1, fleet.acme_v2: 2}
    rollouts = [s for s in spans.get_finished_spans() if s.name == semconv.SPAN_ROLLOUT]
    assert len(rollouts) == 4


def test_a_new_version_saved_under_a_name_is_served_by_name_at_once(server, fleet, base):
    from .conftest import make_adapter

    with server.client() as client:
        body = {**BODY, "model": "globex/faq"}
        first = client.post("/v1/completions", json=body)
        assert first.headers["x-ptune-adapter-hash"] == fleet.globex
        newer = fleet.store.save(make_adapter(base, semconv.METHOD_P_TUNING, 5, seed=9), "globex/faq")
        second = client.post("/v1/completions", json=body)
        assert second.headers["x-ptune-adapter-hash"] == newer.hash
        # the deployment still serves what was promoted
        pinned = client.post("/v1/completions", json={**body, "model": "globex/faq@prod"})
        assert pinned.headers["x-ptune-adapter-hash"] == fleet.globex
