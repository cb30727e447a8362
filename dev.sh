#!/usr/bin/env bash
# One command from a fresh machine: `./dev.sh demo` runs the demo, `./dev.sh test`
# runs the whole test suite. Each installs what it needs first.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
action=${1:-}
shift || true

case "$action" in
  demo|test) ;;
  *) echo "usage: ./dev.sh demo [logship demo options] | ./dev.sh test [pytest options]" >&2; exit 2 ;;
esac

pg_bin=/usr/lib/postgresql/15/bin
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
[ -x "$pg_bin/postgres" ] || missing+=(postgresql-15)
[ -x "$pg_bin/pgbench" ] || missing+=(postgresql-contrib-15)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v runuser >/dev/null || missing+=(util-linux)
command -v tmux >/dev/null || missing+=(tmux)  # the dashboard's real-terminal test
command -v tc >/dev/null || missing+=(iproute2)  # link faults: namespaces, tc tbf
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} ..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]} - install them (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi

# PostgreSQL runs archive-wal and restore-wal as its own OS user, so when we are
# root the virtualenv (and the Python it links to) must be reachable by that
# user: Debian's /usr/bin/python3 in a venv under /opt, not one under /root.
if [ "$(id -u)" -eq 0 ]; then
  python=/usr/bin/python3
  venv=/opt/logship/venv-$(printf '%s' "$here" | sha1sum | cut -c1-12)
else
  python=$(command -v python3)
  venv=$here/.venv
fi
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
chmod a+rx "$(dirname "$venv")"
# A regular (not editable) install: the postgres user may not be able to enter
# this checkout, but it can always read the venv. setuptools builds in ./build and
# packs all it finds there, so a module moved or deleted since the last build
# would live on in the installed package: build from scratch.
rm -rf "$here/build"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$here[test]"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$here"
chmod -R a+rX "$venv"

if [ "$action" = demo ]; then
  exec "$venv/bin/logship" demo "$@"
fi

cd "$here"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
set +e
"$venv/bin/pytest" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
