"""The files connector's CLI verbs, as `logship.cli.main` adds them to its parser.

Read at every call of `logship`: the standard library's argparse only. A verb's
own module (under `logship.engines.files.cli`) is imported only when it runs.
"""

from __future__ import annotations

import argparse


def _verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")


def _tree_digest(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")


def _tree_receive(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument(
        "--no-sweep",
        action="store_true",
        help="leave stale temps alone (another receiver of the connection sweeps them)",
    )


_CLI = "logship.engines.files.cli"

# verb -> (the module whose run(args) runs it, one-line help, adds its arguments)
VERBS = {
    "verify": (
        f"{_CLI}.verify",
        "compare a files connector's source with the site's copy, report drift",
        _verify,
    ),
    "tree-digest": (
        f"{_CLI}.tree_digest",
        "list a files connector's copy at the site with sha256 (for verify)",
        _tree_digest,
    ),
    "tree-receive": (
        f"{_CLI}.tree_receive",
        "land a files connector's batches at the site (the daemon runs it)",
        _tree_receive,
    ),
}
