"""The C walk of OTLP trace requests produces exactly what the Python walk produces.

Random requests cover every branch of the walk (several resources and scopes, invalid and
missing ids, unicode, every value type, duplicate keys, simple and complex evaluation events,
child-span evaluations, links, adapters whose identity changes); corrupted bodies must be
refused by both walks or converted identically by both.
"""

from __future__ import annotations

import math
import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from trace_ptune import semconv
from trace_ptune.collector import otlp

pytestmark = pytest.mark.skipif(otlp._native_walk() is None, reason="C extension not built")

A = semconv
HASHES = ["sha256:" + c * 64 for c in "abc"]
WORDS = [
    "acme",
    "glöbex",
    "日本",
    'a"b\\c',
    "",
    "x" * 40,
    "tab\tnew\nline",
    "🙂",
    "\x1b\x00\x7f\u2028\b\f\r",
    "long plain text " * 3,
]


def _value(rng: random.Random, depth: int = 0) -> AnyValue:
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 0:
        return AnyValue(string_value=rng.choice(WORDS))
    if kind == 1:
        return AnyValue(int_value=rng.choice([0, -5, 7, 10, 2**62, 2**63 - 1, -(2**63)]))
    if kind == 2:
        return AnyValue(
            double_value=rng.choice(
                [0.5, -1e300, 3.0, math.inf, -math.inf, math.nan, -0.0, 0.1, 1e16, 1e-7, 123456.789]
            )
        )
    if kind == 3:
        return AnyValue(bool_value=rng.random() < 0.5)
    if kind == 4:
        return AnyValue()  # no value set
    if kind == 5:
        return AnyValue(bytes_value=rng.randbytes(rng.randrange(5)))
    if kind == 6:
        v = AnyValue()
        v.array_value.values.extend(_value(rng, depth + 1) for _ in range(rng.randrange(3)))
        return v
    v = AnyValue()
    v.kvlist_value.values.extend(
        KeyValue(key=rng.choice(WORDS), value=_value(rng, depth + 1)) for _ in range(rng.randrange(3))
    )
    return v


def _promoted(rng: random.Random) -> list[KeyValue]:
    out = []
    pick = {
        A.PTUNE_ADAPTER_HASH: lambda: AnyValue(string_value=rng.choice(HASHES)),
        A.PTUNE_ADAPTER_NAME: lambda: AnyValue(string_value=rng.choice(["acme/support", "globex/faq"])),
        A.PTUNE_ADAPTER_VERSION: lambda: rng.choice([AnyValue(int_value=2), AnyValue(string_value="3")]),
        A.PTUNE_ADAPTER_PARENT_HASH: lambda: AnyValue(string_value=rng.choice(HASHES)),
        A.PTUNE_ADAPTER_METHOD: lambda: AnyValue(string_value=A.METHOD_PROMPT_TUNING),
        A.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS: lambda: AnyValue(int_value=rng.choice([8, 20])),
        A.PTUNE_DEPLOYMENT: lambda: AnyValue(string_value="acme/support@prod"),
        A.PTUNE_TENANT: lambda: AnyValue(string_value=rng.choice(WORDS)),
        A.PTUNE_TRAFFIC: lambda: AnyValue(string_value=A.TRAFFIC_PRODUCTION),
        A.PTUNE_BASE_MODEL_NAME: lambda: AnyValue(string_value="tiny-random"),
        A.PTUNE_BASE_MODEL_FINGERPRINT: lambda: AnyValue(string_value=rng.choice(HASHES)),
        A.GEN_AI_OPERATION_NAME: lambda: AnyValue(string_value="text_completion"),
        A.GEN_AI_REQUEST_MODEL: lambda: AnyValue(string_value="tiny-random"),
        A.GEN_AI_RESPONSE_ID: lambda: AnyValue(string_value=f"r{rng.randrange(5)}"),
        A.GEN_AI_USAGE_INPUT_TOKENS: lambda: rng.choice([AnyValue(int_value=12), AnyValue(double_value=3.0)]),
        A.GEN_AI_USAGE_OUTPUT_TOKENS: lambda: AnyValue(int_value=rng.randrange(40)),
        A.PTUNE_USAGE_VIRTUAL_TOKENS: lambda: AnyValue(int_value=20),
        A.PTUNE_TRAIN_RUN_ID: lambda: AnyValue(string_value="run-1"),
    }
    for key in rng.sample(sorted(pick), rng.randrange(len(pick) + 1)):
        out.append(KeyValue(key=key, value=pick[key]()))
    return out


def _eval_attrs(rng: random.Random, complex_: bool) -> list[KeyValue]:
    out = [KeyValue(key=A.GEN_AI_EVALUATION_NAME, value=AnyValue(string_value=rng.choice(["em", "judge"])))]
    if rng.random() < 0.8:
        score = rng.choice([AnyValue(double_value=0.5), AnyValue(int_value=1), AnyValue(string_value="x")])
        out.append(KeyValue(key=A.GEN_AI_EVALUATION_SCORE_VALUE, value=score))
    if rng.random() < 0.3:
        out.append(KeyValue(key=A.GEN_AI_EVALUATION_SCORE_LABEL, value=AnyValue(string_value="pass")))
    if complex_:
        out.append(
            KeyValue(key=rng.choice([A.PTUNE_TENANT, "note", A.GEN_AI_RESPONSE_ID]), value=_value(rng))
        )
    return out


def _id(rng: random.Random, n: int) -> bytes:
    r = rng.random()
    if r < 0.04:
        return b""
    if r < 0.07:
        return bytes(n)
    if r < 0.09:
        return rng.randbytes(n + 1)
    return rng.randbytes(n)


def random_request(rng: random.Random, span_ids: list[bytes]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(rng.randrange(1, 3)):
        rs = req.resource_spans.add()
        if rng.random() < 0.8:
            rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="svc")))
        rs.resource.attributes.extend(KeyValue(key=rng.choice(WORDS), value=_value(rng)) for _ in range(2))
        for _ in range(rng.randrange(0, 3)):
            ss = rs.scope_spans.add()
            if rng.random() < 0.7:
                ss.scope.name = rng.choice(WORDS)
                ss.scope.version = rng.choice(["1.0", ""])
            for _ in range(rng.randrange(0, 12)):
                s = ss.spans.add()
                s.trace_id = _id(rng, 16)
                s.span_id = _id(rng, 8)
                span_ids.append(s.span_id)
                r = rng.random()
                if r < 0.3 and span_ids:
                    s.parent_span_id = rng.choice(span_ids)
                elif r < 0.35:
                    s.parent_span_id = bytes(8)
                elif r < 0.37:
                    s.parent_span_id = b"\x01\x02"
                s.name = rng.choice(WORDS)
                s.trace_state = rng.choice(["", "k=v"])
                s.kind = rng.choice([-1, 0, 1, 2, 3, 4, 5, 9])
                s.start_time_unix_nano = rng.choice([0, 1_700_000_000_123_456_789, 1_700_000_000_000_000_000])
                s.end_time_unix_nano = max(s.start_time_unix_nano + rng.choice([-5, 0, 1_500, 10**9]), 0)
                if rng.random() < 0.5:
                    s.status.code = rng.choice([0, 1, 2, 7, -1])
                    s.status.message = rng.choice(WORDS)
                s.attributes.extend(_promoted(rng))
                s.attributes.extend(KeyValue(key=rng.choice(WORDS), value=_value(rng)) for _ in range(2))
                if rng.random() < 0.15:  # a child-span evaluation
                    s.attributes.extend(_eval_attrs(rng, rng.random() < 0.5))
                for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
                    e = s.events.add()
                    e.time_unix_nano = rng.choice([0, 1_700_000_000_000_000_000, 1_700_000_001_000_001_999])
                    if rng.random() < 0.7:
                        e.name = A.EVENT_EVALUATION_RESULT
                        e.attributes.extend(_eval_attrs(rng, rng.random() < 0.3))
                    else:
                        e.name = rng.choice(WORDS)
                        e.attributes.extend(
                            KeyValue(key="k", value=_value(rng)) for _ in range(rng.randrange(2))
                        )
                if rng.random() < 0.1:
                    link = s.links.add()
                    link.trace_id = rng.randbytes(16)
                    link.span_id = rng.randbytes(8)
                    link.attributes.append(KeyValue(key="why", value=_value(rng)))
    return req


def _snapshot(batch: otlp.Batch) -> dict:
    batch.freeze()
    return {
        "tables": {name: t.to_pylist() for name, t in batch.tables.items()},
        "adapters": batch.adapters,
        "counts": (batch.accepted, batch.rejected, batch.error, sorted(batch.missing), batch.eval_min_ts),
    }


def _same(a, b) -> bool:
    # NaN scores compare unequal to themselves; compare their text instead.
    return repr(a) == repr(b)


@pytest.mark.parametrize("seed", range(40))
def test_native_walk_equals_python_walk(seed):
    rng = random.Random(seed)
    ids: list[bytes] = []
    bodies = [random_request(rng, ids).SerializeToString() for _ in range(3)]
    native, python = otlp.TraceConverter(), otlp.TraceConverter()  # caches carried across requests
    shared = otlp.Batch(), otlp.Batch()  # and several requests into one batch
    for body in bodies:
        a = _snapshot(native.convert_bytes(body, native=True))
        b = _snapshot(python.convert_bytes(body, native=False))
        assert _same(a, b)
        native.convert_bytes(body, shared[0], native=True)
        python.convert_bytes(body, shared[1], native=False)
    together, python_together = _snapshot(shared[0]), _snapshot(shared[1])
    # one batch of several requests: the same rows (in another order when the C walk's column
    # chunks and the Python walk's row tuples of evaluations are concatenated)
    for snap in (together, python_together):
        snap["tables"] = {k: sorted(rows, key=repr) for k, rows in sorted(snap["tables"].items())}
    assert _same(together, python_together)
    # the shared batch holds every request's spans, not only the last one's
    alone = [otlp.TraceConverter().convert_bytes(body).freeze().counts.get("spans", 0) for body in bodies]
    assert len(together["tables"].get("spans", [])) == sum(alone)


def _outcome(conv: otlp.TraceConverter, body: bytes, native: bool):
    try:
        return _snapshot(conv.convert_bytes(body, native=native))
    except otlp.MalformedPayload:
        return "malformed"


@pytest.mark.parametrize("seed", range(10))
def test_corrupted_bodies_are_refused_or_converted_alike(seed):
    rng = random.Random(1000 + seed)
    body = bytearray(random_request(rng, []).SerializeToString())
    refused = 0
    for _ in range(60):
        bad = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            if not bad:
                break
            op = rng.random()
            i = rng.randrange(len(bad))
            if op < 0.5:
                bad[i] = rng.randrange(256)
            elif op < 0.8:
                del bad[i:]
            else:
                bad[i:i] = rng.randbytes(rng.randrange(1, 4))
        a = _outcome(otlp.TraceConverter(), bytes(bad), True)
        b = _outcome(otlp.TraceConverter(), bytes(bad), False)
        assert _same(a, b)
        refused += a == "malformed"
    assert refused  # the corruption does reach the error paths


@pytest.mark.parametrize(
    "body",
    [b"\x0a\x05\x12", b"\x0a\x80", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x00", b"\x0b"],
)
def test_native_walk_refuses_garbage(body):
    with pytest.raises(otlp.MalformedPayload, match="not a valid OTLP spans protobuf message"):
        otlp.TraceConverter().convert_bytes(body, native=True)
    with pytest.raises(otlp.MalformedPayload):
        otlp.TraceConverter().convert_bytes(body, native=False)


def test_invalid_utf8_in_a_rejected_span_is_still_refused():
    req = ExportTraceServiceRequest()
    s = req.resource_spans.add().scope_spans.add().spans.add()
    s.name = "ok"
    body = req.SerializeToString().replace(b"ok", b"\xff\xfe")
    for native in (True, False):
        with pytest.raises(otlp.MalformedPayload):
            otlp.TraceConverter().convert_bytes(body, native=native)
