"""Run model-written code in a separate, limited, throwaway process.

A pool of warm workers (``sandbox_worker.py``) is started ahead of need: each has
already paid for interpreter start-up and its jail, and runs exactly one job before it
is discarded, so no state leaks between runs. The jail: network, IPC, UTS, mount and PID
namespaces; a minimal root holding only the workspace (read-write), the interpreter, its
shared libraries and standard library (read-only), ``/dev/null``, ``/dev/urandom``, an
empty ``/tmp`` and a ``/proc`` of the job's own PID namespace; an unprivileged uid (per
slot, when we are root) or a user namespace, with every capability dropped. Per job: wall
time enforced here, CPU time, address space, file size and (with the per-slot uid)
process count limited by rlimits. Afterwards everything the job started is killed: the
PID namespace's init dies (the kernel kills the rest), plus the process group.

Where the OS cannot build the jail (macOS, Linux without user namespaces for a non-root
user) ``Sandbox`` refuses to start unless ``unsafe=True`` (``--unsafe-no-sandbox``),
which runs the code with no isolation and no limits but the wall time.
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_WORKER = str(Path(__file__).with_name("sandbox_worker.py"))
# One unprivileged uid per pool slot, so RLIMIT_NPROC counts one job's processes; offset by our
# pid so that pools in concurrent harness processes never share a uid.
_UID_BASE = 200_000 + (os.getpid() % 10_000) * 256
MAX_POOL = 256
# What the jail must have before untrusted code may run in it.
REQUIRED = ("no_network", "ipc", "uts", "minimal_root", "pid_namespace", "private_proc")
UNSAFE = "none (--unsafe-no-sandbox)"


class SandboxUnavailable(RuntimeError):
    """The OS cannot isolate model-written code here."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: float = 10.0
    mem_bytes: int = 1 << 30
    fsize_bytes: int = 16 << 20
    nproc: int = 32
    output_bytes: int = 64 << 10


@dataclass
class RunResult:
    ok: bool
    status: str  # ok | error | timeout | crashed
    output: str = ""
    error: str | None = None
    wall_s: float = 0.0
    isolation: list[str] = field(default_factory=list)
    cpu_s: float | None = None  # the code's CPU time; None when it was killed before reporting


@functools.cache
def runtime() -> dict:
    """What the code's Python needs, read-only: the base interpreter (not the project's venv, whose
    site-packages and editable-install finder point into the checkout), its standard library
    (without its own site-packages: tasks import the standard library only) and the shared
    libraries the interpreter and the standard library's extension modules link."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    stdlib = os.path.realpath(sysconfig.get_path("stdlib"))
    dynload = os.path.join(stdlib, "lib-dynload")
    names = os.listdir(dynload) if os.path.isdir(dynload) else []  # none in a static build
    exts = sorted(os.path.join(dynload, f) for f in names if f.endswith(".so"))
    libs = set()
    # no ldd (macOS): there is no jail to furnish either
    out = subprocess.run(["ldd", exe, *exts], capture_output=True, text=True).stdout if shutil.which("ldd") else ""
    for line in out.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/") and os.path.exists(path):
            libs.add(path)
    site = {os.path.realpath(sysconfig.get_path(k, vars={"base": sys.base_prefix, "platbase": sys.base_prefix}))
            for k in ("purelib", "platlib")}
    hide = sorted(p for p in site if p.startswith(stdlib + "/") and os.path.isdir(p))
    return {"exe": exe, "ro": sorted({exe, stdlib, *libs}), "hide": hide}


class _Worker:
    def __init__(self, slot: int, root: bool, spec: dict):
        self.slot = slot
        self.uid = _UID_BASE + slot if root and not spec["unsafe"] else None
        r, w = os.pipe()
        # -I -S: no environment, no user or venv site-packages; the worker imports the standard library only
        self.proc = subprocess.Popen(
            [spec["exe"], "-I", "-S", "-u", _WORKER, str(w), json.dumps(spec)], pass_fds=(w,),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        os.close(w)
        self.result_fd = r
        self.hello: dict | None = None
        self.child: int | None = None  # the code's process: init of its PID namespace
        self._buf = b""

    def messages(self, data: bytes) -> list[dict]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_ready(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while self.hello is None or self.child is None:
            left = deadline - time.monotonic()
            sel = selectors.DefaultSelector()
            sel.register(self.result_fd, selectors.EVENT_READ)
            if left <= 0 or not sel.select(left):
                raise RuntimeError("sandbox worker did not start")
            data = os.read(self.result_fd, 65536)
            if not data:
                raise RuntimeError(f"sandbox worker died: {self.proc.stdout.read().decode(errors='replace')[-500:]}")
            for msg in self.messages(data):
                self.child = msg.get("child", self.child)
                if msg.get("ready"):
                    self.hello = msg
        return self.hello

    def destroy(self) -> None:
        if self.child:
            _kill(self.child)  # init of the PID namespace: its death takes every process in it
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        os.close(self.result_fd)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Sandbox:
    """A pool of ``size`` warm workers; ``run`` is thread-safe and ``arun`` is its async form.

    Raises ``SandboxUnavailable`` when the jail cannot be built here, unless ``unsafe``.
    """

    def __init__(self, size: int = 2, limits: Limits = Limits(), *, unsafe: bool = False):
        self.size = min(max(1, size), MAX_POOL)
        self.limits = limits
        self.unsafe = unsafe
        self.root = os.geteuid() == 0
        # the minimal root is built on a tmpfs mounted over this empty directory, in each worker's own
        # mount namespace: the host sees it empty
        self._jail_dir = None if unsafe else tempfile.mkdtemp(prefix="edgemeter-jail-")
        self._spec = {**runtime(), "unsafe": unsafe, "root": self._jail_dir, "tmp_bytes": limits.fsize_bytes}
        self._idle: list[_Worker] = []
        self._free_slots = list(range(self.size))
        self._cv = threading.Condition()
        self._closed = False
        self._to_start: queue.SimpleQueue[bool] = queue.SimpleQueue()
        threading.Thread(target=self._spawner, daemon=True, name="sandbox-spawner").start()
        for _ in range(self.size):
            self._spawn_async()
        try:
            self.isolation = self._peek_isolation()
        except BaseException:
            self.close()
            raise

    def _peek_isolation(self) -> list[str]:
        w = self._take()
        try:
            applied = list(w.wait_ready()["isolation"])
        finally:
            with self._cv:
                self._idle.append(w)
                self._cv.notify_all()
        if self.unsafe:
            return [UNSAFE]
        missing = [name for name in REQUIRED if name not in applied]
        if not self.root and "userns" not in applied:
            missing.append("userns")
        if missing:
            raise SandboxUnavailable(
                f"cannot isolate model-written code on this machine (missing: {', '.join(missing)}); it would see "
                "the host's files and processes. Run the harness in a Linux container or VM (as root, or with "
                "unprivileged user namespaces enabled), or pass --unsafe-no-sandbox to run it with no isolation.")
        applied.append("capabilities_dropped")
        applied.append("rlimits(cpu,as,fsize,nofile)")
        if self.root:
            applied += ["unprivileged_uid", "rlimit_nproc"]
        return applied

    def _spawn_async(self) -> None:
        self._to_start.put(True)

    def _spawner(self) -> None:
        # One long-lived thread starts every worker: workers die with the thread that forked them
        # (PR_SET_PDEATHSIG), so a short-lived thread would take its worker down with it.
        while self._to_start.get():
            with self._cv:
                if self._closed:
                    return
                slot = self._free_slots.pop()
            try:
                w = _Worker(slot, self.root, self._spec)
            except OSError:
                with self._cv:
                    self._free_slots.append(slot)
                time.sleep(0.1)
                self._to_start.put(True)
                continue
            with self._cv:
                if self._closed:
                    w.destroy()
                    return
                self._idle.append(w)
                self._cv.notify_all()

    def _take(self) -> _Worker:
        with self._cv:
            while not self._idle:
                if self._closed:
                    raise RuntimeError("sandbox is closed")
                self._cv.wait()
            return self._idle.pop()

    def _release(self, w: _Worker) -> None:
        w.destroy()
        with self._cv:
            self._free_slots.append(w.slot)
            closed = self._closed
        if not closed:
            self._spawn_async()

    def run(self, code: str, *, cwd: str | os.PathLike | None = None, repl: bool = False,
            limits: Limits | None = None) -> RunResult:
        """Run ``code`` as ``__main__`` in ``cwd`` (a fresh temporary directory when None).

        ``repl`` echoes the value of a trailing expression, like an interactive prompt.
        ``ok`` means the code ran to its end without an exception or early exit.
        """
        lim = limits or self.limits
        tmp = None if cwd is not None else tempfile.mkdtemp(prefix="edgemeter-sbx-")
        workdir = os.path.realpath(cwd if cwd is not None else tmp)
        t0 = time.perf_counter()
        w = self._take()
        try:
            w.wait_ready()
            job = {"code": code, "cwd": workdir, "repl": repl, "cpu_s": lim.cpu_s, "mem_bytes": lim.mem_bytes,
                   "fsize_bytes": lim.fsize_bytes, "nproc": lim.nproc if w.uid is not None else 0, "uid": w.uid}
            w.proc.stdin.write((json.dumps(job) + "\n").encode())
            w.proc.stdin.flush()
            output, result, exit_code, timed_out = self._collect(w, t0 + lim.wall_s, lim.output_bytes)
        finally:
            self._release(w)
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        wall = time.perf_counter() - t0
        text = output.decode("utf-8", errors="replace")
        if timed_out:
            return RunResult(False, "timeout", text, f"wall time limit {lim.wall_s:g} s exceeded", wall, self.isolation)
        if result is None:
            why = f"killed by signal {-exit_code}" if exit_code is not None and exit_code < 0 else f"exit {exit_code}"
            if exit_code == -signal.SIGXCPU or exit_code == -signal.SIGKILL:
                why += " (CPU or memory limit)"
            return RunResult(False, "crashed", text, why, wall, self.isolation)
        return RunResult(result["ok"], "ok" if result["ok"] else "error", text, result.get("error"), wall,
                         self.isolation, result.get("cpu_s"))

    @staticmethod
    def _collect(w: _Worker, deadline: float, cap: int):
        sel = selectors.DefaultSelector()
        out_fd = w.proc.stdout.fileno()
        sel.register(out_fd, selectors.EVENT_READ)
        sel.register(w.result_fd, selectors.EVENT_READ)
        chunks, size = [], 0
        result = exit_code = None
        done = False
        while not done:
            left = deadline - time.perf_counter()
            if left <= 0:
                return b"".join(chunks), result, exit_code, True
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                if key.fd == out_fd:
                    if not data:
                        sel.unregister(out_fd)
                    elif size < cap:
                        chunks.append(data[:cap - size])
                        size += len(chunks[-1])
                    continue
                if not data:  # the worker is gone
                    done = True
                for msg in w.messages(data):
                    result = msg.get("result", result)
                    if "exit" in msg:
                        exit_code, done = msg["exit"], True
        # the code's process has ended: take what is already in the output pipe, never wait for more
        os.set_blocking(out_fd, False)
        try:
            while size < cap and (data := os.read(out_fd, 65536)):
                chunks.append(data[:cap - size])
                size += len(chunks[-1])
        except (BlockingIOError, OSError):
            pass
        return b"".join(chunks), result, exit_code, False

    async def arun(self, code: str, **kw) -> RunResult:
        return await asyncio.to_thread(self.run, code, **kw)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cv.notify_all()
        self._to_start.put(False)
        for w in idle:
            w.destroy()
        if self._jail_dir:
            try:
                os.rmdir(self._jail_dir)
            except OSError:
                pass

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
