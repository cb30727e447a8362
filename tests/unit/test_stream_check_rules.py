"""Streaming's check at the primary, without a server: the site's stream-check
answer crosses the site boundary and is taken field by field or not at all, and
each replication setting that would stop streaming fails with its fix."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from factories import postgres_connector

from logship.checks import CheckStatus
from logship.engines.postgresql.streaming.check import (
    SlotFacts,
    StreamPrimary,
    TunnelProbe,
    check_replication_role,
    check_replication_slots,
    check_slot_bound,
    check_stream_login,
    check_stream_password,
    check_sync_control,
    check_wal_senders,
    hba_line,
)
from logship.engines.postgresql.streaming.probe import (
    BadAnswer,
    StreamAnswer,
    parse_answer,
    passfile_problem,
)

SYSTEMID = 7716629568773198463
GOOD = {"systemid": str(SYSTEMID), "timeline": 1, "xlogpos": "0/1742108", "needs_password": True}


def line(**changes: object) -> bytes:
    return (json.dumps({**GOOD, **changes}) + "\n").encode()


def test_a_good_answer_is_taken() -> None:
    answer = parse_answer(line())
    assert answer == StreamAnswer(SYSTEMID, 1, "0/1742108", True)


@pytest.mark.parametrize(
    "out",
    [
        b"",
        b"\n",
        b"not json\n",
        line() + line(),  # two lines
        b"[1, 2]\n",
        b'"text"\n',
        line()[:-2] + b" " * 5000 + b"}\n",  # too long
        b"\xff\xfe" + line(),  # not UTF-8
        line(systemid=SYSTEMID),  # a number, not a string
        line(systemid="12a4"),
        line(systemid="-1"),
        line(systemid="1" * 21),
        line(systemid=str(1 << 64)),
        line(systemid=""),
        line(timeline=True),
        line(timeline=0),
        line(timeline=-1),
        line(timeline=1 << 32),
        line(timeline="1"),
        line(timeline=1.0),
        line(xlogpos="0/1742108; drop table x"),
        line(xlogpos="0/17421080A"),
        line(xlogpos="0-1742108"),
        line(xlogpos="0/1742108\n"),
        line(needs_password="false"),
        line(needs_password=0),
        line(needs_password=None),
        line(extra="x"),
        json.dumps({k: v for k, v in GOOD.items() if k != "xlogpos"}).encode(),
        b'{"systemid": "1", "systemid": "2", "timeline": 1, "xlogpos": "0/1", '
        b'"needs_password": true}\n',  # a key twice
        b'{"systemid": "1", "timeline": NaN, "xlogpos": "0/1", "needs_password": true}\n',
        b'{"error": ""}\n',
        b'{"error": 5}\n',
        json.dumps({"error": "x" * 5000}).encode(),
        json.dumps({"error": "x", "systemid": "1"}).encode(),
        b"[" * 3000 + b"]" * 3000,
        b"[" * 2000 + b"]" * 2000,  # within the size, past the parser's depth
    ],
)
def test_a_garbled_or_hostile_answer_is_refused(out: bytes) -> None:
    with pytest.raises(BadAnswer):
        parse_answer(out)


def test_an_error_from_the_site_is_escaped_before_it_is_shown() -> None:
    answer = parse_answer(json.dumps({"error": "FATAL:\x1b[2J\x1b]0;owned\x07 no"}).encode())
    assert answer.error is not None and "\x1b" not in answer.error and "\x07" not in answer.error


# -- judging the answer ---------------------------------------------------------------------

CONNECTOR = postgres_connector(
    "main",
    primary={"dsn": "host=127.0.0.1 port=5432"},
    streaming={"enabled": True, "synchronous": True, "max_slot_wal_keep": "1GB"},
)


def test_a_tunnel_that_leads_to_another_postgresql_fails() -> None:
    probe = TunnelProbe(StreamAnswer(SYSTEMID + 1, 1, "0/1", True), None)
    result, answer = check_stream_login("stream-login main", probe, SYSTEMID, CONNECTOR)
    assert result.status is CheckStatus.FAIL and answer is None
    assert "another PostgreSQL" in result.detail


def test_a_garbled_answer_fails_the_login_check_with_why() -> None:
    probe = TunnelProbe(None, "site dr: answered no stream-check line (2 lines, not one)")
    result, answer = check_stream_login("stream-login main", probe, SYSTEMID, CONNECTOR)
    assert result.status is CheckStatus.FAIL and answer is None
    assert "2 lines" in result.detail


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (
            'no pg_hba.conf entry for replication connection from host "127.0.0.1"',
            "host replication logship_replication 127.0.0.1/32 scram-sha-256",
        ),
        ('password authentication failed for user "logship_replication"', "PASSWORD"),
        ('role "logship_replication" does not exist', "CREATE ROLE logship_replication"),
    ],
)
def test_a_refused_login_names_its_fix(error: str, fix: str) -> None:
    probe = TunnelProbe(StreamAnswer(error=error), None)
    result, _ = check_stream_login("stream-login main", probe, SYSTEMID, CONNECTOR)
    assert result.status is CheckStatus.FAIL
    assert fix in result.detail


def test_a_login_without_a_password_warns() -> None:
    result = check_stream_password(
        "stream-password main", StreamAnswer(SYSTEMID, 1, "0/1", False), CONNECTOR
    )
    assert result.status is CheckStatus.WARN and "WITHOUT a password" in result.detail


def test_the_pg_hba_line_follows_how_the_daemon_reaches_the_primary() -> None:
    socket = postgres_connector("s", primary={"dsn": "host=/run/pg port=5432"})
    assert hba_line(socket) == "local replication logship_replication scram-sha-256"
    assert "127.0.0.1/32" in hba_line(CONNECTOR)


# -- the primary's settings -------------------------------------------------------------------

FACTS = StreamPrimary(
    role="logship",
    superuser=False,
    max_wal_senders=10,
    senders_used=0,
    ours_connected=False,
    max_replication_slots=10,
    slots_used=0,
    slot=None,
    max_slot_wal_keep_mb=1024,
    may_set_keep=False,
    may_set_sync=True,
    sync_names="",
    stream_role=(True, True),
    systemid=SYSTEMID,
)


def status(check, facts: StreamPrimary) -> tuple[CheckStatus, str]:  # type: ignore[no-untyped-def]
    result = check("x", facts, CONNECTOR)
    return result.status, result.detail


def test_good_settings_pass() -> None:
    assert check_wal_senders("x", FACTS).status is CheckStatus.OK
    for check in (check_replication_slots, check_slot_bound, check_replication_role):
        assert status(check, FACTS)[0] is CheckStatus.OK
    assert status(check_sync_control, FACTS)[0] is CheckStatus.OK


def test_no_free_sender_fails_unless_the_standby_holds_one() -> None:
    full = replace(FACTS, max_wal_senders=2, senders_used=2)
    result = check_wal_senders("x", full)
    assert result.status is CheckStatus.FAIL and "max_wal_senders" in result.detail
    assert check_wal_senders("x", replace(full, ours_connected=True)).status is CheckStatus.OK
    assert check_wal_senders("x", replace(FACTS, max_wal_senders=0)).status is CheckStatus.FAIL


def test_no_free_slot_fails_unless_ours_is_there() -> None:
    full = replace(FACTS, max_replication_slots=3, slots_used=3)
    assert status(check_replication_slots, full)[0] is CheckStatus.FAIL
    ours = replace(full, slot=SlotFacts("reserved", 5 << 20))
    verdict, detail = status(check_replication_slots, ours)
    assert verdict is CheckStatus.OK and "5.0 MiB of WAL of the 1024 MiB bound" in detail


def test_a_slot_at_or_past_its_bound_warns() -> None:
    for slot in (SlotFacts("unreserved", 1000 << 20), SlotFacts("lost", None)):
        assert status(check_replication_slots, replace(FACTS, slot=slot))[0] is CheckStatus.WARN


def test_an_unbounded_slot_fails_unless_the_role_may_lower_it() -> None:
    unbounded = replace(FACTS, max_slot_wal_keep_mb=-1)
    verdict, detail = status(check_slot_bound, unbounded)
    assert verdict is CheckStatus.FAIL
    assert "ALTER SYSTEM SET max_slot_wal_keep_size = '1024MB'" in detail
    assert status(check_slot_bound, replace(FACTS, max_slot_wal_keep_mb=4096))[0] is (
        CheckStatus.FAIL
    )
    assert status(check_slot_bound, replace(unbounded, may_set_keep=True))[0] is CheckStatus.OK


def test_the_replication_role_must_exist_with_replication_and_login() -> None:
    verdict, detail = status(check_replication_role, replace(FACTS, stream_role=None))
    assert verdict is CheckStatus.FAIL and "CREATE ROLE logship_replication" in detail
    verdict, detail = status(check_replication_role, replace(FACTS, stream_role=(False, True)))
    assert verdict is CheckStatus.FAIL
    assert "ALTER ROLE logship_replication WITH REPLICATION" in detail


def test_synchronous_mode_needs_the_right_to_steer_it_and_no_foreign_names() -> None:
    verdict, detail = status(check_sync_control, replace(FACTS, may_set_sync=False))
    assert verdict is CheckStatus.FAIL and "GRANT ALTER SYSTEM ON PARAMETER" in detail
    verdict, detail = status(check_sync_control, replace(FACTS, sync_names="other"))
    assert verdict is CheckStatus.FAIL and "set outside logship" in detail
    ours = replace(FACTS, sync_names="logship_main")
    assert status(check_sync_control, ours)[0] is CheckStatus.OK


# -- the passfile at the site -----------------------------------------------------------------


def test_a_passfile_the_standby_could_not_use_is_named(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    data_dir.mkdir()
    passfile = tmp_path / "replication.pgpass"
    assert "No such file" in (passfile_problem(passfile, data_dir) or "")
    passfile.write_text("*:*:*:logship_replication:secret\n")
    passfile.chmod(0o644)
    assert "chmod 600" in (passfile_problem(passfile, data_dir) or "")
    passfile.chmod(0o600)
    assert passfile_problem(passfile, data_dir) is None
    # Not restored yet: no owner to compare with.
    assert passfile_problem(passfile, tmp_path / "missing") is None
    if os.geteuid() == 0:
        os.chown(passfile, 65534, -1)  # nobody's, while the standby runs as root's data dir
        assert "chown" in (passfile_problem(passfile, data_dir) or "")
