"""Every span name, event name, attribute key and enum value of the trace-ptune contract.

Nothing else in the package spells these strings: import them from here. ``gen_ai.*`` keys
are the OpenTelemetry GenAI semantic conventions; everything soft-prompt specific lives
under ``ptune.``. The contract is documented in the README ("The span contract").
"""

from __future__ import annotations

from typing import Final

# Version of the semantic conventions whose gen_ai.* names we follow; tracers carry it.
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.37.0"
INSTRUMENTATION_NAME: Final = "trace_ptune"

# ---------------------------------------------------------------- span names
SPAN_TRAIN: Final = "ptune.train"
SPAN_TRAIN_STEP: Final = "ptune.train.step"
SPAN_EVAL: Final = "ptune.eval"
SPAN_CHECKPOINT: Final = "ptune.checkpoint"
SPAN_ROLLOUT: Final = "ptune.rollout"
SPAN_EVALUATION_RESULT: Final = "gen_ai.evaluation.result"  # child-span encoding of a score
SPAN_GENERATE_CALL: Final = "ptune.generate"  # parent of per-row spans for a batched call


def generation_span_name(operation: str, base_model_name: str) -> str:
    """``text_completion {base}`` or ``chat {base}``, as the GenAI conventions name spans."""
    return f"{operation} {base_model_name}"


def evaluation_span_name(metric: str) -> str:
    """Name of a child span that carries one score (online evaluators)."""
    return f"evaluation {metric}"


# ---------------------------------------------------------------- event names
EVENT_EVAL_METRIC: Final = "ptune.eval.metric"
EVENT_EVALUATION_RESULT: Final = "gen_ai.evaluation.result"  # span event and log event name

# ---------------------------------------------------------------- gen_ai.* (OTel GenAI semconv)
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"  # content: only when opted in
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"  # content: only when opted in
GEN_AI_EVALUATION_NAME: Final = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_VALUE: Final = "gen_ai.evaluation.score.value"
GEN_AI_EVALUATION_SCORE_LABEL: Final = "gen_ai.evaluation.score.label"
GEN_AI_EVALUATION_EXPLANATION: Final = "gen_ai.evaluation.explanation"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"

GEN_AI_OPERATION_TEXT_COMPLETION: Final = "text_completion"
GEN_AI_OPERATION_CHAT: Final = "chat"
GEN_AI_PROVIDER_TRANSFORMERS: Final = "transformers"

# metrics (GenAI semconv)
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"

# opt-in content capture (standard env var)
ENV_CAPTURE_MESSAGE_CONTENT: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# ---------------------------------------------------------------- ptune.* adapter identity
PTUNE_ADAPTER_HASH: Final = "ptune.adapter.hash"
PTUNE_ADAPTER_NAME: Final = "ptune.adapter.name"
PTUNE_ADAPTER_VERSION: Final = "ptune.adapter.version"
PTUNE_ADAPTER_METHOD: Final = "ptune.adapter.method"
PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS: Final = "ptune.adapter.num_virtual_tokens"
PTUNE_ADAPTER_PARENT_HASH: Final = "ptune.adapter.parent_hash"
PTUNE_ADAPTER_PREVIOUS_HASH: Final = "ptune.adapter.previous_hash"

PTUNE_BASE_MODEL_NAME: Final = "ptune.base_model.name"
PTUNE_BASE_MODEL_FINGERPRINT: Final = "ptune.base_model.fingerprint"

PTUNE_DEPLOYMENT: Final = "ptune.deployment"
PTUNE_TENANT: Final = "ptune.tenant"
PTUNE_TRAFFIC: Final = "ptune.traffic"
PTUNE_BATCH_SIZE: Final = "ptune.batch.size"
PTUNE_USAGE_VIRTUAL_TOKENS: Final = "ptune.usage.virtual_tokens"
PTUNE_ROLLOUT_CANARY_PERCENT: Final = "ptune.rollout.canary_percent"

# ---------------------------------------------------------------- ptune.train.*
PTUNE_TRAIN_RUN_ID: Final = "ptune.train.run_id"
PTUNE_TRAIN_DATASET_HASH: Final = "ptune.train.dataset.hash"
PTUNE_TRAIN_RANK: Final = "ptune.train.rank"
PTUNE_TRAIN_WORLD_SIZE: Final = "ptune.train.world_size"
PTUNE_TRAIN_HPARAM_PREFIX: Final = "ptune.train.hparam."
PTUNE_TRAIN_STEP: Final = "ptune.train.step"
PTUNE_TRAIN_LOSS: Final = "ptune.train.loss"
PTUNE_TRAIN_LEARNING_RATE: Final = "ptune.train.learning_rate"
PTUNE_TRAIN_GRAD_NORM: Final = "ptune.train.grad_norm"
PTUNE_TRAIN_TOKENS: Final = "ptune.train.tokens"
PTUNE_TRAIN_TOKENS_PER_SECOND: Final = "ptune.train.tokens_per_second"


def train_hparam(name: str) -> str:
    """Attribute key of one hyper-parameter on a ``ptune.train`` span."""
    return PTUNE_TRAIN_HPARAM_PREFIX + name


# ---------------------------------------------------------------- ptune.eval.*
PTUNE_EVAL_RUN_ID: Final = "ptune.eval.run_id"
PTUNE_EVAL_DATASET_HASH: Final = "ptune.eval.dataset.hash"
PTUNE_EVAL_MEAN: Final = "ptune.eval.mean"
PTUNE_EVAL_WORST_DECILE: Final = "ptune.eval.worst_decile"
PTUNE_EVAL_N: Final = "ptune.eval.n"
PTUNE_EVAL_EXAMPLE_ID: Final = "ptune.eval.example_id"

# ---------------------------------------------------------------- enum values
METHOD_PROMPT_TUNING: Final = "prompt_tuning"
METHOD_PREFIX_TUNING: Final = "prefix_tuning"
METHOD_P_TUNING: Final = "p_tuning"
METHODS: Final = (METHOD_PROMPT_TUNING, METHOD_PREFIX_TUNING, METHOD_P_TUNING)

TRAFFIC_PRODUCTION: Final = "production"
TRAFFIC_EVAL: Final = "eval"
TRAFFIC_TRAIN: Final = "train"
TRAFFIC_KINDS: Final = (TRAFFIC_PRODUCTION, TRAFFIC_EVAL, TRAFFIC_TRAIN)

# regression causes reported by `trace-ptune query regressions`
CAUSE_ADAPTER_CHANGED: Final = "adapter_changed"
CAUSE_BASE_MODEL_CHANGED: Final = "base_model_changed"
CAUSE_ADAPTER_AND_BASE_CHANGED: Final = "adapter_and_base_changed"
CAUSE_UNATTRIBUTED: Final = "unattributed"

# ---------------------------------------------------------------- storage (DuckDB) table names
TABLE_SPANS: Final = "spans"
TABLE_EVALUATIONS: Final = "evaluations"
TABLE_ADAPTERS: Final = "adapters"
TABLE_METRICS: Final = "metrics"
TABLE_LOGS: Final = "logs"

# ---------------------------------------------------------------- environment variables
ENV_HOME: Final = "TRACE_PTUNE_HOME"
ENV_COLLECTOR: Final = "TRACE_PTUNE_COLLECTOR"
ENV_TOKEN: Final = "TRACE_PTUNE_TOKEN"

# ---------------------------------------------------------------- rollout
PTUNE_ROLLOUT_ACTION: Final = "ptune.rollout.action"  # promote | canary | rollback

# ---------------------------------------------------------------- errors (OTel general semantic conventions)
ERROR_TYPE: Final = "error.type"  # OTel general semconv: class of the error a span ended with
