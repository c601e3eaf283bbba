#!/bin/sh
# Install the third-party tools used by the interop verifiers. Idempotent: only installs what
# is missing. apt needs root. Venv: ${EXPORTCORE_INTEROP_VENV:-$HOME/.cache/exportcore/interop-venv}
set -eu
VENV=${EXPORTCORE_INTEROP_VENV:-$HOME/.cache/exportcore/interop-venv}
PKGS="skopeo umoci age docker-registry openssl zstd dash curl chromium postgresql"
PYPKGS="tuf==7.0.1 securesystemslib==1.6.0 in-toto==3.1.0 cryptography gmssl boto3 openapi-core==0.23.1 openapi-spec-validator sseclient-py==1.9.0"
die() { echo "install.sh: FAIL: $*" >&2; exit 1; }

missing=""
for c in skopeo umoci age age-keygen openssl zstd dash curl chromium; do
  command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
[ -x /usr/bin/docker-registry ] || missing="$missing docker-registry"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing:$missing and no apt-get (install: $PKGS)"
  [ "$(id -u)" = 0 ] || die "missing:$missing; run as root (apt-get install $PKGS)"
  echo "installing Debian packages (missing:$missing)"
  apt-get update -qq || die "apt-get update failed"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null \
    || die "apt-get install $PKGS failed"
fi

pyok() { "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, tuf, securesystemslib, in_toto, cryptography, gmssl, boto3, openapi_core, openapi_spec_validator, sseclient
assert m.version("tuf") == "7.0.1" and m.version("securesystemslib") == "1.6.0" and m.version("in-toto") == "3.1.0"
PY
}
if [ ! -x "$VENV/bin/python" ] || ! pyok; then
  echo "creating Python venv at $VENV"
  command -v python3 >/dev/null 2>&1 || die "python3 not found"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $PYPKGS || die "pip install $PYPKGS failed"
  pyok || die "venv $VENV still cannot import tuf/securesystemslib/in_toto/cryptography/gmssl/boto3/openapi_core/openapi_spec_validator/sseclient"
fi

# An S3-protocol server that checks request signatures (s3s-fs), for the object-storage
# distribution tests; built once from crates.io into its own cached root.
S3S_ROOT=${EXPORTCORE_S3S_ROOT:-$HOME/.cache/exportcore/s3s-fs}
if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo not found (needed to build s3s-fs)"
  echo "building s3s-fs 0.14.1 into $S3S_ROOT (once)"
  cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root "$S3S_ROOT" \
    || die "cargo install s3s-fs failed"
fi

PYV=$("$VENV/bin/python" -c 'import importlib.metadata as m
print(", ".join("%s %s" % (p, m.version(p)) for p in ("tuf", "securesystemslib", "in-toto", "cryptography", "gmssl")))')
echo "interop tools ready: $(skopeo --version | head -n1), umoci $(umoci --version | awk '{print $NF}'),\
 age $(age --version), $(openssl version | cut -d' ' -f1-2), s3s-fs $("$S3S_ROOT/bin/s3s-fs" --version | awk '{print $NF}'),\
 venv $VENV ($PYV)"
