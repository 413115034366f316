"""The span tree and attributes of a training run follow the contract in ARCHITECTURE.md."""

from __future__ import annotations

from trace_ptune import semconv
from trace_ptune.tuning import TrainConfig, train


def test_training_span_tree_and_attributes(tiny, toy_data, spans) -> None:
    train_path, eval_path = toy_data
    cfg = TrainConfig(
        model="tiny-random",
        data=str(train_path),
        eval=str(eval_path),
        name="traced",
        virtual_tokens=4,
        steps=6,
        batch_size=8,
        step_span_every=2,
        eval_every=3,
        checkpoint_every=3,
        quiet=True,
        lr=0.1,
    )
    result = train(cfg, tiny)
    finished = spans.get_finished_spans()
    by_name: dict[str, list] = {}
    for s in finished:
        by_name.setdefault(s.name, []).append(s)
    (run,) = by_name[semconv.SPAN_TRAIN]
    a = run.attributes
    assert run.parent is None and run.status.status_code.name == "UNSET"
    assert a[semconv.PTUNE_TRAIN_RUN_ID] == result.run_id
    assert a[semconv.PTUNE_ADAPTER_NAME] == "traced"
    assert a[semconv.PTUNE_ADAPTER_METHOD] == semconv.METHOD_PROMPT_TUNING
    assert a[semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS] == 4
    assert a[semconv.PTUNE_BASE_MODEL_NAME] == "tiny-random"
    assert a[semconv.PTUNE_BASE_MODEL_FINGERPRINT] == tiny.fingerprint
    assert a[semconv.PTUNE_TRAIN_DATASET_HASH].startswith("sha256:")
    assert a[semconv.PTUNE_TRAIN_RANK] == 0 and a[semconv.PTUNE_TRAIN_WORLD_SIZE] == 1
    assert a[semconv.PTUNE_TRAFFIC] == semconv.TRAFFIC_TRAIN
    assert a[semconv.train_hparam("lr")] == 0.1 and a[semconv.train_hparam("batch_size")] == 8
    assert a[semconv.PTUNE_ADAPTER_HASH] == result.adapter_hash
    assert run.instrumentation_scope.schema_url == semconv.SCHEMA_URL

    steps = by_name[semconv.SPAN_TRAIN_STEP]
    assert [s.attributes[semconv.PTUNE_TRAIN_STEP] for s in steps] == [1, 3, 5]  # sampled every 2
    for s in steps:
        assert s.parent.span_id == run.context.span_id
        assert s.attributes[semconv.PTUNE_TRAIN_RUN_ID] == result.run_id
        for key in (
            semconv.PTUNE_TRAIN_LOSS,
            semconv.PTUNE_TRAIN_LEARNING_RATE,
            semconv.PTUNE_TRAIN_GRAD_NORM,
            semconv.PTUNE_TRAIN_TOKENS,
            semconv.PTUNE_TRAIN_TOKENS_PER_SECOND,
            semconv.PTUNE_TRAIN_RANK,
        ):
            assert key in s.attributes, key

    evals = by_name[semconv.SPAN_EVAL]
    assert len(evals) == 2
    for s in evals:
        assert s.parent.span_id == run.context.span_id
        assert s.attributes[semconv.PTUNE_ADAPTER_HASH].startswith("sha256:")
        assert s.attributes[semconv.PTUNE_EVAL_RUN_ID] == result.run_id
        assert s.attributes[semconv.PTUNE_EVAL_DATASET_HASH].startswith("sha256:")
        metrics = {
            e.attributes[semconv.GEN_AI_EVALUATION_NAME]: e
            for e in s.events
            if e.name == semconv.EVENT_EVAL_METRIC
        }
        assert set(metrics) == {"loss", "exact_match"}
        loss = metrics["loss"].attributes
        assert (
            loss[semconv.PTUNE_EVAL_N] == 8
            and loss[semconv.PTUNE_EVAL_WORST_DECILE] >= loss[semconv.PTUNE_EVAL_MEAN]
        )

    ckpts = by_name[semconv.SPAN_CHECKPOINT]
    assert [c.attributes[semconv.PTUNE_TRAIN_STEP] for c in ckpts] == [3, 6, 6]
    for c in ckpts:
        assert c.parent.span_id == run.context.span_id
        assert c.attributes[semconv.PTUNE_ADAPTER_NAME] == "traced"
        assert c.attributes[semconv.PTUNE_TRAIN_RUN_ID] == result.run_id
        assert c.attributes[semconv.PTUNE_ADAPTER_VERSION] >= 1
    assert ckpts[-1].attributes[semconv.PTUNE_ADAPTER_HASH] == result.adapter_hash
