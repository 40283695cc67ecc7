"""python -m proxy [--config config.yaml] [--host H] [--port P]"""
from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from .app import create_app
from .config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgemeter", description="OpenAI-compatible proxy that measures LLM traffic.")
    p.add_argument("--config", default="config.yaml", help="YAML config (default: ./config.yaml)")
    p.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from config: 8080)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
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
                print=lambda *_: logging.getLogger("edgemeter").info("serving on http://%s:%d/v1", host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
