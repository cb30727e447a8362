"""A source tree as the files connector sees it: paths, types, modes, contents."""
