"""Streaming WAL to the standby through the SSH link (see docs/guide/operations.md#streaming)."""
