"""Text helpers shared by the in-process engines."""
from __future__ import annotations


class StopFilter:
    """Holds back text that may be the start of a stop string; cuts at the first full match."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            return self.pending[:min(hits)], True
        keep = 0
        for s in self.stops:  # longest suffix of pending that is a prefix of a stop string
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out, False
