"""Generation over real HTTP: batching, streaming, sampling options and bad requests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from trace_ptune import semconv

PROMPTS = ["hello world", "the cat sat on the mat and then", "a", "tell me a story about", "one two"]


def _mixed_requests(fleet: Any) -> list[dict[str, Any]]:
    models = ["tiny-random", "acme/support@prod", "globex/faq@prod", "acme/support@2", fleet.globex[7:21]]
    return [
        {
            "model": models[i % len(models)],
            "prompt": PROMPTS[i % len(PROMPTS)] + " " * (i // 5),
            "max_tokens": 6 + i % 3,
            "temperature": 0,
        }
        for i in range(10)
    ]


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_concurrent_requests_batch_and_match_sequential_outputs(start_server, fleet, spans):
    bodies = _mixed_requests(fleet)
    server = start_server(batch_wait_ms=100)  # a wide window, so concurrent requests surely meet
    with server.client() as client:
        sequential = [_text(client.post("/v1/completions", json=b)) for b in bodies]
        assert client.get("/health").json()["max_rows_in_a_step"] == 1
        with ThreadPoolExecutor(len(bodies)) as pool:
            concurrent = list(pool.map(lambda b: _text(client.post("/v1/completions", json=b)), bodies))
        health = client.get("/health").json()
    assert concurrent == sequential
    assert len(set(sequential[:5])) == 5  # the five models really serve different outputs
    assert health["max_rows_in_a_step"] > 1  # requests from different clients shared a batch
    batch_sizes = [s.attributes[semconv.PTUNE_BATCH_SIZE] for s in spans.get_finished_spans()
                   if s.name.startswith("text_completion")]  # fmt: skip
    assert max(batch_sizes) > 1


def test_request_level_scheduling_gives_the_same_outputs(start_server, fleet):
    bodies = _mixed_requests(fleet)
    server = start_server(batch_wait_ms=100, scheduling="request", max_batch_size=4)
    with server.client() as client:
        sequential = [_text(client.post("/v1/completions", json=b)) for b in bodies]
        with ThreadPoolExecutor(len(bodies)) as pool:
            concurrent = list(pool.map(lambda b: _text(client.post("/v1/completions", json=b)), bodies))
        health = client.get("/health").json()
    assert concurrent == sequential
    assert 1 < health["max_rows_in_a_step"] <= 4


def _sse_events(response: httpx.Response) -> list[Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.text
    assert raw.endswith("data: [DONE]\n\n")
    events = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ")
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_streamed_chunks_concatenate_to_the_full_text(server):
    with server.client() as client:
        base = {"model": "acme/support@prod", "prompt": "the cat sat", "max_tokens": 12, "temperature": 0}
        full = client.post("/v1/completions", json=base).json()["choices"][0]
        events = _sse_events(client.post("/v1/completions", json={**base, "stream": True}))
        chunks = [e for e in events if e != "[DONE]"]
        assert len(chunks) > 2  # streamed token by token, not all at once
        assert "".join(c["choices"][0]["text"] for c in chunks) == full["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] == full["finish_reason"] == "length"

        # a stop string cut from the middle of the unstopped text
        stop = full["text"][len(full["text"]) // 2 :][:2]
        stopped = client.post("/v1/completions", json={**base, "stop": [stop]}).json()["choices"][0]
        assert stopped["text"] == full["text"][: full["text"].find(stop)]
        assert stopped["finish_reason"] == "stop"
        events = _sse_events(client.post("/v1/completions", json={**base, "stop": stop, "stream": True}))
        streamed = "".join(e["choices"][0]["text"] for e in events if e != "[DONE]")
        assert streamed == stopped["text"]

        chat = {"model": "globex/faq@prod", "messages": [{"role": "user", "content": "hi there"}],
                "max_tokens": 10, "temperature": 0}  # fmt: skip
        full_chat = client.post("/v1/chat/completions", json=chat).json()
        assert full_chat["object"] == "chat.completion"
        message = full_chat["choices"][0]["message"]
        assert message["role"] == "assistant"
        events = _sse_events(
            client.post(
                "/v1/chat/completions",
                json={**chat, "stream": True, "stream_options": {"include_usage": True}},
            )
        )
        chunks = [e for e in events if e != "[DONE]"]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == message["content"]
        assert chunks[-1]["usage"] == full_chat["usage"]


def test_n_choices_and_seeded_sampling_are_reproducible(server, base):
    body = {"model": "acme/support@prod", "prompt": ["hello", "the cat"], "max_tokens": 8,
            "temperature": 1.5, "top_p": 0.95, "seed": 11, "n": 3}  # fmt: skip
    with server.client() as client:
        first = client.post("/v1/completions", json=body).json()
        again = client.post("/v1/completions", json=body).json()
        other = client.post("/v1/completions", json={**body, "seed": 12}).json()
    texts = [c["text"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == list(range(6))
    assert texts == [c["text"] for c in again["choices"]]
    assert texts != [c["text"] for c in other["choices"]]
    assert len(set(texts[:3])) > 1  # the choices of one prompt sample differently
    prompt_tokens = sum(len(base.tokenizer(p)["input_ids"]) for p in body["prompt"])
    assert first["usage"]["prompt_tokens"] == prompt_tokens  # each prompt counted once, not per choice
    assert 6 <= first["usage"]["completion_tokens"] <= 6 * 8


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    good = {"model": "tiny-random", "prompt": "hello", "max_tokens": 3, "temperature": 0}
    cases = [
        (b"{not json", 400, None),
        (json.dumps([1, 2]).encode(), 400, None),
        (json.dumps({"prompt": "x"}).encode(), 400, "model"),
        (json.dumps({**good, "temperature": -1}).encode(), 400, "temperature"),
        (json.dumps({**good, "top_p": 0}).encode(), 400, "top_p"),
        (json.dumps({**good, "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({**good, "n": 1000}).encode(), 400, "n"),
        (json.dumps({**good, "stop": ["a", "b", "c", "d", "e"]}).encode(), 400, "stop"),
        (json.dumps({**good, "prompt": [1, 2, 3]}).encode(), 400, "prompt"),
        (json.dumps({**good, "logprobs": 2}).encode(), 400, "logprobs"),
        (json.dumps({**good, "model": "no-such-model"}).encode(), 404, "model"),
        (json.dumps({**good, "model": "acme/support@99"}).encode(), 404, "model"),
        (json.dumps({**good, "prompt": "word " * 5000}).encode(), 400, None),  # longer than the context
    ]
    with server.client() as client:
        for raw, status, param in cases:
            response = client.post(
                "/v1/completions", content=raw, headers={"content-type": "application/json"}
            )
            assert response.status_code == status, (raw[:60], response.text)
            error = response.json()["error"]
            assert error["message"] and error["param"] == param
            if status == 404:
                assert json.loads(raw)["model"] in error["message"]
        response = client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": []})
        assert response.status_code == 400
        response = client.post(
            "/v1/chat/completions", json={"model": "tiny-random", "messages": [{"role": "x"}]}
        )
        assert response.status_code == 400
        response = client.post("/v1/nope", json=good)
        assert response.status_code == 404 and "error" in response.json()
        assert client.get("/v1/completions").status_code == 405
        streamed_bad = client.post("/v1/completions", json={**good, "stream": True, "prompt": "word " * 5000})
        assert streamed_bad.status_code == 400 and "context" in streamed_bad.json()["error"]["message"]
        assert client.post("/v1/completions", json=good).status_code == 200
        assert client.get("/ready").status_code == 200


def test_models_endpoint_lists_base_deployments_and_adapters(server, fleet):
    with server.client() as client:
        data = client.get("/v1/models").json()["data"]
        ids = {row["id"]: row for row in data}
        assert ids["tiny-random"]["kind"] == "base"
        assert ids["acme/support@prod"]["owned_by"] == "acme"
        assert ids["globex/faq@prod"]["owned_by"] == "globex"
        assert ids["acme/support@2"]["adapter_hash"] == fleet.acme_v2
        assert client.get("/v1/models/acme/support@prod").json()["kind"] == "deployment"
        assert client.get("/v1/models/nothing").status_code == 404
