"""What an SSH connection to a site trusts: its known_hosts and the private key's mode.

paramiko reads neither known_hosts markers (it rejects the whole file at an
`@revoked` or `@cert-authority` line) nor host certificates, and it uses a private
key whatever its mode. This module reads known_hosts itself: plain lines become
paramiko's host keys, `@revoked` keys are refused (for every host, whatever the
line's pattern: a revoked key is trusted nowhere), `@cert-authority` lines are kept
only to say that host certificates are not supported. A key file that group or
others may read is refused, as OpenSSH refuses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from logship.config.model import SiteConfig
from logship.errors import HostKeyRefused, SafetyRefusal


def refuse_unprotected_key(site: SiteConfig) -> None:
    """Refuse a private key that group or others may read or write (as OpenSSH does):
    anyone who can read it can log in to the site as the primary."""
    path = site.identity_file
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except (OSError, ValueError):
        return  # a missing (or unnamable) key is reported where it is opened
    if mode & 0o077:
        raise SafetyRefusal(
            f"sites.{site.name}.identity_file: {path} has mode {mode:04o}, readable beyond "
            f"its owner; a private key must be private, so it is refused (chmod 600 {path})"
        )


def host_name(site: SiteConfig) -> str:
    """The site as known_hosts names it (and paramiko looks it up)."""
    return site.host if site.port == 22 else f"[{site.host}]:{site.port}"


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):  # a hashed name: HMAC-SHA1 of the name under a salt
        try:
            _, _, salt, digest = pattern.split("|", 3)
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, binascii.Error):
            return False
    # Only * and ? are wildcards: "[host]:port" is literal (fnmatch would read a class).
    wild = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(wild, name, flags=re.IGNORECASE | re.DOTALL) is not None


def hosts_match(patterns: str, name: str) -> bool:
    """known_hosts' host field: comma-separated patterns, `!` negates and wins."""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _pattern_matches(pattern.removeprefix("!"), name):
            if negated:
                return False
            matched = True
    return matched


@dataclass
class KnownHosts:
    path: Path
    #: the plain lines, minus any key that is revoked
    keys: list[HostKeyEntry] = field(default_factory=list)
    #: revoked public keys, as their wire blobs
    revoked: set[bytes] = field(default_factory=set)
    #: host patterns of @cert-authority lines
    authorities: list[str] = field(default_factory=list)

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return key.asbytes() in self.revoked

    def has_authority_for(self, name: str) -> bool:
        return any(hosts_match(patterns, name) for patterns in self.authorities)

    def install(self, client: paramiko.SSHClient) -> None:
        keys = client.get_host_keys()
        for entry in self.keys:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)


def _key_blob(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None


def read_known_hosts(path: Path) -> KnownHosts:
    """Parse known_hosts; a line that cannot be read is skipped, as OpenSSH skips it
    (it can only make a host unknown, never trust one)."""
    known = KnownHosts(path)
    plain: list[HostKeyEntry] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            fields = line.split()
            if len(fields) < 4:
                continue
            marker, patterns, _key_type, blob_text = fields[:4]
            if marker == "@revoked":
                blob = _key_blob(blob_text)
                if blob is not None:
                    known.revoked.add(blob)
            elif marker == "@cert-authority":
                known.authorities.append(patterns)
            continue  # an unknown marker trusts nothing
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (InvalidHostKey, paramiko.SSHException, ValueError):
            continue
        if entry is not None:
            plain.append(entry)
    known.keys = [entry for entry in plain if not known.is_revoked(entry.key)]
    return known


class UnknownHostKey(paramiko.SSHException):
    """The site showed a key no plain known_hosts line holds for it."""

    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__(f"{key.get_name()} host key not found in known_hosts")
        self.key = key


class RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Like paramiko's RejectPolicy, keeping the key for the refusal's wording."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise UnknownHostKey(key)


def refusal(
    site: SiteConfig, known: KnownHosts, key: paramiko.PKey, listed: bool
) -> HostKeyRefused:
    """The one line for a host key that is not trusted; `listed` when known_hosts holds
    another key for the site (a mismatch) rather than none."""
    shown = f"{key.get_name()} {key.fingerprint}"
    address = f"{site.host}:{site.port}"
    if known.is_revoked(key):
        return HostKeyRefused(
            f"site {site.name}: host key of {address} ({shown}) is marked @revoked in "
            f"{known.path}; refusing to connect. Give the standby a new host key and add it "
            "to known_hosts after checking its fingerprint"
        )
    if listed:
        return HostKeyRefused(
            f"site {site.name}: host key of {address} does NOT match {known.path} "
            f"(got {shown}); refusing to connect. If the standby host was rebuilt, verify "
            "the new key out of band and update known_hosts"
        )
    if known.has_authority_for(host_name(site)):
        return HostKeyRefused(
            f"site {site.name}: only a @cert-authority line of {known.path} matches "
            f"{address}, and host certificates are not supported; refusing to connect. "
            f"Add the host's own key (ssh-keyscan -p {site.port} {site.host}, then check "
            f"its fingerprint: {shown})"
        )
    return HostKeyRefused(
        f"site {site.name}: {address} is not in {known.path}; refusing an unknown host key "
        f"({shown}; add it after checking its fingerprint)"
    )
