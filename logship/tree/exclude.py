"""gitignore-style exclude patterns, matched against paths relative to the source."""

from __future__ import annotations

import os
from collections.abc import Sequence


class ExcludeRules:
    def __init__(self, patterns: Sequence[str]) -> None:
        import pathspec

        try:
            self._spec = pathspec.GitIgnoreSpec.from_lines(patterns)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a gitignore-style pattern: {exc}") from None

    def excludes(self, relative: bytes, *, is_dir: bool) -> bool:
        """True when `relative` (a path below the source, as bytes) must not ship.

        Directories are matched with a trailing slash, so "cache/" excludes the
        folder and, by never descending into it, everything below it.
        """
        text = os.fsdecode(relative)
        return bool(self._spec.match_file(text + "/" if is_dir else text))
