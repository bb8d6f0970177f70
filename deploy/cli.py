"""The `aibroker` command: serve the broker, query the log with SQL, inspect the log."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from deploy.paths import default_data_dir


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _print_table(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def cmd_sql(args: argparse.Namespace) -> int:
    from eventlog.sql import SqlRefused, query

    try:
        columns, rows, truncated = query(args.data_dir, args.query, max_rows=args.max_rows)
    except SqlRefused as exc:
        print(f"aibroker sql: refused: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif args.format == "json":
        for row in rows:
            print(json.dumps({c: _jsonable(v) for c, v in zip(columns, row)}))
    else:
        _print_table(columns, rows)
    if truncated:
        print(f"aibroker sql: output cut at {args.max_rows} rows (--max-rows)", file=sys.stderr)
    return 0


def cmd_log_stats(args: argparse.Namespace) -> int:
    from eventlog.stats import log_stats

    print(json.dumps(log_stats(args.data_dir), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deploy.serve import main as serve_main

    return serve_main(args.host, args.port, args.fake, args.log_level, args.fake_url,
                      None if args.admin == "off" else args.admin)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aibroker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-dir", default=str(default_data_dir()),
                      help="event log directory (env AIBROKER_DATA_DIR)")

    serve = sub.add_parser("serve", help="run the broker (OpenAI API on TCP)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--fake", action="store_true", help="route to the built-in fake upstream (no keys needed)")
    serve.add_argument("--admin", default="127.0.0.1:8081", help="HOST:PORT of the admin JSON-RPC, or 'off'")
    serve.add_argument("--fake-url", help="use an already running fake upstream at this URL (benchmarks)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    sql = sub.add_parser("sql", parents=[data], help="run one read-only SELECT over the event log")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument("--max-rows", type=int, default=10_000)
    sql.set_defaults(func=cmd_sql)

    log = sub.add_parser("log", help="inspect the event log")
    log_sub = log.add_subparsers(dest="log_command", required=True)
    stats = log_sub.add_parser("stats", parents=[data], help="events per kind, files, bytes, span")
    stats.set_defaults(func=cmd_log_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
