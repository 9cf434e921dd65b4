"""``python -m pipeline.web --db URL [--host H] [--port P] [--token T]``: serve the pages and the API.

``run_pipeline.py serve ...`` takes the same arguments (:func:`parser`, :func:`main`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common.redact import redact_url

__all__ = ["main", "parser", "serve"]

EXIT_BAD_INPUT = 2


def parser(prog: str = "python -m pipeline.web") -> argparse.ArgumentParser:
    from pipeline.web.app import TOKEN_ENV

    ap = argparse.ArgumentParser(prog=prog, description="Read-only web pages and JSON API over a store.")
    ap.add_argument(
        "--db", required=True, help="SQLAlchemy URL of the store (sqlite:///run.db, postgresql://...)"
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    ap.add_argument(
        "--token",
        default=None,
        help=f"token every request must carry (default: ${TOKEN_ENV}); required beyond 127.0.0.1",
    )
    ap.add_argument(
        "--refresh", type=float, default=3.0, help="seconds between the pages' checks for new data"
    )
    return ap


class _RedactQuery(logging.Filter):
    """Access-log lines carry the request path; ``?token=`` values are masked in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        return True


def serve(args: argparse.Namespace) -> int:
    """Check the token rule, open the store, run uvicorn until interrupted. Errors: one line, exit 2."""
    import uvicorn

    from pipeline.web.app import TOKEN_ENV, TokenRuleError, check_token_rule, create_app
    from storage.db import StoreError, open_store

    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        check_token_rule(args.host, token)
        if args.db.startswith("sqlite:///") and args.db != "sqlite:///:memory:":
            path = Path(args.db.removeprefix("sqlite:///").partition("?")[0])
            if not path.is_file():
                raise StoreError(f"no database at {redact_url(args.db)}")
        store = open_store(args.db)
    except (TokenRuleError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.getLogger("uvicorn.access").addFilter(_RedactQuery())
    app = create_app(store, token=token, db_url=args.db, refresh_s=args.refresh)
    print(f"serving {store.url} on http://{args.host}:{args.port}/ (read-only)", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        store.dispose()
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.web") -> int:
    return serve(parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
