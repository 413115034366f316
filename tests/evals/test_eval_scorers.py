"""Built-in scorers on edge cases, spec parsing, and custom ``module:function`` scorers."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from trace_ptune.errors import ConfigError, EvalError
from trace_ptune.evals.datasets import Example
from trace_ptune.evals.scorers import (
    Scorer,
    ScoreResult,
    apply_scorer,
    get_scorer,
    get_scorers,
    parse_spec,
    split_specs,
)
from trace_ptune.evals.text import Normalizer, tokens


def ex(expected=None, input="q") -> Example:
    return Example(id="e1", input=input, expected=expected)


def score(spec: str, output: str, expected=None) -> ScoreResult:
    return apply_scorer(get_scorer(spec), output, ex(expected))


# ---------------------------------------------------------------- exact match and normalisation


def test_exact_match_default_trims_and_collapses_whitespace_but_keeps_case():
    assert score("exact_match", "  Paris \n", "Paris").value == 1.0
    assert score("exact_match", "a   b", "a b").value == 1.0
    assert score("exact_match", "paris", "Paris").value == 0.0
    assert score("exact_match", "paris", "Paris").label == "mismatch"


def test_exact_match_normalisation_options():
    assert score("exact_match(normalize=lower)", "PARIS", "paris").value == 1.0
    assert score("exact_match(normalize=squad)", "The Eiffel-Tower!", "eiffel tower").value == 1.0
    assert score("exact_match(normalize=first_line+strip)", "42\nand more text", "42").value == 1.0
    assert score("exact_match(normalize=none)", " 42", "42").value == 0.0


def test_exact_match_empty_output():
    assert score("exact_match", "", "").value == 1.0
    assert score("exact_match", "", "x").value == 0.0
    assert score("exact_match", "   ", "").value == 1.0


def test_exact_match_accepts_any_of_a_list_of_references():
    assert score("exact_match", "NYC", ["New York", "NYC"]).value == 1.0
    assert score("exact_match", "LA", ["New York", "NYC"]).value == 0.0


def test_unicode_nfkc_and_casefold():
    # fullwidth digits and the German sharp s: NFKC folds the first, casefold the second.
    assert score("exact_match(normalize=nfkc)", "１２３", "123").value == 1.0
    assert score("exact_match(normalize=lower)", "STRASSE", "straße").value == 1.0
    assert score("exact_match", "café", "cafe").value == 0.0


def test_unknown_normalisation_step_is_a_config_error():
    with pytest.raises(ConfigError, match="'upper'"):
        get_scorer("exact_match(normalize=upper)")


def test_normalizer_applies_steps_in_fixed_order():
    n = Normalizer.parse("strip+lower+punct")
    assert str(n) == "lower+punct+strip"
    assert n("  Hello, World! ") == "hello  world"


# ---------------------------------------------------------------- token f1 / rouge


def test_f1_hand_computed():
    # pred: [the] cat sat -> after squad: cat sat; ref: cat sat down -> p=1, r=2/3, f1=0.8
    r = score("f1", "The cat sat", "a cat sat down")
    assert r.value == pytest.approx(0.8)
    assert score("f1", "", "").value == 1.0
    assert score("f1", "", "x").value == 0.0
    assert score("f1", "x", "").value == 0.0


def test_f1_counts_repeated_tokens_once_per_occurrence():
    # pred: a a a b (articles kept: normalize=lower) ; ref: a b b -> common = min(3,1)+min(1,2)=2
    r = score("f1(normalize=lower)", "x x x y", "x y y")
    p, rc = 2 / 4, 2 / 3
    assert r.value == pytest.approx(2 * p * rc / (p + rc))


def test_cjk_text_is_tokenised_per_character():
    assert tokens("猫が好き cats") == ["猫", "が", "好", "き", "cats"]
    assert score("f1", "猫が好き", "猫が好きです").value == pytest.approx(2 * 1 * (4 / 6) / (1 + 4 / 6))


def test_rouge_l_uses_longest_common_subsequence():
    # pred: a b c d ; ref: a c e d -> LCS a c d = 3, p = 3/4, r = 3/4
    assert score("rouge_l", "a b c d", "a c e d").value == pytest.approx(0.75)
    assert score("rouge_l", "", "").value == 1.0
    assert score("rouge_l", "zzz", "a b").value == 0.0
    # best of several references
    assert score("rouge_l", "a b", ["x", "a b"]).value == 1.0


def test_rouge_l_beta_weights_recall():
    # p = 1 (1/1), r = 1/2; beta=2 -> 5*p*r/(r+4p) = 2.5/4.5
    assert score("rouge_l(beta=2)", "a", "a b").value == pytest.approx(2.5 / 4.5)


# ---------------------------------------------------------------- contains / regex


def test_contains_reference_and_reference_free():
    assert score("contains", "The answer is PARIS.", "paris").value == 1.0
    assert score("contains", "nothing", "paris").label == "missing"
    sc = get_scorer("contains(text=refund)")
    assert sc.reference_free is True
    assert apply_scorer(sc, "We will Refund you", ex()).value == 1.0
    assert score("contains(all=true)", "red and blue", ["red", "green"]).value == 0.0
    assert score("contains", "red and blue", ["red", "green"]).value == 1.0


def test_regex_pattern_with_commas_and_backslashes_survives_the_spec():
    sc = get_scorer(r"regex(pattern='^\d+,\d$')")
    assert sc.reference_free is True
    assert apply_scorer(sc, "12,3", ex()).value == 1.0
    assert apply_scorer(sc, "12,34", ex()).value == 0.0


def test_regex_modes_flags_and_expected_as_pattern():
    assert score("regex(pattern=abc, flags=i)", "xxABCxx").value == 1.0
    assert score("regex(pattern=abc, mode=fullmatch)", "xxabcxx").value == 0.0
    assert score("regex", "order #123", r"#\d+").value == 1.0
    assert get_scorer("regex").reference_free is False


def test_bad_regex_is_a_config_error_naming_the_pattern():
    with pytest.raises(ConfigError, match=r"'\(unclosed'"):
        get_scorer("regex(pattern='(unclosed')")
    with pytest.raises(ConfigError, match="flags"):
        get_scorer("regex(pattern=a, flags=x)")


# ---------------------------------------------------------------- json


def test_json_valid_edge_cases():
    assert score("json_valid", '{"a": 1}').value == 1.0
    assert score("json_valid", "").label == "invalid"
    assert score("json_valid", "{'a': 1}").value == 0.0  # single quotes are not JSON
    assert score("json_valid", 'Here: {"a": [1, 2]} done').value == 0.0
    assert score("json_valid(extract=true)", 'Here: {"a": [1, 2]} done').value == 1.0
    assert score("json_valid(type=object)", "[1]").label == "wrong_type"
    assert score("json_valid", '"ünïcødé"').value == 1.0
    assert get_scorer("json_valid").reference_free is True


def test_json_field_path_and_partial_match():
    out = '{"user": {"name": "Ada", "langs": ["en", "fr"]}, "ok": true}'
    assert score("json_field(field=user.name)", out, "Ada").value == 1.0
    assert score("json_field(field=user.langs.1)", out, "fr").value == 1.0
    assert score("json_field(field=user.age)", out, 3).label == "missing"
    # expected as a dict: the same path is looked up in it
    assert score("json_field(field=ok)", out, {"ok": True}).value == 1.0
    # without a field: the share of expected keys matched
    r = score("json_field", '{"a": 1, "b": 2, "c": 9}', {"a": 1, "b": 3})
    assert r.value == pytest.approx(0.5) and r.label == "mismatch"
    # expected written as a JSON string in the golden file
    assert score("json_field", '{"a": 1}', '{"a": 1.0}').value == 1.0
    assert score("json_field", "not json", {"a": 1}).label == "invalid"
    # true is not 1
    assert score("json_field(field=a)", '{"a": true}', 1).value == 0.0


# ---------------------------------------------------------------- classification


def test_label_accuracy_with_label_set_prefers_longest_and_earliest():
    spec = "label_accuracy(labels='positive|negative|very positive')"
    r = score(spec, "Very positive, I think", "very positive")
    assert (r.value, r.label) == (1.0, "very positive")
    r = score(spec, "It's negative, not positive", "negative")
    assert (r.value, r.label) == (1.0, "negative")
    r = score(spec, "no idea", "negative")
    assert (r.value, r.label) == (0.0, "unknown")


def test_label_accuracy_without_label_set_compares_normalised_output():
    assert score("label_accuracy", "Spam.", "spam").value == 1.0
    assert score("label_accuracy", "", "spam").label == "unknown"


# ---------------------------------------------------------------- references and spec strings


def test_reference_scorer_without_expected_names_the_example():
    with pytest.raises(EvalError, match="'e1'"):
        score("exact_match", "x", None)


def test_split_specs_respects_parentheses_and_quotes():
    assert split_specs("exact_match, f1,regex(pattern='a,b', flags=i),contains(text=\"x,y\")") == [
        "exact_match",
        "f1",
        "regex(pattern='a,b', flags=i)",
        'contains(text="x,y")',
    ]
    with pytest.raises(ConfigError, match="unclosed"):
        split_specs("regex(pattern='a")


def test_parse_spec_types_values():
    assert parse_spec("x(a=1, b=2.5, c=true, d=word, e='q u o t e d')") == (
        "x",
        {"a": 1, "b": 2.5, "c": True, "d": "word", "e": "q u o t e d"},
    )
    with pytest.raises(ConfigError, match="malformed"):
        parse_spec("exact match")


def test_unknown_scorer_and_unknown_option_are_config_errors():
    with pytest.raises(ConfigError, match="unknown scorer 'bleu'"):
        get_scorer("bleu")
    with pytest.raises(ConfigError, match="unknown option"):
        get_scorer("exact_match(colour=red)")


def test_metric_names_must_be_unique_and_can_be_renamed():
    with pytest.raises(ConfigError, match="used twice"):
        get_scorers("contains(text=a),contains(text=b)")
    names = [s.name for s in get_scorers(["contains(text=a, name=has_a)", "contains(text=b, name=has_b)"])]
    assert names == ["has_a", "has_b"]


# ---------------------------------------------------------------- custom scorers


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "my_eval_scorers_mod"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from trace_ptune.evals import ScoreResult, scorer

            def length_ratio(output, example, target=10):
                return min(1.0, len(output) / target)

            @scorer("polite", reference_free=True)
            def polite(output, example):
                return ("please" in output.lower(), "polite")

            def broken(output, example):
                raise RuntimeError("judge is down")

            def bad_value(output, example):
                return float("nan")

            class Judge:
                reference_free = True

                def __init__(self, threshold=0.5):
                    self.threshold = threshold
                    self.name = "judge"

                def score(self, output, example):
                    v = 1.0 if len(output) > self.threshold else 0.0
                    return ScoreResult(v, "long" if v else "short", "length rule")

            NOT_CALLABLE = 3
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_custom_function_scorer_with_params(custom_module: str):
    sc = get_scorer(f"{custom_module}:length_ratio(target=4)")
    assert sc.name == "length_ratio" and sc.reference_free is False
    assert apply_scorer(sc, "ab", ex()).value == 0.5


def test_custom_decorated_function_is_reference_free(custom_module: str):
    sc = get_scorer(f"{custom_module}:polite")
    assert (sc.name, sc.reference_free) == ("polite", True)
    r = apply_scorer(sc, "Please hold", ex())
    assert (r.value, r.label) == (1.0, "polite")


def test_custom_class_is_a_scorer(custom_module: str):
    sc = get_scorer(f"{custom_module}:Judge(threshold=3)")
    assert isinstance(sc, Scorer)
    assert apply_scorer(sc, "long text", ex()) == ScoreResult(1.0, "long", "length rule")


def test_custom_scorer_exceptions_and_bad_values_become_eval_errors(custom_module: str):
    with pytest.raises(EvalError, match=r"'broken' failed on example 'e1'.*judge is down"):
        apply_scorer(get_scorer(f"{custom_module}:broken"), "x", ex())
    with pytest.raises(EvalError, match="finite"):
        apply_scorer(get_scorer(f"{custom_module}:bad_value"), "x", ex())


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", "is a int, not a function"),
        ("{mod}:Judge(colour=1)", "does not accept"),
        (":fn", "malformed"),
    ],
)
def test_bad_custom_scorer_specs_are_one_sentence_config_errors(custom_module: str, spec: str, match: str):
    with pytest.raises(ConfigError, match=match):
        get_scorer(spec.format(mod=custom_module))


def test_plain_functions_and_scorer_objects_pass_through():
    def shouting(output, example):
        return output.isupper()

    judge = get_scorer("contains(text=x)")
    got = get_scorers([shouting, judge, "f1"])
    assert [s.name for s in got] == ["shouting", "contains", "f1"]
    assert got[1] is judge
    assert apply_scorer(got[0], "LOUD", ex()).value == 1.0
    with pytest.raises(ConfigError, match="not a scorer"):
        get_scorer(3)
