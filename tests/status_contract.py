"""The `status --json` contract (docs/reference/status-json.md), written out
independently of the code."""

IDENTITY_FIELDS = ("name", "kind", "site", "state", "rpo_target_s")
#: the measured figures: null where not measurable, never a made-up 0
MEASURED_FIELDS = (
    "rpo_exposure_s",
    "transport_lag_s",
    "apply_lag_s",
    "pending_files",
    "pending_bytes",
    "last_shipped",
    "last_applied",
    "last_base_backup_at",
)
CONTRACT_FIELDS = IDENTITY_FIELDS + MEASURED_FIELDS
