#!/bin/sh
# Verify an SM2 signature with SM3 digest (GB/T 32918, GM/T 0003) using OpenSSL 3.
#
#   verify_sm2.sh <file> <signature.der> <public_key.pem> [distid]
#
# signature.der: ASN.1 DER SEQUENCE { INTEGER r, INTEGER s } (a raw 64-byte r||s is rejected).
# distid: the SM2 user ID hashed into Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA);
#   default "1234567812345678" (GM/T 0009). OpenSSL 3 uses an EMPTY id unless told, so it is
#   always passed explicitly. Same check by hand:
#   openssl pkeyutl -verify -rawin -digest sm3 -pubin -inkey PUB -in FILE -sigfile SIG -pkeyopt distid:1234567812345678
#   openssl dgst -sm3 -verify PUB -signature SIG -sigopt distid:1234567812345678 FILE
# Exit 0 and "OK: SM2/SM3 signature verified" on success; a "FAIL:" line and exit 1 (2 = bad input).
set -u
fail() { echo "FAIL: $1"; exit "${2:-1}"; }
[ $# -ge 3 ] && [ $# -le 4 ] || fail "usage: verify_sm2.sh <file> <signature.der> <public_key.pem> [distid]" 2
FILE=$1 SIG=$2 PUB=$3 ID=${4:-1234567812345678}
for f in "$FILE" "$SIG" "$PUB"; do [ -r "$f" ] || fail "cannot read $f" 2; done
command -v openssl >/dev/null 2>&1 || fail "openssl not found (run tests/interop/install.sh)" 2

KEYTEXT=$(openssl pkey -pubin -in "$PUB" -noout -text 2>&1) || fail "$PUB is not a public key: $KEYTEXT" 2
case $KEYTEXT in
  *"ASN1 OID: SM2"*) ;;
  *) fail "$PUB is not an SM2 key (need EC key on curve 1.2.156.10197.1.301)" 2 ;;
esac
openssl asn1parse -inform DER -in "$SIG" >/dev/null 2>&1 \
  || fail "$SIG is not a DER signature ($(wc -c <"$SIG" | tr -d ' ') bytes; raw r||s must be DER-encoded)"

echo "SM3($FILE) = $(openssl dgst -sm3 -r "$FILE" | cut -d' ' -f1)"
if OUT=$(openssl pkeyutl -verify -rawin -digest sm3 -pubin -inkey "$PUB" -in "$FILE" -sigfile "$SIG" \
           -pkeyopt "distid:$ID" 2>&1); then
  echo "OK: SM2/SM3 signature verified (distid \"$ID\")"
else
  fail "SM2/SM3 signature does not verify with $PUB (distid \"$ID\"): $(echo "$OUT" | head -n 2 | tr '\n' ' ')"
fi
