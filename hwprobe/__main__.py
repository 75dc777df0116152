"""``hwprobe sample`` (one JSON document), ``hwprobe run`` (the agent), ``hwprobe worker``, ``hwprobe units``,
``hwprobe dead-letters`` (the samples the server refused, kept in the spool)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from hwprobe.client import token_from


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwprobe", description="AI-server monitoring agent")
    parser.add_argument("--log-level", default=os.environ.get("HWPROBE_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sample", help="print one {inventory, sample} JSON document and exit")
    commands.add_parser("worker", help="run this machine's job worker (hwprobe worker --help)")
    commands.add_parser("units", help="write systemd units or launchd plists for the agent (hwprobe units --help)")
    dead = commands.add_parser(
        "dead-letters", help="list the samples the server refused as malformed, which the spool keeps aside"
    )
    dead.add_argument("--spool", default=None, help="spool file (default: the agent's, under $HWPROBE_STATE_DIR)")
    dead.add_argument("--json", action="store_true", help="one JSON object per sample, the sample included")
    dead.add_argument(
        "--requeue",
        nargs="*",
        type=int,
        metavar="SEQ",
        default=None,
        help="put these samples (all with no SEQ) back in the queue, for the agent to send again: after the "
        "server was upgraded or the machine's clock put right",
    )
    run = commands.add_parser("run", help="sample, spool and send to the server until stopped")
    run.add_argument(
        "--server", default=os.environ.get("HWPROBE_SERVER"), help="dashboard base URL (env HWPROBE_SERVER)"
    )
    run.add_argument("--token", default=None, help="agent token (env HWPROBE_TOKEN)")
    run.add_argument("--token-file", default=None, help="file holding the agent token (env HWPROBE_TOKEN_FILE)")
    run.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    run.add_argument("--send-every", type=float, default=10.0, help="seconds per window/sample")
    run.add_argument(
        "--spool", default=None, help="spool file (default under $HWPROBE_STATE_DIR or ~/.local/state/hwprobe/)"
    )
    run.add_argument("--spool-max", type=int, default=None, help="samples kept while offline")
    run.add_argument("--batch-max", type=int, default=100, help="samples per POST")
    run.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    run.add_argument("--backoff-base", type=float, default=1.0, help="first retry ceiling, s")
    run.add_argument("--backoff-cap", type=float, default=60.0, help="longest retry wait, s")
    run.add_argument(
        "--report-port",
        type=int,
        default=None,
        help="UDP port on 127.0.0.1 where jobs and hwprobe.report send token counts "
        "(env HWPROBE_REPORT_PORT, default 8791; 0: off)",
    )
    run.add_argument(
        "--report-socket",
        default=None,
        help="Unix socket (mode 0600) where the job worker and hwprobe.report send token counts "
        "(default $HWPROBE_STATE_DIR/report.sock; empty: off)",
    )
    run.add_argument(
        "--scrape",
        action="append",
        default=[],
        metavar="URL[=ENGINE]",
        help="a serving engine's Prometheus endpoint to scrape each interval for this "
        "machine (repeatable; ENGINE: auto, vllm, llamacpp, sglang, tgi, hwprobe)",
    )
    run.add_argument(
        "--storage-dir",
        default=os.environ.get("HWPROBE_STORAGE_DIR"),
        help="folder on the drive models load from; its sequential read speed is measured once "
        "(256 MiB scratch file, kept for 30 days) for the planner (env HWPROBE_STORAGE_DIR; "
        "default the state folder)",
    )
    run.add_argument(
        "--no-storage-probe",
        action="store_true",
        default=os.environ.get("HWPROBE_STORAGE_PROBE", "1") == "0",
        help="do not measure the storage read speed (env HWPROBE_STORAGE_PROBE=0)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        # The job worker has its own options; dispatch before argparse.
        from hwprobe.worker import main as worker_main

        return worker_main(argv[1:])
    if argv and argv[0] == "units":
        from hwprobe.units import main as units_main

        return units_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s hwprobe %(levelname)s %(message)s"
    )
    if args.command == "sample":
        from hwprobe.agent import sample_once

        json.dump(sample_once(), sys.stdout, separators=(",", ":"))
        sys.stdout.write("\n")
        return 0
    if args.command == "dead-letters":
        return _dead_letters(args.spool, args.json, args.requeue)
    if not args.server:
        print("hwprobe run: --server (or HWPROBE_SERVER) is required", file=sys.stderr)
        return 2
    try:
        token = token_from(args.token, args.token_file)
    except OSError as err:
        print(f"hwprobe run: cannot read the token file: {err}", file=sys.stderr)
        return 2
    if not token:
        print("hwprobe run: --token, --token-file, HWPROBE_TOKEN or HWPROBE_TOKEN_FILE is required", file=sys.stderr)
        return 2
    from hwprobe.agent import run_agent
    from hwprobe.channel import port_from_env

    for spec in args.scrape:
        if not spec.startswith(("http://", "https://")):
            print(f"hwprobe run: --scrape needs an http(s) URL, not {spec!r}", file=sys.stderr)
            return 2

    return run_agent(
        args.server,
        token,
        interval_s=args.interval,
        send_every_s=args.send_every,
        spool_path=args.spool,
        spool_max=args.spool_max,
        batch_max=args.batch_max,
        backoff_base_s=args.backoff_base,
        backoff_cap_s=args.backoff_cap,
        timeout_s=args.timeout,
        report_port=port_from_env() if args.report_port is None else args.report_port,
        scrape=args.scrape,
        report_socket=args.report_socket,
        storage_dir=args.storage_dir,
        measure_storage=not args.no_storage_probe,
    )


def _dead_letters(path: str | None, as_json: bool, requeue: list[int] | None = None) -> int:
    """Print the spool's dead letters: when, which seq and the server's reason (or everything, as
    JSON); or put them back in the queue (``requeue``: the seqs, empty for all)."""
    from datetime import datetime

    from hwprobe.spool import Spool, default_path

    spool_file = Path(path) if path else default_path()
    if not spool_file.exists():
        print(f"hwprobe dead-letters: no spool at {spool_file} (--spool names another)", file=sys.stderr)
        return 2
    spool = Spool(spool_file)  # the running agent may hold it too: SQLite serialises the two
    try:
        if requeue is not None:
            return _requeue(spool, spool_file, requeue)
        letters = spool.dead_letters()
    finally:
        spool.close()
    for letter in letters:
        if as_json:
            print(json.dumps(letter, separators=(",", ":")))
        else:
            at = datetime.fromtimestamp(letter["at"]).astimezone().isoformat(timespec="seconds")
            print(f"{at}  seq {letter['seq']}  {letter['error']}")
    if not as_json:
        print(f"{len(letters)} sample(s) set aside in {spool_file}", file=sys.stderr)
    return 0


def _requeue(spool, spool_file: Path, seqs: list[int]) -> int:
    moved = spool.requeue(seqs or None)
    unknown = sorted(set(seqs) - set(moved))
    if unknown:
        listed = ", ".join(str(s) for s in unknown)
        print(f"hwprobe dead-letters: no sample set aside with seq {listed} in {spool_file}", file=sys.stderr)
    if moved:
        print(
            f"{len(moved)} sample(s) put back in the queue of {spool_file} (seq {', '.join(str(s) for s in moved)}); "
            "the agent sends them with its next batch, and sets aside again any the server still refuses",
            file=sys.stderr,
        )
    elif not seqs:
        print(f"no sample set aside in {spool_file}", file=sys.stderr)
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
