"""The adapter store: versions, no-op re-saves, references, locking, deployments and rollout spans."""

from __future__ import annotations

import threading

import pytest

from trace_ptune import paths, semconv
from trace_ptune.adapters.store import AdapterStore
from trace_ptune.errors import AdapterNotFoundError, ConfigError


def test_store_defaults_to_the_home_adapters_dir() -> None:
    assert AdapterStore().root == paths.adapters_dir()


def test_versions_count_up_and_identical_resave_is_a_no_op(make_sp) -> None:
    store = AdapterStore()
    a, b = make_sp(seed=1), make_sp(seed=2, parent_hash=make_sp(seed=1).hash)
    assert store.save(a, "acme/support").version == 1
    marker = store.state_version()
    again = store.save(a, "acme/support")
    assert again.version == 1 and store.state_version() == marker
    assert store.save(b, "acme/support").version == 2
    assert [(r["name"], r["version"], r["latest"]) for r in store.list()] == [
        ("acme/support", 1, False),
        ("acme/support", 2, True),
    ]
    assert len(list((store.root / "objects").iterdir())) == 2
    # the same content under a second name shares the object
    assert store.save(a, "other").version == 1
    assert len(list((store.root / "objects").iterdir())) == 2


def test_references_resolve_by_name_version_hash_and_prefix(make_sp) -> None:
    store = AdapterStore()
    a, b = make_sp(seed=1), make_sp(seed=2, parent_hash=make_sp(seed=1).hash)
    store.save(a, "acme/support")
    store.save(b, "acme/support")
    assert store.resolve("acme/support").hash == b.hash
    assert store.resolve("acme/support").version == 2
    assert store.resolve("acme/support@1").hash == a.hash
    assert store.resolve(a.hash).version == 1
    assert store.resolve(a.hash12).hash == a.hash
    assert store.resolve("sha256:" + a.hash12).hash == a.hash
    assert [x["hash"] for x in store.lineage("acme/support")] == [b.hash, a.hash]


def test_bad_references_give_clear_errors(make_sp) -> None:
    store = AdapterStore()
    store.save(make_sp(), "x")
    with pytest.raises(AdapterNotFoundError, match="versions of 'x': 1"):
        store.resolve("x@7")
    with pytest.raises(AdapterNotFoundError, match="too short"):
        store.resolve("abc123")
    with pytest.raises(AdapterNotFoundError, match="No adapter, version, deployment or hash matches"):
        store.resolve("nothing-here")
    with pytest.raises(ConfigError, match="Invalid adapter name"):
        store.save(make_sp(), "bad@name")
    with pytest.raises(ConfigError, match="Invalid adapter name"):
        store.save(make_sp(), "a+b")


def test_ambiguous_hash_prefix_is_refused(make_sp) -> None:
    store = AdapterStore()
    a, b = make_sp(seed=1), make_sp(seed=2)
    store.save(a, "a")
    store.save(b, "b")
    # Fake a second object sharing a's first 12 digits (a real collision is too rare to test).
    twin = store.objects_dir / (a.hash.removeprefix("sha256:")[:12] + "f" * 52)
    twin.mkdir()
    with pytest.raises(AdapterNotFoundError, match=r"matches 2 adapters .*give more digits"):
        store.resolve(a.hash12)
    assert store.resolve(a.hash).hash == a.hash


def test_concurrent_saves_under_one_name_get_distinct_versions(make_sp) -> None:
    store = AdapterStore()
    prompts = [make_sp(seed=i) for i in range(6)]
    threads = [
        threading.Thread(target=lambda sp=sp: AdapterStore(store.root).save(sp, "shared")) for sp in prompts
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = store.list()
    assert sorted(r["version"] for r in rows) == [1, 2, 3, 4, 5, 6]
    assert {r["hash"] for r in rows} == {sp.hash for sp in prompts}
    assert not [p for p in store.objects_dir.iterdir() if p.name.startswith(".")]


def _rollouts(spans):
    return [s for s in spans.get_finished_spans() if s.name == semconv.SPAN_ROLLOUT]


def test_promote_canary_and_rollback_emit_rollout_spans(make_sp, spans) -> None:
    store = AdapterStore()
    v1 = store.save(make_sp(seed=1), "acme/support")
    v2 = store.save(make_sp(seed=2), "acme/support")
    marker = store.state_version()

    state = store.promote("acme/support@1", "acme/support@prod", tenant="acme")
    assert state["adapter_hash"] == v1.hash and state["canary_hash"] is None
    assert store.state_version() != marker
    assert store.resolve("acme/support@prod").hash == v1.hash

    state = store.promote("acme/support@2", "acme/support@prod", canary_percent=10)
    assert (state["adapter_hash"], state["canary_hash"], state["canary_percent"]) == (v1.hash, v2.hash, 10.0)
    assert state["tenant"] == "acme"

    state = store.rollback("acme/support@prod")
    assert state["adapter_hash"] == v1.hash and state["canary_hash"] is None

    state = store.promote("acme/support@2", "acme/support@prod")
    assert state["adapter_hash"] == v2.hash
    assert [d["deployment"] for d in store.deployments()] == ["acme/support@prod"]
    assert store.deployment("missing") is None
    history = store.deployment_history("acme/support@prod")
    assert [h["action"] for h in history] == ["promote", "canary", "rollback", "promote"]
    assert store.deployment("acme/support@prod")["rollback_depth"] == 1

    first, canary, rollback, full = (dict(s.attributes) for s in _rollouts(spans))
    assert first[semconv.PTUNE_DEPLOYMENT] == "acme/support@prod"
    assert first[semconv.PTUNE_TENANT] == "acme"
    assert first[semconv.PTUNE_ADAPTER_HASH] == v1.hash
    assert semconv.PTUNE_ADAPTER_PREVIOUS_HASH not in first
    assert canary[semconv.PTUNE_ADAPTER_HASH] == v2.hash
    assert canary[semconv.PTUNE_ADAPTER_PREVIOUS_HASH] == v1.hash
    assert canary[semconv.PTUNE_ROLLOUT_CANARY_PERCENT] == 10.0
    assert rollback[semconv.PTUNE_ROLLOUT_ACTION] == "rollback"
    assert rollback[semconv.PTUNE_ADAPTER_HASH] == v1.hash
    assert rollback[semconv.PTUNE_ADAPTER_PREVIOUS_HASH] == v2.hash
    assert full[semconv.PTUNE_ADAPTER_HASH] == v2.hash
    assert full[semconv.PTUNE_ADAPTER_PREVIOUS_HASH] == v1.hash
    assert full[semconv.PTUNE_ADAPTER_VERSION] == 2


def test_promote_defaults_the_deployment_to_the_adapter_name(make_sp, spans) -> None:
    store = AdapterStore()
    store.save(make_sp(), "acme/support")
    assert store.promote("acme/support")["deployment"] == "acme/support"


def test_deployment_errors_are_clear(make_sp) -> None:
    store = AdapterStore()
    store.save(make_sp(), "x")
    with pytest.raises(ConfigError, match="no primary adapter"):
        store.promote("x", "dep", canary_percent=5)
    with pytest.raises(ConfigError, match="between 0 and 100"):
        store.promote("x", "dep", canary_percent=150)
    with pytest.raises(AdapterNotFoundError, match="No deployment 'dep'"):
        store.rollback("dep")
    store.promote("x", "dep")
    with pytest.raises(ConfigError, match="no earlier state"):
        store.rollback("dep")
    with pytest.raises(ConfigError, match="Invalid deployment name"):
        store.promote("x", "bad name")
