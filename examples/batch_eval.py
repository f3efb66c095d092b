"""Evaluate a prompt over a small labelled data set with convo.batch and typed results.

    python examples/batch_eval.py                  # offline: the embedded local model, $0
    python examples/batch_eval.py --model claude-haiku-4-5 --budget 0.05

Each review is labelled by its own conversation, in parallel, as a
``Verdict`` (structured output: the model's reply is parsed and validated,
and corrected when it does not fit). The results come back in input order,
failures in their slots; the table shows each prediction against the
expected label, then the accuracy and exactly what the run cost.

The default model is tiny (SmolLM2-135M): expect the mechanics to work and
the accuracy to be modest. The progress bar goes to stderr; the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Literal

import attrs

import convo

REVIEWS = [
    ("I love this phone, the battery lasts two days.", "positive"),
    ("Terrible. It broke after a week and support never answered.", "negative"),
    ("Great sound and very comfortable headphones.", "positive"),
    ("The worst purchase I have made this year.", "negative"),
    ("Fast delivery, and the shoes fit perfectly.", "positive"),
    ("It smells awful and the colour faded in one wash.", "negative"),
    ("Excellent value, I would buy it again.", "positive"),
    ("Completely useless, it never turned on.", "negative"),
    ("My kids adore this game, hours of fun.", "positive"),
    ("Cheap plastic, it cracked on the first day.", "negative"),
    ("Beautiful lamp, it makes the room cosy.", "positive"),
    ("Do not buy: the charger overheats.", "negative"),
    ("Best coffee I have had at home, rich and smooth.", "positive"),
    ("The app crashes every time I open it.", "negative"),
    ("Sturdy, light and easy to carry. Very happy.", "positive"),
    ("Arrived late and missing half the parts.", "negative"),
    ("Wonderful book, I could not put it down.", "positive"),
    ("Boring and far too long. A waste of money.", "negative"),
    ("The knife is sharp and well balanced. Love it.", "positive"),
    ("Rude seller and a broken product. Awful.", "negative"),
]


@attrs.frozen
class Verdict:
    """The sentiment of one product review.

    Attributes:
        sentiment: whether the reviewer liked the product.
    """

    sentiment: Literal["positive", "negative"]


PROMPT = "Review: {item[0]}\nIs this review positive or negative?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="local", help="a model name (default: the embedded local model)")
    parser.add_argument("--budget", type=float, default=None, help="dollars after which no more reviews start")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # before llama.cpp loads: see README.rst
    if args.model == "local":
        parent = convo.Convo(convo.LocalService(temperature=0.0, max_tokens=24, seed=1))
    else:
        parent = convo.Convo(model=args.model, max_tokens=64)

    started = time.perf_counter()
    results = convo.batch(REVIEWS, PROMPT, output=convo.Output(Verdict, attempts=2), parent=parent,
                          max_workers=args.workers, budget=args.budget)
    seconds = time.perf_counter() - started

    print(f"{'#':>2}  {'review':<48}  {'expected':<8}  {'predicted':<9}  ok")
    correct = 0
    for i, ((text, expected), outcome) in enumerate(zip(REVIEWS, results.outcomes)):
        if outcome.ok:
            predicted = outcome.value.sentiment
            mark = "yes" if predicted == expected else "no"
            correct += predicted == expected
        else:
            predicted, mark = type(outcome.error).__name__[:9], "-"
        shown = text if len(text) <= 48 else text[:45] + "..."
        print(f"{i:>2}  {shown:<48}  {expected:<8}  {predicted:<9}  {mark}")
    usage = results.usage
    counts = results.counts()
    print()
    print(f"accuracy:   {correct}/{len(REVIEWS)}")
    print(f"items:      {counts['done']} done, {counts['failed']} failed, {counts['not_started']} not started")
    print(f"requests:   {usage.responses} ({usage.input_tokens} input and {usage.output_tokens} output tokens)")
    print(f"total cost: ${usage.total_cost_usd}")
    print(f"wall time:  {seconds:.1f}s")


if __name__ == "__main__":
    main()
