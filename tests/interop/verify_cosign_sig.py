#!/usr/bin/env python3
"""Verify a cosign key-based ("simple signing", tag-scheme) image signature in an OCI layout.

usage: verify_cosign_sig.py <oci-layout-dir> <cosign.pub> [--tag T | --digest sha256:...]
                            [--docker-reference REF]

The image (by --digest, by index.json tag --tag, or the only tag not named sha256-*) has manifest
digest D = sha256:<hex>. Its signatures are the manifest tagged "sha256-<hex>.sig"
(index.json annotation org.opencontainers.image.ref.name). Each layer of media type
application/vnd.dev.cosign.simplesigning.v1+json is a payload blob (digest and size checked) with
annotation dev.cosignproject.cosign/signature = base64 signature over the exact blob bytes:
ECDSA P-256 (ASN.1 DER over SHA-256), ed25519, or RSA PKCS#1 v1.5 SHA-256. The payload must have
critical.type "cosign container image signature", critical.image.docker-manifest-digest == D and,
with --docker-reference, critical.identity.docker-reference == REF.
Same semantics as `cosign verify --key cosign.pub --insecure-ignore-tlog` (no Rekor/bundle checks).
Exit 0 if at least one signature layer is valid; otherwise a `FAIL:` line, exit 1 (2 = bad input).
"""
import hashlib
import json
import os
import re

import interop_common as ic
from interop_common import Fail

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIG_ANNOTATION = "dev.cosignproject.cosign/signature"
SIG_TYPE = "cosign container image signature"
REF_NAME = "org.opencontainers.image.ref.name"


def read_blob(layout, desc):
    """Blob bytes for a descriptor; its sha256 and size must match."""
    digest = desc.get("digest", "") if isinstance(desc, dict) else ""
    if not re.match(r"^sha256:[0-9a-f]{64}$", digest):
        raise Fail("bad descriptor digest %r" % digest)
    try:
        with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "rb") as f:
            data = f.read()
    except OSError:
        raise Fail("blob %s missing from layout" % digest)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise Fail("blob %s content does not match its digest" % digest)
    if "size" in desc and desc["size"] != len(data):
        raise Fail("blob %s is %d bytes, descriptor says %r" % (digest, len(data), desc["size"]))
    return data


def check_layer(layout, layer, key, digest, reference):
    payload = read_blob(layout, layer)
    sig = ic.b64decode((layer.get("annotations") or {}).get(SIG_ANNOTATION), "annotation " + SIG_ANNOTATION)
    try:
        note = ic.verify_signature(key, sig, payload, rsa_padding="pkcs1", allow_raw_ecdsa=False)
    except (ic.InvalidSignature, ValueError) as e:
        raise Fail("signature does not verify with the key (%s)" % (str(e) or "bad signature"))
    try:
        critical = json.loads(payload)["critical"]
        got_type, got_digest = critical["type"], critical["image"]["docker-manifest-digest"]
        got_ref = critical.get("identity", {}).get("docker-reference")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise Fail("payload is not a simple-signing document: %s %s" % (type(e).__name__, e))
    if got_type != SIG_TYPE:
        raise Fail("critical.type %r != %r" % (got_type, SIG_TYPE))
    if got_digest != digest:
        raise Fail("critical.image.docker-manifest-digest %s != image digest %s" % (got_digest, digest))
    if reference is not None and got_ref != reference:
        raise Fail("critical.identity.docker-reference %r != %r" % (got_ref, reference))
    return "%s, docker-reference=%s" % (note, got_ref)


def main():
    ap = ic.arg_parser(__doc__)
    ap.add_argument("layout")
    ap.add_argument("public_key")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--tag", help="image tag (index.json ref.name)")
    g.add_argument("--digest", help="image manifest digest sha256:<hex>")
    ap.add_argument("--docker-reference", help="require critical.identity.docker-reference == REF")
    a = ap.parse_args()
    index = ic.read_json(os.path.join(a.layout, "index.json"), "index.json")
    tags = {}
    for d in index.get("manifests", []) if isinstance(index, dict) else []:
        name = ((d.get("annotations") if isinstance(d, dict) else None) or {}).get(REF_NAME)
        if name:
            tags.setdefault(name, d)
    key = ic.load_public_key(a.public_key)
    if a.digest:
        digest = a.digest
    elif a.tag:
        if a.tag not in tags:
            raise Fail("tag %r not in index.json (tags: %s)" % (a.tag, sorted(tags)), 2)
        digest = tags[a.tag].get("digest")
    else:
        images = [t for t in tags if not t.startswith("sha256-")]
        if len(images) != 1:
            raise Fail("pass --tag or --digest (image tags in layout: %s)" % images, 2)
        print("image tag: %s" % images[0])
        digest = tags[images[0]].get("digest")
    if not isinstance(digest, str) or not re.match(r"^sha256:[0-9a-f]{64}$", digest):
        raise Fail("image digest %r is not sha256:<64 hex>" % digest, 2)
    if os.path.isfile(os.path.join(a.layout, "blobs", "sha256", digest[7:])):
        read_blob(a.layout, {"digest": digest})
        print("image digest: %s (manifest present and intact)" % digest)
    else:
        print("image digest: %s (manifest not in this layout)" % digest)
    sig_tag = "sha256-%s.sig" % digest[7:]
    if sig_tag not in tags:
        raise Fail("no signature manifest tagged %s in %s" % (sig_tag, a.layout))
    try:
        manifest = json.loads(read_blob(a.layout, tags[sig_tag]))
        layers = [d for d in manifest["layers"] if isinstance(d, dict) and d.get("mediaType") == SIMPLESIGNING]
    except (ValueError, KeyError, TypeError) as e:
        raise Fail("signature manifest %s unreadable: %s %s" % (sig_tag, type(e).__name__, e))
    if not layers:
        raise Fail("signature manifest %s has no %s layers" % (sig_tag, SIMPLESIGNING))
    valid = 0
    for i, layer in enumerate(layers):
        try:
            print("signature layer[%d]: valid (%s)" % (i, check_layer(a.layout, layer, key, digest, a.docker_reference)))
            valid += 1
        except Fail as e:
            print("signature layer[%d]: invalid: %s" % (i, e))
    if not valid:
        raise Fail("no valid cosign signature for %s with %s" % (digest, a.public_key))
    print("OK: cosign signature verified for %s (%d of %d layers valid)" % (digest, valid, len(layers)))


if __name__ == "__main__":
    ic.run(main)
