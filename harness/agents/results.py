"""Durable results: one JSON line per task attempt, appended so a killed run loses at most
the attempt in flight and a resumed run skips what is already recorded."""
from __future__ import annotations

import json
import os
from pathlib import Path

KEY_FIELDS = ("dataset", "task_id", "sample", "repeat", "mode", "network", "model")


def attempt_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Every complete line; a truncated last line (a write cut by a kill) is ignored."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    with open(p, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


class ResultsFile:
    """Appends whole lines with a single ``write`` each, then fsyncs."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_tail()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _drop_partial_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def done_keys(self) -> set[tuple]:
        return {attempt_key(r) for r in read_rows(self.path)}

    def append(self, row: dict) -> None:
        line = (json.dumps(row, separators=(",", ":"), default=str) + "\n").encode()
        n = os.write(self.fd, line)
        if n != len(line):
            raise OSError(f"short write to {self.path} ({n} of {len(line)} bytes)")
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
