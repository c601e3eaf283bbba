#!/bin/sh
# verify-offline.sh - checks a devportal:offline bundle with no network access.
#
# Usage (POSIX sh; tested with dash, bash and busybox):
#   sh verify-offline.sh [options]                run inside the extracted bundle
#   sh verify-offline.sh [options] BUNDLE.tgz     extracts to a temporary directory first
#   sh verify-offline.sh [options] DIRECTORY      an extracted bundle elsewhere
#
# Options (each also read from an environment variable):
#   --key PUBLIC.pem       DEVPORTAL_VERIFY_KEY       Ed25519, ECDSA P-256 or SM2 public key
#                                                     (PEM); manifest.dsse.json must be signed by it
#   --hmac-key FILE        DEVPORTAL_VERIFY_HMAC_KEY  file holding the raw HMAC-SHA256 secret
#   --root SHA256          DEVPORTAL_EXPECTED_ROOT    the root the publisher announced
#
# Checks: checksums.txt is well formed and its "root" line is the sha256 of manifest.json;
# every file it lists has that sha256; no file is missing and none is extra; manifest.json
# lists exactly the portal/, specs/, sdks/ and changelog/ files of checksums.txt with the same
# digests; manifest.dsse.json, when present, signs exactly manifest.json; with a key, its
# signature verifies (needs openssl). Needs: sha256sum or shasum, sed, awk, sort, find, cmp,
# od, tr, cut, wc, tar and gzip (for a .tgz), base64 or openssl.
#
# Exit status: 0 verified; 2 content check failed; 3 signature check failed;
# 5 usage error, missing tool or unreadable bundle.
#
# Use a copy of this script you trust (for example the one in docs/devportal.md of the
# publisher) when the bundle itself may have been tampered with.

LC_ALL=C
export LC_ALL
PAYLOAD_TYPE='application/vnd.exportcore.devportal-manifest+json'
MANIFEST_VERSION='devportal-offline/v1'

KEY=${DEVPORTAL_VERIFY_KEY:-}
HMAC_KEY=${DEVPORTAL_VERIFY_HMAC_KEY:-}
EXPECTED_ROOT=${DEVPORTAL_EXPECTED_ROOT:-}
TARGET=
CONTENT_FAILED=0
SIG_FAILED=0
TMP=

# shellcheck disable=SC2317 # called from the traps
cleanup() { [ -n "$TMP" ] && rm -rf "$TMP"; }
trap cleanup EXIT
trap 'cleanup; exit 5' HUP INT TERM

# Messages name files of the bundle: their control characters (an escape sequence that
# rewrites the terminal line, a newline that fakes an OK line) are dropped before printing.
say() { printf '%s\n' "$(printf '%s' "$*" | tr -d '\000-\037\177')"; }
die() { say "ERROR: $*" >&2; exit 5; }
fail() { say "FAIL: $*" >&2; CONTENT_FAILED=1; }
sigfail() { say "FAIL: $*" >&2; SIG_FAILED=1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is needed but not installed"; }

while [ $# -gt 0 ]; do
  case $1 in
    --key) [ $# -ge 2 ] || die "--key needs a file"; KEY=$2; shift 2 ;;
    --key=*) KEY=${1#--key=}; shift ;;
    --hmac-key) [ $# -ge 2 ] || die "--hmac-key needs a file"; HMAC_KEY=$2; shift 2 ;;
    --hmac-key=*) HMAC_KEY=${1#--hmac-key=}; shift ;;
    --root) [ $# -ge 2 ] || die "--root needs a sha256"; EXPECTED_ROOT=$2; shift 2 ;;
    --root=*) EXPECTED_ROOT=${1#--root=}; shift ;;
    -h|--help) sed -n '2,30p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; [ $# -le 1 ] || die "only one bundle may be given"; TARGET=${1:-}; shift $# ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$TARGET" ] || die "only one bundle may be given"; TARGET=$1; shift ;;
  esac
done

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$(pwd)" "$1" ;; esac; }
[ -z "$KEY" ] || { [ -r "$KEY" ] || die "cannot read key $KEY"; KEY=$(abspath "$KEY"); }
[ -z "$HMAC_KEY" ] || { [ -r "$HMAC_KEY" ] || die "cannot read HMAC key $HMAC_KEY"; HMAC_KEY=$(abspath "$HMAC_KEY"); }
if [ -n "$EXPECTED_ROOT" ]; then
  EXPECTED_ROOT=${EXPECTED_ROOT#sha256:}
  printf '%s\n' "$EXPECTED_ROOT" | grep -q '^[0-9a-f]\{64\}$' || die "--root must be 64 lowercase hex digits"
fi

if command -v sha256sum >/dev/null 2>&1; then SHA='sha256sum'
elif command -v shasum >/dev/null 2>&1; then SHA='shasum -a 256'
else die "sha256sum or shasum is needed"
fi
for t in sed awk sort find cmp od tr cut wc; do need "$t"; done
count_words() { echo $#; }
# The HMAC key, read once (a FIFO or /dev/stdin gives its bytes only once): at least 16 bytes,
# as the signer requires; an empty or short key would let anyone sign.
if [ -n "$HMAC_KEY" ]; then
  HM_BYTES=$(od -An -v -tu1 "$HMAC_KEY") || die "cannot read HMAC key $HMAC_KEY"
  # shellcheck disable=SC2086
  HM_LEN=$(count_words $HM_BYTES)
  [ "$HM_LEN" -ge 16 ] || die "HMAC key $HMAC_KEY holds $HM_LEN bytes: at least 16 are needed"
fi

TMP=$(mktemp -d 2>/dev/null || mktemp -d -t devportal-verify) || die "cannot create a temporary directory"
W=$TMP/work
mkdir "$W" || die "cannot create a temporary directory"

# --- The signature -----------------------------------------------------------------------
b64d() {
  if printf 'QQ==' | base64 -d >/dev/null 2>&1; then base64 -d
  elif command -v openssl >/dev/null 2>&1; then openssl base64 -d -A
  else base64 -D
  fi
}
# HMAC-SHA256 (RFC 2104) of file $2 under the key in file $1, as lowercase hex, by two
# SHA-256 passes: the key never appears on a command line (where `ps` would show it).
hex2bin() { # hex on stdin -> bytes
  h=$(tr -d ' \n'); o=
  while [ -n "$h" ]; do o="$o$(printf '\\%03o' "$((0x$(printf '%.2s' "$h")))")"; h=${h#??}; done
  printf "$o"
}
hmac_pad() { # $1: 54 (ipad) or 92 (opad); the key's bytes (decimal) follow
  x=$1; shift; n=0; o=
  for b in "$@"; do o="$o$(printf '\\%03o' "$((b ^ x))")"; n=$((n + 1)); done
  while [ "$n" -lt 64 ]; do o="$o$(printf '\\%03o' "$x")"; n=$((n + 1)); done
  printf "$o"
}
hmac_sha256() { # $1: the message file; the key is $HM_BYTES (read once, at the start)
  if [ "$HM_LEN" -gt 64 ]; then
    hm_o=
    for b in $HM_BYTES; do hm_o="$hm_o$(printf '\\%03o' "$b")"; done
    hm_key=$(printf "$hm_o" | $SHA | cut -c1-64 | hex2bin | od -An -v -tu1)
  else
    hm_key=$HM_BYTES
  fi
  # shellcheck disable=SC2086 # the key's bytes, one word each
  { hmac_pad 54 $hm_key; cat "$1"; } | $SHA | cut -c1-64 > "$W/hmac.inner"
  # shellcheck disable=SC2086
  { hmac_pad 92 $hm_key; hex2bin < "$W/hmac.inner"; } | $SHA | cut -c1-64
}
check_signature() {
# $1: manifest.json, $2: manifest.dsse.json
SIGNED=
if [ -f "$2" ]; then
  { tr ',' '\n' < "$2"; echo; } > "$W/env"
  PTYPE=$(sed -n 's/^.*"payloadType":"\([^"]*\)".*$/\1/p' "$W/env" | sed -n '1p')
  sed -n 's|^.*"payload":"\([A-Za-z0-9+/=]*\)".*$|\1|p' "$W/env" | sed -n '1p' > "$W/payload.b64"
  sed -n 's|^.*"sig":"\([A-Za-z0-9+/=]*\)".*$|\1|p' "$W/env" > "$W/sigs.b64"
  if [ "$PTYPE" != "$PAYLOAD_TYPE" ]; then
    sigfail "manifest.dsse.json: payload type '$PTYPE', expected '$PAYLOAD_TYPE'"
  elif ! b64d < "$W/payload.b64" > "$W/payload" 2>/dev/null || ! cmp -s "$W/payload" "$1"; then
    sigfail "manifest.dsse.json: the signed payload is not this manifest.json"
  elif [ -n "$KEY" ] || [ -n "$HMAC_KEY" ]; then
    [ -z "$KEY" ] || need openssl
    PLEN=$(wc -c < "$W/payload" | tr -d ' ')
    { printf 'DSSEv1 %s %s %s ' "${#PTYPE}" "$PTYPE" "$PLEN"; cat "$W/payload"; } > "$W/pae"
    if [ -n "$KEY" ]; then
      KTEXT=$(openssl pkey -pubin -in "$KEY" -noout -text 2>/dev/null) || die "$KEY is not a PEM public key"
      case $KTEXT in
        ED25519*) ALG=ed25519 ;;
        *"ASN1 OID: SM2"*) ALG=sm2 ;;
        *"ASN1 OID: prime256v1"*|*"NIST CURVE: P-256"*) ALG=p256 ;;
        *) die "$KEY: unsupported key type (Ed25519, ECDSA P-256 or SM2)" ;;
      esac
    else
      ALG=hmac
      MAC=$(hmac_sha256 "$W/pae")
    fi
    N=0
    while IFS= read -r s; do
      N=$((N + 1))
      printf '%s' "$s" | b64d > "$W/sig.$N" 2>/dev/null || continue
      case $ALG in
        ed25519) openssl pkeyutl -verify -pubin -inkey "$KEY" -rawin -in "$W/pae" -sigfile "$W/sig.$N" ;;
        p256) openssl dgst -sha256 -verify "$KEY" -signature "$W/sig.$N" "$W/pae" ;;
        sm2) openssl pkeyutl -verify -pubin -inkey "$KEY" -rawin -digest sm3 \
               -pkeyopt distid:1234567812345678 -in "$W/pae" -sigfile "$W/sig.$N" ;;
        hmac) [ "$(od -An -v -tx1 "$W/sig.$N" | tr -d ' \n')" = "$MAC" ] ;;
      esac > /dev/null 2>&1 && { SIGNED=$ALG; break; }
    done < "$W/sigs.b64"
    [ -n "$SIGNED" ] || sigfail "manifest.dsse.json: no signature verifies with ${KEY:-the HMAC key} ($ALG)"
  else
    echo "NOTE: manifest.dsse.json is present but its signature was not checked (pass --key PUBLIC.pem or --hmac-key FILE)" >&2
  fi
elif [ -n "$KEY" ] || [ -n "$HMAC_KEY" ]; then
  sigfail "manifest.dsse.json: missing (a signature was required)"
fi
}

# --- Where the bundle is ---------------------------------------------------------------
if [ -z "$TARGET" ]; then
  DIR=$(pwd)
elif [ -d "$TARGET" ]; then
  DIR=$(cd "$TARGET" && pwd) || die "cannot enter $TARGET"
elif [ -f "$TARGET" ]; then
  need tar; need gzip
  TGZ=$(abspath "$TARGET")
  gzip -t "$TGZ" 2>"$W/gzip.err" || die "$TARGET is not an intact gzip file: $(cat "$W/gzip.err")"
  # Exactly one gzip member: tar would also unpack a second one appended after the genuine
  # entries. The last member's ISIZE (its size mod 2^32, little-endian) equals the size of
  # everything gzip decompresses only when there is one member.
  ISIZE=$(tail -c 4 "$TGZ" | od -An -tu1 | awk '{ print $1 + 256 * $2 + 65536 * $3 + 16777216 * $4 }')
  TOTAL=$(gzip -dc "$TGZ" | wc -c | awk '{ print $1 % 4294967296 }')
  [ "$ISIZE" = "$TOTAL" ] || die "$TARGET holds more than one gzip member (a second archive appended after the bundle)"
  gzip -dc "$TGZ" | tar -tvf - > "$W/tar.long" 2>/dev/null || die "$TARGET is not a readable tar archive"
  gzip -dc "$TGZ" | tar -tf - > "$W/tar.names" 2>/dev/null || die "$TARGET is not a readable tar archive"
  # Only regular files and directories, no absolute or .. names, before anything is extracted.
  if cut -c1 "$W/tar.long" | grep -v '^[-d]$' >/dev/null; then
    die "$TARGET holds entries that are neither regular files nor directories (links or devices)"
  fi
  if grep -E '^/|(^|/)\.\.(/|$)' "$W/tar.names" >/dev/null; then
    die "$TARGET holds unsafe entry names (absolute or with ..)"
  fi
  # No decompression bomb reaches the disk: read the manifest first, then extract at most what
  # it declares (its assets' total size plus room for headers and the bundle's own files).
  # Both read through a 16 MiB cap, and with a key the manifest's signature is checked before
  # its declared sizes are trusted: a forged manifest cannot raise the limit.
  mkdir "$W/pre" || die "cannot create a temporary directory"
  for f in manifest.json manifest.dsse.json; do
    if grep -Fx "$f" "$W/tar.names" >/dev/null; then
      gzip -dc "$TGZ" | tar -xOf - "$f" 2>/dev/null | head -c 16777217 > "$W/pre/$f"
      [ "$(wc -c < "$W/pre/$f")" -le 16777216 ] || die "$TARGET: $f is larger than 16 MiB"
    fi
  done
  [ -f "$W/pre/manifest.json" ] || die "$TARGET has no manifest.json"
  cp "$W/pre/manifest.json" "$W/manifest.json" || die "cannot copy manifest.json"
  if [ -n "$KEY" ] || [ -n "$HMAC_KEY" ]; then
    check_signature "$W/pre/manifest.json" "$W/pre/manifest.dsse.json"
    if [ "$SIG_FAILED" -ne 0 ]; then
      echo "FAILED: the signature of $TARGET does not verify (nothing was extracted)" >&2
      exit 3
    fi
  fi
  DECL_SIZE=$(sed -n 's/.*"totalSizeBytes":\([0-9]*\).*/\1/p' "$W/manifest.json")
  DECL_COUNT=$(sed -n 's/.*"entryCount":\([0-9]*\).*/\1/p' "$W/manifest.json")
  { [ -n "$DECL_SIZE" ] && [ -n "$DECL_COUNT" ]; } || die "$TARGET: manifest.json has no totals"
  LIMIT=$((DECL_SIZE + 1024 * (DECL_COUNT + 16) + 16777216))
  [ "$(gzip -dc "$TGZ" | head -c "$((LIMIT + 1))" | wc -c)" -le "$LIMIT" ] \
    || die "$TARGET expands beyond what its manifest.json declares (a decompression bomb?)"
  DIR=$TMP/bundle
  if ! mkdir "$DIR" || ! (cd "$DIR" && gzip -dc "$TGZ" | tar -xf -); then die "cannot extract $TARGET"; fi
else
  die "no such bundle: $TARGET"
fi
cd "$DIR" || die "cannot enter $DIR"

sha_of() { $SHA "$1" | sed 's/ .*//'; }
# The lines of file $1 that are not lines of file $2.
only_in() { awk -v F="$2" 'BEGIN { while ((getline l < F) > 0) seen[l] = 1 } !($0 in seen)' "$1"; }

# --- checksums.txt ---------------------------------------------------------------------
[ -f checksums.txt ] || { fail "checksums.txt: missing"; exit 2; }
[ -f manifest.json ] || { fail "manifest.json: missing"; exit 2; }
if grep "$(printf '\r')" checksums.txt >/dev/null; then fail "checksums.txt: has CR characters"; fi
[ "$(tail -c 1 checksums.txt | od -An -tx1 | tr -d ' \n')" = "0a" ] || fail "checksums.txt: does not end with a newline"

ROOT_LINE=$(sed -n '1p' checksums.txt)
ROOT=${ROOT_LINE#root }
printf '%s\n' "$ROOT_LINE" | grep '^root [0-9a-f]\{64\}$' >/dev/null || {
  fail "checksums.txt: line 1 must be 'root <sha256 of manifest.json>'"; ROOT=; }
sed '1d' checksums.txt > "$W/sums"
# A well-formed line: 64 lowercase hex digits, two spaces, a relative path.
OK_LINE='function ok(l) { return length(l) > 66 && substr(l, 1, 64) !~ /[^0-9a-f]/ && substr(l, 65, 2) == "  " && substr(l, 67, 1) != "/" }'
awk "$OK_LINE"' !ok($0) { printf "FAIL: checksums.txt: line %d is not \"<sha256>  <path>\"\n", NR + 1 }' \
  "$W/sums" > "$W/bad-lines"
if [ -s "$W/bad-lines" ]; then cat "$W/bad-lines" >&2; CONTENT_FAILED=1; fi
cut -c67- "$W/sums" > "$W/listed"
if grep -E '(^|/)\.\.?(/|$)|//|/$' "$W/listed" > "$W/unsafe"; then
  while IFS= read -r p; do fail "checksums.txt: unsafe path $p"; done < "$W/unsafe"
fi
sort -u "$W/listed" | cmp -s - "$W/listed" || fail "checksums.txt: paths are not sorted or are listed twice"
grep -x 'checksums.txt' "$W/listed" >/dev/null && fail "checksums.txt: lists itself"
for f in manifest.json instructions-portable.txt verify-offline.sh; do
  grep -x -F "$f" "$W/listed" >/dev/null || fail "checksums.txt: does not list $f"
done
grep -v -x -E 'instructions-portable.txt|manifest.dsse.json|manifest.json|verify-offline.sh|(portal|specs|changelog)/.+|sdks/[^/]+/.+' \
  "$W/listed" > "$W/unexpected"
while IFS= read -r p; do fail "$p: not a file of a devportal bundle"; done < "$W/unexpected"

# --- The root --------------------------------------------------------------------------
ACTUAL_ROOT=$(sha_of manifest.json)
if [ -n "$ROOT" ] && [ "$ROOT" != "$ACTUAL_ROOT" ]; then
  fail "checksums.txt: root $ROOT is not the sha256 of manifest.json ($ACTUAL_ROOT): manifest.json was edited or replaced"
fi
if [ -n "$EXPECTED_ROOT" ] && [ "$EXPECTED_ROOT" != "$ROOT" ]; then
  fail "checksums.txt: root $ROOT is not the expected root $EXPECTED_ROOT"
fi

# --- Missing and extra files -----------------------------------------------------------
# The lists below are line by line: a name with a line break could pass for listed names.
NL='
'
if [ -n "$(find . -name "*$NL*" | head -c 1)" ]; then
  fail "a file or directory name holds a line break (no bundle file does; it could hide an extra file)"
fi
find . ! -type f ! -type d | sed 's|^\./||' > "$W/special"
while IFS= read -r p; do fail "$p: not a regular file or directory"; done < "$W/special"
find . -type f | sed 's|^\./||' | sort > "$W/present"
{ cat "$W/listed"; echo checksums.txt; } | sort > "$W/expected"
only_in "$W/expected" "$W/present" > "$W/missing"
only_in "$W/present" "$W/expected" > "$W/extra"
while IFS= read -r p; do fail "$p: missing (listed in checksums.txt)"; done < "$W/missing"
while IFS= read -r p; do fail "$p: extra file (not listed in checksums.txt)"; done < "$W/extra"

# --- Digests (sha256sum -c on the lines of the files that exist) -------------------------
awk -v M="$W/missing" "$OK_LINE"' BEGIN { while ((getline l < M) > 0) miss[l] = 1 }
  ok($0) { if (!(substr($0, 67) in miss)) print }' "$W/sums" > "$W/sums-present" \
  || fail "$W/sums-present: could not be written (a full temporary directory?)"
# Every listed file that exists is hashed: a short list (a write error in the temporary
# directory) must not pass as fewer files to check.
WANT=$(awk -v M="$W/missing" "$OK_LINE"' BEGIN { while ((getline l < M) > 0) miss[l] = 1 }
  ok($0) && !(substr($0, 67) in miss) { n++ } END { print n + 0 }' "$W/sums")
[ "$(wc -l < "$W/sums-present" | tr -d ' ')" = "$WANT" ] || fail "checksums.txt: not every listed file could be checked"
if [ -s "$W/sums-present" ]; then
  $SHA -c "$W/sums-present" > "$W/sha.out" 2>&1
  SHA_STATUS=$?
  sed -n 's/: FAILED.*$//p' "$W/sha.out" > "$W/mismatch"
  while IFS= read -r p; do fail "$p: sha256 does not match checksums.txt"; done < "$W/mismatch"
  if [ "$SHA_STATUS" -ne 0 ] && [ ! -s "$W/mismatch" ]; then
    fail "$SHA -c failed: $(cat "$W/sha.out")"
  fi
fi

# --- manifest.json against checksums.txt -------------------------------------------------
grep -F "\"version\":\"$MANIFEST_VERSION\"" manifest.json >/dev/null || fail "manifest.json: version is not $MANIFEST_VERSION"
# Canonical JSON: entries come first after bundleId, each {"category","contentType","path","sha256","sizeBytes"}.
sed -e 's/^.*"entries":\[//' -e 's/\],"generatedAt":".*$//' manifest.json \
  | sed 's/"path":"/\
"path":"/g' \
  | sed -n 's/^"path":"\(.*\)","sha256":"\([0-9a-f]\{64\}\)","sizeBytes":[0-9]*}.*$/\2  \1/p' \
  | sed 's/\\"/"/g' | sort > "$W/manifest-entries"
ENTRY_COUNT=$(sed -n 's/.*"totals":{"entryCount":\([0-9]*\),.*/\1/p' manifest.json)
LINES=$(wc -l < "$W/manifest-entries" | tr -d ' ')
[ "$ENTRY_COUNT" = "$LINES" ] || fail "manifest.json: totals.entryCount ${ENTRY_COUNT:-?} but $LINES entries were read"
grep -E '^[0-9a-f]{64}  (portal|specs|changelog|sdks)/' "$W/sums" | sort > "$W/asset-sums"
if ! cmp -s "$W/manifest-entries" "$W/asset-sums"; then
  only_in "$W/manifest-entries" "$W/asset-sums" | cut -c67- > "$W/only-manifest"
  only_in "$W/asset-sums" "$W/manifest-entries" | cut -c67- > "$W/only-sums"
  while IFS= read -r p; do fail "$p: manifest.json and checksums.txt disagree (manifest.json lists it with another sha256, or checksums.txt lacks it)"; done < "$W/only-manifest"
  while IFS= read -r p; do fail "$p: checksums.txt and manifest.json disagree (manifest.json lacks it or lists another sha256)"; done < "$W/only-sums"
fi

# --- The bundle's own files against manifest.json (signed: the script and instructions a user
# runs or reads are covered by the signature, not only by the unsigned checksums.txt) --------
for f in instructions-portable.txt verify-offline.sh; do
  WANT=$(sed -n 's/.*"bundleFiles":{[^}]*"'"$f"'":"\([0-9a-f]\{64\}\)".*/\1/p' manifest.json)
  if [ -z "$WANT" ]; then
    fail "manifest.json: bundleFiles does not cover $f"
  elif [ -f "$f" ] && [ "$(sha_of "$f")" != "$WANT" ]; then
    fail "$f: sha256 differs from manifest.json bundleFiles (the bundle's $f was replaced)"
  fi
done

check_signature manifest.json manifest.dsse.json

# --- Verdict -----------------------------------------------------------------------------
if [ "$CONTENT_FAILED" -ne 0 ]; then echo "FAILED: the bundle in $DIR does not verify" >&2; exit 2; fi
if [ "$SIG_FAILED" -ne 0 ]; then echo "FAILED: the signature of the bundle in $DIR does not verify" >&2; exit 3; fi
BUNDLE_ID=$(sed -n 's/.*"bundleId":"\([0-9a-f-]*\)".*/\1/p' manifest.json)
COUNT=$(wc -l < "$W/listed" | tr -d ' ')
echo "OK: bundle $BUNDLE_ID verified: $COUNT files, root $ROOT${SIGNED:+, signature ($SIGNED) valid}"
exit 0
