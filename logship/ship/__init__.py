"""Shipping: moving spool files durably to the standby site."""
