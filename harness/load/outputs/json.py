"""NAME.json: the whole run (command, machine, configuration, every benchmark's metrics and,
with --save-detailed, every request); what ``compare`` reads."""
from __future__ import annotations

import json
from pathlib import Path


def write(out: Path, name: str, doc: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path
