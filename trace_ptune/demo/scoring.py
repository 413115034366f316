"""The demo's classification scorer: which label did the model answer, and is it the right one?

A label counts as answered when the output starts with it (``"positive, clearly"``) or when the
output is a non-empty beginning of exactly one label (``"pos"``: the answer cut off by
``max_new_tokens``, which is how the demo reads ``tiny-random``'s first token). The score label is
the prediction, so the traces hold a confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

from trace_ptune.evals.datasets import Example
from trace_ptune.evals.scorers import ScoreResult

METRIC = "label_accuracy"


class LabelMatch:
    """A reference-based scorer: 1.0 when the answered label equals ``expected``."""

    reference_free = False

    def __init__(self, labels: Sequence[str], name: str = METRIC) -> None:
        self.name = name
        self.labels = sorted({label.strip().lower() for label in labels}, key=lambda s: (-len(s), s))

    def predict(self, output: str) -> str | None:
        text = " ".join(output.strip().lower().split())
        if not text:
            return None
        for label in self.labels:  # longest first
            if text == label or (text.startswith(label) and not text[len(label)].isalnum()):
                return label
        started = [label for label in self.labels if label.startswith(text)]
        return started[0] if len(started) == 1 else None

    def score(self, output: str, example: Example) -> ScoreResult:
        expected = str(example.expected or "").strip().lower()
        predicted = self.predict(output)
        return ScoreResult(1.0 if predicted == expected else 0.0, predicted or "none")
