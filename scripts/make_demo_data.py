"""Write the demo's bundled task datasets (deterministic; re-run to regenerate).

Two tenants with small classification tasks:
- acme: review sentiment (positive / negative);
- globex: support-ticket routing (billing / shipping / technical).

Each task gets train / eval (held out, disjoint inputs) / production splits, plus a
``train_noisy`` split whose labels are partly shuffled: an adapter trained on it is genuinely
worse, which is what the demo's bad rollout uses.

    python scripts/make_demo_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "trace_ptune" / "data" / "demo"

ITEMS = [
    "pizza",
    "hotel room",
    "movie",
    "laptop",
    "concert",
    "coffee",
    "haircut",
    "phone case",
    "novel",
    "museum tour",
    "pasta",
    "headphones",
    "train ride",
    "sofa",
    "jacket",
    "game",
    "burger",
    "tent",
    "keyboard",
    "sushi",
    "bike",
    "camera",
    "flight",
    "lamp",
    "backpack",
    "soup",
    "album",
    "blender",
]
POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "fantastic", "lovely", "perfect"]
NEGATIVE = ["awful", "terrible", "disappointing", "horrible", "dreadful", "useless", "broken", "bland"]
REVIEW_TEMPLATES = [
    "The {item} was {adj}.",
    "Honestly, the {item} was {adj}.",
    "I found the {item} {adj}.",
    "What a {adj} {item}.",
]

TICKETS = {
    "billing": [
        "I was charged twice for my {thing}.",
        "Please refund the {thing} payment.",
        "My invoice for the {thing} is wrong.",
        "Why did the {thing} subscription fee go up?",
        "I need a receipt for the {thing} purchase.",
        "The {thing} price on my bill is too high.",
    ],
    "shipping": [
        "My {thing} has not arrived yet.",
        "The courier lost my {thing}.",
        "Can I change the delivery address for my {thing}?",
        "The tracking number for my {thing} does not work.",
        "The box with my {thing} arrived damaged.",
        "When will my {thing} be delivered?",
    ],
    "technical": [
        "The app crashes when I open my {thing}.",
        "I cannot log in to manage my {thing}.",
        "The {thing} page shows an error code.",
        "The screen freezes when I set up my {thing}.",
        "My {thing} will not connect to wifi.",
        "The password reset for my {thing} fails.",
    ],
}
THINGS = [
    "order",
    "account",
    "plan",
    "router",
    "printer",
    "watch",
    "speaker",
    "monitor",
    "tablet",
    "charger",
    "membership",
    "gift card",
    "drone",
    "scanner",
    "console",
    "modem",
    "camera",
    "keyboard",
    "mouse",
    "laptop",
    "headset",
    "projector",
    "thermostat",
    "doorbell",
]


def _sentiment_rows(rng: random.Random) -> list[dict]:
    rows = []
    for item in ITEMS:
        for label, adjs in (("positive", POSITIVE), ("negative", NEGATIVE)):
            for adj in adjs:
                text = rng.choice(REVIEW_TEMPLATES).format(item=item, adj=adj)
                rows.append({"input": f"Review: {text}\nSentiment:", "target": f" {label}"})
    return rows


def _ticket_rows(rng: random.Random) -> list[dict]:
    rows = []
    for label, templates in TICKETS.items():
        for thing in THINGS:
            for template in templates:
                text = template.format(thing=thing)
                rows.append({"input": f"Ticket: {text}\nTeam:", "target": f" {label}"})
    return rows


def _split(rows: list[dict], rng: random.Random, prefix: str) -> dict[str, list[dict]]:
    rng.shuffle(rows)
    seen: set[str] = set()
    unique = []
    for row in rows:  # disjoint inputs across splits (the trainer's leakage guard checks this)
        if row["input"] not in seen:
            seen.add(row["input"])
            unique.append(row)
    splits = {"train": unique[:96], "eval": unique[96:144], "production": unique[144:384]}
    labels = sorted({r["target"] for r in unique})
    noisy = []
    for row in splits["train"]:
        row = dict(row)
        if rng.random() < 0.7:  # most labels replaced by a wrong one: a genuinely worse adapter
            row["target"] = rng.choice([lab for lab in labels if lab != row["target"]])
        noisy.append(row)
    splits["train_noisy"] = noisy
    for name, split in splits.items():
        for i, row in enumerate(split):
            row.setdefault("id", f"{prefix}-{name}-{i:04d}")
    return splits


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261129)
    for tenant, rows in (("acme", _sentiment_rows(rng)), ("globex", _ticket_rows(rng))):
        for split, split_rows in _split(rows, rng, tenant).items():
            path = OUT / f"{tenant}_{split}.jsonl"
            with path.open("w") as f:
                for row in split_rows:
                    row = {"id": row["id"], "input": row["input"], "target": row["target"]}
                    f.write(json.dumps(row) + "\n")
            print(f"{path.name}: {len(split_rows)} rows")


if __name__ == "__main__":
    main()
