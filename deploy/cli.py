"""The `aibroker` command: serve the broker, query the log with SQL, inspect the log, export bills."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from deploy.paths import default_data_dir

# Arrow's default pool (mimalloc) kept ~70 MiB of start-up reads resident (a 3e6-event log: 166 MiB
# after the rebuild, 97 MiB with the system allocator, whose freed pages a trim gives back). Only an
# environment variable reaches Arrow's C++ default pool, so it is set before anything loads pyarrow.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


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


def _export_refused(message: str) -> int:
    print(f"aibroker export: {message}", file=sys.stderr)
    return 2


def _reprice_prices(path: str) -> dict[str, dict[str, int | None]]:
    """PRICES.yml `models: {"provider/model": {input: "0.15", output: "0.60", cached: "0.075"}}` (USD
    per 1M tokens) → micro-USD per 1M tokens, exactly. Raises `SettingsError` naming the bad entry."""
    import yaml

    from deploy.settings import SettingsError, usd_per_mtok

    try:
        doc = yaml.safe_load(Path(path).expanduser().read_text())
    except FileNotFoundError:
        raise SettingsError(f"--reprice {path!r}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"--reprice {path!r}: not a readable YAML file ({exc})") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict) or not models:
        raise SettingsError(f"--reprice {path!r}: expected 'models: {{\"provider/model\": {{input, output, cached}}}}'")
    out: dict[str, dict[str, int | None]] = {}
    for key, spec in models.items():
        where = f"{path} models[{key!r}]"
        if not isinstance(spec, dict) or spec.get("input") is None or spec.get("output") is None:
            raise SettingsError(f"{where}: needs 'input' and 'output' prices (USD per 1M tokens)")
        extra = sorted(set(spec) - {"input", "output", "cached"})
        if extra:
            raise SettingsError(f"{where}: unknown fields {extra} (allowed: input, output, cached)")
        out[str(key)] = {f: usd_per_mtok(spec.get(f), f"{where}.{f}") for f in ("input", "output", "cached")}
    return out


def _print_reprice(args: argparse.Namespace) -> int:
    from deploy.settings import SettingsError
    from eventlog.billing import usd
    from eventlog.reprice import reprice

    try:
        prices = _reprice_prices(args.reprice)
    except SettingsError as exc:
        return _export_refused(str(exc))
    rows = reprice(args.data_dir, args.period, prices, contexts=args.context)
    table = [(r.context, r.requests, r.repriced_requests, r.old_micros, r.new_micros, r.diff_micros,
              usd(r.diff_micros)) for r in rows]
    old, new = sum(r.old_micros for r in rows), sum(r.new_micros for r in rows)
    table.append(("(total)", sum(r.requests for r in rows), sum(r.repriced_requests for r in rows),
                  old, new, new - old, usd(new - old)))
    _print_table(["context", "requests", "repriced", "old_micros", "new_micros", "diff_micros", "diff_usd"], table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from eventlog.billing import BadPeriod, export, period_bounds
    from eventlog.billing_formats import BadFormat

    try:
        period_bounds(args.period)
    except BadPeriod as exc:
        return _export_refused(str(exc))
    if not Path(args.data_dir).expanduser().is_dir():
        return _export_refused(f"--data-dir {args.data_dir!r}: no such directory (no event log there)")
    if args.reprice is not None:
        if args.ip or args.format or args.out:
            return _export_refused("--reprice takes only --period, --context and --data-dir")
        return _print_reprice(args)
    if not args.format or not args.out:
        return _export_refused("--format and --out are required (or --reprice PRICES.yml)")
    try:
        manifest = export(args.data_dir, args.out, args.period, args.format, contexts=args.context, ips=args.ip)
    except (BadFormat, OSError) as exc:
        return _export_refused(str(exc))
    totals = manifest["totals"]
    print(f"{args.period}: {totals['line_items']} line items, {totals['requests']} requests, "
          f"{totals['cost_usd']} USD ({totals['unpriced_requests']} unpriced), log position {manifest['position']}")
    for name, meta in manifest["files"].items():
        print(f"  {Path(args.out) / name}  rows {meta['rows']}  sha256 {meta['sha256']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deploy.serve import main as serve_main

    if not args.no_tcp:
        args.tcp = [f"rest={args.host}:{args.port}"] + ([f"rpc={args.admin}"] if args.admin != "off" else []) + args.tcp
    args.sockets = not args.no_sockets
    return serve_main(args)


def cmd_config_check(args: argparse.Namespace) -> int:
    from deploy.settings import SettingsError, effective_config, load_config

    try:
        config = load_config()
    except SettingsError as exc:
        print(f"aibroker config check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(effective_config(config), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aibroker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-dir", default=str(default_data_dir()),
                      help="event log directory (env AIBROKER_DATA_DIR)")

    serve = sub.add_parser("serve", help="run the broker: Unix sockets (rest, web_v1, rpc, ui) and TCP")
    serve.add_argument("--host", default="127.0.0.1", help="TCP host of the OpenAI API (rest)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port of the OpenAI API (rest)")
    serve.add_argument("--admin", default="127.0.0.1:8081", help="HOST:PORT of the admin JSON-RPC over TCP, or 'off'")
    serve.add_argument("--tcp", action="append", default=[], metavar="SURFACE=HOST:PORT",
                       help="another TCP listener (surfaces: rest, web_v1, rpc, ui); repeatable")
    serve.add_argument("--no-tcp", action="store_true", help="no TCP listeners but those given with --tcp")
    serve.add_argument("--no-sockets", action="store_true", help="no Unix sockets")
    serve.add_argument("--socket-dir", help="socket folder (default $HERO_SOCKET_DIR/hero_aibroker)")
    serve.add_argument("--fake", action="store_true", help="route to the built-in fake upstream (no keys needed)")
    serve.add_argument("--fake-url", help="use an already running fake upstream at this URL (benchmarks)")
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                       help="default: LOG_LEVEL or warning")
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="settings")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the environment and modelsconfig.yml; print them, secrets masked")
    check.set_defaults(func=cmd_config_check)

    sql = sub.add_parser("sql", parents=[data], help="run one read-only SELECT over the event log")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument("--max-rows", type=int, default=10_000)
    sql.set_defaults(func=cmd_sql)

    export = sub.add_parser("export", parents=[data], help="export a period's bill, or reprice it (--reprice)")
    export.add_argument("--period", required=True, help="YYYY-MM (a UTC month) or YYYY-MM-DD (a UTC day)")
    export.add_argument("--context", action="append", help="only this context (repeatable)")
    export.add_argument("--ip", action="append", help="only this ip (repeatable)")
    export.add_argument("--format", choices=["csv", "jsonl", "parquet", "cloudevents"])
    export.add_argument("--out", help="directory for items.*, totals.* and manifest.json")
    export.add_argument("--reprice", metavar="PRICES.yml",
                        help="print old vs new cost per context at these prices instead of exporting")
    export.set_defaults(func=cmd_export)

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
