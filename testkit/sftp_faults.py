"""An SFTP subsystem that answers some requests with odd errors, for fault tests.

sshd runs it as its `Subsystem sftp` in place of the real server. It starts
OpenSSH's own sftp-server and passes every packet through, except the requests a
rule picks: those get a STATUS reply with the rule's code instead, and never
reach the real server. Rules are JSON (a list of objects):

    {"op": "WRITE" | "OPEN" | ... | "posix-rename@openssh.com" | ...,
     "after": n, "times": k, "code": c, "message": "..."}

A rule answers the matching requests numbered n .. n+k-1, counted across every
session (sshd starts one of these per connection) in a state file next to the rules.

    python sftp_faults.py RULES.json [SFTP_SERVER]

sshd runs it as the login user, who may not be able to enter this checkout, so
`subsystem_command` copies this file (standard library only) beside the rules.
"""

from __future__ import annotations

import fcntl
import json
import shlex
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
REQUESTS = {
    3: "OPEN", 4: "CLOSE", 5: "READ", 6: "WRITE", 7: "LSTAT", 8: "FSTAT", 9: "SETSTAT",
    10: "FSETSTAT", 11: "OPENDIR", 12: "READDIR", 13: "REMOVE", 14: "MKDIR", 15: "RMDIR",
    16: "REALPATH", 17: "STAT", 18: "RENAME", 19: "READLINK", 20: "SYMLINK",
}  # fmt: skip
EXTENDED = 200
STATUS = 101


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_packet(stream: BinaryIO) -> bytes | None:
    """One whole packet (length prefix included), or None at the end of the stream."""
    head = _read_exact(stream, 4)
    if head is None:
        return None
    body = _read_exact(stream, struct.unpack(">I", head)[0])
    return None if body is None else head + body


def request_name(packet: bytes) -> str | None:
    """The request's name as rules spell it: its type, or an extension's own name."""
    kind = packet[4]
    if kind == EXTENDED and len(packet) >= 13:
        (length,) = struct.unpack(">I", packet[9:13])
        return packet[13 : 13 + length].decode("ascii", "replace")
    return REQUESTS.get(kind)


def status_reply(request_id: int, code: int, message: str) -> bytes:
    text = message.encode()
    body = struct.pack(">BII", STATUS, request_id, code)
    body += struct.pack(">I", len(text)) + text + struct.pack(">I", 0)
    return struct.pack(">I", len(body)) + body


class Rules:
    def __init__(self, path: Path) -> None:
        self.rules: list[dict[str, object]] = json.loads(path.read_text())
        self.state = path.with_name(path.name + ".state")

    def pick(self, name: str) -> dict[str, object] | None:
        """The rule that answers this request, counting it under a lock."""
        matching = [i for i, rule in enumerate(self.rules) if rule["op"] == name]
        if not matching:
            return None
        with open(self.state, "a+") as state:
            fcntl.flock(state, fcntl.LOCK_EX)
            state.seek(0)
            counts: dict[str, int] = json.loads(state.read() or "{}")
            fired = None
            for i in matching:
                rule = self.rules[i]
                seen = counts.get(str(i), 0)
                counts[str(i)] = seen + 1
                after, times = int(rule.get("after", 0)), int(rule.get("times", 1))
                if fired is None and after <= seen < after + times:
                    fired = rule
            state.seek(0)
            state.truncate()
            state.write(json.dumps(counts))
        return fired


def subsystem_command(rules: Path) -> str:
    """sshd's `Subsystem sftp` command for this proxy with `rules`, run from a copy
    of this file beside them (where the login user can read it)."""
    script = rules.with_name("sftp_faults.py")
    shutil.copyfile(__file__, script)
    script.chmod(0o644)
    return shlex.join([sys.executable, str(script), str(rules)])


def main(argv: list[str]) -> int:
    rules = Rules(Path(argv[0]))
    server = subprocess.Popen(
        [argv[1] if len(argv) > 1 else SFTP_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert server.stdin is not None and server.stdout is not None
    client_in, client_out = sys.stdin.buffer, sys.stdout.buffer
    out_lock = threading.Lock()

    def replies() -> None:
        assert server.stdout is not None
        while (packet := read_packet(server.stdout)) is not None:
            with out_lock:
                client_out.write(packet)
                client_out.flush()

    pump = threading.Thread(target=replies, daemon=True)
    pump.start()
    while (packet := read_packet(client_in)) is not None:
        name = request_name(packet)
        rule = rules.pick(name) if name is not None else None
        if rule is None:
            server.stdin.write(packet)
            server.stdin.flush()
            continue
        (request_id,) = struct.unpack(">I", packet[5:9])
        reply = status_reply(request_id, int(rule["code"]), str(rule.get("message", "odd")))
        with out_lock:
            client_out.write(reply)
            client_out.flush()
    server.stdin.close()
    pump.join(10)
    return server.wait(10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
