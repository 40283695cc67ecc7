"""Continuous batching over one llama.cpp context: many sequences decode in one step.

This is llama-server's scheduling, in Python over llama-cpp-python's low-level API. The
context holds ``n_seq`` sequences, each with its own KV cells (``n_ctx`` apiece, not a
unified buffer: sequences of different agents share no prefix worth the cost). One worker
thread runs the loop; every step it builds one ``llama_batch`` of

- one token for every sequence that is decoding (its last sampled token), then
- prompt tokens of sequences still in prefill, oldest first, up to ``n_batch`` in all,

so a new request joins the running batch after a prefill that is cut into chunks, and a
long prompt delays the decoders by one chunk per step, never by its whole length. After
``llama_decode`` each sequence with logits samples its next token from its own sampler
chain (its temperature, top_p, seed, penalties, logit bias and grammar), and its KV cells
are removed when it finishes, unless the prompt cache keeps them for the next request that
shares the prefix. CPU time is split among sequences by their tokens in each step.

The backend (``backends/llama.py``) owns requests, chat templates and events; this module
knows only token ids.
"""
from __future__ import annotations

import ctypes
import queue
import threading
from dataclasses import dataclass, field
from time import process_time
from typing import Callable

import llama_cpp
from llama_cpp import _internals

#: llama-cpp-python's default penalty window (``Llama(last_n_tokens_size=64)``), kept so that
#: presence and frequency penalties mean what they meant before batching.
PENALTY_LAST_N = 64


@dataclass(slots=True)
class Sampling:
    """One request's sampler settings (OpenAI's names and ranges)."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: object | None = None  # a llama_cpp.LlamaGrammar


@dataclass(eq=False)
class Job:
    """A sequence's request inside the engine.

    ``on_token(token) -> bool`` runs on the engine thread for every sampled token that is not
    end-of-generation and returns True to stop (a stop string matched). ``on_done(job, reason)``
    runs once at the end, reason ``stop``, ``length``, ``cancelled`` or an exception; the job
    then holds its counts. ``release()`` runs after the sequence's cells are freed: the slot
    may be reused.
    """
    seq: int
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    on_token: Callable[[int], bool]
    on_done: Callable[[Job, object], None]
    release: Callable[[], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    # engine state
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    pos: int = 0  # next position in the sequence
    last: int = -1  # the sampled token to feed next
    fed: list[int] = field(default_factory=list)  # tokens whose KV cells exist
    produced: int = 0
    cpu_s: float = 0.0
    chain: object = None
    out: int = -1  # batch index whose logits this job samples from, this step


class BatchEngine:
    def __init__(self, path: str, *, n_ctx: int, n_seq: int, n_batch: int, n_threads: int,
                 n_threads_batch: int | None = None, prompt_cache: bool = False):
        self.n_ctx, self.n_seq, self.n_batch = n_ctx, n_seq, n_batch
        self.prompt_cache = prompt_cache
        mp = llama_cpp.llama_model_default_params()
        self.model = _internals.LlamaModel(path_model=path, params=mp, verbose=False)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx * n_seq
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq
        cp.kv_unified = False
        cp.n_threads = n_threads  # llama.cpp's threads for a one-token step, n_threads_batch for larger
        cp.n_threads_batch = n_threads_batch or n_threads
        cp.no_perf = True
        self.ctx = _internals.LlamaContext(model=self.model, params=cp, verbose=False)
        self.mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.vocab = self.model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        #: per sequence, the tokens whose cells are kept for the prompt cache (free slots only)
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.jobs: list[Job] = []
        self.steps = 0  # decode calls, for tests and benchmarks
        self.thread = threading.Thread(target=self._loop, name="llama-batch", daemon=True)
        self.thread.start()

    # --- called from other threads ---
    def submit(self, job: Job) -> None:
        self.inbox.put(job)

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join()
        self.batch.close()
        self.ctx.close()
        self.model.close()

    def kv_cells(self, seq: int) -> int:
        """Positions of ``seq`` held in the KV cache (0 when its cells are free)."""
        return llama_cpp.llama_memory_seq_pos_max(self.mem, seq) + 1

    def common_prefix(self, seq: int, prompt: list[int]) -> int:
        n = 0
        for a, b in zip(self.cached[seq], prompt):
            if a != b:
                break
            n += 1
        return n

    # --- the engine thread ---
    def _loop(self) -> None:
        while True:
            # Idle, wait for work; busy, take whatever arrived and go on decoding.
            arrived = [] if self.jobs else [self.inbox.get()]
            while True:
                try:
                    arrived.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for job in arrived:
                if job is not None:
                    self._admit(job)
            if None in arrived:
                break
            self._step()
        for job in list(self.jobs):  # closing: every caller still hears the end of its request
            self._finish(job, "cancelled")

    def _admit(self, job: Job) -> None:
        keep = self.common_prefix(job.seq, job.prompt) if self.prompt_cache else 0
        keep = min(keep, len(job.prompt) - 1)  # at least one prompt token is decoded, for its logits
        llama_cpp.llama_memory_seq_rm(self.mem, job.seq, keep, -1)
        job.fed = job.prompt[:keep]
        job.pending = job.prompt[keep:]
        job.pos = keep
        job.chain = self._chain(job.sampling)
        self.jobs.append(job)

    def _chain(self, s: Sampling):
        """The sampler chain of llama-cpp-python's ``Llama.generate`` (penalties, grammar, then
        greedy at temperature 0, else top-p, temperature and a seeded draw), plus logit bias."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda smpl: llama_cpp.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if s.logit_bias:
            bias = (llama_cpp.llama_logit_bias * len(s.logit_bias))()
            for i, (tok, b) in enumerate(s.logit_bias.items()):
                bias[i].token, bias[i].bias = tok, b
            add(llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(s.logit_bias), bias))
        add(llama_cpp.llama_sampler_init_penalties(self.n_vocab, PENALTY_LAST_N, 1.0, s.frequency_penalty,
                                                   s.presence_penalty))
        if s.grammar is not None:
            add(llama_cpp.llama_sampler_init_grammar(self.vocab, s.grammar._grammar.encode(),
                                                     s.grammar._root.encode()))
        if s.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
            add(llama_cpp.llama_sampler_init_temp(s.temperature))
            add(llama_cpp.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
        return chain

    def _step(self) -> None:
        for job in [j for j in self.jobs if j.cancel.is_set()]:
            self._finish(job, "cancelled")
        b = self.batch.batch
        n = 0

        def put(tok: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal n
            b.token[n], b.pos[n], b.seq_id[n][0], b.n_seq_id[n], b.logits[n] = tok, pos, seq, 1, logits
            n += 1

        # The step's budget: a token for every decoder first, then prefill, oldest request first.
        room = self.n_batch - sum(not job.pending for job in self.jobs)
        take: dict[Job, int] = {}
        for job in self.jobs:
            if job.pending and room > 0:
                take[job] = min(room, len(job.pending))
                room -= take[job]
        # Laid out by sequence id: llama.cpp splits a batch whose sequences come out of order
        # into more micro-batches; eight decoders in descending order ran at 89 tok/s here,
        # ascending at 189.
        share: list[tuple[Job, int]] = []
        for job in sorted(self.jobs, key=lambda j: j.seq):
            job.out = -1
            if not job.pending:
                job.out = n
                put(job.last, job.pos, job.seq, True)
                job.fed.append(job.last)
                job.pos += 1
                share.append((job, 1))
            elif job in take:
                chunk = job.pending[:take[job]]
                del job.pending[:len(chunk)]
                for i, tok in enumerate(chunk):
                    put(tok, job.pos + i, job.seq, not job.pending and i == len(chunk) - 1)
                job.out = n - 1 if not job.pending else -1
                job.fed += chunk
                job.pos += len(chunk)
                share.append((job, len(chunk)))
        if n == 0:
            return
        b.n_tokens = n
        cpu0 = process_time()
        rc = llama_cpp.llama_decode(self.ctx.ctx, b)
        if rc != 0:
            err = RuntimeError(f"llama_decode returned {rc}")
            for job, _ in share:
                self._finish(job, err)
            return
        self.steps += 1
        done: list[tuple[Job, str]] = []
        for job, _ in share:
            if job.out < 0:
                continue
            tok = llama_cpp.llama_sampler_sample(job.chain, self.ctx.ctx, job.out)
            if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                done.append((job, "stop"))
                continue
            job.produced += 1
            if job.on_token(tok):
                done.append((job, "stop"))
            elif job.produced >= job.max_tokens:
                done.append((job, "length"))
            else:
                job.last = tok
        cpu = process_time() - cpu0
        for job, tokens in share:
            job.cpu_s += cpu * tokens / n
        for job, reason in done:
            self._finish(job, reason)

    def _finish(self, job: Job, reason) -> None:
        self.jobs.remove(job)
        llama_cpp.llama_sampler_free(job.chain)
        if self.prompt_cache and not isinstance(reason, BaseException):
            self.cached[job.seq] = job.fed
        else:  # free the cells now: a finished request holds no memory
            llama_cpp.llama_memory_seq_rm(self.mem, job.seq, -1, -1)
            self.cached[job.seq] = []
        try:
            job.on_done(job, reason)
        finally:
            job.release()
