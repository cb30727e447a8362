"""logship: a warm disaster-recovery standby over nothing but SSH."""

__version__ = "0.1.0"
