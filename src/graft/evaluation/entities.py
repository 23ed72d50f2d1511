"""Entity-level scores of tagged sentences; the arithmetic is seqeval's (default mode: an I- tag after O or another
type starts an entity, as IOB1 reads it)."""

from __future__ import annotations

from typing import Any


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Micro precision, recall and F1 over entities (type and span both right), each type's, and the share of
    words whose tag is right (`token_accuracy`)."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    words = sum(len(tags) for tags in gold)
    right = sum(g == p for tags, guess in zip(gold, predicted, strict=True) for g, p in zip(tags, guess, strict=True))
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    per_entity = {name: {"precision": float(row["precision"]), "recall": float(row["recall"]),
                         "f1": float(row["f1-score"]), "support": int(row["support"])}
                  for name, row in report.items() if not name.endswith(" avg")}
    return {"n": len(gold), "words": words,
            "precision": float(precision_score(gold, predicted, zero_division=0)),
            "recall": float(recall_score(gold, predicted, zero_division=0)),
            "f1": float(f1_score(gold, predicted, zero_division=0)),
            "token_accuracy": right / words if words else 0.0, "per_entity": per_entity}


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in one sentence's tags, as the scores read them."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end) for kind, start, end in get_entities(tags)]
