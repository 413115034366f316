"""Scorers: turn one model output (and its golden example) into a score.

The interface (a judge model plugs in here)::

    class Scorer(Protocol):
        name: str              # the metric: gen_ai.evaluation.name
        reference_free: bool   # True when it does not read example.expected (online-safe)
        def score(self, output: str, example: Example) -> ScoreResult: ...

``ScoreResult(value, label=None, explanation=None)``: ``value`` is a finite float where higher is
better (most built-ins give 0..1), ``label`` a short category (``match``, a predicted class),
``explanation`` free text. They become ``gen_ai.evaluation.score.value`` / ``.score.label`` /
``.explanation``.

Built-ins, by spec string (``name`` or ``name(key=value, ...)``; every scorer also takes
``name=...`` to rename its metric):

===============  ==========================================================================
exact_match      output equals ``expected`` (or any of a list) after ``normalize``
                 (default ``strip+whitespace``; ``squad``, ``lower``, ``punct``, ``first_line``...)
f1               token F1 against the best reference (default normalisation ``squad``)
contains         ``expected`` (or ``text=...``: reference-free) occurs in the output;
                 ``all=true`` needs every reference; default normalisation ``lower+whitespace``
regex            ``pattern=...`` (reference-free) or ``expected`` as the pattern matches;
                 ``mode=search|match|fullmatch``, ``flags=ims``
json_valid       the output parses as JSON (reference-free); ``extract=true`` finds the first
                 JSON object/array in surrounding text; ``type=object|array``
json_field       JSON output's ``field=a.b.0`` equals the expected value; without ``field``,
                 the share of ``expected``'s keys the output matches
label_accuracy   classification: predicted label (``labels=pos|neg`` picks the label the output
                 names first) equals ``expected``; the label is the prediction
rouge_l          ROUGE-L F-measure (token LCS) against the best reference; ``beta=1``
===============  ==========================================================================

Custom scorers: ``package.module:function`` (called as ``function(output, example, **params)``,
returning a float, a bool, a ``(value, label)`` pair, a dict or a ``ScoreResult``), or
``package.module:Class`` (instantiated with the params; must have ``score``). Mark a function
reference-free with the ``@scorer(reference_free=True)`` decorator.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from trace_ptune.errors import ConfigError, EvalError
from trace_ptune.evals.datasets import Example
from trace_ptune.evals.text import Normalizer, tokens


@dataclass(frozen=True)
class ScoreResult:
    """One score: a finite float (higher is better), an optional label and explanation."""

    value: float
    label: str | None = None
    explanation: str | None = None


@runtime_checkable
class Scorer(Protocol):
    """What every scorer provides; see the module docstring."""

    name: str
    reference_free: bool

    def score(self, output: str, example: Example) -> ScoreResult: ...


def scorer(
    name: str | None = None, *, reference_free: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a custom scoring function with its metric name and reference-free flag."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.metric_name = name or fn.__name__  # type: ignore[attr-defined]
        fn.reference_free = reference_free  # type: ignore[attr-defined]
        return fn

    return mark


# ------------------------------------------------------------------ helpers


def _references(example: Example, metric: str) -> list[Any]:
    if example.expected is None:
        raise EvalError(
            f"scorer {metric!r} needs an 'expected' value but example {example.id!r} has none; "
            "add it or use a reference-free scorer."
        )
    if isinstance(example.expected, list):
        if not example.expected:
            raise EvalError(
                f"example {example.id!r} has an empty 'expected' list; give at least one reference."
            )
        return list(example.expected)
    return [example.expected]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _bool_param(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"scorer option {key}={value!r} must be true or false.")


class _Builtin:
    """Shared constructor: the metric name and the normalisation."""

    default_normalize = "strip+whitespace"
    reference_free = False

    def __init__(self, *, name: str | None = None, normalize: str | None = None) -> None:
        self.name = name or self.kind
        self.normalize = Normalizer.parse(self.default_normalize if normalize is None else normalize)

    kind = ""

    def __repr__(self) -> str:
        return f"<scorer {self.name}>"


# ------------------------------------------------------------------ built-ins


class ExactMatch(_Builtin):
    kind = "exact_match"

    def score(self, output: str, example: Example) -> ScoreResult:
        got = self.normalize(output)
        for ref in _references(example, self.name):
            if got == self.normalize(_as_text(ref)):
                return ScoreResult(1.0, "match")
        return ScoreResult(0.0, "mismatch")


def _f1(pred: list[str], ref: list[str]) -> tuple[float, float, float]:
    if not pred and not ref:
        return 1.0, 1.0, 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    p, r = common / len(pred), common / len(ref)
    return p, r, 2 * p * r / (p + r)


class TokenF1(_Builtin):
    kind = "f1"
    default_normalize = "squad"

    def score(self, output: str, example: Example) -> ScoreResult:
        pred = tokens(self.normalize(output))
        best = max(
            (_f1(pred, tokens(self.normalize(_as_text(r)))) for r in _references(example, self.name)),
            key=lambda t: t[2],
        )
        return ScoreResult(best[2], explanation=f"precision={best[0]:.3f} recall={best[1]:.3f}")


class Contains(_Builtin):
    kind = "contains"
    default_normalize = "lower+whitespace"

    def __init__(self, *, text: str | None = None, all: Any = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.text = text
        self.all = _bool_param(all, "all")
        self.reference_free = text is not None

    def score(self, output: str, example: Example) -> ScoreResult:
        needles = [self.text] if self.text is not None else _references(example, self.name)
        got = self.normalize(output)
        found = [self.normalize(_as_text(n)) in got for n in needles]
        hit = all(found) if self.all else any(found)
        return ScoreResult(1.0 if hit else 0.0, "found" if hit else "missing")


_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


class RegexMatch(_Builtin):
    kind = "regex"

    def __init__(
        self, *, pattern: str | None = None, mode: str = "search", flags: str = "", **kw: Any
    ) -> None:
        kw.setdefault("normalize", "none")
        super().__init__(**kw)
        if mode not in ("search", "match", "fullmatch"):
            raise ConfigError(f"regex mode {mode!r} is unknown; use search, match or fullmatch.")
        bad = set(flags) - set(_FLAGS)
        if bad:
            raise ConfigError(f"regex flags {flags!r} contain {''.join(sorted(bad))!r}; use i, m and s only.")
        self.flags = 0
        for f in flags:
            self.flags |= _FLAGS[f]
        self.mode = mode
        self.pattern = self._compile(pattern) if pattern is not None else None
        self.reference_free = pattern is not None

    def _compile(self, pattern: str) -> re.Pattern[str]:
        try:
            return re.compile(pattern, self.flags)
        except re.error as exc:
            raise ConfigError(f"regex {pattern!r} does not compile ({exc}); fix the pattern.") from None

    def score(self, output: str, example: Example) -> ScoreResult:
        patterns = (
            [self.pattern]
            if self.pattern
            else [self._compile(_as_text(r)) for r in _references(example, self.name)]
        )
        text = self.normalize(output)
        hit = any(getattr(p, self.mode)(text) is not None for p in patterns)
        return ScoreResult(1.0 if hit else 0.0, "match" if hit else "no_match")


def parse_json_output(text: str, *, extract: bool = False) -> Any:
    """Parse ``text`` as JSON; with ``extract``, the first object or array inside it. Raises ValueError."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        if not extract:
            raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text, i)[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object or array found in the output")


class JsonValid(_Builtin):
    kind = "json_valid"
    reference_free = True

    def __init__(self, *, extract: Any = False, type: str = "any", **kw: Any) -> None:
        super().__init__(**kw)
        if type not in ("any", "object", "array"):
            raise ConfigError(f"json_valid type {type!r} is unknown; use any, object or array.")
        self.extract = _bool_param(extract, "extract")
        self.type = type

    def score(self, output: str, example: Example) -> ScoreResult:
        try:
            value = parse_json_output(output, extract=self.extract)
        except ValueError as exc:
            return ScoreResult(0.0, "invalid", str(exc))
        want = {"object": dict, "array": list}.get(self.type)
        if want is not None and not isinstance(value, want):
            return ScoreResult(0.0, "wrong_type", f"expected a JSON {self.type}, got {type(value).__name__}")
        return ScoreResult(1.0, "valid")


_MISSING = object()


def _lookup(value: Any, path: list[str]) -> Any:
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


class JsonField(_Builtin):
    kind = "json_field"

    def __init__(self, *, field: str | None = None, extract: Any = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.path = [p for p in field.split(".") if p] if field else []
        self.extract = _bool_param(extract, "extract")

    def _expected(self, example: Example) -> Any:
        ref = _references(example, self.name)
        exp = ref[0] if len(ref) == 1 else ref
        if isinstance(exp, str) and exp.strip()[:1] in ("{", "["):
            try:
                exp = json.loads(exp)
            except json.JSONDecodeError:
                pass
        return exp

    def score(self, output: str, example: Example) -> ScoreResult:
        expected = self._expected(example)
        try:
            got = parse_json_output(output, extract=self.extract)
        except ValueError as exc:
            return ScoreResult(0.0, "invalid", str(exc))
        if self.path:
            want = _lookup(expected, self.path) if isinstance(expected, dict | list) else _MISSING
            if want is _MISSING:
                want = expected
            value = _lookup(got, self.path)
            if value is _MISSING:
                return ScoreResult(0.0, "missing", f"field {'.'.join(self.path)!r} not in the output")
            ok = _same(value, want)
            return ScoreResult(1.0 if ok else 0.0, "match" if ok else "mismatch")
        if isinstance(expected, dict):
            if not expected:
                ok = got == {}
                return ScoreResult(1.0 if ok else 0.0, "match" if ok else "mismatch")
            if not isinstance(got, dict):
                return ScoreResult(0.0, "wrong_type", f"expected a JSON object, got {type(got).__name__}")
            hits = [k for k, v in expected.items() if k in got and _same(got[k], v)]
            frac = len(hits) / len(expected)
            return ScoreResult(
                frac, "match" if frac == 1.0 else "mismatch", f"{len(hits)}/{len(expected)} fields match"
            )
        ok = _same(got, expected)
        return ScoreResult(1.0 if ok else 0.0, "match" if ok else "mismatch")


class LabelAccuracy(_Builtin):
    kind = "label_accuracy"
    default_normalize = "lower+punct+whitespace+strip"

    def __init__(self, *, labels: str | list[str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        if isinstance(labels, str):
            labels = [x for x in labels.split("|") if x.strip()]
        self.labels = list(labels or [])
        # Longest first, so "very positive" wins over "positive" when the output starts with it.
        self._norm_labels = sorted(((self.normalize(x), x) for x in self.labels), key=lambda t: -len(t[0]))

    def predict(self, output: str) -> str | None:
        text = self.normalize(output)
        if not self.labels:
            return text or None
        for norm, raw in self._norm_labels:
            if norm and (text == norm or text.startswith(norm + " ")):
                return raw
        best: tuple[int, str] | None = None
        for norm, raw in self._norm_labels:
            m = re.search(r"(?<!\w)" + re.escape(norm) + r"(?!\w)", text) if norm else None
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), raw)
        return best[1] if best else None

    def score(self, output: str, example: Example) -> ScoreResult:
        predicted = self.predict(output)
        refs = {self.normalize(_as_text(r)) for r in _references(example, self.name)}
        ok = predicted is not None and self.normalize(predicted) in refs
        label = predicted if predicted is not None else "unknown"
        return ScoreResult(1.0 if ok else 0.0, label, f"predicted {label!r}, expected {sorted(refs)!r}")


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


class RougeL(_Builtin):
    kind = "rouge_l"
    default_normalize = "lower+punct+whitespace+strip"

    def __init__(self, *, beta: float | str = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.beta = float(beta)
        if not self.beta > 0:
            raise ConfigError(f"rouge_l beta must be positive, got {beta!r}.")

    def _one(self, pred: list[str], ref: list[str]) -> tuple[float, float, float]:
        if not pred and not ref:
            return 1.0, 1.0, 1.0
        lcs = _lcs(pred, ref)
        if lcs == 0:
            return 0.0, 0.0, 0.0
        p, r = lcs / len(pred), lcs / len(ref)
        b2 = self.beta**2
        return p, r, (1 + b2) * p * r / (r + b2 * p)

    def score(self, output: str, example: Example) -> ScoreResult:
        pred = tokens(self.normalize(output))
        best = max(
            (self._one(pred, tokens(self.normalize(_as_text(r)))) for r in _references(example, self.name)),
            key=lambda t: t[2],
        )
        return ScoreResult(best[2], explanation=f"precision={best[0]:.3f} recall={best[1]:.3f}")


# ------------------------------------------------------------------ registry

SCORERS: dict[str, Callable[..., Scorer]] = {
    "exact_match": ExactMatch,
    "f1": TokenF1,
    "token_f1": TokenF1,
    "contains": Contains,
    "regex": RegexMatch,
    "json_valid": JsonValid,
    "json_field": JsonField,
    "json_match": JsonField,
    "label_accuracy": LabelAccuracy,
    "rouge_l": RougeL,
}


def register_scorer(kind: str, factory: Callable[..., Scorer]) -> None:
    """Make ``factory(**params)`` available under ``kind`` in spec strings."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", kind):
        raise ConfigError(f"scorer name {kind!r} must be an identifier (letters, digits, underscores).")
    SCORERS[kind] = factory


class FunctionScorer:
    """Adapts a plain ``function(output, example, **params)`` to the ``Scorer`` protocol."""

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, params: Mapping[str, Any] | None = None
    ):
        self.fn = fn
        self.name = name or getattr(fn, "metric_name", None) or getattr(fn, "__name__", "custom")
        self.reference_free = bool(getattr(fn, "reference_free", False))
        self.params = dict(params or {})

    def score(self, output: str, example: Example) -> ScoreResult:
        return coerce_result(self.fn(output, example, **self.params), self.name)

    def __repr__(self) -> str:
        return f"<scorer {self.name}>"


def coerce_result(value: Any, metric: str) -> ScoreResult:
    """Accept a ScoreResult, number, bool, ``(value, label[, explanation])`` or dict."""
    if isinstance(value, ScoreResult):
        result = value
    elif isinstance(value, bool | int | float):
        result = ScoreResult(float(value))
    elif isinstance(value, tuple) and 1 <= len(value) <= 3:
        result = ScoreResult(float(value[0]), *[None if v is None else str(v) for v in value[1:]])
    elif isinstance(value, Mapping) and "value" in value:
        result = ScoreResult(float(value["value"]), value.get("label"), value.get("explanation"))
    else:
        raise EvalError(
            f"scorer {metric!r} returned {value!r}; return a number, a bool, a (value, label) pair, "
            "a dict with 'value', or a ScoreResult."
        )
    if (
        isinstance(result.value, bool)
        or not isinstance(result.value, int | float)
        or not math.isfinite(result.value)
    ):
        raise EvalError(
            f"scorer {metric!r} returned the score {result.value!r}; scores must be finite numbers."
        )
    if not isinstance(result.value, float):
        result = ScoreResult(float(result.value), result.label, result.explanation)
    return result


def apply_scorer(sc: Scorer, output: str, example: Example) -> ScoreResult:
    """Run one scorer; its exceptions become an ``EvalError`` naming the scorer and example."""
    try:
        return coerce_result(sc.score(output, example), sc.name)
    except EvalError:
        raise
    except Exception as exc:
        raise EvalError(
            f"scorer {sc.name!r} failed on example {example.id!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"custom scorer {target!r} must look like 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = str(Path.cwd())
        if exc.name != module_name.split(".")[0] or cwd in sys.path:
            raise ConfigError(
                f"cannot import {module_name!r} for custom scorer {target!r} ({exc}); check it is on PYTHONPATH."
            ) from None
        sys.path.insert(0, cwd)  # like `python -m`, find scorer modules next to the user's data
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigError(
                f"cannot import {module_name!r} for custom scorer {target!r}; check it is on PYTHONPATH."
            ) from None
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name!r} for custom scorer {target!r} failed: {type(exc).__name__}: {exc}."
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r}; check the scorer {target!r}."
            ) from None
    return obj


def _custom(target: str, params: dict[str, Any]) -> Scorer:
    obj = _import_target(target)
    name = params.pop("name", None)
    if isinstance(obj, type):
        try:
            inst = obj(**params)
        except TypeError as exc:
            raise ConfigError(f"custom scorer {target!r} does not accept {params!r}: {exc}.") from None
        if not callable(getattr(inst, "score", None)):
            raise ConfigError(f"custom scorer class {target!r} has no score(output, example) method.")
        if name or not isinstance(getattr(inst, "name", None), str):
            inst.name = name or obj.__name__
        if not hasattr(inst, "reference_free"):
            inst.reference_free = False
        return inst
    if callable(getattr(obj, "score", None)):
        if params:
            raise ConfigError(f"custom scorer {target!r} is an object; it takes no options (got {params!r}).")
        if name or not isinstance(getattr(obj, "name", None), str):
            obj.name = name or target.rpartition(":")[2]
        if not hasattr(obj, "reference_free"):
            obj.reference_free = False
        return obj
    if callable(obj):
        return FunctionScorer(obj, name=name, params=params)
    raise ConfigError(
        f"custom scorer {target!r} is a {type(obj).__name__}, not a function or a Scorer class."
    )


# ------------------------------------------------------------------ spec strings

_VALUE = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([^,()'"]*))\s*""")


def split_specs(text: str) -> list[str]:
    """Split ``"exact_match,regex(pattern='a,b'),f1"`` at top-level commas."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quote or depth:
        raise ConfigError(f"scorer list {text!r} has an unclosed quote or parenthesis.")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _literal(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"regex(pattern='^a', flags=i)"`` -> ``("regex", {"pattern": "^a", "flags": "i"})``."""
    spec = spec.strip()
    m = re.fullmatch(r"([A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?)\s*(?:\((.*)\))?", spec, re.DOTALL)
    if not m:
        raise ConfigError(f"scorer spec {spec!r} is malformed; write name or name(key=value, ...).")
    kind, body = m.group(1), m.group(2)
    params: dict[str, Any] = {}
    pos = 0
    body = body or ""
    while body.strip() and pos < len(body):
        km = re.compile(r"\s*([A-Za-z_]\w*)\s*=").match(body, pos)
        if not km:
            raise ConfigError(f"scorer spec {spec!r}: expected key=value at {body[pos:]!r}.")
        vm = _VALUE.match(body, km.end())
        assert vm is not None  # the pattern can match the empty string
        if vm.group(1) is not None or vm.group(2) is not None:
            # Only the quote itself is unescaped: regex backslashes pass through untouched.
            q = "'" if vm.group(1) is not None else '"'
            value: Any = (vm.group(1) if q == "'" else vm.group(2)).replace("\\" + q, q)
        else:
            value = _literal(vm.group(3).strip())
        params[km.group(1)] = value
        pos = vm.end()
        if pos < len(body):
            if body[pos] != ",":
                raise ConfigError(f"scorer spec {spec!r}: expected ',' at {body[pos:]!r}.")
            pos += 1
    return kind, params


def get_scorer(spec: str | Scorer | Callable[..., Any]) -> Scorer:
    """A scorer from a spec string (built-in name or ``module:function``), a function, or a Scorer."""
    if not isinstance(spec, str):
        if isinstance(spec, Scorer):
            return spec
        if callable(spec) and not isinstance(spec, type):
            return FunctionScorer(spec)
        raise ConfigError(
            f"{spec!r} is not a scorer; give a spec string, a function (output, example) -> score, "
            "or an object with name, reference_free and score()."
        )
    kind, params = parse_spec(spec)
    if ":" in kind:
        return _custom(kind, params)
    factory = SCORERS.get(kind)
    if factory is None:
        raise ConfigError(
            f"unknown scorer {kind!r}; use one of {', '.join(sorted(SCORERS))}, or 'package.module:function'."
        )
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(
            f"scorer {spec!r} has an unknown option ({exc}); see `trace-ptune eval run --help`."
        ) from None


def get_scorers(specs: Any) -> list[Scorer]:
    """Scorers from a comma-separated string or a list; metric names must be unique."""
    items: list[str | Scorer] = []
    single = isinstance(specs, str | Scorer) or callable(specs)
    for item in [specs] if single else list(specs):
        items.extend(split_specs(item) if isinstance(item, str) else [item])
    if not items:
        raise ConfigError("no scorer given; pass at least one, e.g. exact_match.")
    result = [get_scorer(s) for s in items]
    names = [s.name for s in result]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"metric name {dupes[0]!r} is used twice; rename one with name=... .")
    return result
