"""Bad-data accounting: a skipped sample names its record, reason and file; a report counts them.

The dataset never raises on bad data in the default mode: it returns a :class:`SkippedSample`, the collator
moves those into ``batch["skipped"]``, and the training loop feeds them to a :class:`SkipReport`, which
merges across workers and ranks and prints one summary at the end of a run (and in its log).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass


# reason -> what it means (the summary prints these; tests exercise each)
REASONS: dict[str, str] = {
    "missing": "image file not found",
    "outside_image_folder": "image path leaves --image_folder (absolute, or climbs out with ..)",
    "empty": "image file has zero bytes",
    "not_image": "file is not an image",
    "unsupported_format": "an image format outside PNG/JPEG/WEBP/GIF/BMP/TIFF (never decoded)",
    "corrupt": "image file is truncated or corrupt",
    "too_large": "image exceeds the pixel limit (decompression bomb guard)",
    "image_processing_failed": "image decoded but preprocessing failed",
    "invalid_json": "record is not valid JSON",
    "malformed_record": "record is not an object, or a field has the wrong type",
    "no_conversations": "record has no conversations (or no user turn)",
    "unknown_role": "a turn's role is not human/gpt/user/assistant/system",
    "empty_turn": "a turn is empty",
    "non_alternating": "turns do not alternate user/assistant",
    "image_in_assistant_turn": "an assistant turn contains <image>",
    "no_assistant_turn": "nothing to supervise: no assistant turn",
    "image_count_mismatch": "number of <image> markers differs from the number of images",
    "template_unsupported": "the template cannot express this conversation",
    "template_error": "the chat template raised an error",
    "template_mismatch": "the chat template changed a message so its span cannot be located",
    "mask_mismatch": "supervised tokens do not decode back to the assistant turns",
    "no_supervised_tokens": "no token is supervised (e.g. all beyond max_length)",
    "images_do_not_fit": "image placeholders do not fit in max_length",
    "prompt_too_long": "generation prompt longer than max_length",
}


@dataclass(frozen=True)
class SkippedSample:
    """A sample the dataset could not produce: which record, why, and which file."""

    index: int
    id: str | None
    reason: str
    detail: str = ""
    path: str | None = None

    def __str__(self) -> str:
        where = f" [{self.path}]" if self.path else ""
        return f"record {self.index} (id={self.id!r}): {self.reason}: {self.detail}{where}"


class DataError(RuntimeError):
    """Strict mode: the first bad sample stops the run, naming record index, id, reason and files."""

    def __init__(self, skipped: SkippedSample, source: str | None = None):
        self.skipped = skipped
        self.source = source
        super().__init__(f"{source}: {skipped}" if source else str(skipped))


class SkipReport:
    """Counts skipped samples per reason (each record once, however often it is drawn) with examples."""

    def __init__(self, max_examples: int = 5):
        self.max_examples = max_examples
        self.indices: dict[str, set[int]] = {}
        self.examples: dict[str, list[SkippedSample]] = {}
        self.occurrences: Counter = Counter()

    def add(self, items) -> SkipReport:
        """Record one :class:`SkippedSample` or an iterable of them (e.g. ``batch["skipped"]``)."""
        for item in [items] if isinstance(items, SkippedSample) else items:
            self.occurrences[item.reason] += 1
            seen = self.indices.setdefault(item.reason, set())
            if item.index in seen:
                continue
            seen.add(item.index)
            examples = self.examples.setdefault(item.reason, [])
            if len(examples) < self.max_examples:
                examples.append(item)
        return self

    @property
    def counts(self) -> dict[str, int]:
        return {reason: len(ix) for reason, ix in sorted(self.indices.items(), key=lambda kv: -len(kv[1]))}

    @property
    def total(self) -> int:
        return len(set().union(*self.indices.values())) if self.indices else 0

    def to_dict(self) -> dict:
        """JSON-serialisable state (for ``accelerate.utils.gather_object`` and run logs)."""
        return {
            "counts": self.counts,
            "occurrences": dict(self.occurrences),
            "indices": {r: sorted(ix) for r, ix in self.indices.items()},
            "examples": {r: [asdict(e) for e in ex] for r, ex in self.examples.items()},
        }

    def merge(self, other: SkipReport | dict) -> SkipReport:
        """Fold in another worker's or rank's report (a :class:`SkipReport` or its ``to_dict()``)."""
        state = other.to_dict() if isinstance(other, SkipReport) else other
        for reason, ix in state.get("indices", {}).items():
            mine = self.indices.setdefault(reason, set())
            examples = self.examples.setdefault(reason, [])
            for ex in state.get("examples", {}).get(reason, []):
                if ex["index"] not in mine and len(examples) < self.max_examples:
                    examples.append(SkippedSample(**ex))
            mine.update(ix)
        self.occurrences.update(state.get("occurrences", {}))
        return self

    @classmethod
    def merged(cls, states, max_examples: int = 5) -> SkipReport:
        report = cls(max_examples)
        for state in states:
            report.merge(state)
        return report

    def summary(self, num_samples: int | None = None) -> str:
        """Human-readable summary: one line per reason with its share and examples."""
        if not self.indices:
            return "data: no samples skipped" + (f" (of {num_samples})" if num_samples else "")
        of = f" of {num_samples} ({100.0 * self.total / num_samples:.2f}%)" if num_samples else ""
        lines = [f"data: skipped {self.total} samples{of}"]
        for reason, count in self.counts.items():
            lines.append(f"  {reason:<24} {count:>8}  {REASONS.get(reason, '')}")
            lines += [f"      e.g. {ex}" for ex in self.examples.get(reason, [])]
        return "\n".join(lines)
