"""Key files, tenancy rules, request validation and the canary bucket, without a server."""

from __future__ import annotations

import json
import re

import pytest

from trace_ptune.errors import ConfigError
from trace_ptune.runtime.server import openai_schema as oa
from trace_ptune.runtime.server.auth import (
    ApiKeys,
    check_access,
    deployment_owner,
    parse_api_keys,
    request_tenant,
)
from trace_ptune.runtime.server.routing import canary_bucket


def test_key_files_parse_as_json_or_lines(tmp_path):
    assert parse_api_keys('{"k1": "acme", "k2": "globex"}') == {"k1": "acme", "k2": "globex"}
    assert parse_api_keys('{"keys": [{"key": "k1", "tenant": "acme"}]}') == {"k1": "acme"}
    assert parse_api_keys("# comment\nk1 acme\n\nk2   globex  # trailing\n") == {"k1": "acme", "k2": "globex"}
    path = tmp_path / "keys.txt"
    path.write_text("sk-1 acme\n")
    keys = ApiKeys.load(path)
    assert keys.tenant_for("sk-1") == "acme" and keys.tenant_for("sk-2") is None and len(keys) == 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("k1 acme extra\n", "line 1"),
        ("k1\n", "line 1"),
        ("k1 acme\nk1 globex\n", "line 2"),
        ("k1 bad/tenant\n", "bad/tenant"),
        ("{not json", "not valid JSON"),
        ('["k1"]', "must map keys to tenants"),
        ('{"k1": 3}', "Bad tenant 3"),
    ],
)
def test_bad_key_files_name_the_problem(text, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_api_keys(text, source="keys.txt")


def test_an_empty_or_missing_key_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no keys"):
        ApiKeys({})
    with pytest.raises(ConfigError, match="Cannot read"):
        ApiKeys.load(tmp_path / "missing")


def test_tenant_comes_from_the_key_when_keys_are_on():
    keys = ApiKeys({"sk-acme": "acme"})
    assert request_tenant({"authorization": "Bearer sk-acme", "x-tenant": "globex"}, keys, None) == "acme"
    with pytest.raises(oa.RequestError) as err:
        request_tenant({"x-tenant": "acme"}, keys, None)
    assert err.value.status == 401
    assert request_tenant({"x-tenant": "acme"}, None, None) == "acme"
    assert request_tenant({}, None, None) is None


def test_ownership_rules():
    assert deployment_owner("acme/support@prod", None) == "acme"
    assert deployment_owner("acme/support@prod", {"tenant": "globex"}) == "globex"
    assert deployment_owner("support@prod", {"tenant": None}) is None
    check_access("acme", "acme", "x", enforce=True)
    check_access("acme", "globex", "x", enforce=False)
    for owner in ("globex", None):
        with pytest.raises(oa.RequestError) as err:
            check_access("acme", owner, "deployment 'x'", enforce=True)
        assert err.value.status == 403


def test_request_validation_defaults_and_refusals():
    parsed = oa.parse_request({"model": " m ", "prompt": ["a", "b"], "stop": "x", "n": 2}, "completion")
    assert (parsed.model, parsed.prompts, parsed.stop, parsed.num_choices) == ("m", ["a", "b"], ("x",), 4)
    assert (parsed.max_tokens, parsed.temperature, parsed.top_p, parsed.stream) == (16, 1.0, 1.0, False)
    chat = oa.parse_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 5,
        },
        "chat",
    )
    assert chat.prompts == [[{"role": "user", "content": "hi"}]] and chat.max_tokens == 5
    for body, param in [
        ({"model": "m", "prompt": "a", "temperature": True}, "temperature"),
        ({"model": "m", "prompt": "a", "seed": 1.5}, "seed"),
        ({"model": "m", "prompt": "a", "stream": "yes"}, "stream"),
        ({"model": "m", "prompt": "a", "best_of": 3}, "best_of"),
        ({"model": "m", "prompt": "a", "echo": True}, "echo"),
        ({"model": "m", "prompt": ""}, None),
    ]:
        if param is None:
            oa.parse_request(body, "completion")  # an empty prompt is the engine's call
            continue
        with pytest.raises(oa.RequestError) as err:
            oa.parse_request(body, "completion")
        assert err.value.status == 400 and err.value.param == param
    with pytest.raises(oa.RequestError):
        oa.parse_json_body(b"")


def test_sse_framing():
    assert oa.sse({"a": 1}) == b'data: {"a":1}\n\n'
    assert oa.SSE_DONE == b"data: [DONE]\n\n"
    assert json.loads(oa.sse({"x": "é"})[6:]) == {"x": "é"}


def test_canary_bucket_is_stable_and_spread():
    assert canary_bucket("abc") == canary_bucket("abc")
    buckets = [canary_bucket(f"r{i}") for i in range(2000)]
    assert all(0 <= b < 100 for b in buckets)
    share = sum(b < 10 for b in buckets) / len(buckets)
    assert 0.07 < share < 0.13


def test_a_streaming_request_joins_a_running_batch_at_the_next_step(base, fleet):
    import asyncio

    from trace_ptune.runtime import Engine, GenerationRequest
    from trace_ptune.runtime.server.scheduler import Delta, Done, Scheduler, Work

    engine = Engine(base, store=fleet.store)
    scheduler = Scheduler(engine, batch_wait_ms=0, mode="iteration")
    scheduler.start()
    long = GenerationRequest("the cat sat", adapter=fleet.acme_v1, max_new_tokens=120)
    late = GenerationRequest("hello world", adapter=fleet.globex, max_new_tokens=12)
    expected = engine.generate([GenerationRequest("hello world", adapter=fleet.globex, max_new_tokens=12)])[0]

    async def run() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        first = Work([long], parent=None, loop=loop)
        scheduler.submit(first)
        while scheduler.steps < 3:
            await asyncio.sleep(0.001)
        joined = Work([late], parent=None, loop=loop, stream=True)
        scheduler.submit(joined)
        streamed, final = "", None
        while final is None:
            for item in await joined.events.get():
                if isinstance(item, Delta):
                    streamed += item.text
                elif isinstance(item, Done):
                    final = item.result
        while not any(isinstance(i, Done) for i in await first.events.get()):
            pass
        return streamed, final.text

    try:
        streamed, text = asyncio.run(run())
    finally:
        scheduler.stop(30)
    assert streamed == text == expected.text
    assert scheduler.batches == 1  # the late request joined the running batch


def test_a_failed_decode_step_fails_its_batch_and_the_scheduler_goes_on(base, fleet):
    import asyncio

    from trace_ptune.runtime import Engine, GenerationRequest
    from trace_ptune.runtime.server.app import _result_error
    from trace_ptune.runtime.server.scheduler import Done, Scheduler, Work

    engine = Engine(base, store=fleet.store)
    real_step, calls = engine.step, []

    def flaky_step(state):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device fell over")
        return real_step(state)

    engine.step = flaky_step
    scheduler = Scheduler(engine, batch_wait_ms=0)
    scheduler.start()

    async def one() -> object:
        work = Work(
            [GenerationRequest("hello", adapter=fleet.acme_v1, max_new_tokens=4)],
            None,
            asyncio.get_running_loop(),
        )
        scheduler.submit(work)
        while True:
            for item in await work.events.get():
                if isinstance(item, Done):
                    return item.result

    try:
        failed = asyncio.run(one())
        ok = asyncio.run(one())
    finally:
        scheduler.stop(30)
    assert failed.error and "device fell over" in failed.error
    assert _result_error(failed).status == 500
    assert ok.error is None and ok.output_tokens > 0
    assert scheduler.inflight == 0


class _Batch:
    """What ``Scheduler._admit_waiting`` reads of a running batch."""

    def __init__(self, active: int) -> None:
        self.active = active
        self.pending = 0

    def __len__(self) -> int:
        return self.active + self.pending


def test_arrivals_gather_before_joining_a_running_batch():
    import asyncio

    from trace_ptune.runtime.server.scheduler import Scheduler, Work

    loop = asyncio.new_event_loop()
    try:
        scheduler = Scheduler(object(), max_batch_size=16, join_fraction=0.25, join_max_wait_steps=3)
        batch, admitted = _Batch(active=8), []

        def admit(work):
            admitted.append(work)
            batch.pending += len(work.requests)

        def arrive(rows: int) -> Work:
            work = Work(["r"] * rows, parent=None, loop=loop)
            scheduler.submit(work)
            return work

        one = arrive(1)
        scheduler._admit_waiting(batch, admit)
        assert admitted == []  # 1 row is under a quarter of the 9 in flight: it waits
        scheduler.steps += 2
        two = arrive(1)
        scheduler._admit_waiting(batch, admit)
        assert admitted == []
        scheduler.steps += 1  # the oldest has now waited 3 steps: both join, in one go
        scheduler._admit_waiting(batch, admit)
        assert admitted == [one, two] and scheduler.joins == 1

        three = arrive(3)  # 3 rows >= a quarter of 8 + 2 + 3 in flight: joins at once
        scheduler._admit_waiting(batch, admit)
        assert admitted[-1] is three and scheduler.joins == 2

        batch.active, batch.pending = 0, 0  # nothing else to run: no reason to wait
        four = arrive(1)
        scheduler._admit_waiting(batch, admit)
        assert admitted[-1] is four

        batch.active, batch.pending = 15, 0  # the arrivals fill the last free slot
        five = arrive(1)
        scheduler._admit_waiting(batch, admit)
        assert admitted[-1] is five

        batch.active, batch.pending = 16, 0  # full: held until a slot frees, however long it waited
        six = arrive(1)
        scheduler.steps += 10
        scheduler._admit_waiting(batch, admit)
        assert admitted[-1] is five and scheduler._held == [six]
        batch.active = 15  # a row finished
        scheduler._admit_waiting(batch, admit)
        assert admitted[-1] is six and scheduler._held == []

        eager = Scheduler(object(), join_fraction=0, join_max_wait_steps=8)
        seven = Work(["r"], parent=None, loop=loop)
        eager.submit(seven)
        eager._admit_waiting(_Batch(active=31), admit)
        assert admitted[-1] is seven  # join_fraction 0: at the next step, as before
    finally:
        loop.close()


def test_join_settings_are_checked():
    from trace_ptune.runtime.server.scheduler import Scheduler

    with pytest.raises(ConfigError, match="join_fraction"):
        Scheduler(object(), join_fraction=1.5)
    with pytest.raises(ConfigError, match="join_max_wait_steps"):
        Scheduler(object(), join_max_wait_steps=-1)


def test_a_held_request_joins_the_running_batch_and_matches_its_reference(base, fleet):
    import asyncio

    from trace_ptune.runtime import Engine, GenerationRequest
    from trace_ptune.runtime.server.scheduler import Done, Scheduler, Work

    engine = Engine(base, store=fleet.store)
    # 1 arrival beside 1 running row is under join_fraction 1.0: it waits the 4 steps
    scheduler = Scheduler(engine, batch_wait_ms=0, join_fraction=1.0, join_max_wait_steps=4)
    scheduler.start()
    long = GenerationRequest("the cat sat", adapter=fleet.acme_v1, max_new_tokens=60)
    late = GenerationRequest("hello world", adapter=fleet.globex, max_new_tokens=8)
    expected = engine.generate([GenerationRequest("hello world", adapter=fleet.globex, max_new_tokens=8)])[0]

    async def run() -> tuple[object, int]:
        loop = asyncio.get_running_loop()
        first = Work([long], parent=None, loop=loop)
        scheduler.submit(first)
        while scheduler.steps < 3:
            await asyncio.sleep(0.001)
        joined = Work([late], parent=None, loop=loop)
        scheduler.submit(joined)
        arrived = scheduler.steps
        while True:
            items = await joined.events.get()
            done = [i for i in items if isinstance(i, Done)]
            if done:
                finished_at = scheduler.steps
                break
        while not any(isinstance(i, Done) for i in await first.events.get()):
            pass
        return done[0].result, finished_at - arrived

    try:
        result, steps = asyncio.run(run())
    finally:
        scheduler.stop(30)
    assert result.text == expected.text and result.token_ids == expected.token_ids
    assert scheduler.batches == 1 and scheduler.joins == 1  # it joined the running batch
    assert steps >= 4 + 8 - 1  # it waited for the gate, then decoded its 8 tokens


def test_serve_on_a_busy_port_is_a_one_sentence_error_before_loading(tmp_path):
    import socket

    from click.testing import CliRunner

    from trace_ptune.cli.main import cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--model", "no-such-model", "--port", str(port)])
    assert result.exit_code == 1 and "the port is in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
