"""Thinking apart from the answer: ``<think>…</think>`` in generated text becomes reasoning deltas.

One parser over text, whatever engine made it, in the ways vLLM's and SGLang's reasoning
parsers of the same names read these models:

- ``deepseek_r1``: output starts inside thinking (DeepSeek-R1's template opens ``<think>`` in
  the prompt); a ``<think>`` the model writes itself at the start is dropped; everything up to
  ``</think>`` is reasoning, so output that never closes it is all reasoning.
- ``qwen3``: the same, unless the request turned thinking off with ``chat_template_kwargs``
  ``{"enable_thinking": false}``: then the template closes the think block in the prompt and
  all output is answer.

The tag text is dropped, and so is the whitespace between ``</think>`` and the answer, so the
first answer delta holds answer text (its time is time to first answer token). Reasoning tokens
are counted by the state a delta arrives in: the delta holding ``</think>`` counts as thinking.
"""
from __future__ import annotations

from backends.base import TextDelta
from backends.text import partial_suffix

START, END = "<think>", "</think>"
PARSERS = ("deepseek_r1", "qwen3")


def check_setting(value) -> str | None:
    """The model setting ``reasoning_parser``: deepseek_r1 | qwen3 | none (the default)."""
    if value in (None, "none"):
        return None
    if value not in PARSERS:
        raise ValueError(f"reasoning_parser: must be one of {', '.join(PARSERS)} or none, got {value!r}")
    return value


class ReasoningParser:
    def __init__(self, kind: str, chat_template_kwargs: dict | None = None):
        thinking_off = kind == "qwen3" and (chat_template_kwargs or {}).get("enable_thinking") is False
        self.thinking = not thinking_off
        self.opened = False    # past the place where a leading <think> may stand
        self.answering = False  # answer text seen (leading whitespace is dropped until then)
        self.pending = ""
        self.tokens = 0         # tokens not yet attached to an emitted delta
        self.reasoning_tokens = 0

    def feed(self, ev: TextDelta) -> list[TextDelta]:
        if self.thinking:
            self.reasoning_tokens += ev.tokens
        self.tokens += ev.tokens
        self.pending += ev.text
        out: list[TextDelta] = []
        if self.thinking:
            if not self.opened:
                head = self.pending.lstrip()
                if START.startswith(head):  # nothing yet, or a part of <think>: wait
                    if head == START:
                        self.pending, self.opened = "", True
                    return out
                if head.startswith(START):
                    self.pending = head[len(START):]
                self.opened = True
            i = self.pending.find(END)
            if i < 0:
                keep = partial_suffix(self.pending, END)
                self._emit(out, self.pending[:len(self.pending) - keep], ev.t, True)
                self.pending = self.pending[len(self.pending) - keep:]
                return out
            self._emit(out, self.pending[:i], ev.t, True)
            self.pending = self.pending[i + len(END):]
            self.thinking = False
        self._answer(out, ev.t)
        return out

    def close(self, t: float) -> list[TextDelta]:
        """The output ended: text held back for a tag that never came."""
        out: list[TextDelta] = []
        if self.thinking:
            self._emit(out, self.pending, t, True)
            self.pending = ""
        else:
            self._answer(out, t)
        return out

    def _answer(self, out: list, t: float) -> None:
        if not self.answering:
            self.pending = self.pending.lstrip()
            self.answering = bool(self.pending)
        self._emit(out, self.pending, t, False)
        self.pending = ""

    def _emit(self, out: list, text: str, t: float, reasoning: bool) -> None:
        if text:
            out.append(TextDelta(text, self.tokens, t, reasoning))
            self.tokens = 0

