"""One sandbox worker: builds its jail, waits for one job, runs it, exits.

Started by ``harness.agents.sandbox.Sandbox`` as ``python -I -S sandbox_worker.py <result_fd> <spec>``
before any job exists, so interpreter start-up and the jail's construction are off the
critical path. Stdlib only, no site: it must not import anything from the project.

The worker enters fresh user (when not root), network, IPC, UTS, mount and PID namespaces,
builds a minimal root on a tmpfs (the interpreter, its shared libraries and standard library
read-only, ``/dev/null``, ``/dev/urandom``, an empty ``/tmp``, an empty ``/workspace``), and
forks the code's process, which is init of the new PID namespace and mounts its own ``/proc``
there. That process waits for the job; when it arrives it binds the task's workspace on
``/workspace``, pivots into the minimal root (the host's tree is unmounted from its view),
applies the limits, drops every privilege and runs the code. The worker stays outside the PID
namespace to report the exit status.

Protocol (JSON lines on ``result_fd``): ``child`` (host pid of the code's process), ``ready``
(with the isolation that applied), ``result`` (written by the code's process), ``exit`` (its
wait status). The job is one JSON line on stdin. Model output goes to fd 1 and 2.
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

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x04000000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, SIGKILL = 1, 38, 9
_SYSCALLS = {"x86_64": {"capset": 126, "pivot_root": 155}, "aarch64": {"capset": 91, "pivot_root": 41}}
SYS = _SYSCALLS.get(os.uname().machine, {})  # no libc wrapper for these two
WORKSPACE = "/workspace"

_libc = ctypes.CDLL(None, use_errno=True)
_fns = {n: getattr(_libc, n, None) for n in ("unshare", "mount", "umount2", "prctl", "syscall")}
_out = None  # the result channel


def _send(**msg):
    os.write(_out, (json.dumps(msg) + "\n").encode())


def _call(name, *args):
    """A libc call; False when the OS lacks it or it failed."""
    fn = _fns[name]
    return fn is not None and fn(*args) == 0


def _mount(src, target, flags, fstype=None, data=None):
    return _call("mount", src, target.encode(), fstype, flags, data)


def _bind_ro(src, target):
    """Bind ``src`` (a file or directory) read-only onto ``target``, creating the mount point."""
    if os.path.isdir(src):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    return (_mount(src.encode(), target, MS_BIND | MS_REC)
            and _mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV))


def _minimal_root(new, spec):
    """Build the code's whole view of the filesystem under ``new``; True if every piece took."""
    if not (_mount(b"none", "/", MS_REC | MS_PRIVATE)
            and _mount(b"tmpfs", new, MS_NOSUID | MS_NODEV, b"tmpfs", b"size=1m,mode=0755")):
        return False
    ok = all(_bind_ro(p, new + p) for p in spec["ro"])
    for p in spec["hide"]:  # e.g. the interpreter's own site-packages: not a package tasks may import
        ok &= _mount(b"tmpfs", new + p, MS_RDONLY | MS_NOSUID | MS_NODEV, b"tmpfs", b"size=4k,mode=0555")
    for dev in ("/dev/null", "/dev/urandom"):
        os.makedirs(new + "/dev", exist_ok=True)
        open(new + dev, "a").close()
        ok &= _mount(dev.encode(), new + dev, MS_BIND) and _mount(None, new + dev, MS_REMOUNT | MS_BIND | MS_NOSUID)
    os.makedirs(new + "/tmp")
    ok &= _mount(b"tmpfs", new + "/tmp", MS_NOSUID | MS_NODEV, b"tmpfs", f"size={spec['tmp_bytes']},mode=1777".encode())
    os.makedirs(new + "/proc")
    os.makedirs(new + WORKSPACE)
    return ok and _mount(None, new, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def isolate(root, spec):
    """Apply what the OS permits; return the names of what applied."""
    applied = []
    if not root:  # an unprivileged user namespace grants the others without root
        uid, gid = os.getuid(), os.getgid()
        if _call("unshare", CLONE_NEWUSER):
            applied.append("userns")
            for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
                try:
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
                except OSError:
                    pass
    for flag, name in ((CLONE_NEWNET, "no_network"), (CLONE_NEWIPC, "ipc"), (CLONE_NEWUTS, "uts")):
        if _call("unshare", flag):
            applied.append(name)
    if _call("unshare", CLONE_NEWNS) and _minimal_root(spec["root"], spec):
        applied.append("minimal_root")
    if _call("unshare", CLONE_NEWPID):
        applied.append("pid_namespace")
    return applied


def _die_with_parent():
    """SIGKILL when the parent goes (a killed harness must not leave code running)."""
    _call("prctl", PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)


def _drop_capabilities():
    """No capabilities, nor a way back to any (setuid files, file capabilities)."""
    _call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if "capset" in SYS:
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        _call("syscall", SYS["capset"], header, (ctypes.c_uint32 * 6)())


def _own_tree(path, uid):
    """Hand the workspace to the sandbox uid, never following links (nor hard links)."""
    os.chown(path, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if st.st_nlink == 1 or os.path.isdir(p):
                os.chown(p, uid, uid, follow_symlinks=False)


def _enter_jail(new, cwd):
    """Bind the workspace in, then make the minimal root this process's ``/``: the host's tree is
    detached from its mount namespace, so no path and no ``..`` leads back to it."""
    if not (_mount(cwd.encode(), new + WORKSPACE, MS_BIND)
            and _mount(None, new + WORKSPACE, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC)):
        raise OSError(ctypes.get_errno(), "binding the workspace failed")
    os.chdir(new)
    pivoted = "pivot_root" in SYS and _call("syscall", SYS["pivot_root"], b".", b".")
    if not (pivoted and _call("umount2", b".", MNT_DETACH)):
        raise OSError(ctypes.get_errno(), "pivot_root into the minimal root failed")
    os.chdir(WORKSPACE)


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


def _child(spec, applied):
    """The code's process: its /proc, the job, the jail, limits, privileges dropped, then the code."""
    jailed = "minimal_root" in applied
    if jailed and "pid_namespace" in applied and _mount(b"proc", spec["root"] + "/proc",
                                                         MS_NOSUID | MS_NODEV | MS_NOEXEC, b"proc"):
        applied.append("private_proc")
    _send(ready=True, isolation=applied)
    job = json.loads(sys.stdin.readline() or "null")
    if job is None:
        return
    if job.get("uid") is not None:
        _own_tree(job["cwd"], job["uid"])
    if jailed:
        _enter_jail(spec["root"], job["cwd"])
    else:
        os.chdir(job["cwd"])
    if not spec["unsafe"]:
        _limit(job)
    if job.get("uid") is not None:
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])
        _die_with_parent()  # a uid change clears it
    if not spec["unsafe"]:
        _drop_capabilities()
    home = WORKSPACE if jailed else job["cwd"]
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=home, TMPDIR="/tmp", LANG="C.UTF-8")
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


def main():
    global _out
    _out = int(sys.argv[1])
    spec = json.loads(sys.argv[2])
    _die_with_parent()
    applied = [] if spec["unsafe"] else isolate(os.geteuid() == 0, spec)
    for name in ("math", "re", "itertools", "collections", "functools", "heapq", "string", "fractions",
                 "decimal", "statistics", "typing", "bisect", "datetime", "random"):
        __import__(name)  # warm the modules model code and the graders use most
    pid = os.fork()
    if pid == 0:
        _die_with_parent()
        try:
            _child(spec, applied)
        except BaseException:
            traceback.print_exc()
            os._exit(70)
        os._exit(0)
    _send(child=pid)
    _, status = os.waitpid(pid, 0)
    _send(exit=os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
