"""The sandbox tried as an attacker would: each probe must meet its specific denial in the jail,
and succeed with ``unsafe=True`` (``--unsafe-no-sandbox``), so that no probe passes by crashing.

The target is a canary process holding a secret in its command line and environment (as a
harness started with ``--api-key`` would) and serving it on a loopback TCP port and an abstract
UNIX socket. Every probe prints one JSON line: ``{"ok": true, "value": ...}`` when the attempt
went through, else ``{"ok": false, "errno": "E..."}`` (or the exception's name).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from harness.agents.sandbox import Limits, Sandbox, runtime

LIMITS = Limits(wall_s=5.0, cpu_s=3.0, mem_bytes=256 << 20, fsize_bytes=1 << 20, nproc=8)
SECRET = f"sk-canary-{os.getpid()}-a7f3"
CHECKOUT_FILE = Path(__file__).resolve().parents[3] / "pyproject.toml"

CANARY = """
import socket, sys, threading
tcp = socket.create_server(("127.0.0.1", 0))
unix = socket.socket(socket.AF_UNIX)
unix.bind("\\0" + sys.argv[2])  # abstract: no file, scoped by network namespace
unix.listen()
def serve(server):
    while True:
        conn, _ = server.accept()
        conn.sendall(sys.argv[1].split("=", 1)[1].encode())
        conn.close()
threading.Thread(target=serve, args=(unix,), daemon=True).start()
print(tcp.getsockname()[1], flush=True)
serve(tcp)
"""

PRELUDE = """
import errno, json, os
def report(ok, value=None, error=None):
    print(json.dumps({"ok": True, "value": value} if ok else {"ok": False, "errno": error}))
def attempt(fn):
    try:
        value = fn()
    except OSError as e:
        report(False, error=errno.errorcode.get(e.errno, str(e.errno)))
    else:
        report(True, value)
"""


@dataclass
class Probe:
    name: str
    code: str  # formatted with the context below
    denied: Callable[[dict, dict], bool]
    allowed: Callable[[dict, dict], bool]


def errno_is(name):
    return lambda out, ctx: out == {"ok": False, "errno": name}


def secret_seen(out, ctx):
    return out["ok"] and SECRET in str(out["value"])


def beacon_stopped(out, ctx):
    return _beacon_grows(ctx) is False


def beacon_grows(out, ctx):
    try:
        return _beacon_grows(ctx)
    finally:
        if out["ok"]:
            os.kill(out["value"], signal.SIGKILL)  # the escaped process, by its host pid


def _beacon_grows(ctx):
    beacon = ctx["workspace"] / "beacon"
    time.sleep(0.2)
    before = beacon.stat().st_size
    time.sleep(0.4)
    return beacon.stat().st_size > before


def jail_root(out, ctx):
    """Only the jail's own directories and the first components of the runtime's paths."""
    runtime_tops = {p.split("/")[1] for p in runtime()["ro"]}
    return out["ok"] and "etc" not in out["value"] and set(out["value"]) <= {"dev", "proc", "tmp", "workspace",
                                                                            *runtime_tops}


PROBES = [
    Probe("read another process's cmdline", "attempt(lambda: open('/proc/{pid}/cmdline', 'rb').read().decode())",
          errno_is("ENOENT"), secret_seen),
    Probe("read another process's environ", "attempt(lambda: open('/proc/{pid}/environ', 'rb').read().decode())",
          errno_is("ENOENT"), secret_seen),
    Probe("list host PIDs", "attempt(lambda: sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
          lambda out, ctx: out == {"ok": True, "value": [1]},  # the code's own process, nothing else
          lambda out, ctx: out["ok"] and ctx["pid"] in out["value"]),
    Probe("read the checkout's files", "attempt(lambda: open({checkout!r}).read())",
          errno_is("ENOENT"), lambda out, ctx: out["ok"] and out["value"] == CHECKOUT_FILE.read_text()),
    Probe("read /etc/passwd", "attempt(lambda: open('/etc/passwd').read())",
          errno_is("ENOENT"), lambda out, ctx: out["ok"] and "root:" in out["value"]),
    Probe("list the host's root", "attempt(lambda: sorted(os.listdir('/')))",
          jail_root, lambda out, ctx: out["ok"] and "etc" in out["value"]),
    Probe("write outside the workspace", "attempt(lambda: open({outside!r}, 'w').write('x'))",
          lambda out, ctx: errno_is("ENOENT")(out, ctx) and not os.path.exists(ctx["outside"]),
          lambda out, ctx: out["ok"] and os.path.exists(ctx["outside"])),
    Probe("write to /", "attempt(lambda: open({at_root!r}, 'w').write('x'))",
          lambda out, ctx: errno_is("EROFS")(out, ctx) and not os.path.exists(ctx["at_root"]),
          lambda out, ctx: out["ok"] and os.path.exists(ctx["at_root"])),
    Probe("see another task's workspace", "attempt(lambda: open({other!r}).read())",
          errno_is("ENOENT"), secret_seen),
    Probe("see the host's /tmp files", "attempt(lambda: os.listdir('/tmp'))",
          lambda out, ctx: out == {"ok": True, "value": []},
          lambda out, ctx: out["ok"] and os.path.basename(ctx["host_tmp"]) in out["value"]),
    Probe("connect to a loopback TCP port", """
import socket
attempt(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2).recv(200).decode())""",
          errno_is("ENETUNREACH"), secret_seen),
    Probe("connect to an abstract UNIX socket", """
import socket
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect({abstract!r})
    return s.recv(200).decode()
attempt(connect)""",
          errno_is("ECONNREFUSED"), secret_seen),
    Probe("signal the harness", "attempt(lambda: os.kill({harness}, 0))",
          errno_is("ESRCH"), lambda out, ctx: out == {"ok": True, "value": None}),
    Probe("ptrace the canary", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def seize():  # PTRACE_SEIZE: attach without stopping it; our exit detaches
    if libc.ptrace(0x4206, {pid}, None, None) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")
attempt(seize)""",
          errno_is("ESRCH"), lambda out, ctx: out == {"ok": True, "value": None}),
    Probe("raise rlimits", """
import resource
try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    report(True, resource.getrlimit(resource.RLIMIT_AS))
except ValueError as e:
    report(False, error=str(e))""",
          lambda out, ctx: out == {"ok": False, "errno": "not allowed to raise maximum limit"},  # EPERM
          lambda out, ctx: out == {"ok": True, "value": [-1, -1]}),
    Probe("fork past the process limit", """
r, w = os.pipe()
forked = 0
try:
    for _ in range({nproc} * 2):
        if os.fork() == 0:
            os.close(w)
            os.read(r, 1)  # stay alive until the parent is done
            os._exit(0)
        forked += 1
    report(True, forked)
except OSError as e:
    report(False, error=errno.errorcode[e.errno])""",
          errno_is("EAGAIN"), lambda out, ctx: out == {"ok": True, "value": LIMITS.nproc * 2}),
    Probe("exhaust memory", """
try:
    report(True, len(bytearray({mem} * 2)))
except MemoryError:
    report(False, error="MemoryError")""",
          errno_is("MemoryError"), lambda out, ctx: out == {"ok": True, "value": LIMITS.mem_bytes * 2}),
    Probe("fill the disk past the file-size limit", """
def fill():
    with open("big", "wb") as f:
        return f.write(b"x" * ({fsize} + 1))
attempt(fill)""",
          errno_is("EFBIG"), lambda out, ctx: out == {"ok": True, "value": LIMITS.fsize_bytes + 1}),
    Probe("leave a background process alive after the job", """
import time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("beacon", "a").close()
        os.write(w, str(os.getpid()).encode())
        while True:
            with open("beacon", "a") as f:
                f.write(".")
            time.sleep(0.02)
    os._exit(0)
report(True, int(os.read(r, 20)))
time.sleep(0.1)""",
          beacon_stopped, beacon_grows),
    Probe("setuid(0)", "attempt(lambda: os.setuid(0))", errno_is("EPERM"), lambda out, ctx: out["ok"]),
]


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    """A process like a harness started with --api-key, plus files other tasks and users left."""
    abstract = f"edgemeter-canary-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-c", CANARY, f"--api-key={SECRET}", abstract],
                            env={**os.environ, "OPENAI_API_KEY": SECRET}, stdout=subprocess.PIPE)
    other = tmp_path_factory.mktemp("other-task") / "solution.py"
    other.write_text(f"KEY = {SECRET!r}\n")
    host_tmp = tempfile.NamedTemporaryFile(prefix="edgemeter-canary-", dir="/tmp")
    try:
        yield {"pid": proc.pid, "port": int(proc.stdout.readline()), "abstract": "\0" + abstract, "other": str(other),
               "host_tmp": host_tmp.name, "harness": os.getpid(), "checkout": str(CHECKOUT_FILE),
               "nproc": LIMITS.nproc, "mem": LIMITS.mem_bytes, "fsize": LIMITS.fsize_bytes}
    finally:
        proc.kill()
        proc.wait()
        host_tmp.close()


@pytest.fixture(scope="module")
def sandboxes():
    with Sandbox(2, LIMITS) as jailed, Sandbox(2, LIMITS, unsafe=True) as unsafe:
        yield {"jailed": jailed, "unsafe": unsafe}


@pytest.mark.parametrize("mode", ["jailed", "unsafe"])
@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_probe(probe, mode, canary, sandboxes, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ctx = {**canary, "workspace": workspace, "outside": str(tmp_path / "outside.txt"),
           "at_root": f"/edgemeter-probe-{os.getpid()}"}
    try:
        r = sandboxes[mode].run(PRELUDE + probe.code.format(**ctx), cwd=workspace)
        assert r.output.strip(), r
        out = json.loads(r.output.strip().splitlines()[-1])
        check = probe.denied if mode == "jailed" else probe.allowed
        assert check(out, ctx), (out, r)
    finally:
        if os.path.exists(ctx["at_root"]):
            os.unlink(ctx["at_root"])


def test_there_are_at_least_fifteen_probes():
    assert len(PROBES) >= 15 and len({p.name for p in PROBES}) == len(PROBES)
