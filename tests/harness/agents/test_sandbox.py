"""The sandbox against hostile code: every attack is contained and grades as a failure."""
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from harness.common.datasets import Task
from harness.agents.grading import grade
from harness.agents.sandbox import Limits, Sandbox

LIMITS = Limits(wall_s=3.0, cpu_s=3.0, mem_bytes=512 << 20, nproc=16)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(2, LIMITS) as sb:
        yield sb


def mbpp_task(test="assert f() == 1"):
    return Task("mbpp", "x", "", "", {"test_list": [test], "test_setup_code": "", "entry_point": "f"})


def answer(code):
    return f"```python\n{code}\ndef f():\n    return 1\n```"


def test_runs_code_and_echoes_last_expression(sandbox):
    r = sandbox.run("x = 6\nprint('hi')\nx * 7", repl=True)
    assert r.ok and r.output == "hi\n42\n"


def test_reports_exceptions_with_the_models_own_frames(sandbox):
    r = sandbox.run("def f(x):\n    return 1 / x\nf(0)")
    assert r.status == "error" and r.error.startswith("ZeroDivisionError")
    assert 'File "<sandbox>", line 2' in r.output and "sandbox_worker" not in r.output


def test_early_exit_is_not_success(sandbox):
    assert not sandbox.run("import sys; sys.exit(0)\nassert False").ok
    assert not grade(mbpp_task(), "```python\nimport os\nos._exit(0)\n```", sandbox).passed
    assert grade(mbpp_task(), answer(""), sandbox).passed


def test_infinite_loop_times_out(sandbox):
    short = Limits(wall_s=1.0, cpu_s=5.0)
    r = sandbox.run("import time\nwhile True:\n    time.sleep(0.01)", limits=short)
    assert r.status == "timeout"
    assert not grade(mbpp_task(), answer("while True:\n    pass"), sandbox, short).passed


def test_reports_the_codes_own_cpu_time(sandbox):
    busy = sandbox.run("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass")
    idle = sandbox.run("import time\ntime.sleep(0.3)")
    assert busy.ok and idle.ok
    assert 0.3 <= busy.cpu_s < busy.wall_s + 0.05  # at least the loop's own 0.3 s of CPU
    assert idle.cpu_s < 0.1 and idle.wall_s >= 0.3  # sleeping costs wall time, not CPU


def test_cpu_limit_stops_busy_code(sandbox):
    r = sandbox.run("while True:\n    pass", limits=Limits(wall_s=10.0, cpu_s=1.0))
    assert r.status == "crashed" and "limit" in r.error


def test_memory_hog_is_stopped(sandbox):
    r = sandbox.run("x = bytearray(4 << 30)")
    assert not r.ok and "MemoryError" in (r.error or "")
    assert not grade(mbpp_task(), answer("blob = ' ' * (4 << 30)"), sandbox).passed


def test_fork_bomb_is_contained(sandbox):
    r = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert not r.ok
    assert sandbox.run("print(1)").output == "1\n"  # the pool is still healthy


def test_cannot_write_outside_the_workspace(sandbox, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    target = tmp_path / "escaped.txt"
    for path in (target, Path("/work/escaped.txt")):
        r = sandbox.run(f"open({str(path)!r}, 'w').write('x')", cwd=ws)
        assert not r.ok and not path.exists()
    in_tmp = Path(tempfile.gettempdir()) / f"edgemeter-escape-{os.getpid()}"
    assert sandbox.run(f"open({str(in_tmp)!r}, 'w').write('x')", cwd=ws).ok  # the job's own empty /tmp
    assert not in_tmp.exists()
    assert sandbox.run("open('inside.txt', 'w').write('ok')", cwd=ws).ok
    assert (ws / "inside.txt").read_text() == "ok"


def test_cannot_read_the_users_home(sandbox):
    with tempfile.NamedTemporaryFile("w", dir=Path.home(), prefix=".edgemeter-secret-") as f:
        f.write("TOPSECRET")
        f.flush()
        r = sandbox.run(f"print(open({f.name!r}).read())")
        assert not r.ok and "TOPSECRET" not in r.output
        assert not grade(mbpp_task(), answer(f"assert 'TOPSECRET' in open({f.name!r}).read()"), sandbox).passed


def test_cannot_open_a_socket_to_a_listening_host_port(sandbox):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        r = sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert not r.ok and "Error" in (r.error or "")
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected


def test_background_processes_do_not_survive_the_run(sandbox, tmp_path):
    beacon = tmp_path / "beacon"
    code = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open('beacon', 'a') as f:
                f.write('.')
            time.sleep(0.02)
    os._exit(0)
time.sleep(0.3)
"""
    r = sandbox.run(code, cwd=tmp_path)
    assert r.ok and beacon.exists()
    size = beacon.stat().st_size
    time.sleep(0.5)
    assert beacon.stat().st_size == size
    assert grade(mbpp_task(), answer(code), sandbox).passed  # contained, yet graded normally


def test_isolation_is_reported(sandbox):
    assert any(name.startswith("rlimits") for name in sandbox.isolation)
    if os.geteuid() == 0:
        assert {"no_network", "pid_namespace", "private_proc", "minimal_root", "capabilities_dropped",
                "unprivileged_uid"} <= set(sandbox.isolation)


def test_refuses_when_the_jail_cannot_be_built(monkeypatch):
    from harness.agents import sandbox as sandbox_mod
    broken = dict(sandbox_mod.runtime(), ro=[*sandbox_mod.runtime()["ro"], "/nonexistent/edgemeter-runtime"])
    monkeypatch.setattr(sandbox_mod, "runtime", lambda: broken)
    refused = r"missing: minimal_root, private_proc.*--unsafe-no-sandbox"
    with pytest.raises(sandbox_mod.SandboxUnavailable, match=refused):
        Sandbox(1, LIMITS)
    with Sandbox(1, LIMITS, unsafe=True) as unsafe:  # the explicit opt-out runs, and says so
        assert unsafe.isolation == [sandbox_mod.UNSAFE]
        assert unsafe.run("print(1)").output == "1\n"


def test_code_holds_no_capabilities(sandbox):
    status = sandbox.run("print(open('/proc/self/status').read())").output
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"] == fields["CapPrm"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"


def test_code_sees_the_standard_library_only(sandbox):
    """No site-packages on the path and no editable-install finder (it points into the checkout)."""
    code = "import sys\nprint([p for p in sys.path if 'packages' in p], [repr(f) for f in sys.meta_path[3:]])\nimport yaml"
    r = sandbox.run(code)
    assert r.output.startswith("[] []\n") and r.error == "ModuleNotFoundError: No module named 'yaml'"
