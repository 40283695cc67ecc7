"""python -m harness data list|fetch: the benchmark data sets, where they are and whether they verify.

  list                          each data set: verified, missing or corrupt; the file read; where it came from
  fetch [--dataset A,B]         download the missing ones (default: all) into the data folder, verified by sha256
        [--mirror URL]          from a server with the data folder's layout instead of the authors' URLs
Both take --data-dir (default $EDGEMETER_DATA, else ~/.cache/edgemeter/data).
"""
from __future__ import annotations

import argparse
import sys

from harness import data


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("list", "fetch"):
        s = sub.add_parser(name)
        s.add_argument("--data-dir", default=None, help=f"data folder (default ${data.ENV}, else the cache)")
    fetch = sub.choices["fetch"]
    fetch.add_argument("--dataset", default=",".join(data.DATASETS), help="comma-separated (default: all)")
    fetch.add_argument("--mirror", default=None, help="base URL serving the data folder's layout")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list(args.data_dir)
    failed = 0
    for name in [n.strip() for n in args.dataset.split(",") if n.strip()]:
        try:
            src = data.fetch(name, args.data_dir, args.mirror, log=lambda m: print(m, file=sys.stderr))
        except data.DataError as e:
            print(f"{name}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: ok  {src.path}  sha256 {src.sha256[:12]}")
    return 1 if failed else 0


def _list(explicit) -> int:
    print(f"data folder: {data.data_dir(explicit)}")
    for name in data.DATASETS:
        try:
            src = data.resolve(name, explicit)
        except data.DataError as e:
            print(f"{name:<11} {'corrupt' if 'sha256' in str(e) else 'missing':<8} {e}")
            continue
        print(f"{name:<11} {'ok':<8} {src.path}  source {src.origin}  sha256 {src.sha256[:12]} (pinned)")
    return 0
