"""A full file system at the site: uploads fail cleanly and say why, the RPO state
and the alert hooks show it, and shipping resumes once space is freed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from site_checks import all_shipped, check_site, site_layout, status_entry

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.demo_sandbox.osuser import is_root
from logship.temp_names import is_temp_name

MIB = 1024 * 1024
SITE_FS_MIB = 48


@pytest.mark.e2e
@pytest.mark.skipif(not is_root(), reason="mounting a small file system at the site needs root")
def test_a_full_site_fails_cleanly_alerts_and_resumes(deployment: Deployment) -> None:
    dep = deployment
    dep.compression = "none"  # 16 MiB a segment: the small file system fills fast
    dep.rpo = "5s"
    dep.write_config()
    fired = dep.root / "alerts.jsonl"
    hook = [
        sys.executable,
        "-c",
        f"import sys; open({str(fired)!r}, 'a').write(sys.stdin.read() + '\\n')",
    ]
    with open(dep.config_path, "a") as config:
        config.write(f"\n[alerts]\nhooks = [{json.dumps(hook)}]\n")
    fired.touch()
    fired.chmod(0o666)
    incoming = dep.incoming
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o",
         f"size={SITE_FS_MIB}m,mode=0700,uid={dep.user.uid},gid={dep.user.gid}",
         "tmpfs", str(incoming)],
        check=True,
    )  # fmt: skip
    try:
        filler = incoming / "filler"
        with open(filler, "wb") as out:
            out.write(b"\0" * ((SITE_FS_MIB - 6) * MIB))  # 6 MiB left: less than a segment
        dep.start_daemon()
        dep.primary.pgbench("-i", "-s", "1", "-q")
        dep.switch_wal()

        def refused() -> bool:
            error = str(status_entry(dep).get("site_error") or "")
            return "no space left" in error

        try:
            wait_for(refused, 60, "the status to name the full disk")
        except TimeoutError:
            print(status_entry(dep), dep.daemon_log.read_text()[-4000:])
            raise
        entry = status_entry(dep)
        assert "MiB free" in str(entry["site_error"])
        wait_for(lambda: status_entry(dep)["state"] == "breach", 60, "the RPO breached")
        wal_dir = Path(site_layout(dep).wal_dir)
        # The worker keeps trying (backing off): a temp exists while a try is
        # under way, and must be gone after it, not pile up.
        wait_for(
            lambda: not [p for p in wal_dir.iterdir() if is_temp_name(p.name)],
            30,
            "no temp left by the failed uploads",
        )
        wait_for(lambda: "breach" in fired.read_text(), 60, "the alert hook run for breach")
        assert dep.daemon is not None and dep.daemon.poll() is None, "the daemon must stay up"

        filler.unlink()  # space is back
        wait_for(lambda: all_shipped(dep), 120, "shipping resumed and caught up")
        assert check_site(dep) >= 2
        wait_for(lambda: status_entry(dep)["site_error"] is None, 30, "the error cleared")
    finally:
        dep.stop_daemon()
        subprocess.run(["umount", "-l", str(incoming)], check=False)
        os.sync()
