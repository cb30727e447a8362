"""Standby side: restore-wal, standby restore, promote."""
