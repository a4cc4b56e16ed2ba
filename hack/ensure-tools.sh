#!/usr/bin/env bash
# Checks for (and where it can, installs) what Patrol's scripts need on a fresh machine,
# then builds the control plane into the cache if it is not there yet.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
missing=()
for tool in cargo go openssl curl python3 setsid; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  apt_pkgs=()
  for tool in "${missing[@]}"; do
    case $tool in
      openssl) apt_pkgs+=(openssl) ;;
      curl) apt_pkgs+=(curl) ;;
      python3) apt_pkgs+=(python3) ;;
      setsid) apt_pkgs+=(util-linux) ;;
      *) echo "missing $tool: install it (Rust via rustup, Go from go.dev) and retry" >&2; exit 1 ;;
    esac
  done
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq "${apt_pkgs[@]}"
  else
    echo "missing: ${apt_pkgs[*]}; install them with your package manager" >&2; exit 1
  fi
fi
# A PostgreSQL server for the database provider's tests (tests/src/postgres.rs starts one
# per test from /usr/lib/postgresql/<version>/bin; the package also brings psql and the
# postgres OS user the server runs as when the tests run as root).
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  else
    echo "missing: a PostgreSQL server (/usr/lib/postgresql/*/bin/initdb); install the postgresql package" >&2; exit 1
  fi
fi
# `ensure-tools.sh python`: a Python with PyJWT (examples/clients/verify_jwt.py), in a
# virtualenv in the cache; prints its interpreter.
if [[ ${1:-} == python ]]; then
  cache=${PATROL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patrol}
  venv=$cache/python
  if ! "$venv/bin/python" -c 'import jwt, cryptography' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "pyjwt[crypto]>=2.9" >&2
  fi
  echo "$venv/bin/python"
  exit 0
fi
"$here/build-control-plane.sh" all >/dev/null
