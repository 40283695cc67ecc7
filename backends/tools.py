"""Native tool calls for in-process engines: check the request's tools, put them in the prompt,
constrain a forced call, and turn the model's text back into OpenAI ``tool_calls``.

The prompt: a chat template with a tools section (Qwen2.5/Qwen3, Llama 3.x, Hermes) renders
``tools`` itself; for one without (SmolLM2's), a generic system prompt lists the functions and
asks for Hermes-style calls, as llama-cpp-python's ``chatml-function-calling`` handler does for
any ChatML model.

The output: the formats vLLM's ``hermes`` and ``llama3_json`` tool parsers read,
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` anywhere in the answer, or an answer
that is only JSON objects ``{"name": ..., "parameters"|"arguments": {...}}`` separated by ``;``
(Llama 3's ``<|python_tag|>`` is a special token, gone from the detokenized text).
A call that does not parse, or names a function the request did not offer, stays text.

A forced call (``tool_choice`` ``required`` or a named function) is decoded under a grammar
built from ``forced_schema``: one JSON object ``{"name": <an offered name>, "arguments":
<that function's parameters>}``, so even a small model returns a call that validates.
"""
from __future__ import annotations

import json
import re
import uuid

import jsonschema

from backends.base import BackendError, TextDelta, ToolCallDelta
from backends.text import partial_suffix

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# How a call decoded under forced_schema begins: its name, up to where its arguments start.
FORCED_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]+)"\s*,\s*"arguments"\s*:\s*')
# What may still close the call object after its arguments: a brace and whitespace.
FORCED_TAIL = re.compile(r"\s*\}?\s*$")


class ToolSpecError(ValueError):
    """A malformed ``tools`` or ``tool_choice``; ``param`` names the field (OpenAI's error ``param``)."""

    def __init__(self, message: str, param: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code


def check(body: dict) -> None:
    """Check ``tools`` and ``tool_choice`` as OpenAI does: each tool a function with a name and a
    ``parameters`` that is a valid JSON Schema, and a ``tool_choice`` that names an offered tool.
    jsonschema's meta-schema check catches what a hand-written one would miss (a ``type`` that is
    no JSON type, ``required`` that is not a list of strings, a bad ``$ref``...)."""
    _check_history(body.get("messages") or [])
    tools = body.get("tools")
    if tools is None:
        if body.get("tool_choice") not in (None, "none"):
            raise ToolSpecError("'tool_choice' needs 'tools'", "tool_choice")
        return
    if not isinstance(tools, list):
        raise ToolSpecError("'tools' must be an array", "tools", "invalid_type")
    names = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolSpecError(f"'{where}' must be an object with type 'function' and a 'function' object", where)
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
            raise ToolSpecError(f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-'",
                                f"{where}.function.name")
        if name in names:
            raise ToolSpecError(f"'{where}.function.name' repeats {name!r}", f"{where}.function.name")
        names.append(name)
        params = fn.get("parameters")
        if params is None:
            continue
        if not isinstance(params, dict):
            raise ToolSpecError(f"'{where}.function.parameters' must be a JSON Schema object",
                                f"{where}.function.parameters", "invalid_type")
        try:
            jsonschema.validators.validator_for(params).check_schema(params)
        except jsonschema.SchemaError as e:
            at = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.path)
            raise ToolSpecError(f"'{where}.function.parameters{at}' is not a valid JSON Schema: {e.message}",
                                f"{where}.function.parameters") from None
        except Exception as e:  # e.g. a "$schema" that is no URI string
            raise ToolSpecError(f"'{where}.function.parameters' is not a valid JSON Schema: {e}",
                                f"{where}.function.parameters") from None
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ToolSpecError("'tool_choice' must be 'none', 'auto', 'required' or "
                            "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
    if fn["name"] not in names:
        raise ToolSpecError(f"'tool_choice' names {fn['name']!r}, which is not in 'tools'", "tool_choice")


def _check_history(messages: list) -> None:
    """Earlier calls in the conversation are rendered into the prompt: they must have OpenAI's shape."""
    for i, m in enumerate(messages):
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if calls is None:
            continue
        where = f"messages[{i}].tool_calls"
        if not isinstance(calls, list):
            raise ToolSpecError(f"'{where}' must be an array", where, "invalid_type")
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)
                    and isinstance(fn.get("arguments", ""), str)):
                raise ToolSpecError(f"'{where}[{j}]' must be an object with a 'function' holding a string 'name' "
                                    "and string 'arguments'", f"{where}[{j}]", "invalid_type")


class ToolPlan:
    """What one request asks of the engine: the offered functions and whether a call is forced."""

    def __init__(self, tools: list[dict], choice):
        self.tools = tools
        self.functions = {t["function"]["name"]: t["function"] for t in tools}
        if isinstance(choice, dict):
            self.allowed = [choice["function"]["name"]]
        else:
            self.allowed = list(self.functions) if choice == "required" else None
        self.forced = self.allowed is not None

    @classmethod
    def from_body(cls, body: dict) -> "ToolPlan | None":
        """None when the request offers no tools, or forbids calls (``tool_choice: none``): the
        tools are then left out of the prompt, as vLLM's ``--exclude-tools-when-tool-choice-none``."""
        tools, choice = body.get("tools"), body.get("tool_choice", "auto")
        if not tools or choice == "none":
            return None
        return cls(tools, choice)

    def forced_schema(self) -> dict | None:
        """The JSON Schema of the forced call, for constrained decoding; None when not forced."""
        if not self.forced:
            return None
        options = [{"type": "object", "properties": {
            "name": {"const": name},
            "arguments": self.functions[name].get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"]} for name in self.allowed]
        return options[0] if len(options) == 1 else {"anyOf": options}

    def system_prompt(self) -> str:
        """For templates without a tools section: the functions and the Hermes call format."""
        listing = "\n".join(json.dumps(self.functions[n], ensure_ascii=False) for n in self.functions)
        if self.forced:
            must = f"You must call {'one of these functions' if len(self.allowed) > 1 else self.allowed[0]} now."
        else:
            must = "Call a function only when it helps; otherwise answer in plain text."
        return ("You can call functions. They are described here as JSON Schema:\n" + listing +
                "\nTo call one, reply with a JSON object with the function name and its arguments inside "
                "tags:\n<tool_call>\n{\"name\": \"<function name>\", \"arguments\": {<arguments>}}\n</tool_call>\n"
                + must)

    def generic_messages(self, messages: list[dict]) -> list[dict]:
        """The conversation for a template that knows no tools: the tools prompt joins the system
        message, earlier calls become the assistant's Hermes text and results become user turns
        (a template may insist that user and assistant alternate)."""
        out = []
        for m in messages:
            if m["role"] == "assistant" and m.get("tool_calls"):
                calls = "\n".join(f"{OPEN}\n" + json.dumps({"name": c["function"]["name"],
                                                            "arguments": _arguments(c["function"])},
                                                           ensure_ascii=False) + f"\n{CLOSE}"
                                  for c in m["tool_calls"])
                m = {"role": "assistant", "content": ((m.get("content") or "") + "\n" + calls).strip()}
            elif m["role"] in ("tool", "function"):
                m = {"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"}
            out.append(m)
        if out and out[0]["role"] in ("system", "developer"):
            return [{"role": "system", "content": out[0]["content"] + "\n\n" + self.system_prompt()}] + out[1:]
        return [{"role": "system", "content": self.system_prompt()}] + out

    @staticmethod
    def template_messages(messages: list[dict]) -> list[dict]:
        """The conversation for a template with a tools section: HF templates expect an earlier
        call's arguments as an object, where OpenAI sends a JSON string."""
        out = []
        for m in messages:
            if m["role"] == "assistant" and m.get("tool_calls"):
                m = {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": _arguments(c["function"])}}
                                         for c in m["tool_calls"]]}
            out.append(m)
        return out


def _arguments(fn: dict):
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def template_renders_tools(render) -> bool:
    """Whether a chat template has a tools section: ``render(messages, tools)`` gives another prompt
    with a tool than without (the capability probe llama.cpp's chat code makes, too)."""
    probe = [{"role": "user", "content": "x"}]
    tool = [{"type": "function", "function": {"name": "probe_fn", "description": "d",
                                              "parameters": {"type": "object", "properties": {}}}}]
    try:
        return "probe_fn" in render(probe, tool) and render(probe, None) != render(probe, tool)
    except Exception:  # a template that refuses tools has no tools section worth using
        return False


def schema_error(e: Exception) -> BackendError:
    return BackendError(f"the tool's parameters cannot be turned into a grammar: {e}", status=400,
                        cause="invalid_tools", type="invalid_request_error", param="tools", code="invalid_value")


class ToolCallParser:
    """Streams the answer's text, turning tool calls into ``ToolCallDelta`` events.

    Text outside calls passes through as it comes, except a tail that may start ``<tool_call>``.
    A parsed call is sent as one delta once complete (id, name and the whole arguments). A call
    decoded under ``forced_schema`` has a known shape, so it streams: id and name as soon as they
    are generated, then the arguments' text as it comes. Token counts ride along with whatever is
    emitted next, so they add up to what the engine generated.
    """

    def __init__(self, plan: ToolPlan, constrained: bool):
        self.plan = plan
        # Decoded under forced_schema, the whole output is the call; else an answer that opens
        # with "{" may be Llama 3 JSON calls, and any other may hold Hermes calls.
        self.state = "json" if constrained else "start"
        self.constrained = constrained
        self.pending = ""
        self.tokens = 0
        self.calls = 0

    def feed(self, ev: TextDelta) -> list:
        self.pending += ev.text
        self.tokens += ev.tokens
        out: list = []
        while True:
            if self.state == "start":
                head = self.pending.lstrip()
                if not head:
                    return out
                self.state = "json" if head.startswith("{") else "text"
            if self.state == "json" and self.constrained:
                head = FORCED_HEAD.match(self.pending)
                if head is None or head.group(1) not in self.plan.functions:
                    return out
                out.append(ToolCallDelta(0, _call_id(), head.group(1), "", t=ev.t, tokens=self.tokens))
                self.tokens, self.calls, self.state = 0, 1, "arguments"
                self.pending = self.pending[head.end():]
            if self.state == "arguments":  # all but what may be the call object's closing brace
                keep = len(FORCED_TAIL.search(self.pending).group())
                if len(self.pending) > keep:
                    out.append(ToolCallDelta(0, arguments=self.pending[:len(self.pending) - keep], t=ev.t,
                                             tokens=self.tokens))
                    self.tokens, self.pending = 0, self.pending[len(self.pending) - keep:]
                return out
            if self.state == "json":  # only the end tells whether it parses
                return out
            if self.state == "text":
                i = self.pending.find(OPEN)
                if i < 0:
                    keep = partial_suffix(self.pending, OPEN)
                    self._text(out, self.pending[:len(self.pending) - keep], ev.t)
                    self.pending = self.pending[len(self.pending) - keep:]
                    return out
                self._text(out, self.pending[:i], ev.t)
                self.pending = self.pending[i + len(OPEN):]
                self.state = "call"
            if self.state == "call":
                i = self.pending.find(CLOSE)
                if i < 0:
                    return out
                body, self.pending = self.pending[:i], self.pending[i + len(CLOSE):]
                self.state = "text"
                self._call_or_text(out, body, OPEN + body + CLOSE, ev.t)

    def close(self, t: float) -> list:
        """The output ended: what is still held. An unclosed call counts if its JSON is whole."""
        out: list = []
        rest, self.pending = self.pending, ""
        if self.state == "arguments":
            pass  # what is held back is the call object's closing brace and whitespace
        elif self.state == "call":
            self._call_or_text(out, rest, OPEN + rest, t)
        elif self.state == "json":
            calls = _json_calls(rest)
            if calls is not None and all(self._allowed(c) for c in calls):
                for c in calls:
                    self._emit_call(out, c, t)
            else:
                self._text(out, rest, t)
        else:
            self._text(out, rest, t)
        return out

    def _allowed(self, call: dict) -> bool:
        return call["name"] in (self.plan.allowed or self.plan.functions)

    def _call_or_text(self, out: list, body: str, raw: str, t: float) -> None:
        calls = _json_calls(body)
        if calls is not None and len(calls) == 1 and self._allowed(calls[0]):
            self._emit_call(out, calls[0], t)
        else:
            self._text(out, raw, t)

    def _emit_call(self, out: list, call: dict, t: float) -> None:
        out.append(ToolCallDelta(self.calls, _call_id(), call["name"],
                                 json.dumps(call["arguments"], ensure_ascii=False), t=t, tokens=self.tokens))
        self.tokens = 0
        self.calls += 1

    def _text(self, out: list, text: str, t: float) -> None:
        if text:
            out.append(TextDelta(text, self.tokens, t))
            self.tokens = 0


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _json_calls(text: str) -> list[dict] | None:
    """``{"name", "arguments"|"parameters"}`` objects separated by ``;``, or None if the text is not that."""
    decoder = json.JSONDecoder()
    calls, i, text = [], 0, text.strip()
    while i < len(text):
        try:
            obj, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        args = obj.get("arguments", obj.get("parameters")) if isinstance(obj, dict) else None
        if not isinstance(obj.get("name") if isinstance(obj, dict) else None, str) or not isinstance(args, dict):
            return None
        calls.append({"name": obj["name"], "arguments": args})
        while i < len(text) and text[i] in " \t\r\n;":
            i += 1
    return calls or None

