"""A small HTTP server for the metrics endpoint, bounded against idle clients.

prometheus-client's own server starts a thread per connection and waits on each
for ever: a few hundred connections that send nothing (a port scanner, a
slowloris) would each hold a thread of the daemon. Here a connection must send
its request within `timeout` seconds, and beyond `max_connections` at once a new
one is closed as soon as it is accepted, so the daemon's cost stays bounded.
"""

from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector


class BoundedMetricsServer(ThreadingHTTPServer):
    daemon_threads = True  # a request still in flight never holds up the daemon's exit

    def __init__(
        self,
        host: str,
        port: int,
        registry: Collector,
        *,
        timeout: float,
        max_connections: int,
    ) -> None:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        self.address_family = family  # IPv6 listen addresses need AF_INET6
        handler = type(
            "LogshipMetricsHandler",
            (MetricsHandler,),
            # StreamRequestHandler sets this on the socket: a client silent this
            # long gets its connection closed ("Request timed out").
            {"registry": registry, "timeout": timeout},
        )
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((sockaddr[0], port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Over the cap: closed at once, never queued behind the idle ones.
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def start_metrics_server(
    host: str, port: int, registry: Collector, *, timeout: float, max_connections: int
) -> tuple[BoundedMetricsServer, threading.Thread]:
    server = BoundedMetricsServer(
        host, port, registry, timeout=timeout, max_connections=max_connections
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread
