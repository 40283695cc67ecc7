"""One sandbox worker: isolates itself, waits for one job, runs it, exits.

Started by ``harness.agents.sandbox.Sandbox`` as ``python -I sandbox_worker.py <result_fd>``
before any job exists, so interpreter start-up and isolation set-up are off the
critical path. Stdlib only: it runs in an isolated interpreter.

Protocol (JSON lines on ``result_fd``): ``ready`` (with the isolation that applied),
``child`` (host pid of the code's process), ``result`` (written by the code's process),
``exit`` (its wait status). The job is one JSON line on stdin. Model output goes to
fd 1 and 2, which the pool reads.
"""
import ast
import ctypes
import json
import linecache
import os
import resource
import time
import sys
import traceback

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, SIGKILL = 1, 9
_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}

_libc = ctypes.CDLL(None, use_errno=True)
_unshare_fn, _mount_fn, _prctl_fn = (getattr(_libc, n, None) for n in ("unshare", "mount", "prctl"))  # Linux only
_out = None  # the result channel


def _send(**msg):
    os.write(_out, (json.dumps(msg) + "\n").encode())


def _unshare(flags):
    return _unshare_fn is not None and _unshare_fn(flags) == 0


def _mount(src, target, flags, fstype=None, data=None):
    return _mount_fn is not None and _mount_fn(src, target.encode(), fstype, flags, data) == 0


def _mounts():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            yield parts[4].replace("\\040", " "), parts[5].split(",")


def _read_only_root():
    """Make every mount read-only in this (private) mount namespace; True if all took."""
    if not _mount(b"none", "/", MS_REC | MS_PRIVATE):
        return False
    ok = True
    for target, opts in _mounts():
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for name, bit in _MOUNT_FLAGS.items():
            if name in opts:
                flags |= bit
        ok &= _mount(None, target, flags)
    return ok


def _hide_homes():
    """Cover home directories with an empty tmpfs, re-exposing only the interpreter's own
    directories that live there (a per-user Python install must stay importable)."""
    keep = {os.path.realpath(p) for p in [sys.base_prefix, sys.prefix, *sys.path] if p and os.path.isdir(p)}
    hidden = False
    for home in sorted({os.path.expanduser("~"), "/root", "/home"}):
        if not os.path.isdir(home):
            continue
        inside = sorted(p for p in keep if p.startswith(home + "/"))
        inside = [p for p in inside if not any(p.startswith(q + "/") for q in inside)]  # outermost only
        fds = [(p, os.open(p, os.O_PATH)) for p in inside]
        try:
            if not _mount(b"tmpfs", home, MS_NOSUID | MS_NODEV, b"tmpfs", b"size=64k,mode=0755"):
                continue
            for p, fd in fds:
                os.makedirs(p, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}".encode(), p, MS_BIND | MS_REC)
            hidden = True
        finally:
            for _, fd in fds:
                os.close(fd)
    return hidden


def isolate(root):
    """Apply what the OS permits; return the names of what applied."""
    applied = []
    if not root:  # an unprivileged user namespace grants the others without root
        uid, gid = os.getuid(), os.getgid()
        if _unshare(CLONE_NEWUSER):
            applied.append("userns")
            for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
                try:
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
                except OSError:
                    pass
    if _unshare(CLONE_NEWNET):
        applied.append("no_network")
    if _unshare(CLONE_NEWIPC):
        applied.append("ipc")
    if _unshare(CLONE_NEWNS):
        if _hide_homes():
            applied.append("home_hidden")
        if _read_only_root():
            applied.append("read_only_fs")
    if _unshare(CLONE_NEWPID):
        applied.append("pid_namespace")
    return applied


def _die_with_parent():
    """SIGKILL when the parent goes (a killed harness must not leave code running)."""
    if _prctl_fn is not None:
        _prctl_fn(PR_SET_PDEATHSIG, SIGKILL)


def _own_tree(path, uid):
    """Hand the workspace to the sandbox uid, never following links (nor hard links)."""
    os.chown(path, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if st.st_nlink == 1 or os.path.isdir(p):
                os.chown(p, uid, uid, follow_symlinks=False)


def _limit(job):
    for res, value in ((resource.RLIMIT_AS, job["mem_bytes"]), (resource.RLIMIT_FSIZE, job["fsize_bytes"]),
                       (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    cpu = max(1, int(job["cpu_s"] + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))  # hard = soft: SIGKILL (a PID-namespace init ignores SIGXCPU)
    if job.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (job["nproc"], job["nproc"]))


def _run_code(code, repl):
    """exec the code as ``__main__``; in REPL mode echo the last expression's value."""
    linecache.cache["<sandbox>"] = (len(code), None, code.splitlines(True), "<sandbox>")
    tree = ast.parse(code, "<sandbox>")
    tail = None
    if repl and tree.body and isinstance(tree.body[-1], ast.Expr):
        tail = ast.Expression(tree.body.pop().value)
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(tree, "<sandbox>", "exec"), scope)
    if tail is not None:
        value = eval(compile(tail, "<sandbox>", "eval"), scope)
        if value is not None:
            print(repr(value))


def _child(job):
    """The code's process: limits, privileges dropped, then the code."""
    os.chdir(job["cwd"])
    _limit(job)
    if job.get("uid") is not None:
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])
        _die_with_parent()  # a uid change clears it
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=job["cwd"], TMPDIR=job["cwd"], LANG="C.UTF-8")
    sys.argv = ["<sandbox>"]
    status = {"ok": True}
    try:
        _run_code(job["code"], job.get("repl", False))
    except SystemExit as e:  # exiting early is not success: the code did not run to its end
        status = {"ok": e.code in (None, 0) and job.get("repl", False), "error": f"SystemExit: {e.code}"}
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<sandbox>":
            tb = tb.tb_next  # show the model its own frames, not ours
        traceback.print_exception(type(e), e, tb)
        status = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    status["cpu_s"] = time.process_time()  # this child's user + system CPU: a forked process starts at 0
    _send(result=status)
    os._exit(0)


def main():
    global _out
    _out = int(sys.argv[1])
    _die_with_parent()
    root = os.geteuid() == 0
    applied = isolate(root)
    for name in ("math", "re", "itertools", "collections", "functools", "heapq", "string", "fractions",
                 "decimal", "statistics", "typing", "bisect", "datetime", "random"):
        __import__(name)  # warm the modules model code and the graders use most
    _send(ready=True, isolation=applied, root=root)
    job = json.loads(sys.stdin.readline() or "null")
    if job is None:
        return
    if "read_only_fs" in applied:  # the workspace alone stays writable
        _mount(job["cwd"].encode(), job["cwd"], MS_BIND)
        _mount(None, job["cwd"], MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    if job.get("uid") is not None:
        _own_tree(job["cwd"], job["uid"])
    pid = os.fork()
    if pid == 0:
        _die_with_parent()
        try:
            _child(job)
        finally:
            os._exit(70)
    _send(child=pid)
    _, status = os.waitpid(pid, 0)
    _send(exit=os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
