"""A user-space TCP relay that delays, stalls or cuts a link, for tests and benches.

This kernel has no netem, so latency is added here: every chunk read from one side
is held for `delay_s` before it is written to the other, in each direction
independently, which keeps the byte stream intact while the round trip grows by
twice the delay. The listening socket can live in another network namespace (see
testkit.netns) while connections to the target are made from the caller's,
so a site's sshd on 127.0.0.1 can be reached across a shaped veth pair.

Faults:
- `stall()`: nothing moves either way, with no error to either side (a black hole);
- `cut()`: every live connection is reset on both sides mid-stream;
- `cut_off()`: the same, and every new connection is reset at once until
  `cut_off(False)` (a site that cannot be reached at all).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from testkit.netns import enter_netns

CHUNK = 1024 * 1024
#: How long a blocked read or write waits before it looks at the relay's state again.
POLL_S = 0.1


def _in_netns(netns: str | None, make: Callable[[], socket.socket]) -> socket.socket:
    """`make()` run on a thread inside `netns`; the socket stays in that namespace."""
    if netns is None:
        return make()
    made: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            enter_netns(netns)
            made.append(make())
        except BaseException as exc:  # handed to the caller's thread below
            made.append(exc)

    thread = threading.Thread(target=run, name=f"relay-netns-{netns}")
    thread.start()
    thread.join()
    (result,) = made
    if isinstance(result, BaseException):
        raise result
    return result


def _reset(sock: socket.socket) -> None:
    """Close with a reset, not an orderly close (linger 0 sends RST instead of FIN)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Direction:
    """Chunks read from one side, each stamped with when it arrived, not yet written."""

    def __init__(self) -> None:
        self.chunks: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.cond = threading.Condition()


class _Connection:
    """One relayed connection: two directions, each with a reader and a writer."""

    def __init__(self, relay: DelayRelay, client: socket.socket, server: socket.socket) -> None:
        self.relay = relay
        self.sockets = (client, server)
        self.dead = threading.Event()
        self._finished = 0
        self._lock = threading.Lock()
        for sock in self.sockets:
            sock.settimeout(POLL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst, upstream in ((client, server, True), (server, client, False)):
            way = _Direction()
            threading.Thread(target=self._read, args=(src, way, upstream), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, way), daemon=True).start()

    def _read(self, src: socket.socket, way: _Direction, upstream: bool) -> None:
        relay = self.relay
        try:
            while not self.dead.is_set():
                if relay.stalled.is_set():
                    self.dead.wait(POLL_S)
                    continue
                try:
                    data = src.recv(CHUNK)
                except TimeoutError:
                    continue
                with way.cond:
                    while way.queued > relay.queue_limit and not self.dead.is_set():
                        way.cond.wait(POLL_S)
                    way.chunks.append((time.monotonic(), data))
                    way.queued += len(data)
                    way.cond.notify_all()
                if not data:
                    return
                relay.count(upstream, len(data))
        except OSError:
            self.kill()
        finally:
            self._done()

    def _write(self, dst: socket.socket, way: _Direction) -> None:
        relay = self.relay
        try:
            while not self.dead.is_set():
                with way.cond:
                    if not way.chunks:
                        way.cond.wait(POLL_S)
                        continue
                    stamp, data = way.chunks[0]
                wait = stamp + relay.delay_s - time.monotonic()
                if wait > 0 or relay.stalled.is_set():
                    self.dead.wait(min(wait, POLL_S) if wait > 0 else POLL_S)
                    continue
                if not data:
                    dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on
                    return
                view = memoryview(data)
                while view and not self.dead.is_set():
                    try:
                        view = view[dst.send(view) :]
                    except TimeoutError:
                        continue
                with way.cond:
                    way.chunks.popleft()
                    way.queued -= len(data)
                    way.cond.notify_all()
        except OSError:
            self.kill()
        finally:
            self._done()

    def kill(self) -> None:
        """End the connection as a cut: both sides get a reset, not an orderly close."""
        self.dead.set()

    def _done(self) -> None:
        with self._lock:
            self._finished += 1
            last = self._finished == 4
        if not last:
            return
        for sock in self.sockets:
            if self.dead.is_set():
                # Linger 0: close() sends RST instead of FIN.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self.relay.forget(self)


class DelayRelay:
    """Relays connections to `target`, listening on `listen_host` inside `netns`."""

    def __init__(
        self,
        target: tuple[str, int],
        listen_host: str = "127.0.0.1",
        netns: str | None = None,
        delay_s: float = 0.0,
        queue_limit: int = 64 * CHUNK,
    ) -> None:
        self.target = target
        self.delay_s = delay_s
        self.queue_limit = queue_limit
        self.stalled = threading.Event()
        self.refusing = threading.Event()
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._live: set[_Connection] = set()
        self._closing = threading.Event()

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((listen_host, 0))
            sock.listen(16)
            sock.settimeout(POLL_S)
            return sock

        self._listener = _in_netns(netns, listen)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refusing.is_set():
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._live.add(_Connection(self, client, server))

    def count(self, upstream: bool, n: int) -> None:
        with self._lock:
            if upstream:
                self.bytes_up += n
            else:
                self.bytes_down += n

    def forget(self, conn: _Connection) -> None:
        with self._lock:
            self._live.discard(conn)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._live)

    def stall(self, on: bool = True) -> None:
        """Hold every byte in both directions (on) or let them flow again (off)."""
        if on:
            self.stalled.set()
        else:
            self.stalled.clear()

    def cut(self) -> int:
        """Reset every live connection on both sides; returns how many there were."""
        with self._lock:
            live = list(self._live)
        for conn in live:
            conn.kill()
        return len(live)

    def cut_off(self, on: bool = True) -> None:
        """Reset every live connection and each new one (on), or let them be (off)."""
        if on:
            self.refusing.set()
            self.cut()
        else:
            self.refusing.clear()

    def close(self) -> None:
        self._closing.set()
        self._acceptor.join(5)
        self._listener.close()
        self.cut()


def main(argv: list[str] | None = None) -> int:
    """Run a relay in its own process (benches: its threads stay off the caller's GIL)."""
    parser = argparse.ArgumentParser(prog="python -m testkit.relay")
    parser.add_argument("--netns", help="namespace to listen in")
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--target", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added each way")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    relay = DelayRelay((host, int(port)), args.listen, args.netns, args.delay_ms / 1000)
    print(f"{relay.address[0]}:{relay.address[1]}", flush=True)
    # Runs until stdin closes: the parent ends it by closing the pipe (or by PID).
    sys.stdin.read()
    relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
