"""`logship` entry point: parse arguments, run one verb, map errors to exit codes.

Kept free of heavy imports: `archive-wal` and `restore-wal` go through here once
per WAL segment. The parser is the generic verbs plus each engine's (its package's
`verbs` module); a verb's module is imported only when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from logship import __version__
from logship.errors import EXIT_FAILED, EXIT_USAGE, LogshipError

#: a verb: (the module whose run(args) runs it, one-line help, adds its arguments)
Verb = tuple[str, str, Callable[[argparse.ArgumentParser], None]]


def _no_arguments(p: argparse.ArgumentParser) -> None:
    return None


def _check(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector", nargs="?", help="only this connector")


def _site_gate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, help="the [sites.NAME] this key ships to")


def _site_receive(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")


def _status(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector", nargs="?")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.add_argument("--since", metavar="DURATION", help="worst exposure, breaches over DURATION")


def _dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=1.0, help="refresh every N seconds")


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="demo", help="sandbox folder (default: ./demo)")
    p.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="length of each write load (archive only, then streaming)",
    )


#: the verbs of every engine; each engine adds its own (`_engine_verbs`)
GENERIC_VERBS: dict[str, Verb] = {
    "check": (
        "logship.cli.check",
        "validate config, reach SSH (host key), dirs, archive and streaming settings",
        _check,
    ),
    "run": (
        "logship.cli.run",
        "the daemon at the primary site: watch, ship, schedule, measure",
        _no_arguments,
    ),
    "site-gate": (
        "logship.cli.site_gate",
        "forced command of a restricted shipping key: allow only logship's site commands",
        _site_gate,
    ),
    "site-receive": (
        "logship.cli.site_receive",
        "take new files from a restricted primary, never replacing one (site-gate runs it)",
        _site_receive,
    ),
    "status": ("logship.cli.status", "lag and RPO per connector", _status),
    "dashboard": ("logship.cli.dashboard", "live terminal view of lag and RPO", _dashboard),
    "demo": (
        "logship.cli.demo",
        "self-contained sandbox: ship, replay, lag, then a checked promote",
        _demo,
    ),
}


def _engine_verbs() -> dict[str, Verb]:
    """Each engine package's `verbs` module (stdlib only: this runs at every call)."""
    import logship.engines as package

    found: dict[str, Verb] = {}
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}.verbs"
        if not info.ispkg or importlib.util.find_spec(name) is None:
            continue
        for verb, spec in importlib.import_module(name).VERBS.items():
            if verb in GENERIC_VERBS or verb in found:
                raise RuntimeError(f"{name}: verb {verb!r} is already taken")
            found[verb] = spec
    return found


def verbs() -> dict[str, Verb]:
    """Every verb, the generic ones first, as `logship --help` lists them."""
    return {**GENERIC_VERBS, **_engine_verbs()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own exit code is 2 as well; keep the message to one line.
        self.exit(EXIT_USAGE, f"logship: {message} (see logship --help)\n")


def build_parser(all_verbs: dict[str, Verb] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="logship", description="Warm disaster-recovery standby over nothing but SSH."
    )
    parser.add_argument(
        "--config", help="path to logship.toml (default: $LOGSHIP_CONFIG or ./logship.toml)"
    )
    parser.add_argument(
        "--this-site",
        metavar="SITE",
        help="the [sites.SITE] this runs at, for connectors with [sides.*] "
        "(default: $LOGSHIP_SITE, else the site whose host is this machine's name)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    # `check` at the primary runs the site's command with --version to see that it is
    # logship, and which one.
    parser.add_argument("--version", action="version", version=f"logship {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for verb, (_module, help_text, add_arguments) in (all_verbs or verbs()).items():
        add_arguments(sub.add_parser(verb, help=help_text))
    return parser


#: verbs whose files are meant for other OS users: the demo's sandbox hands its
#: folders to the postgres user and sets their modes itself
_SHARED_FILE_VERBS = frozenset({"demo"})
#: logship's own files (state_dir, spool, catalog, locks) are for its user alone
PRIVATE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    all_verbs = verbs()
    args = build_parser(all_verbs).parse_args(argv)
    if args.verb not in _SHARED_FILE_VERBS:
        # Before anything is created: a state_dir first made by archive-wal, or a
        # catalog first made by base-backup, must not come out 0755 / 0644. Files
        # meant for others (a files connector's, a restored data dir's) get explicit modes.
        os.umask(PRIVATE_UMASK)
    # Importing a verb's modules (SQLAlchemy, pydantic, paramiko for most) makes
    # objects that live as long as the process; the cycle collector's passes
    # over them found nothing and cost a quarter of the import time (about 0.1 s).
    gc.disable()
    try:
        module = importlib.import_module(all_verbs[args.verb][0])
    finally:
        gc.enable()
    try:
        return int(module.run(args) or 0)
    except LogshipError as exc:
        if args.debug:
            raise
        print(f"logship {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an unexpected failure is still one line without --debug
        if args.debug:
            raise
        print(
            f"logship {args.verb}: unexpected error: {type(exc).__name__}: {exc} "
            "(run again with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def run() -> NoReturn:
    """The `logship` command: `main`, then an exit that skips the interpreter's teardown.

    Tearing down SQLAlchemy, pydantic and paramiko costs about 0.15 s on every call
    (measured: 0.50 s against 0.35 s for the same imports), which scripts polling
    `status --json` and a short `base-backup` pay each time. Every verb has closed
    what it opened by the time `main` returns, and logship registers no exit
    handlers, so only the output streams and logging need flushing here.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
            stream.flush()
    # Only verbs that log have imported logging; archive-wal, once per WAL segment,
    # should not pay for importing it just to shut it down.
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    os._exit(code)
