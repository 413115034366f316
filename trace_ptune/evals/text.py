"""Text normalisation and tokenisation shared by the text scorers.

A normalisation is a ``+``-joined list of steps, applied in this fixed order whatever the order
written: ``nfkc`` (Unicode NFKC), ``first_line`` (keep the first non-empty line), ``lower``
(case-fold), ``punct`` (drop Unicode punctuation), ``articles`` (drop English a/an/the),
``whitespace`` (collapse runs of whitespace), ``strip`` (trim the ends). Presets: ``none`` and
``squad`` (= ``lower+punct+articles+whitespace+strip``, the SQuAD answer normalisation).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from trace_ptune.errors import ConfigError

STEPS: tuple[str, ...] = ("nfkc", "first_line", "lower", "punct", "articles", "whitespace", "strip")
PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "squad": ("lower", "punct", "articles", "whitespace", "strip"),
}

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_WS = re.compile(r"\s+")
# Scripts written without spaces between words: one token per character, so token F1 and
# ROUGE-L mean something for Chinese, Japanese and Thai text.
_TOKEN = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f]"
    r"|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f]+"
)


def _drop_punct(text: str) -> str:
    return "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


_FUNCS: dict[str, Callable[[str], str]] = {
    "nfkc": lambda t: unicodedata.normalize("NFKC", t),
    "first_line": _first_line,
    "lower": str.casefold,
    "punct": _drop_punct,
    "articles": lambda t: _ARTICLES.sub(" ", t),
    "whitespace": lambda t: _WS.sub(" ", t),
    "strip": str.strip,
}


@dataclass(frozen=True)
class Normalizer:
    """A parsed normalisation; call it on a string."""

    steps: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str | Normalizer | None) -> Normalizer:
        """Parse ``"lower+punct"``, a preset name, or ``None``/``""`` (no normalisation)."""
        if isinstance(spec, Normalizer):
            return spec
        chosen: set[str] = set()
        for part in (spec or "").replace(",", "+").split("+"):
            part = part.strip().lower()
            if not part:
                continue
            if part in PRESETS:
                chosen.update(PRESETS[part])
            elif part in _FUNCS:
                chosen.add(part)
            else:
                names = ", ".join((*STEPS, *PRESETS))
                raise ConfigError(f"unknown normalisation step {part!r}; use {names} joined with '+'.")
        return cls(tuple(s for s in STEPS if s in chosen))

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = _FUNCS[step](text)
        return text

    def __str__(self) -> str:
        return "+".join(self.steps) or "none"


def tokens(text: str) -> list[str]:
    """Whitespace-separated tokens, with CJK and Thai characters as one token each."""
    return _TOKEN.findall(text)
