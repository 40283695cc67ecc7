"""python -m proxy [--config config.yaml] [--host H] [--port P] [--workers N]"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from aiohttp import web

from proxy.app import create_app
from proxy.config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgemeter", description="OpenAI-compatible proxy that measures LLM traffic.")
    p.add_argument("--config", default="config.yaml", help="YAML config (default: ./config.yaml)")
    p.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from config: 8080)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--workers", type=int, default=1,
                   help="proxy processes sharing the port through SO_REUSEPORT; /metrics sums them all")
    args = p.parse_args(argv)
    if args.workers > 1 and "EDGEMETER_WORKER" not in os.environ:
        return supervise(args.workers, sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load(args.config)
        app = create_app(config)
    except ConfigError as e:
        print(f"edgemeter: config error: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:  # uvloop is Unix-only; asyncio's loop works, slower
        loop = None
    host = args.host or config.server.host
    port = args.port or config.server.port
    # handler_cancellation: a client that disconnects cancels its handler, and so the backend's work.
    web.run_app(app, host=host, port=port, handler_cancellation=True, access_log=None, loop=loop,
                reuse_port="EDGEMETER_WORKER" in os.environ,
                print=lambda *_: logging.getLogger("edgemeter").info("serving on http://%s:%d/v1", host, port))
    return 0


def supervise(workers: int, argv: list[str]) -> int:
    """Run ``workers`` copies of this command on one port: the kernel spreads new connections
    across them (SO_REUSEPORT), and prometheus-client's multiprocess mode, in a fresh
    directory, makes /metrics on any of them report the sum. Per-device link and radio
    state and cloud-mode sessions live in the worker that serves them."""
    metrics_dir = tempfile.mkdtemp(prefix="edgemeter-metrics-")
    env = {**os.environ, "EDGEMETER_WORKER": "1", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    procs = [subprocess.Popen([sys.executable, "-m", "proxy", *argv], env=env) for _ in range(workers)]

    def stop(*_):
        for proc in procs:
            proc.terminate()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return max(proc.wait() for proc in procs)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
