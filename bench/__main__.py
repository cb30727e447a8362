"""Run the benchmarks: ``python -m bench [NAME ...]`` from the repository root.

With no name every benchmark runs in turn with its defaults (long: see
bench/README.md); with one name, the options after it go to that benchmark,
e.g. ``python -m bench throughput_vs_sftp --files 16 --repeat 1``. ``--list``
names them. JSON lines go to stdout and tables to stderr, as when a script is
run on its own.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: in the order a full run takes them: quick and fundamental first
BENCHMARKS = {
    "throughput_vs_sftp": "loopback throughput against OpenSSH sftp; archive-wal against dd",
    "pgbackrest": "archive-push of the same segments against pgBackRest over SSH",
    "read_ahead": "archive-wal with read-ahead from pg_wal, end to end against sftp; per call",
    "live": "pgbench with logship: latency to the site, keep-up, primary overhead",
    "wan": "throughput through a shaped, delayed namespace link (root)",
    "scale": "daemon memory with 10,000 pending files; status at 1M catalog rows",
    "base_backup_vs_local": "a shipped base backup against pg_basebackup to local disk",
    "files_vs_rsync": "files connector initial sync and change latency against rsync",
    "promote_rto": "promote against a bare pg_promote",
    "switchover": "switchover write outage; reinstate by rewind and by base backup: time, bytes",
    "streaming": "streaming WAL: write penalty by RTT, exposure, loss in disaster drills",
}


def _usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {what}" for name, what in BENCHMARKS.items()]
    return "usage: python -m bench [--list] [NAME [OPTIONS...] | NAME NAME ...]\n" + "\n".join(
        lines
    )


def _run(name: str, argv: list[str]) -> int:
    # The scripts import their shared helpers as `common`, as when run directly.
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    module = importlib.import_module(name)
    print(f"[bench] {name} {' '.join(argv)}".rstrip(), file=sys.stderr, flush=True)
    started = time.monotonic()
    code = module.main(argv)
    print(f"[bench] {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return int(code or 0)


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "--list"):
        print(_usage())
        return 0
    if argv and argv[0] not in BENCHMARKS:
        print(f"unknown benchmark {argv[0]!r}\n{_usage()}", file=sys.stderr)
        return 2
    if not argv:
        chosen: list[tuple[str, list[str]]] = [(name, []) for name in BENCHMARKS]
    elif all(arg in BENCHMARKS for arg in argv):
        chosen = [(name, []) for name in argv]
    else:
        chosen = [(argv[0], argv[1:])]
    failed = [name for name, options in chosen if _run(name, options) != 0]
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
