"""Configuration: `logship.toml` plus `connectors/*.toml` and `schedules/*.toml` beside it."""
