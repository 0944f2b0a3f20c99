#!/usr/bin/env bash
# Installs the system packages the project needs, where missing (Debian/Ubuntu, apt-get).
# `make test` runs it every time: with everything present it only looks the commands up.
# Not root: installs through `sudo -n` (no password prompt in a build); else says what to run.
set -euo pipefail
# Debian puts the broker in /usr/sbin, which is not on every user's PATH
MOSQUITTO_SBIN=${MOSQUITTO_SBIN:-/usr/sbin/mosquitto}
need=()
# `python3 -m venv` needs ensurepip, which Debian ships apart in python3-venv
"${PYTHON:-python3}" -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
command -v node >/dev/null || need+=(nodejs)
# the ISO 15118 SECC's EXI codec is a Java jar (py4j)
command -v java >/dev/null || need+=(default-jre-headless)
command -v npm >/dev/null || need+=(npm)
{ command -v mosquitto || [ -x "$MOSQUITTO_SBIN" ]; } >/dev/null || need+=(mosquitto)
# mosquitto_passwd comes with the broker
{ command -v mosquitto_passwd >/dev/null || [[ " ${need[*]-} " == *" mosquitto "* ]]; } || need+=(mosquitto)
# the fleet's history store: PostgreSQL 15 with postgres_fdw (contrib); the tests start their
# own instances with initdb/pg_ctl in temporary directories (nothing is set up by hand)
PG_BIN=${V2G_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_SHARE=${V2G_PG_SHARE:-/usr/share/postgresql/15}
[ -x "$PG_BIN/initdb" ] || need+=(postgresql-15)
[ -f "$PG_SHARE/extension/postgres_fdw.control" ] || need+=(postgresql-contrib)
# the driver's app is tested in a real browser: Debian's Chromium, driven by Playwright
# (Playwright's own browser download cannot be used); installed without recommends
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
{ command -v chromium || [ -x "$CHROMIUM" ]; } >/dev/null || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
hint="sudo apt-get install ${need[*]}"
fail() {
  echo "system-deps: missing system packages: ${need[*]}. $1" >&2
  echo "system-deps: install them, then run make test again: $hint" >&2
  exit 1
}
as=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as=(sudo -n)
  else
    fail "Cannot install them: not root, and sudo is absent or needs a password."
  fi
fi
command -v apt-get >/dev/null || fail "Cannot install them: no apt-get here (not Debian or Ubuntu)."
echo "system-deps: installing ${need[*]}"
${as[@]+"${as[@]}"} apt-get update -qq || fail "apt-get update failed (see above)."
${as[@]+"${as[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || fail "apt-get install failed (see above)."
