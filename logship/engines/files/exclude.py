"""gitignore-style exclude patterns, matched against paths relative to the source."""

from __future__ import annotations

import os
from collections.abc import Sequence


class ExcludeRules:
    def __init__(self, patterns: Sequence[str]) -> None:
        import pathspec

        try:
            spec = pathspec.GitIgnoreSpec.from_lines(patterns)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a gitignore-style pattern: {exc}") from None
        # Without a pattern (blank lines and comments are none) nothing is
        # excluded: a scan asks for every path, and asking pathspec costs more
        # than the path's lstat.
        self._spec = spec if any(p.include is not None for p in spec.patterns) else None

    def excludes(self, relative: bytes, *, is_dir: bool) -> bool:
        """True when `relative` (a path below the source, as bytes) must not ship.

        Directories are matched with a trailing slash, so "cache/" excludes the
        folder and, by never descending into it, everything below it.
        """
        if self._spec is None:
            return False
        text = os.fsdecode(relative)
        return bool(self._spec.match_file(text + "/" if is_dir else text))
