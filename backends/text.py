"""Text helpers shared by the in-process engines."""
from __future__ import annotations

from backends.base import Finish, TextDelta, Usage


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
        keep = max((partial_suffix(self.pending, s) for s in self.stops), default=0)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out, False


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


async def parsed(events, reasoning=None, calls=None):
    """An in-process engine's events with its text read: thinking split off by ``reasoning``
    (a ``backends.reasoning.ReasoningParser``), tool calls taken out of the answer by ``calls``
    (a ``backends.tools.ToolCallParser``). Either may be None. Closing this closes ``events``."""
    def answer(pieces):
        for p in pieces:
            if calls is None or p.reasoning:
                yield p
            else:
                yield from calls.feed(p)
    try:
        async for ev in events:
            if isinstance(ev, TextDelta):
                for out in answer(reasoning.feed(ev) if reasoning else [ev]):
                    yield out
            elif isinstance(ev, Finish):
                for out in answer(reasoning.close(ev.t) if reasoning else []):
                    yield out
                for out in calls.close(ev.t) if calls else []:
                    yield out
                yield Finish("tool_calls", ev.t) if calls and calls.calls and ev.reason == "stop" else ev
            else:
                if isinstance(ev, Usage) and reasoning is not None:
                    ev.reasoning_tokens = reasoning.reasoning_tokens
                yield ev
    finally:
        await events.aclose()
