"""docs/reference/configuration.md and commands.md are generated from the config
models and the argument parser: a key, a default or a verb changed in the code
must show in the pages, or this fails and names the command that rewrites them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "docs" / "reference" / "generate.py"


def _generator():
    spec = importlib.util.spec_from_file_location("logship_docs_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_pages_are_fresh() -> None:
    generator = _generator()
    stale = [str(path.relative_to(ROOT)) for path in generator.stale_pages()]
    assert not stale, (
        f"{', '.join(stale)} no longer match the code: run `{generator.REGENERATE}` "
        "with the project's virtualenv and commit the result"
    )


def test_every_verb_says_where_it_runs() -> None:
    # The generator stops on a verb missing from WHERE; render it to be sure.
    text = _generator().render_commands()
    assert "### `archive-wal`" in text and "Where: " in text
