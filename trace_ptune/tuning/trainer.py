"""The training loop: a soft prompt (or one per tenant) against a frozen base, traced end to end.

Read top to bottom: load data and base, guard against leakage, tokenise, build the method
module(s), then for every optimizer step run its micro-batches, normalise the loss per tenant,
all-reduce gradients (DDP), clip and step each tenant's AdamW, evaluate, checkpoint. Spans::

    ptune.train                 the run (hyper-parameters, dataset hash, base fingerprint, rank)
      ptune.train.step          every ``step_span_every`` optimizer steps
      ptune.eval                each eval pass; one ``ptune.eval.metric`` event per metric
      ptune.checkpoint          each adapter saved into the store
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trace_ptune import paths, semconv
from trace_ptune.errors import ConfigError, DataError, TrainingError
from trace_ptune.models.attention import check_alibi
from trace_ptune.telemetry import get_tracer
from trace_ptune.tuning import data as tdata
from trace_ptune.tuning import state as tstate
from trace_ptune.tuning.config import TrainConfig
from trace_ptune.tuning.evaluation import EvalResult, evaluate
from trace_ptune.tuning.methods import (
    PrefixTuning,
    PromptTuning,
    PTuning,
    SoftPromptModule,
    build_module,
    lr_factor,
    model_dims,
    soft_prompt_rows,
    target_losses,
)

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from trace_ptune.adapters.artifact import SoftPrompt
    from trace_ptune.models import BaseModel

Plan = list[list[list[int]]]  # steps -> micro-batches -> dataset row indices (global batch)


@dataclass
class TrainResult:
    """What a run produced. For multi-tenant runs ``soft_prompts`` maps tenant -> adapter."""

    soft_prompt: SoftPrompt
    adapter_hash: str
    run_id: str
    name: str
    version: int | None
    metrics: dict[str, Any]
    run_dir: Path
    store_path: Path | None = None
    soft_prompts: dict[str, SoftPrompt] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter_hash": self.adapter_hash,
            "name": self.name,
            "version": self.version,
            "ref": f"{self.name}@{self.version}" if self.version is not None else self.name,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "store_path": str(self.store_path) if self.store_path else None,
            "tenants": {
                t: {"hash": sp.hash, "name": sp.name, "version": sp.version}
                for t, sp in self.soft_prompts.items()
            },
            **{k: v for k, v in self.metrics.items() if not isinstance(v, dict | list)},
        }


# ---------------------------------------------------------------- public entry points


def train(
    config: TrainConfig,
    base: BaseModel | None = None,
    *,
    batches: Plan | None = None,
    tracer_provider: TracerProvider | None = None,
) -> TrainResult:
    """Train one soft prompt on ``base`` (loaded from ``config.model`` when not given).

    ``batches`` (advanced) replaces the shuffled data order with an explicit plan of optimizer
    steps, each a list of micro-batches of row indices. Spans go to ``tracer_provider``, else
    to the global provider.
    """
    return run_training(config, base, tenant_field=None, batches=batches, tracer_provider=tracer_provider)


def run_training(
    config: TrainConfig,
    base: BaseModel | None,
    *,
    tenant_field: str | None,
    batches: Plan | None,
    tracer_provider: TracerProvider | None = None,
) -> TrainResult:
    """The shared entry of single- and multi-tenant runs."""
    trainer = _Trainer(
        config, base, tenant_field=tenant_field, batches=batches, tracer_provider=tracer_provider
    )
    return trainer.run()


# ---------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    owned: bool = False

    @classmethod
    def setup(cls) -> _Dist:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            if not dist.is_available():
                raise TrainingError(
                    "WORLD_SIZE > 1 but torch.distributed is not available in this torch build."
                )
            dist.init_process_group("gloo")
            return cls(dist.get_rank(), dist.get_world_size(), owned=True)
        return cls()

    def all_reduce(self, tensor: torch.Tensor) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---------------------------------------------------------------- the trainer


def _plan_epoch(n_rows: int, epoch: int, seed: int, global_batch: int, grad_accum: int) -> Plan:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_rows, generator=g).tolist()
    micro = [perm[i : i + global_batch] for i in range(0, n_rows, global_batch)]
    return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]


class _Trainer:
    def __init__(
        self,
        config: TrainConfig,
        base: BaseModel | None,
        *,
        tenant_field: str | None,
        batches: Plan | None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.resume_from: Path | None = None
        self.saved: dict[str, Any] | None = None
        if config.resume:
            self.resume_from = tstate.find_checkpoint(config.resume)
            self.saved = tstate.load_state(self.resume_from)
            quiet = config.quiet
            config = TrainConfig.from_dict({**self.saved["info"]["config"], "resume": None})
            config.quiet = quiet
            tenant_field = self.saved["info"].get("tenant_field")
        config.resolve_paths()
        self.cfg = config
        self.base_arg = base
        self.tenant_field = tenant_field
        self.explicit_plan = batches
        self.tracer = get_tracer(tracer_provider)

    # ------------------------------------------------------------ setup

    def _load(self) -> None:
        cfg = self.cfg
        if self.base_arg is None:
            from trace_ptune.models import load_model

            self.base = load_model(cfg.model or "", dtype=cfg.dtype, device=cfg.device)
        else:
            self.base = self.base_arg
        self.model = self.base.model
        self.device = self.model.get_input_embeddings().weight.device
        self.tok = self.base.tokenizer
        check_alibi(self.model.config)  # one sentence now, not wrong evaluations later
        self.dims = model_dims(self.model)
        for p in self.model.parameters():  # frozen, whatever the caller handed us
            p.requires_grad_(False)
        self.model.eval()

        rows = tdata.load_jsonl(cfg.data or "")
        eval_rows = tdata.load_jsonl(cfg.eval) if cfg.eval else []
        self.leak_report = None
        if eval_rows:
            rows, self.leak_report = tdata.guard_leakage(rows, eval_rows, policy=cfg.leakage)
        self.tenants: list[str] = [""]
        tenant_of = None
        if self.tenant_field:
            names = sorted(
                {str(r.get(self.tenant_field)) for r in rows if r.get(self.tenant_field) is not None}
            )
            missing = [r for r in rows if r.get(self.tenant_field) is None]
            if missing:
                raise DataError(
                    f"line {missing[0].get('_line')}: multi-tenant data needs a `{self.tenant_field}` field on every row."
                )
            for name in names:
                if not name or not all(c.isalnum() or c in "._-" for c in name):
                    raise DataError(
                        f"Tenant {name!r} is not a valid adapter-name part; use letters, digits and . _ -."
                    )
            self.tenants = names
            tenant_of = {t: i for i, t in enumerate(names)}
            eval_rows = [r for r in eval_rows if str(r.get(self.tenant_field)) in tenant_of]
            for r in rows + eval_rows:
                r["tenant"] = r.get(self.tenant_field)
        self.rows, self.eval_rows = rows, eval_rows
        self.dataset_hash = tdata.dataset_hash(rows)
        self.eval_dataset_hash = tdata.dataset_hash(eval_rows) if eval_rows else None
        prefix = cfg.method == semconv.METHOD_PREFIX_TUNING
        self.examples, self.enc_stats = tdata.encode_rows(
            rows,
            self.tok,
            max_length=cfg.max_length,
            long_examples=cfg.long_examples,
            chat_template=cfg.chat_template,
            min_prompt_tokens=1 if prefix else 0,
            tenant_of=tenant_of,
        )
        self.eval_examples: list[tdata.EncodedExample] = []
        if eval_rows:
            self.eval_examples, _ = tdata.encode_rows(
                eval_rows,
                self.tok,
                max_length=cfg.max_length,
                long_examples="truncate",
                chat_template=cfg.chat_template,
                min_prompt_tokens=1 if prefix else 0,
                tenant_of=tenant_of,
            )
        self.pad_id = int(self.tok.pad_token_id if self.tok.pad_token_id is not None else 0)

    def _build_modules(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.parent_hash: str | None = None
        parent_sp = None
        if cfg.parent:
            from trace_ptune.adapters.store import AdapterStore

            parent_sp = AdapterStore().resolve(cfg.parent)
            parent_sp.check_compatible(self.base, allow_base_mismatch=cfg.allow_base_mismatch)
            if parent_sp.method != cfg.method:
                raise ConfigError(
                    f"Parent adapter {cfg.parent!r} is {parent_sp.method}, not {cfg.method}; pass --method {parent_sp.method}."
                )
            if parent_sp.num_virtual_tokens != cfg.virtual_tokens:
                cfg.virtual_tokens = parent_sp.num_virtual_tokens
            self.parent_hash = parent_sp.hash
        dtype = self.model.get_input_embeddings().weight.dtype
        train_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        self.modules: list[SoftPromptModule] = []
        for k in range(len(self.tenants)):
            # Every tenant starts where a separate run with the same seed would start.
            g = torch.Generator().manual_seed(cfg.seed)
            labels = [r["target"] for r, e in zip(self.rows, self.examples, strict=True) if e.tenant == k]
            if parent_sp is not None:
                module = _module_from_parent(parent_sp, cfg)
            else:
                module = build_module(
                    cfg.method,
                    self.model,
                    self.tok,
                    init=cfg.init,
                    n=cfg.virtual_tokens,
                    generator=g,
                    label_texts=labels,
                    encoder=cfg.encoder,
                    encoder_hidden_size=cfg.encoder_hidden_size,
                )
            self.modules.append(module.to(device=self.device, dtype=train_dtype))
        self.optimizers = [
            torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) for m in self.modules
        ]

    def _plan(self) -> Plan:
        cfg = self.cfg
        if self.explicit_plan is not None:
            return [[list(mb) for mb in step] for step in self.explicit_plan]
        n = len(self.examples)
        gb = cfg.batch_size * self.dist.world
        plan: Plan = []
        self.epoch_ends: set[int] = set()
        epoch = 0
        while True:
            steps = _plan_epoch(n, epoch, cfg.seed, gb, cfg.grad_accum)
            for s in steps:
                plan.append(s)
                if cfg.steps is not None and len(plan) >= cfg.steps:
                    return plan
            self.epoch_ends.add(len(plan))
            epoch += 1
            if cfg.steps is None and epoch >= (cfg.epochs or 1):
                return plan

    # ------------------------------------------------------------ run

    def run(self) -> TrainResult:
        self.dist = _Dist.setup()
        try:
            return self._run()
        finally:
            self.dist.close()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        info = self.saved["info"] if self.saved else {}
        self.run_id = info.get("run_id") or uuid.uuid4().hex
        self._load()
        self._build_modules()
        self.epoch_ends = set()
        plan = self._plan()
        # Per-tenant schedules: a tenant's LR advances only on the steps it takes part in.
        self.tenant_totals = [0] * len(self.tenants)
        for step in plan:
            for k in {self.examples[i].tenant for mb in step for i in mb}:
                self.tenant_totals[k] += 1
        self.tenant_steps = [0] * len(self.tenants)
        self.step = 0
        self.best: list[dict[str, torch.Tensor]] | None = None
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.evals_since_best = 0
        self.history: list[float] = []
        self.step_seconds: list[float] = []
        self.step_cpu_seconds: list[float] = []
        self.tokens_seen = 0
        self.last_eval: list[EvalResult | None] = [None] * len(self.tenants)
        self.init_eval: list[dict[str, float] | None] = [None] * len(self.tenants)
        if self.saved:
            self._restore(self.saved)
        if cfg.output_dir:
            self.run_dir = Path(cfg.output_dir)
        elif self.resume_from is not None and self.resume_from.parent.name == "checkpoints":
            self.run_dir = self.resume_from.parent.parent
        else:
            self.run_dir = paths.home() / "runs" / self.run_id
        if self.dist.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        attrs = self._run_attributes()
        with self.tracer.start_as_current_span(semconv.SPAN_TRAIN, attributes=attrs) as span:
            result = self._loop(plan, span)
            if len(self.tenants) == 1:  # multi-tenant hashes are on each tenant's checkpoint span
                span.set_attribute(semconv.PTUNE_ADAPTER_HASH, result.adapter_hash)
            return result

    def _run_attributes(self) -> dict[str, Any]:
        cfg = self.cfg
        attrs: dict[str, Any] = {
            semconv.PTUNE_TRAIN_RUN_ID: self.run_id,
            semconv.PTUNE_ADAPTER_NAME: cfg.name or "",
            semconv.PTUNE_ADAPTER_METHOD: cfg.method,
            semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS: cfg.virtual_tokens,
            semconv.PTUNE_BASE_MODEL_NAME: self.base.name,
            semconv.PTUNE_BASE_MODEL_FINGERPRINT: self.base.fingerprint,
            semconv.PTUNE_TRAIN_DATASET_HASH: self.dataset_hash,
            semconv.PTUNE_TRAIN_RANK: self.dist.rank,
            semconv.PTUNE_TRAIN_WORLD_SIZE: self.dist.world,
            semconv.PTUNE_TRAFFIC: semconv.TRAFFIC_TRAIN,
        }
        if self.parent_hash:
            attrs[semconv.PTUNE_ADAPTER_PARENT_HASH] = self.parent_hash
        for key, value in cfg.hparams().items():
            attrs[semconv.train_hparam(key)] = value
        return attrs

    def _loop(self, plan: Plan, run_span: Any) -> TrainResult:
        cfg = self.cfg
        progress = _Progress(total=len(plan), done=self.step, enabled=not cfg.quiet and self.dist.rank == 0)
        stopped_early = False
        if self.eval_examples and cfg.eval_at_start and self.step == 0:
            self._evaluate_and_track()
            self.init_eval = [ev.summary() if ev else None for ev in self.last_eval]
        with progress:
            while self.step < len(plan):
                step_index = self.step
                t0, c0 = time.perf_counter(), time.process_time()
                sampled = step_index % cfg.step_span_every == 0
                span_cm = (
                    self.tracer.start_as_current_span(
                        semconv.SPAN_TRAIN_STEP,
                        attributes={
                            semconv.PTUNE_TRAIN_RUN_ID: self.run_id,
                            semconv.PTUNE_TRAIN_RANK: self.dist.rank,
                            semconv.PTUNE_TRAIN_STEP: step_index + 1,
                        },
                    )
                    if sampled
                    else contextlib.nullcontext()
                )
                with span_cm as step_span:
                    loss, lr, grad_norm, tokens = self._optimizer_step(plan[step_index])
                    elapsed = time.perf_counter() - t0
                    cpu = time.process_time() - c0
                    tps = tokens / elapsed if elapsed > 0 else 0.0
                    if step_span is not None:
                        step_span.set_attributes(
                            {
                                semconv.PTUNE_TRAIN_LOSS: loss,
                                semconv.PTUNE_TRAIN_LEARNING_RATE: lr,
                                semconv.PTUNE_TRAIN_GRAD_NORM: grad_norm,
                                semconv.PTUNE_TRAIN_TOKENS: tokens,
                                semconv.PTUNE_TRAIN_TOKENS_PER_SECOND: tps,
                            }
                        )
                self.step += 1
                self.history.append(loss)
                self.step_seconds.append(elapsed)
                self.step_cpu_seconds.append(cpu)
                self.tokens_seen += tokens
                progress.update(loss=loss, tps=tps)
                last = self.step == len(plan)
                if self.eval_examples and self._eval_due(last) and self._evaluate_and_track():
                    stopped_early = True
                if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or last or stopped_early):
                    self._checkpoint()
                if stopped_early:
                    break
        return self._finish(stopped_early)

    def _eval_due(self, last: bool) -> bool:
        if last:
            return True
        if self.cfg.eval_every:
            return self.step % self.cfg.eval_every == 0
        return self.step in self.epoch_ends

    # ------------------------------------------------------------ one optimizer step

    def _optimizer_step(self, step: list[list[int]]) -> tuple[float, float, float, int]:
        """Run the step's micro-batches; return (mean loss, lr, grad norm, tokens on this rank)."""
        cfg, K, rank, world = self.cfg, len(self.modules), self.dist.rank, self.dist.world
        bs = cfg.batch_size
        locals_ = [[self.examples[i] for i in mb[rank * bs : (rank + 1) * bs]] for mb in step]
        # Target tokens per tenant over the whole step, on every rank: each tenant's loss is its
        # own token mean, so one big batch, accumulation and DDP all give the same gradient.
        counts = torch.zeros(K, dtype=torch.float64)
        for mb in locals_:
            for e in mb:
                counts[e.tenant] += len(e.ids) - e.target_start
        self.dist.all_reduce(counts)
        loss_sums = torch.zeros(K, dtype=torch.float64)
        tokens = 0
        for mb in locals_:
            if not mb:
                continue
            batch = {k: v.to(self.device) for k, v in tdata.collate(mb, self.pad_id).items()}
            tokens += int(batch["attention_mask"].sum())
            prompts = soft_prompt_rows(self.modules, batch["tenants"])
            losses, rows = target_losses(self.model, cfg.method, prompts, batch)
            token_tenant = batch["tenants"][rows]
            weights = (1.0 / counts.to(self.device)[token_tenant]).to(losses.dtype)
            loss = (losses * weights).sum()
            if not torch.isfinite(loss):
                self._fail_nan("loss")
            loss_sums.index_add_(0, token_tenant.cpu(), losses.detach().double().cpu())
            loss.backward()
        present = [k for k in range(K) if counts[k] > 0]
        params = [p for m in self.modules for p in m.parameters()]
        if world > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self.dist.all_reduce(p.grad)
            self.dist.all_reduce(loss_sums)
        norms: list[float] = []
        lr_last = 0.0
        for k in range(K):
            module, opt = self.modules[k], self.optimizers[k]
            if k not in present:
                opt.zero_grad(set_to_none=True)  # an absent tenant does not move: no decay, no momentum
                continue
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(list(module.parameters()), max_norm))
            if not math.isfinite(norm):
                self._fail_nan("gradient")
            lr_last = cfg.lr * lr_factor(
                self.tenant_steps[k], self.tenant_totals[k], cfg.warmup_steps, cfg.schedule
            )
            for group in opt.param_groups:
                group["lr"] = lr_last
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.tenant_steps[k] += 1
            norms.append(norm)
        per_tenant = [float(loss_sums[k] / counts[k]) for k in present]
        loss_value = sum(per_tenant) / len(per_tenant) if per_tenant else float("nan")
        grad_norm = math.sqrt(sum(n * n for n in norms)) if norms else 0.0
        return loss_value, lr_last, grad_norm, tokens

    def _fail_nan(self, what: str) -> None:
        """Keep the last good state (parameters are still pre-step) and stop the run."""
        where = ""
        if self.dist.rank == 0:
            ckpt = self._save_state(self.run_dir / "checkpoints" / "last-good")
            where = f" The last good state is in {str(ckpt)!r} (resume with --resume)."
        raise TrainingError(
            f"The {what} became NaN/inf at step {self.step + 1} with lr={self.cfg.lr}; lower --lr "
            f"(or raise --warmup-steps) and retry.{where}"
        )

    # ------------------------------------------------------------ evaluation

    def _evaluate_and_track(self) -> bool:
        """Evaluate every tenant; track the best state; True when patience ran out."""
        cfg = self.cfg
        values: list[float] = []
        for k, module in enumerate(self.modules):
            examples = [e for e in self.eval_examples if e.tenant == k]
            if not examples:
                continue
            result = self._eval_pass(k, module, examples)
            self.last_eval[k] = result
            values.append(result.mean(cfg.best_metric))
        if not values:
            return False
        value = sum(values) / len(values)
        better = (
            self.best_value is None
            or (cfg.best_metric == "loss" and value < self.best_value)
            or (cfg.best_metric != "loss" and value > self.best_value)
        )
        if better:
            self.best_value, self.best_step, self.evals_since_best = value, self.step, 0
            self.best = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules]
            return False
        self.evals_since_best += 1
        return cfg.patience is not None and self.evals_since_best >= cfg.patience

    def _eval_pass(
        self, k: int, module: SoftPromptModule, examples: Sequence[tdata.EncodedExample]
    ) -> EvalResult:
        cfg = self.cfg
        sp = self._soft_prompt(k, module)
        attrs: dict[str, Any] = {
            semconv.PTUNE_ADAPTER_HASH: sp.hash,
            semconv.PTUNE_EVAL_RUN_ID: self.run_id,
            semconv.PTUNE_TRAIN_RUN_ID: self.run_id,
            semconv.PTUNE_TRAIN_STEP: self.step,
            semconv.PTUNE_TRAFFIC: semconv.TRAFFIC_EVAL,
            semconv.PTUNE_TRAIN_RANK: self.dist.rank,
        }
        if self.eval_dataset_hash:
            attrs[semconv.PTUNE_EVAL_DATASET_HASH] = self.eval_dataset_hash
        if self.tenants[k]:
            attrs[semconv.PTUNE_TENANT] = self.tenants[k]
        with self.tracer.start_as_current_span(semconv.SPAN_EVAL, attributes=attrs) as span, torch.no_grad():
            prompt = module.serving().detach()
            result = evaluate(
                self.model,
                self.tok,
                cfg.method,
                prompt,
                self.eval_rows,
                examples,
                batch_size=cfg.batch_size,
                max_new_tokens=cfg.eval_max_new_tokens,
                chat_template=cfg.chat_template,
                scorers=cfg.scorers,
            )
            if cfg.best_metric not in result.values:
                raise ConfigError(
                    f"best_metric {cfg.best_metric!r} is not among the eval metrics {sorted(result.values)}; "
                    "pick one of them."
                )
            for metric in result.values:
                span.add_event(
                    semconv.EVENT_EVAL_METRIC,
                    {
                        semconv.GEN_AI_EVALUATION_NAME: metric,
                        semconv.PTUNE_EVAL_MEAN: result.mean(metric),
                        semconv.PTUNE_EVAL_WORST_DECILE: result.worst_decile(metric),
                        semconv.PTUNE_EVAL_N: len(result.values[metric]),
                    },
                )
        return result

    # ------------------------------------------------------------ artifacts and checkpoints

    def _soft_prompt(self, k: int, module: SoftPromptModule) -> SoftPrompt:
        from trace_ptune.adapters.artifact import SoftPrompt

        cfg, d = self.cfg, self.dims
        out_dtype = self.model.get_input_embeddings().weight.dtype
        with torch.no_grad():
            tensor = module.serving().detach().to(out_dtype).clone()
        kwargs: dict[str, Any] = {
            "method": cfg.method,
            "num_virtual_tokens": module.num_virtual_tokens,
            "token_dim": d["hidden"],
            "name": self._adapter_name(k),
            "parent_hash": self.parent_hash,
            "base_model_name": self.base.name,
            "base_fingerprint": self.base.fingerprint,
            "init": cfg.init,
            "train_dataset_hash": self.dataset_hash,
            "metadata": {"run_id": self.run_id, "step": self.step},
        }
        if isinstance(module, PrefixTuning):
            kwargs.update(
                prefix_kv=tensor, num_layers=d["layers"], num_kv_heads=d["kv_heads"], head_dim=d["head_dim"]
            )
        else:
            kwargs["embeddings"] = tensor
        if isinstance(module, PTuning):
            kwargs["encoder_state"] = module.encoder_state()
            kwargs["encoder_config"] = module.encoder_config()
        return SoftPrompt(**kwargs)

    def _adapter_name(self, k: int) -> str:
        name = self.cfg.name or "adapter"
        return f"{name}/{self.tenants[k]}" if self.tenants[k] else name

    def _store_save(self, sp: SoftPrompt) -> SoftPrompt:
        from trace_ptune.adapters.store import AdapterStore

        attrs: dict[str, Any] = {
            semconv.PTUNE_ADAPTER_NAME: sp.name or "",
            semconv.PTUNE_TRAIN_RUN_ID: self.run_id,
            semconv.PTUNE_TRAIN_STEP: self.step,
            semconv.PTUNE_TRAIN_RANK: self.dist.rank,
        }
        with self.tracer.start_as_current_span(semconv.SPAN_CHECKPOINT, attributes=attrs) as span:
            stored = AdapterStore().save(sp, sp.name or "adapter")
            span.set_attribute(semconv.PTUNE_ADAPTER_HASH, stored.hash)
            if stored.version is not None:
                span.set_attribute(semconv.PTUNE_ADAPTER_VERSION, int(stored.version))
            if stored.parent_hash:
                span.set_attribute(semconv.PTUNE_ADAPTER_PARENT_HASH, stored.parent_hash)
            tenant = sp.name.rsplit("/", 1)[-1] if sp.name and len(self.tenants) > 1 else None
            if tenant:
                span.set_attribute(semconv.PTUNE_TENANT, tenant)
        return stored

    def _state_info(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "config": self.cfg.to_dict(),
            "tenant_field": self.tenant_field,
            "tenants": self.tenants,
            "num_modules": len(self.modules),
            "step": self.step,
            "tenant_steps": self.tenant_steps,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
            "history": self.history,
            "tokens_seen": self.tokens_seen,
            "parent_hash": self.parent_hash,
            "dataset_hash": self.dataset_hash,
        }

    def _save_state(self, directory: Path) -> Path:
        return tstate.save_state(
            directory,
            modules=[m.state_dict() for m in self.modules],
            best=self.best,
            optimizers=[o.state_dict() for o in self.optimizers],
            info=self._state_info(),
        )

    def _restore(self, saved: dict[str, Any]) -> None:
        info = saved["info"]
        if info["dataset_hash"] != self.dataset_hash:
            raise TrainingError(
                f"The training data changed since the run was saved ({info['dataset_hash'][:19]} -> "
                f"{self.dataset_hash[:19]}); resume with the same data file."
            )
        for module, sd in zip(self.modules, saved["modules"], strict=True):
            module.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(sd)
        self.step = int(info["step"])
        self.tenant_steps = list(info["tenant_steps"])
        self.best = saved["best"]
        self.best_value = info["best_value"]
        self.best_step = info["best_step"]
        self.evals_since_best = int(info["evals_since_best"])
        self.history = list(info["history"])
        self.tokens_seen = int(info["tokens_seen"])
        self.parent_hash = info["parent_hash"]
        torch.set_rng_state(saved["rng"])

    def _checkpoint(self) -> None:
        """Resumable state on disk, and the current adapter(s) into the store."""
        if self.dist.rank != 0:
            return
        self._save_state(self.run_dir / "checkpoints" / f"step-{self.step:06d}")
        tstate.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        for k, module in enumerate(self.modules):
            self._store_save(self._soft_prompt(k, module))

    def _finish(self, stopped_early: bool) -> TrainResult:
        # The adapter is the best evaluated state when there was an eval set, else the last one.
        if self.best is not None:
            for module, sd in zip(self.modules, self.best, strict=True):
                module.load_state_dict(sd)
        sps = [self._soft_prompt(k, m) for k, m in enumerate(self.modules)]
        if self.dist.rank == 0:
            sps = [self._store_save(sp) for sp in sps]
        self.dist.barrier()
        metrics: dict[str, Any] = {
            "steps": self.step,
            "final_loss": self.history[-1] if self.history else None,
            "first_loss": self.history[0] if self.history else None,
            "tokens": self.tokens_seen,
            "examples": len(self.examples),
            "truncated": self.enc_stats.truncated,
            "leaked_dropped": self.leak_report.count
            if (self.leak_report and self.cfg.leakage == "drop")
            else 0,
            "leaked_found": self.leak_report.count if self.leak_report else 0,
            "best_step": self.best_step,
            "stopped_early": stopped_early,
            "loss_history": list(self.history),
            # Wall and CPU seconds of this process's steps (not restored on resume).
            "step_seconds": list(self.step_seconds),
            "step_cpu_seconds": list(self.step_cpu_seconds),
        }
        for k, ev in enumerate(self.last_eval):
            suffix = f"/{self.tenants[k]}" if self.tenants[k] else ""
            for m, v in (self.init_eval[k] or {}).items():
                metrics[f"init_eval_{m}{suffix}"] = v
            for m, v in (ev.summary() if ev else {}).items():
                metrics[f"eval_{m}{suffix}"] = v
        if self.best_value is not None:
            metrics[f"best_eval_{self.cfg.best_metric}"] = self.best_value
        first = sps[0]
        from trace_ptune.adapters.store import AdapterStore

        store_path = AdapterStore().object_dir(first.hash) if self.dist.rank == 0 else None
        return TrainResult(
            soft_prompt=first,
            adapter_hash=first.hash,
            run_id=self.run_id,
            name=first.name or "",
            version=first.version,
            metrics=metrics,
            run_dir=self.run_dir,
            store_path=store_path,
            soft_prompts={(self.tenants[k] or first.name or ""): sp for k, sp in enumerate(sps)},
        )


def _module_from_parent(sp: SoftPrompt, cfg: TrainConfig) -> SoftPromptModule:
    if cfg.method == semconv.METHOD_PREFIX_TUNING:
        assert sp.prefix_kv is not None
        return PrefixTuning(
            sp.prefix_kv.float() if sp.prefix_kv.dtype not in (torch.float32, torch.float64) else sp.prefix_kv
        )
    assert sp.embeddings is not None
    emb = sp.embeddings if sp.embeddings.dtype in (torch.float32, torch.float64) else sp.embeddings.float()
    if cfg.method == semconv.METHOD_P_TUNING:
        enc = sp.encoder_config or {}
        module = PTuning(emb, encoder=enc.get("type", cfg.encoder), hidden_size=enc.get("hidden_size"))
        if sp.encoder_state:
            module.load_state_dict({k: v.to(emb.dtype) for k, v in sp.encoder_state.items()})
        return module
    return PromptTuning(emb)


class _Progress:
    """A rich progress bar with loss and tokens/s on stderr; nothing when disabled."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total, self.done = total, done
        self._progress: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[tps]:,.0f} tok/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.done, loss=float("nan"), tps=0.0
            )
        return self

    def update(self, loss: float, tps: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=loss, tps=tps)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
