"""The streaming tunnel's socket acknowledges every read at once."""

from __future__ import annotations

import socket

from logship.ship.sftp import QuickAckSocket


def quick_ack_after_exchanges(wrap: bool) -> list[int]:
    """TCP_QUICKACK after each read of a request/reply exchange, as SSH does them:
    Linux leaves quick-ack mode once it sees such an interactive pattern."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        if wrap:
            client = QuickAckSocket(
                client.family, client.type, client.proto, fileno=client.detach()
            )
        peer, _ = server.accept()
        with client, peer:
            seen = []
            for _ in range(4):
                client.sendall(b"request")
                peer.recv(16)
                peer.sendall(b"reply")
                assert client.recv(16) == b"reply"
                seen.append(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
            return seen


def test_every_read_leaves_quick_acknowledgements_on() -> None:
    assert 0 in quick_ack_after_exchanges(wrap=False)  # what a plain socket does
    assert quick_ack_after_exchanges(wrap=True) == [1, 1, 1, 1]
