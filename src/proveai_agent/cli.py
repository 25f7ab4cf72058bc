"""The `proveai-agent` command line: serve, demo, simulate, stack, backup and bundle."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .config import load


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8470)")
    parser.add_argument("--data-dir", type=Path, help="where the database lives")
    parser.add_argument("--prometheus", help="Prometheus base URL to read metrics from")
    parser.add_argument("--victoriametrics", help="VictoriaMetrics base URL (long ranges)")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--keys-file", type=Path, help="API keys file, re-read when it changes")
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve HTTPS with this PEM certificate (re-read when it changes); needs --tls-key",
    )
    parser.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the certificate's unencrypted PEM key"
    )
    parser.add_argument(
        "--scrape-interval", type=float, help="seconds between detection cycles"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])


def build_parser() -> argparse.ArgumentParser:
    from .simulate import runner
    from .stack import check, render

    parser = argparse.ArgumentParser(prog="proveai-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the agent daemon")
    _serve_arguments(serve)

    demo = commands.add_parser(
        "demo", help="agent, native Prometheus and VictoriaMetrics, simulator and console"
    )
    demo.add_argument("--data-dir", type=Path, help="demo data (default: DATA_DIR/demo)")
    demo.add_argument("--listen", help="HOST:PORT for the agent (default 127.0.0.1:8470)")
    demo.add_argument(
        "--inject",
        default="latency",
        choices=["latency", "errors", "none"],
        help="fault the simulator injects (default latency)",
    )
    demo.add_argument(
        "--at",
        type=float,
        default=90.0,
        help="seconds after start when the fault begins (default 90)",
    )
    demo.add_argument(
        "--scrape-interval",
        type=float,
        default=5.0,
        help="seconds between scrapes and detection cycles (default 5: a first panel sooner)",
    )
    demo.add_argument("--rate", type=float, default=4.0, help="simulated requests per second")
    demo.add_argument(
        "--no-console",
        action="store_true",
        help="run headless and print where the agent listens",
    )
    demo.add_argument("--keep", action="store_true", help="keep the previous demo's data")
    demo.add_argument(
        "--config", type=Path, help="TOML configuration of the agent (default: its defaults)"
    )

    simulate = commands.add_parser("simulate", help="send simulated GenAI traffic over OTLP")
    runner.add_arguments(simulate)

    stack = commands.add_parser("stack", help="the telemetry stack in stack/")
    stack_commands = stack.add_subparsers(dest="stack_command", required=True)
    render_parser = stack_commands.add_parser("render", help="turn stack/.env into envoy.yaml")
    render.add_arguments(render_parser)
    check_parser = stack_commands.add_parser(
        "check", help="probe the stack: live profile, what is missing, time to first metric"
    )
    check.add_arguments(check_parser)

    report = commands.add_parser("report", help="the compliance report of a period (Markdown)")
    report.add_argument("--from", dest="since", required=True, help="YYYY-MM-DD or RFC 3339")
    report.add_argument("--to", dest="until", required=True, help="YYYY-MM-DD or RFC 3339")
    report.add_argument("--data-dir", type=Path, help="the agent's data directory")
    report.add_argument("--config", type=Path, help="the agent's TOML configuration")
    report.add_argument("--out", type=Path, help="file to write (default: stdout)")

    audit = commands.add_parser("audit", help="check or export the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    for name, text in (
        ("verify", "walk the hash chain; exit 1 and name the first broken record"),
        ("export", "write every record as JSON lines, with the chain"),
    ):
        sub = audit_commands.add_parser(name, help=text)
        sub.add_argument("--data-dir", type=Path, help="the agent's data directory")
        if name == "export":
            sub.add_argument("--out", type=Path, help="file to write (default: stdout)")

    backup = commands.add_parser(
        "backup", help="a consistent copy of the database, taken while the agent runs"
    )
    backup.add_argument("out", type=Path, help="the file to write; it must not exist")
    backup.add_argument("--data-dir", type=Path, help="the agent's data directory")
    backup.add_argument("--config", type=Path, help="the agent's TOML configuration")

    from . import bundle

    bundle_parser = commands.add_parser(
        "bundle", help="one archive with everything an offline site installs from"
    )
    bundle.add_arguments(bundle_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        from .simulate import runner

        return runner.run(args)
    if args.command == "stack":
        from .stack import check, render

        if args.stack_command == "check":
            return check.run(args)
        return render.run(args)
    if args.command == "audit":
        return asyncio.run(_audit(args))
    if args.command == "report":
        return asyncio.run(_report(args))
    if args.command == "backup":
        return _backup(args)
    if args.command == "bundle":
        from . import bundle

        return bundle.run(args)
    if args.command == "demo":
        from .demo import run_demo

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return run_demo(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A metrics source that is down is reported once by the watcher; the HTTP library's own
    # retry warnings would repeat it every cycle.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    return _serve(args)


async def _report(args: argparse.Namespace) -> int:
    from . import report
    from .store import db
    from .store.audit import AuditStore
    from .store.report import ReportStore

    try:
        since, until = report.parse_day(args.since), report.parse_day(args.until)
        config = load(args.config, data_dir=args.data_dir)
    except (OSError, ValueError) as exc:
        print(f"proveai-agent report: {exc}", file=sys.stderr)
        return 2
    if until <= since:
        print("proveai-agent report: --to must come after --from", file=sys.stderr)
        return 2
    if not config.db_path.exists():
        print(f"proveai-agent report: no database at {config.db_path}", file=sys.stderr)
        return 2
    conn = await db.connect(config.db_path)
    try:
        await db.migrate(conn)
        figures = ReportStore(conn)
        since_ns, until_ns = int(since * 1e9), int(until * 1e9)
        text = report.render(
            since,
            until,
            await figures.requests(since_ns, until_ns),
            await figures.spans(since_ns, until_ns),
            await figures.scores(since_ns, until_ns),
            await figures.cases(since, until),
            await AuditStore(conn, conn).head(),
            config,
        )
    finally:
        await conn.close()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


def _backup(args: argparse.Namespace) -> int:
    """Copy the database; print what was written as JSON. Exit 1 when the copy fails its
    integrity check (it is kept, to look into), 2 when nothing was written."""
    import sqlite3

    from .store.backup import backup

    try:
        config = load(args.config, data_dir=args.data_dir)
        copy = backup(config.db_path, args.out)
    except (OSError, ValueError, sqlite3.Error) as exc:
        print(f"proveai-agent backup: {exc}", file=sys.stderr)
        return 2
    doc = {
        "backup": str(copy.path),
        "bytes": copy.bytes,
        "schema_version": copy.schema_version,
        "integrity": copy.integrity,
    }
    print(json.dumps(doc))
    return 0 if copy.integrity == "ok" else 1


async def _audit(args: argparse.Namespace) -> int:
    from .audit import AuditLog
    from .config import default_data_dir
    from .store import db
    from .store.audit import AuditStore

    data_dir = args.data_dir or default_data_dir()
    path = Path(data_dir) / "proveai.db"
    if not path.exists():
        print(f"proveai-agent audit: no database at {path}", file=sys.stderr)
        return 2
    conn = await db.connect(path)
    try:
        async with conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit'"
        ) as cur:
            row = await cur.fetchone()
        if not row or not row[0]:
            print(f"proveai-agent audit: {path} has no audit log yet", file=sys.stderr)
            return 2
        log = AuditLog(AuditStore(conn, conn), Path(data_dir))
        if args.audit_command == "verify":
            verdict = await log.store.verify()
            print(json.dumps(verdict.to_dict()))
            return 0 if verdict.ok else 1
        if args.out is None:
            await log.export(sys.stdout)
        else:
            # A command-line run: nothing else waits on this event loop.
            with open(args.out, "w", encoding="utf-8") as out:  # noqa: ASYNC230
                count = await log.export(out)
            print(f"{count} records written to {args.out}", file=sys.stderr)
        return 0
    finally:
        await conn.close()


def _serve(args: argparse.Namespace) -> int:
    from .agent import serve
    from .api.auth import ensure_keys_file
    from .api.tls import server_context

    try:
        config = load(
            args.config,
            listen=args.listen,
            data_dir=args.data_dir,
            prometheus_url=args.prometheus,
            victoriametrics_url=args.victoriametrics,
            keys_file=args.keys_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            scrape_interval_s=args.scrape_interval,
        )
        if config.tls_cert is not None and config.tls_key is not None:
            server_context(config.tls_cert, config.tls_key)
    except (OSError, ValueError) as exc:
        print(f"proveai-agent: {exc}", file=sys.stderr)
        return 2
    if not config.api_keys:
        # Without any key the agent would refuse everything: make sure one exists.
        if config.keys_file is None:
            config.keys_file = Path(config.data_dir) / "keys"
        if not config.keys_file.exists():
            ensure_keys_file(config.keys_file)
            logging.getLogger("proveai_agent").info(
                "created the keys file %s with one operator key", config.keys_file
            )

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        await serve(config)

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(run())
    return 0
