"""The catalog: the durable queue and history of every shipped file."""
