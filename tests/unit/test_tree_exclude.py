"""Exclude rules: what pathspec decides, with no pattern meaning nothing excluded."""

from __future__ import annotations

import os

import pathspec
import pytest

from logship.engines.files.exclude import ExcludeRules

PATHS = [
    (b"app.conf", False),
    (b"run.tmp", False),
    (b"cache", True),
    (b"cache/x.bin", False),
    (b"bin/keep", False),
    (b"\xff\xfe odd name", False),
    (b"# not a comment", False),
]


@pytest.mark.parametrize(
    "patterns",
    [[], ["", "# only a comment"], ["!keep"], ["*.tmp", "cache/"], ["*", "!keep"]],
    ids=["none", "blank-and-comment", "negation-only", "usual", "all-but"],
)
def test_rules_decide_as_pathspec_does(patterns: list[str]) -> None:
    rules = ExcludeRules(patterns)
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    for path, is_dir in PATHS:
        text = os.fsdecode(path) + ("/" if is_dir else "")
        assert rules.excludes(path, is_dir=is_dir) == spec.match_file(text), (patterns, path)


def test_a_bad_pattern_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="not a gitignore-style pattern"):
        ExcludeRules(["ends-in-a-backslash\\"])
