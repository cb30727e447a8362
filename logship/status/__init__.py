"""Connector status: the figures of `status --json`, how a state follows from them,
and the sinks the daemon feeds them to (history, alerts, Prometheus).

What a figure means for one engine is that engine's business (`Engine.status`);
what is here holds for every engine.
"""
