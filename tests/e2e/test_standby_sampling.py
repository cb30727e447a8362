"""Asking the site how the standby is doing never holds up shipping."""

from __future__ import annotations

import shlex

from site_checks import all_shipped

from logship.demo_sandbox.deployment import Deployment, logship_command, wait_for

#: longer than the daemon's SAMPLE_TIMEOUT (20 s): the ask waits as long as it may
HANG_S = 25


def test_a_hanging_standby_status_does_not_hold_up_the_next_segment(
    deployment: Deployment,
) -> None:
    dep = deployment
    # The site user writes here (the test root is not theirs).
    asked = dep.root / "standby-site" / "standby-status-asked"
    wrapper = dep.root / "slow-standby-status"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" standby status "*) touch {shlex.quote(str(asked))}; '
        # Until the daemon hangs up (its stop ends the connection), at most HANG_S.
        f"timeout {HANG_S} cat >/dev/null;; esac\n"
        f'exec {shlex.join(logship_command())} "$@"\n'
    )
    wrapper.chmod(0o755)
    dep.site_command = [str(wrapper), "--config", str(dep.config_path)]
    dep.write_config()
    dep.start_daemon()
    wait_for(asked.exists, 60, "the daemon asking the site for the standby's status")
    dep.primary.query("create table sampled as select generate_series(1, 1000) as n")
    dep.switch_wal()
    # Well inside the hang: the segment must not wait for the answer.
    wait_for(lambda: all_shipped(dep), HANG_S - 10, "the segment shipped during the ask")
