"""Bookkeeping for input the engine refused or found remarkable.

A live network always sends some garbage: truncated lines, sensors with broken clocks,
packets delivered twice. None of it may stop the stream, and none of it may disappear
silently either, so every stage reports what it dropped here: a count per reason plus the
first few messages per reason, each saying where (file and line, or device) and what was
wrong. Keeping only the first messages bounds memory when a broken device repeats the same
fault for hours.

Rejections (``add``) are input that was dropped. Notes (``note``) are facts about input
that was kept, such as a gap in a device's stream or a corrected device clock; they are
counted separately so that ``total`` means "packets lost".

Reason names are short snake_case strings; the ones used so far:

- ``corrupt_json``: the line is not JSON (truncated, garbage).
- ``bad_type``: valid JSON but a field has the wrong type (string time, null sample...).
- ``missing_field``: a required scalar field (device_id, device_t, cloud_t, sr) is absent.
- ``non_finite``: NaN or infinity in a sample or a time.
- ``missing_axis``: an axis (x, y or z) is absent or empty.
- ``axis_length_mismatch``: the three axes hold different numbers of samples.
- ``bad_sample_rate``: sample rate outside (0, 1000] Hz.
- ``unknown_device``: device not in the device table.
- ``device_mismatch``: the line names another device than the folder it was found in.
- ``duplicate``: same device and device time as a packet already accepted.
- ``out_of_order``: older than data already passed on for the same file or device.
- notes: ``gap``, ``clock_jump``, ``clock_corrected``.
"""

from __future__ import annotations

from collections import Counter

#: Messages kept per reason; later ones are only counted.
DEFAULT_KEEP = 20


class Rejects:
    """Counts of rejected input and of notes, by reason, with the first messages of each."""

    __slots__ = ("keep", "_counts", "_messages", "_notes", "_note_messages")

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self.keep = keep
        self._counts: Counter[str] = Counter()
        self._messages: dict[str, list[str]] = {}
        self._notes: Counter[str] = Counter()
        self._note_messages: dict[str, list[str]] = {}

    def add(self, reason: str, where: str, detail: str) -> None:
        """Record one rejected item.

        ``where``: file:line, or the device; ``detail``: what was wrong with it.
        """
        self._counts[reason] += 1
        kept = self._messages.setdefault(reason, [])
        if len(kept) < self.keep:
            kept.append(f"{where}: {detail}")

    def note(self, reason: str, where: str, detail: str) -> None:
        """Record one remarkable but accepted item (a gap, a clock correction)."""
        self._notes[reason] += 1
        kept = self._note_messages.setdefault(reason, [])
        if len(kept) < self.keep:
            kept.append(f"{where}: {detail}")

    @property
    def total(self) -> int:
        """Number of rejected items (notes not included)."""
        return sum(self._counts.values())

    def by_reason(self) -> dict[str, int]:
        """Rejections per reason, most frequent first."""
        return dict(self._counts.most_common())

    @property
    def notes(self) -> dict[str, int]:
        """Notes per reason, most frequent first."""
        return dict(self._notes.most_common())

    def messages(self, reason: str) -> list[str]:
        """The kept messages of one rejection reason (at most ``keep``)."""
        return list(self._messages.get(reason, ()))

    def note_messages(self, reason: str) -> list[str]:
        """The kept messages of one note reason (at most ``keep``)."""
        return list(self._note_messages.get(reason, ()))

    def summary_lines(self, examples: int = 3) -> list[str]:
        """A readable summary: one line per reason with its count, then a few examples."""
        lines: list[str] = []
        for title, counts, messages in (
            ("rejected", self._counts, self._messages),
            ("noted", self._notes, self._note_messages),
        ):
            lines.append(f"{title}: {sum(counts.values())}")
            for reason, n in counts.most_common():
                lines.append(f"  {reason}: {n}")
                shown = messages.get(reason, ())[:examples]
                lines.extend(f"    {message}" for message in shown)
                if n > len(shown):
                    lines.append(f"    ... and {n - len(shown)} more")
        return lines

    def __repr__(self) -> str:
        return f"Rejects(total={self.total}, by_reason={self.by_reason()}, notes={self.notes})"
