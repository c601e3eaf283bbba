#!/bin/sh
# Self-test of the interop verifiers: generates fresh inputs (gen_fixtures.py, openssl for SM2)
# in a temp dir and checks that every verifier accepts the good inputs and rejects broken ones.
# Needs install.sh to have run. Ends with "N passed, M failed"; exit 0 only if nothing failed.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${EXPORTCORE_INTEROP_VENV:-$HOME/.cache/exportcore/interop-venv}
PY=$VENV/bin/python
[ -x "$PY" ] || { echo "FAIL: no interop venv at $VENV: run sh tests/interop/install.sh"; exit 2; }
for c in openssl skopeo umoci sha256sum; do
  command -v "$c" >/dev/null 2>&1 || { echo "FAIL: $c not found: run sh tests/interop/install.sh"; exit 2; }
done
export PYTHONDONTWRITEBYTECODE=1
T=$(mktemp -d "${TMPDIR:-/tmp}/interop-selftest.XXXXXX") || exit 2
trap 'rm -rf "$T"' EXIT
trap 'exit 130' INT TERM
passed=0 failed=0

# case <want> <marker> <description> <command...>
#   want ok:     exit 0, no line starting "FAIL:", and the output contains <marker> (if non-empty)
#   want fail:   non-zero exit and a line starting "FAIL:" (our verifiers)
#   want reject: non-zero exit (third-party tools)
case_() {
  want=$1 mark=$2 desc=$3; shift 3
  if "$@" >"$T/out" 2>&1; then rc=0; else rc=$?; fi
  case $want in
    ok) [ "$rc" = 0 ] && ! grep -q '^FAIL:' "$T/out" && { [ -z "$mark" ] || grep -qF -- "$mark" "$T/out"; } ;;
    fail) [ "$rc" != 0 ] && grep -q '^FAIL:' "$T/out" ;;
    reject) [ "$rc" != 0 ] ;;
  esac
  if [ $? = 0 ]; then
    passed=$((passed + 1)); echo "PASS  $desc (rc=$rc)"
  else
    failed=$((failed + 1)); echo "WRONG $desc (rc=$rc, wanted $want${mark:+ with \"$mark\"})"
    tail -n 6 "$T/out" | sed 's/^/        /'
  fi
}
ok() { case_ ok "" "$@"; }
okm() { case_ ok "$@"; }
bad() { case_ fail "" "$@"; }

"$PY" "$HERE/gen_fixtures.py" "$T/fx" || { echo "FAIL: gen_fixtures.py failed"; exit 1; }
F=$T/fx

echo "== DSSE (verify_dsse.py)"
D=$F/dsse
PAYLOAD="payload sha256=$(sha256sum "$D/payload.bin" | cut -d' ' -f1)"
MT=application/vnd.exportcore.manifest+json
for k in ed25519 p256 rsa; do
  okm "$PAYLOAD" "dsse $k good, payload digest" "$PY" "$HERE/verify_dsse.py" "$D/$k.json" "$D/$k.pub"
  okm "securesystemslib cross-check: ok" "dsse $k securesystemslib agrees" \
    "$PY" "$HERE/verify_dsse.py" "$D/$k.json" "$D/$k.pub" --payload-type $MT
  bad "dsse $k wrong key" "$PY" "$HERE/verify_dsse.py" "$D/$k.json" "$D/${k}_other.pub"
  for v in tampered_payload appended_payload appended_sig truncated_sig; do
    bad "dsse $k $v" "$PY" "$HERE/verify_dsse.py" "$D/${k}_$v.json" "$D/$k.pub"
  done
done
okm "RAW r||s (not DER!)" "dsse p256 raw r||s accepted and flagged" "$PY" "$HERE/verify_dsse.py" "$D/p256_raw.json" "$D/p256.pub"
okm "1 of 2 signatures valid" "dsse one of two signatures valid" "$PY" "$HERE/verify_dsse.py" "$D/p256_two_sigs.json" "$D/p256.pub"
okm "OK: DSSE" "dsse --no-sslib, run directly (venv re-exec)" "$HERE/verify_dsse.py" "$D/ed25519.json" "$D/ed25519.pub" --no-sslib
bad "dsse wrong --payload-type" "$PY" "$HERE/verify_dsse.py" "$D/ed25519.json" "$D/ed25519.pub" --payload-type text/plain
bad "dsse key of another type" "$PY" "$HERE/verify_dsse.py" "$D/ed25519.json" "$D/p256.pub"
bad "dsse not an envelope" "$PY" "$HERE/verify_dsse.py" "$D/payload.bin" "$D/ed25519.pub"

echo "== in-toto Statement v1 / SLSA provenance v1 (verify_intoto.py)"
I=$F/intoto
V="$PY $HERE/verify_intoto.py"
okm "in-toto cross-check: ok" "intoto ed25519 good" $V "$I/good_ed25519.json" "$I/ed25519.pub" "$I/bundle.tar.zst" "$I/manifest.json"
ok "intoto p256 good" $V "$I/good_p256.json" "$I/p256.pub" "$I/bundle.tar.zst" "$I/manifest.json"
bad "intoto wrong key" $V "$I/good_ed25519.json" "$I/other.pub" "$I/bundle.tar.zst" "$I/manifest.json"
bad "intoto tampered statement" $V "$I/tampered.json" "$I/ed25519.pub" "$I/bundle.tar.zst" "$I/manifest.json"
bad "intoto tampered artifact" $V "$I/good_ed25519.json" "$I/ed25519.pub" "$I/tampered/bundle.tar.zst" "$I/manifest.json"
bad "intoto artifact with appended bytes" $V "$I/good_ed25519.json" "$I/ed25519.pub" "$I/appended/bundle.tar.zst" "$I/manifest.json"
bad "intoto subject not covered" $V "$I/good_ed25519.json" "$I/ed25519.pub" "$I/manifest.json"
for v in ptype v01 uppercase no_subject no_builder bad_dep ext_params_list extra_subject not_slsa; do
  bad "intoto $v" $V "$I/$v.json" "$I/ed25519.pub" "$I/bundle.tar.zst" "$I/manifest.json"
done
ok "intoto extra subject with --allow-extra-subjects" $V "$I/extra_subject.json" "$I/ed25519.pub" \
  "$I/bundle.tar.zst" "$I/manifest.json" --allow-extra-subjects
ok "intoto other predicate with --no-slsa" $V "$I/not_slsa.json" "$I/ed25519.pub" "$I/bundle.tar.zst" "$I/manifest.json" --no-slsa

echo "== SM2/SM3 (verify_sm2.sh, openssl)"
S=$T/sm2; mkdir -p "$S"
for k in key other; do
  openssl genpkey -algorithm SM2 -out "$S/$k.pem" 2>/dev/null && openssl pkey -in "$S/$k.pem" -pubout -out "$S/$k.pub"
done
openssl genpkey -algorithm ed25519 -out "$S/ed.pem" && openssl pkey -in "$S/ed.pem" -pubout -out "$S/ed.pub"
printf 'hello sm2\n' >"$S/msg"; printf 'hellO sm2\n' >"$S/msg_tampered"; printf 'hello sm2\n\n' >"$S/msg_appended"
openssl pkeyutl -sign -rawin -digest sm3 -inkey "$S/key.pem" -in "$S/msg" -out "$S/sig.der" -pkeyopt distid:1234567812345678
openssl pkeyutl -sign -rawin -digest sm3 -inkey "$S/key.pem" -in "$S/msg" -out "$S/sig_emptyid.der"
{ cat "$S/sig.der"; printf 'x'; } >"$S/sig_appended.der"
okm "OK: SM2/SM3 signature verified" "sm2 good (sh)" sh "$HERE/verify_sm2.sh" "$S/msg" "$S/sig.der" "$S/key.pub"
if command -v bash >/dev/null 2>&1; then
  ok "sm2 good (bash)" bash "$HERE/verify_sm2.sh" "$S/msg" "$S/sig.der" "$S/key.pub"
fi
bad "sm2 tampered file" sh "$HERE/verify_sm2.sh" "$S/msg_tampered" "$S/sig.der" "$S/key.pub"
bad "sm2 file with appended bytes" sh "$HERE/verify_sm2.sh" "$S/msg_appended" "$S/sig.der" "$S/key.pub"
bad "sm2 wrong key" sh "$HERE/verify_sm2.sh" "$S/msg" "$S/sig.der" "$S/other.pub"
bad "sm2 signature with appended bytes" sh "$HERE/verify_sm2.sh" "$S/msg" "$S/sig_appended.der" "$S/key.pub"
bad "sm2 signed with empty distid" sh "$HERE/verify_sm2.sh" "$S/msg" "$S/sig_emptyid.der" "$S/key.pub"
bad "sm2 non-SM2 key" sh "$HERE/verify_sm2.sh" "$S/msg" "$S/sig.der" "$S/ed.pub"

echo "== OCI image layout (verify_oci_layout.py, skopeo, umoci)"
O=$F/oci
okm "OK: OCI layout valid" "oci good layout --strict-orphans" "$PY" "$HERE/verify_oci_layout.py" "$O/layout" --strict-orphans
ok "oci orphan blob only warned" "$PY" "$HERE/verify_oci_layout.py" "$O/orphan"
bad "oci orphan blob with --strict-orphans" "$PY" "$HERE/verify_oci_layout.py" "$O/orphan" --strict-orphans
for v in bad_blob appended_blob bad_version; do
  bad "oci $v" "$PY" "$HERE/verify_oci_layout.py" "$O/$v"
done
ok "skopeo reads the generated layout" skopeo inspect --raw "oci:$O/layout:v1"
ok "umoci unpacks the generated image" umoci unpack --rootless --image "$O/layout:v1" "$T/bundle-good"
case_ reject "" "umoci rejects the corrupted layer" umoci unpack --rootless --image "$O/bad_blob:v1" "$T/bundle-bad"

echo "== cosign signatures (verify_cosign_sig.py)"
C="$PY $HERE/verify_cosign_sig.py"
okm "OK: cosign signature verified" "cosign p256 good with --docker-reference" \
  $C "$O/layout" "$O/cosign.pub" --tag v1 --docker-reference registry.example/exportcore/app
ok "cosign ed25519 good" $C "$O/layout_ed25519" "$O/cosign_ed25519.pub" --tag v1
DIGEST=$("$PY" -c 'import json,sys; print([m["digest"] for m in json.load(open(sys.argv[1]))["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "v1"][0])' "$O/layout/index.json")
ok "cosign by --digest" $C "$O/layout" "$O/cosign.pub" --digest "$DIGEST"
bad "cosign wrong key" $C "$O/layout" "$O/other.pub" --tag v1
bad "cosign key of another type" $C "$O/layout" "$O/cosign_ed25519.pub" --tag v1
bad "cosign wrong --docker-reference" $C "$O/layout" "$O/cosign.pub" --tag v1 --docker-reference registry.example/other
bad "cosign tampered payload" $C "$O/tampered_payload" "$O/cosign.pub" --tag v1
bad "cosign payload names another digest" $C "$O/wrong_digest" "$O/cosign.pub" --tag v1
bad "cosign no signature for the nested index" $C "$O/layout" "$O/cosign.pub" --tag multi

echo "== TUF (verify_tuf.py, python-tuf ngclient)"
U=$F/tuf
TUF="$PY $HERE/verify_tuf.py"
okm "OK: TUF repository verified (3 targets)" "tuf consistent snapshots + delegation" \
  $TUF "$U/cs/metadata" "$U/cs/targets" --root "$U/cs/metadata/1.root.json"
ok "tuf plain (no consistent snapshots), TOFU root" $TUF "$U/plain/metadata" "$U/plain/targets"
ok "tuf earlier --reference-time" $TUF "$U/cs/metadata" "$U/cs/targets" --reference-time 2098-12-31T00:00:00Z
bad "tuf expired at later --reference-time" $TUF "$U/cs/metadata" "$U/cs/targets" --reference-time 2100-01-01T00:00:00Z
bad "tuf wrong trusted root" $TUF "$U/cs/metadata" "$U/cs/targets" --root "$U/plain/metadata/1.root.json"
bad "tuf --no-hash-prefix on hash-prefixed targets" $TUF "$U/cs/metadata" "$U/cs/targets" --no-hash-prefix
for v in tampered_target appended_target tampered_delegated_target tampered_metadata; do
  bad "tuf $v" $TUF "$U/$v/metadata" "$U/$v/targets" --root "$U/cs/metadata/1.root.json"
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
