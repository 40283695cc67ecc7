"""Agent-session traces: what a recorded run did that no simulated network changes, for
``python -m harness replay``.

A trace is one agent session (one task attempt) on one device. For each LLM call it keeps
the request's size, every response frame as ``[s after the request reached the model,
bytes, tokens]`` (the proxy's ``server.record_traces`` timeline: queueing, prefill and
decoding, but no network), the time after the last frame until the call ended, the
client's own overheads, and the time until the next call (the agent's tools and its own
work). The session adds the time before its first call and after its last, and the final
answer's size. What the run measured (wall time, energy) is kept for comparison.

Three sources load into the same shape:
  harness results  ``results.jsonl`` of ``python -m harness run`` (or its run directory): one
                   session per row; the per-call timelines ride in the proxy's records, so the
                   proxy must have run with ``server.record_traces: true``.
  proxy log        ``server.request_log`` written with ``record_traces``: calls grouped by
                   ``X-Edgemeter-Session`` (a call without one is its own session); gaps between
                   calls are what the proxy saw; the final answer's size is unknown.
  trace files      JSONL written by ``save`` (``python -m harness replay --save-traces``).

``validate`` flags sessions that replay cannot reproduce, each with a reason.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

FORMAT = "edgemeter-trace"
VERSION = 1
TIMELINE_VERSION = 1     # the proxy's per-call ``trace`` object
CLOCK_SLACK_S = 0.01     # epoch timestamps of the client and the proxy: what counts as "at the same time"
UNEXPLAINED_GAP_S = 1.0  # client time between calls beyond its tools' that makes a session suspect


@dataclass
class Call:
    bytes_up: int
    frames: list | None           # [s after the request reached the model, bytes, tokens]; None: not recorded
    stream: bool = True
    tail_s: float = 0.0           # the last frame's simulated arrival -> the call finished at the proxy
    first_token_s: float | None = None
    queue_s: float | None = None
    gap_s: float = 0.0            # the call returned to the client -> the next call was sent
    client_ttft_s: float = 0.0    # the client saw its first token this long after the proxy delivered it
    client_e2e_s: float = 0.0     # and the end this long after the proxy finished
    status: int = 200
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_source: str | None = None
    backend: str | None = None
    in_process: bool = False
    cpu_s: float | None = None
    compute_j: float | None = None
    compute_method: str | None = None
    delivered: int | None = None  # frames the proxy delivered; fewer than recorded means the stream was cut
    version: int = TIMELINE_VERSION
    client: dict = field(default_factory=dict)  # the client's record: chunks, bytes_in, tokens, tool calls


@dataclass
class Session:
    id: str
    device: str
    mode: str                     # what it was recorded under
    network: str
    model: str | None
    started_at: float             # epoch
    calls: list[Call]
    lead_s: float = 0.0           # session start -> first call sent
    end_s: float = 0.0            # last call returned -> session over, the final answer's download excluded
    final_answer_bytes: int | None = None
    wall_s: float | None = None   # as recorded
    one_call: bool = False        # no session header: in cloud mode its response comes down the link
    timeout_s: float | None = None  # the client's per-call timeout
    tool_s: float | None = None   # the agent's tools, all calls
    task: dict = field(default_factory=dict)      # dataset, task_id, passed, answer ... (harness rows)
    recorded: dict = field(default_factory=dict)  # wall_s, net_delay_s, radio_j, compute_j as measured
    source: str = ""
    flags: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict) -> Session:
        if d.get("version") != VERSION:
            raise ValueError(f"trace version {d.get('version')!r}, this replay reads {VERSION}")
        keys = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in d.items() if k in keys})
        s.calls = [Call(**c) for c in s.calls]
        return s

    @property
    def recorded_end(self) -> float:
        return self.started_at + (self.wall_s or 0.0)


# --- harness results ---

_TASK_KEYS = ("dataset", "task_id", "sample", "repeat", "protocol", "passed", "extracted", "grade_detail",
              "answer", "answer_source", "stop_reason", "error", "turns", "n_tool_calls", "tool_calls")


def _net(v) -> float | None:
    return v.get("total") if isinstance(v, dict) else v


def _call_from_record(em: dict) -> Call:
    """A call from the proxy's per-request record and its ``trace`` object."""
    tr = em.get("trace") or {}
    return Call(
        bytes_up=int(em.get("bytes_up") or 0), frames=tr.get("frames"), stream=tr.get("stream", True),
        tail_s=tr.get("tail_s") or 0.0, first_token_s=tr.get("first_token_s"), queue_s=tr.get("queue_s"),
        status=em.get("status") or 0, error=em.get("error"), finish_reason=em.get("finish_reason"),
        prompt_tokens=em.get("prompt_tokens") or 0, completion_tokens=em.get("completion_tokens") or 0,
        usage_source=em.get("usage_source"), backend=em.get("backend"), in_process=bool(tr.get("in_process")),
        cpu_s=em.get("cpu_s"), compute_j=em.get("compute_j"), compute_method=em.get("compute_energy_method"),
        delivered=em.get("chunks"), version=tr.get("v", TIMELINE_VERSION) if tr else TIMELINE_VERSION)


def from_result_row(row: dict, run_info: dict | None = None, source: str = "") -> Session:
    """One ``python -m harness run`` attempt. Times between calls come from the client's
    clock (epoch start plus perf-counter durations), so they hold tools and client work exactly."""
    calls = []
    llm = row.get("llm_calls") or []
    for i, rec in enumerate(llm):
        em = rec.get("edgemeter") or {}
        c = _call_from_record(em) if em else Call(bytes_up=0, frames=None, status=rec.get("status") or 0)
        if not em:
            c.error = rec.get("error") or "no Edgemeter record (not the Edgemeter proxy)"
        c.error = c.error or rec.get("error")
        if rec.get("status") and rec["status"] != 200:
            c.status = rec["status"]
        c.finish_reason = c.finish_reason or rec.get("finish_reason")
        if rec.get("ttft_s") is not None and em.get("ttft_s") is not None:
            c.client_ttft_s = max(0.0, rec["ttft_s"] - em["ttft_s"])
        if rec.get("e2e_s") is not None and em.get("e2e_s") is not None:
            c.client_e2e_s = max(0.0, rec["e2e_s"] - em["e2e_s"])
        if i + 1 < len(llm):
            c.gap_s = llm[i + 1]["started_at"] - (rec["started_at"] + (rec.get("e2e_s") or 0.0))
        c.client = {k: rec.get(k) for k in ("chunks", "bytes_in", "prompt_tokens", "completion_tokens", "tool_calls")}
        calls.append(c)
    wall = row.get("wall_s")
    srec = row.get("session_record") or {}
    answer_delay = srec.get("final_answer_delay_s") or 0.0
    lead = end = 0.0
    if llm and wall is not None:
        lead = llm[0]["started_at"] - row["started_at"]
        last = llm[-1]
        end = row["started_at"] + wall - (last["started_at"] + (last.get("e2e_s") or 0.0)) - answer_delay
    answer_bytes = row.get("final_answer_bytes")
    if answer_bytes is None and len(row.get("answer") or "") < 4000:  # rows keep the first 4000 characters
        answer_bytes = len((row.get("answer") or "").encode())
    energy = {k: row.get(k) for k in ("wall_s", "net_delay_s", "radio_j", "compute_j", "energy_j")}
    args = (run_info or {}).get("args") or {}
    return Session(
        id=row.get("session") or f"{row.get('task_id')}-{row.get('sample')}-{row.get('repeat')}",
        device=row.get("device") or "default", mode=row.get("mode") or "local", network=row.get("network") or "local",
        model=row.get("model"), started_at=row.get("started_at") or 0.0, calls=calls, lead_s=max(0.0, lead),
        end_s=max(0.0, end), final_answer_bytes=answer_bytes, wall_s=wall, timeout_s=args.get("timeout"),
        tool_s=row.get("tool_wall_s"), task={k: row.get(k) for k in _TASK_KEYS}, recorded=energy, source=source)


# --- proxy request log ---

def from_proxy_records(records: list[dict], source: str = "") -> list[Session]:
    """Per-request records grouped into sessions by their session id, calls in arrival order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r.get("session") is None, r.get("session") or r.get("request_id"), r.get("device"))].append(r)
    out = []
    for (one_call, sid, device), recs in groups.items():
        recs.sort(key=lambda r: (r.get("trace") or {}).get("received_at") or r.get("time") or 0.0)
        starts = [(r.get("trace") or {}).get("received_at") or (r.get("time", 0.0) - (r.get("e2e_s") or 0.0))
                  for r in recs]
        calls = [_call_from_record(r) for r in recs]
        for i, c in enumerate(calls[:-1]):
            c.gap_s = starts[i + 1] - (starts[i] + (recs[i].get("e2e_s") or 0.0))
        first = recs[0]
        wall = starts[-1] + (recs[-1].get("e2e_s") or 0.0) - starts[0]
        recorded = {"wall_s": wall, "net_delay_s": sum(_net(r.get("net_delay_s")) or 0.0 for r in recs),
                    "radio_j": sum(r.get("radio_j") or 0.0 for r in recs),
                    "compute_j": sum(r.get("compute_j") or 0.0 for r in recs)}
        out.append(Session(id=sid, device=device or "default", mode=first.get("mode") or "local",
                           network=first.get("network") or "local", model=first.get("model"), started_at=starts[0],
                           calls=calls, wall_s=wall, one_call=one_call, recorded=recorded, source=source,
                           task={"dataset": "proxy-log", "task_id": sid, "sample": 0, "repeat": 0}))
    return out


# --- files ---

def _rows(path: Path) -> list[dict]:
    from harness.agents.results import read_rows
    return read_rows(path)


def load(path: str | Path) -> list[Session]:
    """Sessions from a trace file, a harness run directory or results.jsonl, or a proxy request log."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such trace file or run directory")
    info_path = p.parent / "run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    sessions, proxy_records = [], []
    for line_no, d in enumerate(_rows(p), 1):
        if d.get("format") == FORMAT:
            try:
                sessions.append(Session.from_json(d))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{p}:{line_no}: {e}") from None
        elif "llm_calls" in d:
            sessions.append(from_result_row(d, info, str(p)))
        elif "request_id" in d and "net_delay_s" in d:
            proxy_records.append(d)
        else:
            raise ValueError(f"{p}:{line_no}: neither a trace, a harness result nor a proxy record")
    return sessions + from_proxy_records(proxy_records, str(p))


def save(path: str | Path, sessions: list[Session]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        for s in sessions:
            f.write(json.dumps(s.to_json(), separators=(",", ":")) + "\n")


# --- what makes a trace unreplayable ---

def problems(s: Session) -> list[str]:
    """Reasons this session's recording cannot be replayed faithfully under another network."""
    out = []
    if not s.calls:
        out.append("no_calls: the session made no LLM call")
    for i, c in enumerate(s.calls, 1):
        if c.status != 200 or c.error:
            # a failed, timed-out or retried call: what the client did next depended on it
            out.append(f"call_error: call {i}: {c.error or f'HTTP {c.status}'}")
        elif c.frames is None:
            out.append(f"no_timeline: call {i} has no frame timeline (record with server.record_traces: true)")
        elif c.version != TIMELINE_VERSION:
            out.append(f"timeline_version: call {i} has timeline version {c.version}, replay reads {TIMELINE_VERSION}")
        elif not c.frames or (c.stream and c.finish_reason is None):
            out.append(f"stream_cut: call {i} ended without a finish reason")
        elif c.delivered is not None and c.stream and c.delivered < len(c.frames):
            out.append(f"stream_cut: call {i} delivered {c.delivered} of {len(c.frames)} frames")
        if c.gap_s < -CLOCK_SLACK_S:
            out.append(f"concurrent_calls: call {i + 1} was sent {-c.gap_s:.3f} s before call {i} returned")
    if s.tool_s is not None and s.calls:
        between = sum(max(0.0, c.gap_s) for c in s.calls) + s.end_s
        if between - s.tool_s > UNEXPLAINED_GAP_S:
            out.append(f"unexplained_gap: the client spent {between - s.tool_s:.2f} s between calls beyond its "
                       f"tools' {s.tool_s:.2f} s (work that may depend on the network)")
    return out


def replayable(s: Session) -> bool:
    """Whether the session has a timeline to replay at all (flagged or not)."""
    return bool(s.calls) and all(c.frames for c in s.calls)


def validate(sessions: list[Session]) -> list[Session]:
    """Set each session's ``flags``; sessions on one device must not overlap in time, since
    one device's link and radio are replayed one session after another."""
    for s in sessions:
        s.flags = problems(s)
    by_device: dict[str, list[Session]] = defaultdict(list)
    for s in sessions:
        by_device[s.device].append(s)
    for group in by_device.values():
        group.sort(key=lambda s: s.started_at)
        busy_until, owner = float("-inf"), None
        for s in group:
            if s.started_at < busy_until - CLOCK_SLACK_S:
                s.flags.append(f"overlap: ran on device {s.device} while session {owner.id} did")
                if not any(f.startswith("overlap") for f in owner.flags):
                    owner.flags.append(f"overlap: ran on device {s.device} while session {s.id} did")
            if s.recorded_end > busy_until:
                busy_until, owner = s.recorded_end, s
    return sessions
