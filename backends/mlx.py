"""In-process MLX (mlx-lm): the engine Mac users compare against llama.cpp.

To the proxy it behaves like the llama.cpp backend: the same events, token counts
and stop handling. Underneath, one worker thread owns the model and an mlx-lm
``BatchGenerator`` (continuous batching): up to ``max_batch`` requests decode
together, each with its own sampler and limits; later requests wait in a FIFO and
report ``Scheduled`` when they join the batch. Tokens reach the event loop through
``call_soon_threadsafe``; a closed generator (client gone) is dropped from the batch
before the next token and its slot is freed.

Make a model folder from a GGUF with ``python -m backends.quality.convert``.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import platform
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from backends import reasoning, tools
from backends.base import (Backend, BackendError, Event, Finish, GenRequest, Scheduled, TextDelta, Usage, check_settings,
                   drain)
from backends.text import StopFilter, parsed


def _use_system_blas() -> str | None:
    """mlx[cpu] wheels for Linux link the reference BLAS. Loading the system OpenBLAS (apt:
    libopenblas0-pthread) globally before mlx makes its ``cblas_sgemm`` calls bind there instead:
    TTFT ~10x and decode ~1.5x faster on SmolLM2 at one thread (docs/benchmarks.md, "MLX next to
    llama.cpp", with its command). EDGEMETER_MLX_BLAS: ``auto`` (default), ``off``, or a path."""
    choice = os.environ.get("EDGEMETER_MLX_BLAS", "auto")
    if choice == "off" or sys.platform != "linux" or "mlx.core" in sys.modules:
        return None
    path = ctypes.util.find_library("openblas") if choice == "auto" else choice
    if path is None:
        return None
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return path


BLAS = _use_system_blas()

import mlx.core as mx  # noqa: E402  (after the BLAS choice above)
import numpy as np  # noqa: E402
from mlx_lm import load  # noqa: E402
from mlx_lm.generate import BatchGenerator  # noqa: E402
from mlx_lm.sample_utils import apply_top_p, make_logits_processors, make_sampler  # noqa: E402
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, _byte_decoder  # noqa: E402

SETTINGS = {"path", "max_batch", "n_ctx", "warmup", "temperature", "top_p", "max_tokens", "reasoning_parser"}

#: The default batch's ceiling. Apple silicon: mlx-lm's own BatchGenerator default
#: (completion_batch_size=32); the GPU keeps gaining aggregate tok/s past it (the agent-placement study
#: ran batch 100 on an M2 Max), so set max_batch higher there for throughput alone. CPU (Linux): 8, as a
#: few cores' compute is shared by the whole batch, every step gets slower as it grows, and each
#: request's latency with it (docs/mlx-and-quality.md has the measured table).
MAX_BATCH_CAP = {"apple_silicon": 32, "cpu": 8}
#: Share of the available memory the default batch may plan to fill (weights + every sequence's KV
#: cache at n_ctx); the rest is headroom for activations, the proxy and the rest of the machine.
MEMORY_SHARE = 0.75
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def kv_bytes_per_sequence(config: dict, n_ctx: int) -> int:
    """One sequence's KV cache at ``n_ctx`` tokens: keys and values of every layer, in the dtype
    mlx-lm's KVCache takes from the activations (the config's dtype; 2 bytes when it says none).
    Sliding-window layers (Gemma 3) keep less, so this is an upper bound for them."""
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    dtype = config.get("dtype") or config.get("torch_dtype")
    return (2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * n_ctx
            * _DTYPE_BYTES.get(dtype, 2))


def fitting_batch(weights_bytes: int, kv_per_sequence: int, available_bytes: int, apple_silicon: bool) -> int:
    """The largest batch whose weights and KV caches fit ``MEMORY_SHARE`` of the available memory,
    at least 1, at most the platform's cap."""
    fits = int((available_bytes * MEMORY_SHARE - weights_bytes) // kv_per_sequence)
    return max(1, min(MAX_BATCH_CAP["apple_silicon" if apple_silicon else "cpu"], fits))


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def default_max_batch(folder: Path, n_ctx: int | None) -> tuple[int, dict]:
    """``max_batch`` when the config sets none, from the model folder (safetensors on disk, the
    architecture in config.json) and psutil's available memory (Linux: MemAvailable of
    /proc/meminfo; macOS: free + inactive pages), read before the weights load. Returns the
    batch and the figures it came from."""
    import psutil
    config = json.loads((folder / "config.json").read_text())
    n_ctx = n_ctx or context_length(config)
    figures = {"weights_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
               "kv_bytes_per_sequence": kv_bytes_per_sequence(config, n_ctx), "n_ctx": n_ctx,
               "available_bytes": psutil.virtual_memory().available, "apple_silicon": is_apple_silicon()}
    batch = fitting_batch(figures["weights_bytes"], figures["kv_bytes_per_sequence"], figures["available_bytes"],
                          figures["apple_silicon"])
    return batch, figures


def context_length(config: dict) -> int:
    return int(config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
               or 4096)


def seeded_sampler(temp: float, top_p: float, seed: int) -> Callable:
    """``make_sampler(temp, top_p)`` drawing from its own random key instead of MLX's global one,
    so a seeded request repeats whatever else shares the batch."""
    key = mx.random.key(seed)

    def sample(logprobs):
        nonlocal key
        key, draw = mx.random.split(key)
        if 0 < top_p < 1:
            logprobs = apply_top_p(logprobs, top_p)
        return mx.random.categorical(logprobs * (1 / temp), key=draw)
    return sample


class SchemaConstraint:
    """An mlx-lm logits processor that lets through only tokens keeping the output a prefix of
    JSON matching a schema: outlines-core compiles the schema to a regex and indexes it over the
    vocabulary; the guide, this request's own, walks that index one generated token at a time."""

    def __init__(self, index, eos: set[int]):
        from outlines_core import Guide
        self.guide = Guide(index)
        self.eos = eos
        self.started = self.done = False

    def __call__(self, tokens, logits):
        if self.done:  # the batch decodes one step ahead: a step may follow the end-of-generation token
            return logits
        if self.started:  # the context ends with the token sampled last step
            last = int(tokens.reshape(-1)[-1].item())
            if last in self.eos:
                self.done = True
                return logits
            self.guide.advance(last)
        self.started = True
        bias = np.full(logits.shape[-1], -np.inf, dtype=np.float32)
        bias[self.guide.get_tokens()] = 0.0
        return logits + mx.array(bias)


def outlines_vocabulary(tokenizer, eos: int):
    """The vocabulary as outlines-core indexes it: each ordinary token's bytes. Byte-level BPE
    pieces map back through GPT-2's byte alphabet; SentencePiece ones are text with "▁" for
    space and <0xXX> for raw bytes."""
    from outlines_core import Vocabulary
    hf = tokenizer._tokenizer
    special = set(hf.all_special_ids)
    bpe = isinstance(tokenizer.detokenizer, BPEStreamingDetokenizer)
    chars = _byte_decoder()
    pieces: dict[bytes, list[int]] = {}
    for tid, piece in enumerate(hf.convert_ids_to_tokens(list(range(len(hf))))):
        if tid in special or piece is None:
            continue
        if bpe:
            raw = bytes(chars[c] for c in piece) if all(c in chars for c in piece) else piece.encode()
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            raw = bytes([int(piece[3:5], 16)])
        else:
            raw = piece.replace("▁", " ").encode()
        pieces.setdefault(raw, []).append(tid)
    return Vocabulary(eos, pieces)


class TextStream:
    """Incremental detokenization whose pieces join to ``tokenizer.decode(all ids)``: each step
    decodes a short window (the last emitted tokens for context, plus the new ones) and emits
    what it adds, holding back incomplete UTF-8. Special tokens are skipped, as llama.cpp does.
    (mlx-lm's streaming detokenizer would drop the leading space of a completion's first token.)"""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True) if self.read < len(self.ids) else ""

    def _advance(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]


@dataclass(eq=False)
class _Job:
    """One request as the worker thread sees it."""
    req: GenRequest
    emit: Callable[[Any], None]        # thread-safe: hands an event (or error) to the loop
    release: Callable[[], None]        # thread-safe: frees the request's slot
    cancel: threading.Event
    prompt: list[int] = field(default_factory=list)
    stops: StopFilter | None = None
    text: TextStream | None = None
    produced: int = 0
    unreported: int = 0
    cpu_s: float = 0.0


class MLXBackend(Backend):
    kind = "mlx"
    in_process = True

    def __init__(self, name: str, settings: dict):
        super().__init__(name)
        check_settings(settings, SETTINGS, self.kind)
        if not isinstance(settings.get("path"), str):
            raise ValueError("path: required: an MLX model folder (make one with python -m backends.quality.convert)")
        self.path = Path(settings["path"]).expanduser()
        for key in ("max_batch", "n_ctx", "max_tokens"):
            v = settings.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{key}: must be a positive integer")
        for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
            v = settings.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
                raise ValueError(f"{key}: must be a number in [{lo}, {hi}]")
        self.max_batch = settings.get("max_batch")  # default: what fits memory, set by start()
        self.max_batch_figures: dict | None = None  # what the default came from
        self.max_tokens = settings.get("max_tokens")
        self.temperature = float(settings.get("temperature", 1.0))  # OpenAI's defaults
        self.top_p = float(settings.get("top_p", 1.0))
        self.warmup = bool(settings.get("warmup", True))
        self.reasoning_parser = reasoning.check_setting(settings.get("reasoning_parser"))
        self.template_tools = False  # the chat template renders `tools` itself (else a generic tools prompt)
        self.waiting = 0
        self.active = 0  # requests in the batch now
        self.model = self.tokenizer = None
        self.eos: set[int] = set()
        self.vocabulary = None  # outlines-core's view of the tokenizer, built on the first forced call
        self.n_ctx = settings.get("n_ctx")  # default: the model's max_position_embeddings
        self._slots: asyncio.Semaphore | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---
    async def start(self) -> None:
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"no MLX model folder at {self.path} "
                                    "(make one: python -m backends.quality.convert --gguf SOURCE --out DIR)")
        if self.max_batch is None:
            self.max_batch, self.max_batch_figures = default_max_batch(self.path, self.n_ctx)
        self._slots = asyncio.Semaphore(self.max_batch)
        loaded: Future = Future()
        self._thread = threading.Thread(target=self._serve, args=(loaded,), name=f"mlx-{self.name}", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(loaded)
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self._thread is not None:
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self.model = None

    def capacity(self) -> int | None:
        return self.max_batch

    def count_tokens(self, text: str) -> int | None:
        if self.tokenizer is None:
            return None
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0

    # --- requests (event loop side) ---
    async def generate(self, req: GenRequest) -> AsyncIterator[Event]:
        if self._thread is None:
            raise BackendError(f"model {self.name} is not loaded", status=503, cause="not_ready",
                               type="server_error")
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        if self._thread is None:  # closed while this request waited
            self._slots.release()
            raise BackendError(f"model {self.name} is closed", status=503, cause="backend_closed",
                               type="server_error")
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def to_loop(fn, *args):
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop already closed: nobody is listening any more
                pass
        self._inbox.put(_Job(req, emit=lambda ev: to_loop(events.put_nowait, ev),
                             release=lambda: to_loop(self._slots.release), cancel=cancel))
        plan = tools.ToolPlan.from_body(req.body) if req.kind == "chat" else None
        thinking = None
        if self.reasoning_parser and req.kind == "chat":
            thinking = reasoning.ReasoningParser(self.reasoning_parser, req.body.get("chat_template_kwargs"))
        out = parsed(drain(events, cancel), thinking, plan and tools.ToolCallParser(plan, plan.forced))
        try:
            async for ev in out:
                yield ev
        finally:
            await out.aclose()

    # --- worker thread: owns every MLX call ---
    def _serve(self, loaded: Future) -> None:
        try:
            self.model, self.tokenizer, config = load(str(self.path), return_config=True)
            self.n_ctx = self.n_ctx or context_length(config)
            self.eos = set(self.tokenizer.eos_token_ids)
            if self.tokenizer.chat_template is not None:
                self.template_tools = tools.template_renders_tools(
                    lambda messages, offered: self.tokenizer.apply_chat_template(
                        messages, tools=offered, add_generation_prompt=True, tokenize=False))
            if self.warmup:
                self._warmup()
        except BaseException as e:
            loaded.set_exception(e)
            return
        loaded.set_result(None)
        gen, jobs = self._new_batch(), {}
        closing = False
        while not closing:
            try:
                closing = self._admit(gen, jobs)
                self._step(gen, jobs)
            except Exception as e:  # fail the batch, keep serving
                for job in jobs.values():
                    job.emit(BackendError(f"mlx failed: {e}", status=500, cause="backend_failure",
                                          type="server_error"))
                    self._end(job)
                gen, jobs = self._new_batch(), {}
        closed = BackendError("backend closed", status=503, cause="backend_closed", type="server_error")
        for job in jobs.values():
            job.emit(closed)
            self._end(job)
        while True:  # requests still in the inbox never joined the batch
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(closed)
                job.release()
        gen.close()

    def _step(self, gen: BatchGenerator, jobs: dict) -> None:
        """Drop cancelled requests, then advance the batch by one token (or one prefill chunk)."""
        gone = [uid for uid, job in jobs.items() if job.cancel.is_set()]
        if gone:
            gen.remove(gone)
            for uid in gone:
                self._end(jobs.pop(uid))
        if not jobs:
            return
        cpu0 = time.process_time()
        _, responses = gen.next()
        t = time.perf_counter()
        # MLX computes on its own threads (and BLAS's), so the worker's thread_time misses most
        # of the work: split the process CPU time of the step among the requests in it.
        share = (time.process_time() - cpu0) / len(jobs)
        for job in jobs.values():
            job.cpu_s += share
        for r in responses:
            job = jobs[r.uid]
            if self._on_token(job, r.token, r.finish_reason, t):
                if r.finish_reason is None:  # stopped by a stop string: still in the batch
                    gen.remove([r.uid])
                self._end(jobs.pop(r.uid))

    def _new_batch(self) -> BatchGenerator:
        return BatchGenerator(self.model, stop_tokens=[[t] for t in self.eos],
                              completion_batch_size=self.max_batch, prefill_batch_size=self.max_batch)

    def _admit(self, gen: BatchGenerator, jobs: dict) -> bool:
        """Move new requests into the batch (blocking while idle). True when asked to close."""
        while True:
            try:
                job = self._inbox.get(block=not jobs)
            except queue.Empty:
                return False
            if job is None:
                return True
            if job.cancel.is_set():
                job.release()
                continue
            try:
                uid = self._insert(gen, job)
            except Exception as e:
                job.emit(e if isinstance(e, BackendError) else BackendError(
                    f"invalid request for mlx: {e}", status=400, cause="bad_request", type="invalid_request_error"))
                job.release()
                continue
            jobs[uid] = job
            self.active += 1
            job.emit(Scheduled())

    def _insert(self, gen: BatchGenerator, job: _Job) -> int:
        req, body = job.req, job.req.body
        job.prompt = self._prompt_tokens(req)
        budget = self.n_ctx - len(job.prompt)
        if budget <= 0:
            raise BackendError(f"prompt has {len(job.prompt)} tokens; the context window is {self.n_ctx}",
                               status=400, cause="context_length_exceeded", type="invalid_request_error",
                               param="messages", code="context_length_exceeded")
        max_tokens = min(req.max_tokens or self.max_tokens or budget, budget)
        temp = float(body.get("temperature", self.temperature))
        top_p = float(body.get("top_p", self.top_p))
        if temp > 0 and body.get("seed") is not None:
            sampler = seeded_sampler(temp, top_p, int(body["seed"]) & 0xFFFFFFFF)
        else:
            sampler = make_sampler(temp, top_p)
        processors = make_logits_processors(presence_penalty=body.get("presence_penalty"),
                                            frequency_penalty=body.get("frequency_penalty"))
        plan = tools.ToolPlan.from_body(body) if req.kind == "chat" else None
        schema = plan and plan.forced_schema()
        if schema is not None:  # a forced call: decoded under its schema, by this request's processor only
            processors = [*processors, self._constraint(schema)]
        job.stops, job.text = StopFilter(req.stop), TextStream(self.tokenizer)
        return gen.insert([job.prompt], [max_tokens], samplers=[sampler], logits_processors=[processors])[0]

    def _constraint(self, schema: dict) -> SchemaConstraint:
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema
        if self.vocabulary is None:
            self.vocabulary = outlines_vocabulary(self.tokenizer, min(self.eos))
        try:
            return SchemaConstraint(Index(build_regex_from_schema(json.dumps(schema)), self.vocabulary), self.eos)
        except Exception as e:  # a schema feature outlines-core does not support
            raise tools.schema_error(e) from None

    def _prompt_tokens(self, req: GenRequest) -> list[int]:
        if req.kind == "completion":
            return self.tokenizer.encode(req.body["prompt"])
        if self.tokenizer.chat_template is None:
            raise BackendError(f"model {self.name} has no chat template; use /v1/completions", status=400,
                               cause="unsupported", type="invalid_request_error", param="messages")
        messages = req.body["messages"]
        extra = dict(req.body.get("chat_template_kwargs") or {})  # e.g. enable_thinking, for the template
        plan = tools.ToolPlan.from_body(req.body)
        if plan is not None and self.template_tools:
            messages, extra["tools"] = plan.template_messages(messages), plan.tools
        elif plan is not None:
            messages = plan.generic_messages(messages)
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **extra))

    def _on_token(self, job: _Job, token: int, reason: str | None, t: float) -> bool:
        """Account one generated token; True when the request is finished."""
        if reason == "stop":  # an end-of-generation token: not part of the text
            return self._finish(job, "stop", t, flush=True)
        job.produced += 1
        job.unreported += 1
        text, hit = job.stops.feed(job.text.add(token))
        if text:
            job.emit(TextDelta(text, job.unreported, t))
            job.unreported = 0
        if hit:
            return self._finish(job, "stop", t, flush=False)
        if reason == "length":
            return self._finish(job, "length", t, flush=True)
        return False

    def _finish(self, job: _Job, reason: str, t: float, flush: bool) -> bool:
        if flush:  # text held back for a stop string that never came, or an unfinished character
            tail = job.stops.feed(job.text.flush())[0] + job.stops.pending
            if tail:
                job.emit(TextDelta(tail, job.unreported, t))
        job.emit(Finish(reason, t))
        job.emit(Usage(len(job.prompt), job.produced, cpu_s=job.cpu_s, t=t))
        return True

    def _end(self, job: _Job) -> None:
        self.active -= 1
        job.release()

    def _warmup(self) -> None:
        """Run greedy and sampled batches once so first requests do not pay for compiling the
        samplers or allocating buffers; mx.eval of the weights is done by load()."""
        ids = self.tokenizer.encode("Hello, how are you today?")
        gen = self._new_batch()
        gen.insert([ids, ids[:-1]], [3, 3], samplers=[make_sampler(0.0), make_sampler(0.7, 0.9)])
        while gen.next_generated():
            pass
        gen.close()
        mx.synchronize()
