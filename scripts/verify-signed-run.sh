#!/bin/sh
# Verifies a signed exportcore run directory with nothing but sh, python3 (standard library),
# sha256sum and openssl — no exportcore code. The steps are explained in docs/signing.md.
#
#   scripts/verify-signed-run.sh OUTPUT_DIR PUBLIC_KEY.pem
#
# Exit 0 when every digest matches and both DSSE envelopes carry a valid signature by the key.
set -eu
OUT=${1:?usage: verify-signed-run.sh OUTPUT_DIR PUBLIC_KEY.pem}
KEY=${2:?usage: verify-signed-run.sh OUTPUT_DIR PUBLIC_KEY.pem}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# 1. Every file listed in manifest.json has the listed size and sha256; nothing is missing.
python3 - "$OUT" <<'PY' > "$TMP/sums" || fail "manifest.json unreadable"
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
for e in m["entries"]:
    print(f'{e["sha256"]}  {e["path"]}')
PY
(cd "$OUT" && sha256sum -c --quiet "$TMP/sums") || fail "a listed file is missing or changed"

# 2. What kind of key is it? (ED25519, EC P-256 or SM2)
KTYPE=$(openssl pkey -pubin -in "$KEY" -noout -text 2>/dev/null | head -1)
case "$KTYPE" in
  *ED25519*) ALG=ed25519 ;;
  *) if openssl pkey -pubin -in "$KEY" -noout -text | grep -q "ASN1 OID: SM2"; then ALG=sm2; else ALG=p256; fi ;;
esac

# 3. For each envelope: decode payload and signature, rebuild the DSSE PAE, verify with openssl.
verify_envelope() {
  env=$1 name=$2
  python3 - "$env" "$TMP/$name" <<'PY' || fail "$name: not a DSSE envelope"
import base64, json, sys
e = json.load(open(sys.argv[1]))
t, p = e["payloadType"].encode(), base64.b64decode(e["payload"])
open(sys.argv[2] + ".payload", "wb").write(p)
open(sys.argv[2] + ".pae", "wb").write(b"DSSEv1 %d %s %d %s" % (len(t), t, len(p), p))
if not e["signatures"]:
    sys.exit("no signatures")
open(sys.argv[2] + ".sig", "wb").write(base64.b64decode(e["signatures"][0]["sig"]))
PY
  case $ALG in
    ed25519) openssl pkeyutl -verify -pubin -inkey "$KEY" -rawin -in "$TMP/$name.pae" -sigfile "$TMP/$name.sig" >/dev/null ;;
    p256) openssl dgst -sha256 -verify "$KEY" -signature "$TMP/$name.sig" "$TMP/$name.pae" >/dev/null ;;
    sm2) openssl pkeyutl -verify -pubin -inkey "$KEY" -rawin -digest sm3 -pkeyopt distid:1234567812345678 \
           -in "$TMP/$name.pae" -sigfile "$TMP/$name.sig" >/dev/null ;;
  esac || fail "$name: signature does not verify with $KEY"
}
verify_envelope "$OUT/manifest.dsse.json" manifest
cmp -s "$TMP/manifest.payload" "$OUT/manifest.json" || fail "manifest.dsse.json does not sign manifest.json"
verify_envelope "$OUT/provenance.dsse.json" provenance

# 4. The provenance subjects are exactly the run's files, with their digests.
python3 - "$TMP/provenance.payload" <<'PY' > "$TMP/subjects" || fail "provenance is not an in-toto Statement v1"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["_type"] == "https://in-toto.io/Statement/v1"
assert s["predicateType"] == "https://slsa.dev/provenance/v1"
for sub in s["subject"]:
    print(f'{sub["digest"]["sha256"]}  {sub["name"]}')
PY
(cd "$OUT" && sha256sum -c --quiet "$TMP/subjects") || fail "a provenance subject does not match its file"
echo "OK: $OUT verified with $KEY ($ALG)"
