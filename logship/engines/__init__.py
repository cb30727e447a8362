"""Engines: one package per kind of protected thing (see `logship.engines.registry`).

This module imports nothing, so that an engine's stdlib-only per-segment code
(archive-wal, restore-wal) stays cheap to import.
"""
