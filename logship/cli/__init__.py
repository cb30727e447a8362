"""Command-line interface: one module per verb, imported only when that verb runs."""
