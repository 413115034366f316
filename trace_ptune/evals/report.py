"""Render a ``Comparison``: a Markdown report (for CI artefacts and pull requests) and a terminal view."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from trace_ptune.evals.compare import Comparison, MetricComparison


_TEST_NAMES = {"t": "paired t", "bootstrap": "paired bootstrap", "wilcoxon": "Wilcoxon", "sign": "sign"}


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _md_cell(value: Any) -> str:
    return _short(value).replace("|", "\\|")


def _hash12(value: Any) -> str:
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[7:19]
    return "-" if value is None else str(value)


def _metric_rows(c: Comparison) -> list[list[str]]:
    rows = []
    for m in c.metrics:
        verdict = ("pass" if m.passed else "FAIL") if m.gated else "(not gated)"
        rows.append(
            [
                m.metric,
                str(m.n),
                _f(m.baseline_mean),
                _f(m.candidate_mean),
                _signed(m.delta),
                f"[{_signed(m.ci_low)}, {_signed(m.ci_high)}]",
                f"{m.p_value:.3g}",
                f"{_f(m.baseline_worst_decile)} -> {_f(m.candidate_worst_decile)}",
                f"{m.wins}/{m.losses}/{m.ties}",
                verdict,
            ]
        )
    return rows


_HEADER = ["metric", "n", "baseline", "candidate", "delta", "CI", "p", "worst decile", "W/L/T", "gate"]


def _test_line(m: MetricComparison) -> str:
    t = m.tests
    return (
        f"paired t p={t['paired_t']['p_value']:.3g}, bootstrap p={t['bootstrap']['p_value']:.3g} "
        f"CI [{_signed(t['bootstrap']['ci_low'])}, {_signed(t['bootstrap']['ci_high'])}], "
        f"Wilcoxon p={t['wilcoxon']['p_value']:.3g}, sign p={t['sign']['p_value']:.3g}; "
        f"worst-decile delta {_signed(m.worst_decile_delta)} "
        f"CI [{_signed(m.worst_decile_ci_low)}, {_signed(m.worst_decile_ci_high)}]"
    )


def markdown(c: Comparison, top: int = 10) -> str:
    """The Markdown report: verdict, side identities, per-metric table, tests, worst regressions."""
    cfg = c.config
    lines = [
        "# Eval comparison",
        "",
        f"**Gate: {'PASS — promote the candidate' if c.passed else 'FAIL — keep the baseline'}**",
        "",
    ]
    lines += [f"- {r}" for r in c.reasons]
    if c.reasons:
        lines.append("")
    lines += [
        "| | baseline | candidate |",
        "|---|---|---|",
        f"| results | {c.baseline['path'] or '-'} | {c.candidate['path'] or '-'} |",
        f"| adapter | {_hash12(c.baseline['adapter_hash'])} | {_hash12(c.candidate['adapter_hash'])} |",
        f"| model | {c.baseline['model'] or '-'} | {c.candidate['model'] or '-'} |",
        f"| dataset | {_hash12(c.baseline['dataset_hash'])} | {_hash12(c.candidate['dataset_hash'])} |",
        f"| run id | {c.baseline['run_id'] or '-'} | {c.candidate['run_id'] or '-'} |",
        f"| examples (errors) | {c.baseline['n']} ({c.baseline['errors']}) | {c.candidate['n']} ({c.candidate['errors']}) |",
        "",
        f"Gate: mean gain > 0 and >= {cfg.min_delta:g}"
        + (
            f", {_TEST_NAMES[cfg.test]} test p < {cfg.alpha:g}"
            if cfg.require_significance
            else " (significance not required)"
        )
        + f"; worst decile may drop at most {cfg.max_worst_decile_drop:g}. "
        f"CI at {1 - cfg.alpha:.0%}; bootstrap {cfg.bootstrap_samples} resamples, seed {cfg.seed}.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _metric_rows(c)]
    lines.append("")
    for m in c.metrics:
        lines.append(f"- **{m.metric}**: {_test_line(m)}")
    for w in c.warnings:
        lines.append(f"- warning: {w}")
    if c.missing_in_baseline or c.missing_in_candidate:
        lines.append(
            f"- unpaired examples left out: {len(c.missing_in_candidate)} only in the baseline, "
            f"{len(c.missing_in_baseline)} only in the candidate"
        )
    for m in c.metrics:
        worse = c.regressions(m.metric)
        if not worse:
            continue
        lines += [
            "",
            f"## Regressions on {m.metric} ({len(worse)} examples, worst {min(top, len(worse))})",
            "",
        ]
        with_content = any("baseline_output" in e or "input" in e for e in worse[:top])
        head = ["id", "baseline", "candidate", "delta"] + (
            ["input", "baseline output", "candidate output"] if with_content else []
        )
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in worse[:top]:
            s = e["scores"][m.metric]
            cells = [_md_cell(e["id"]), _f(s["baseline"]), _f(s["candidate"]), _signed(s["delta"])]
            if with_content:
                cells += [_md_cell(e.get(k, "")) for k in ("input", "baseline_output", "candidate_output")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(c: Comparison, console: Console, top: int = 10) -> None:
    """The terminal view (rich): verdict, per-metric table, tests, worst regressions."""
    from rich.table import Table

    table = Table(title="baseline vs candidate")
    for h in _HEADER:
        table.add_column(h, overflow="fold")
    for row in _metric_rows(c):
        table.add_row(*row)
    console.print(table)
    for m in c.metrics:
        console.print(f"[bold]{m.metric}[/]: {_test_line(m)}", highlight=False)
    for w in c.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    for m in c.metrics:
        worse = c.regressions(m.metric, top)
        if not worse:
            continue
        t = Table(title=f"worst regressions on {m.metric}")
        for h in ("id", "baseline", "candidate", "delta", "input", "candidate output"):
            t.add_column(h, overflow="fold")
        for e in worse:
            s = e["scores"][m.metric]
            t.add_row(
                str(e["id"]), _f(s["baseline"]), _f(s["candidate"]), _signed(s["delta"]),
                _short(e.get("input", "")), _short(e.get("candidate_output", "")),
            )  # fmt: skip
        console.print(t)
    if c.passed:
        console.print("[bold green]gate: PASS[/] (promote the candidate)")
    else:
        console.print("[bold red]gate: FAIL[/] (keep the baseline)")
        for r in c.reasons:
            console.print(f"  - {r}", highlight=False, markup=False)
