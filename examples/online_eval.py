"""Score production traffic online, and join labels that arrive later.

Runs a small batch of "production" requests through the runtime engine with two evaluators:

- an ``OnlineEvaluator`` that scores a deterministic 50 % sample with reference-free scorers
  (is the reply non-empty JSON? does it start with a capital letter?), and
- a ``LabelJoiner`` that remembers every generation and scores it when its true label shows up.

Each score becomes an ``evaluation {metric}`` child span of the generation span, with the
adapter hash, tenant, deployment and base fingerprint copied on, so ``trace-ptune query
regressions`` can attribute a drop to the adapter version that served it.

Usage::

    trace-ptune collector start &            # optional: otherwise spans are not exported
    python examples/online_eval.py [--model tiny-random] [--sample-rate 0.5]
"""

from __future__ import annotations

import argparse

import trace_ptune
from trace_ptune.evals import LabelJoiner, OnlineEvaluator, scorer
from trace_ptune.models import load_model
from trace_ptune.runtime import Engine, GenerationRequest


@scorer("non_empty", reference_free=True)
def non_empty(output: str, example) -> float:
    """A custom reference-free scorer: 1.0 when the reply has any visible text."""
    return 1.0 if output.strip() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--sample-rate", type=float, default=0.5)
    args = parser.parse_args()

    trace_ptune.configure(service_name="online-eval-example")
    engine = Engine(load_model(args.model))

    online = OnlineEvaluator(
        [non_empty, "regex(pattern='^\\s*[A-Z]', name=starts_upper)"], sample_rate=args.sample_rate, seed=7
    ).attach(engine)
    joiner = LabelJoiner("label_accuracy(labels='positive|negative')").attach(engine)

    reviews = {
        "t-1": ("I love this movie", "positive"),
        "t-2": ("this film was bad", "negative"),
        "t-3": ("great day in the sun", "positive"),
        "t-4": ("I hate the time it took", "negative"),
    }
    requests = [
        GenerationRequest(
            f"review: {text}\nsentiment:",
            tenant="acme",
            deployment="acme/sentiment@prod",
            max_new_tokens=4,
            request_id=request_id,
        )
        for request_id, (text, _) in reviews.items()
    ]
    results = engine.generate(requests)
    print(f"online: {online.scored} of {online.seen} generations sampled and scored")

    # Later (minutes or days): true labels arrive, keyed by the request id we sent.
    for request_id, (_, label) in reviews.items():
        for metric, score in joiner.label(request_id, label):
            print(f"{request_id}: {metric}={score.value:.0f} ({score.explanation})")
    # A user's thumbs-up, recorded against the response id the API returned.
    joiner.feedback(results[0].response_id, "thumbs_up", 1.0, label="up")


if __name__ == "__main__":
    main()
