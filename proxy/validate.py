"""Check an OpenAI request body before any work starts; every failure names the field.

Unknown fields are kept (servers such as vLLM accept extras and the upstream
backend forwards the body); known fields must have the right type and range.
"""
from __future__ import annotations

from typing import Any

from backends import tools as tool_spec
from proxy.errors import bad_request

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MAX_TOKENS_LIMIT = 1 << 20  # far above any context window; larger values are a client bug


def _number(body: dict, key: str, lo: float, hi: float) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad_request(f"'{key}' must be a number", key, "invalid_type")
    if not lo <= v <= hi:
        raise bad_request(f"'{key}' must be between {lo} and {hi}, got {v}", key)


def _integer(body: dict, key: str, lo: int, hi: int) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"'{key}' must be an integer", key, "invalid_type")
    if not lo <= v <= hi:
        raise bad_request(f"'{key}' must be between {lo} and {hi}, got {v}", key)


def _logit_bias(bias: Any) -> None:
    """OpenAI's shape: token ids as string keys, each to a bias from -100 to 100."""
    if bias is None:
        return
    ok = isinstance(bias, dict) and all(
        k.isdigit() and not isinstance(v, bool) and isinstance(v, (int, float)) and -100 <= v <= 100
        for k, v in bias.items())
    if not ok:
        raise bad_request("'logit_bias' must map token ids (strings of digits) to numbers between -100 and 100",
                          "logit_bias", "invalid_type")


def _common(body: Any) -> None:
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", None, "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model", "missing_required_parameter"
                          if model is None else "invalid_type")
    if not isinstance(body.get("stream", False), bool):
        raise bad_request("'stream' must be a boolean", "stream", "invalid_type")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
            raise bad_request("'stream_options' must be an object with a boolean 'include_usage'",
                              "stream_options", "invalid_type")
    _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    _integer(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _integer(body, "seed", -(2**63), 2**64 - 1)
    _logit_bias(body.get("logit_bias"))
    _integer(body, "n", 1, 1)  # one choice per request: each choice is its own measured stream
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise bad_request("'stop' must be a string or a list of up to 4 non-empty strings", "stop", "invalid_type")


def chat(body: Any) -> None:
    _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", "messages",
                          "missing_required_parameter" if messages is None else "invalid_type")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"'{where}' must be an object", where, "invalid_type")
        if not isinstance(m.get("role"), str) or m["role"] not in ROLES:  # a dict or list role is unhashable
            raise bad_request(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}", f"{where}.role")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"'{where}.content' must be a string or an array of parts", f"{where}.content",
                              "invalid_type")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not (isinstance(part, dict) and isinstance(part.get("type"), str)
                    and (part["type"] != "text" or isinstance(part.get("text"), str))):
                raise bad_request(f"'{where}.content[{j}]' must be an object with a string 'type' "
                                  "(and a string 'text' for a text part)", f"{where}.content[{j}]", "invalid_type")
    try:
        tool_spec.check(body)
    except tool_spec.ToolSpecError as e:
        raise bad_request(str(e), e.param, e.code) from None
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs", "invalid_type")


def completion(body: Any) -> None:
    _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        body["prompt"] = prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string (one prompt per request)", "prompt",
                          "missing_required_parameter" if prompt is None else "invalid_type")
