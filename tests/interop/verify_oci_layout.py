#!/usr/bin/env python3
"""Integrity check of an OCI image layout directory (image-spec 1.0/1.1).

usage: verify_oci_layout.py <layout-dir> [--strict-orphans]

Checks: `oci-layout` is {"imageLayoutVersion": "1.0.0"}; index.json has schemaVersion 2 and a
manifests list; every descriptor reachable from index.json (nested indexes -> manifests ->
config, layers, blobs) has a well-formed mediaType and sha256/sha512 digest, and blobs/<alg>/<hex>
exists with exactly that size and digest; manifests/indexes parse as JSON with schemaVersion 2,
their own mediaType (if set) equals the descriptor's, and manifests have a config descriptor and a
layers list. Blobs not reachable from index.json are listed (a failure with --strict-orphans).
Exit 0 with an `OK:` summary; otherwise `ERROR:` lines, a `FAIL:` line and exit 1 (2 = bad input).
"""
import hashlib
import json
import os
import re

import interop_common as ic
from interop_common import Fail

HEX = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "sha512": re.compile(r"^[0-9a-f]{128}$")}
MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]{0,126}/[A-Za-z0-9][\w!#$&^.+-]{0,126}$")
INDEX = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST = {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}
REF_NAME = "org.opencontainers.image.ref.name"


class Walker:
    def __init__(self, root):
        self.root, self.errors, self.seen, self.sizes = root, [], set(), {}
        self.counts = {"index": 0, "manifest": 0, "blob": 0}

    def error(self, where, msg):
        self.errors.append(msg)
        print("ERROR: %s: %s" % (where, msg))

    def blob(self, desc, where):
        """Checks a descriptor and its blob; returns the bytes or None."""
        if not isinstance(desc, dict):
            return self.error(where, "descriptor is not an object")
        mt, digest, size = desc.get("mediaType"), desc.get("digest"), desc.get("size")
        if not isinstance(mt, str) or not MEDIA_TYPE.match(mt):
            self.error(where, "bad mediaType %r" % mt)
        alg, _, hx = digest.partition(":") if isinstance(digest, str) else ("", "", "")
        if alg not in HEX or not HEX[alg].match(hx):
            return self.error(where, "bad digest %r (need sha256/sha512 with lowercase hex)" % digest)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return self.error(where, "bad size %r" % size)
        if digest in self.seen:  # shared blob: checked and walked already, the sizes must agree
            if self.sizes.get(digest, size) != size:
                self.error(where, "size %d != %d given elsewhere for %s" % (size, self.sizes[digest], digest))
            return None
        self.seen.add(digest)
        path = os.path.join(self.root, "blobs", alg, hx)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return self.error(where, "blob %s missing" % digest)
        self.counts["blob"] += 1
        self.sizes[digest] = len(data)
        if len(data) != size:
            return self.error(where, "blob %s is %d bytes, descriptor says %d" % (digest, len(data), size))
        if hashlib.new(alg, data).hexdigest() != hx:
            return self.error(where, "blob %s content hashes to %s:%s" % (digest, alg, hashlib.new(alg, data).hexdigest()))
        return data

    def walk(self, desc, where):
        data = self.blob(desc, where)
        mt = desc.get("mediaType") if isinstance(desc, dict) else None
        if data is None or mt not in INDEX | MANIFEST:
            return
        try:
            doc = json.loads(data)
            assert isinstance(doc, dict)
        except (ValueError, AssertionError):
            return self.error(where, "%s is not a JSON object" % mt)
        if doc.get("schemaVersion") != 2:
            self.error(where, "schemaVersion %r != 2" % doc.get("schemaVersion"))
        if doc.get("mediaType") not in (None, mt):
            self.error(where, "descriptor mediaType %s != document mediaType %s" % (mt, doc["mediaType"]))
        if mt in INDEX:
            self.counts["index"] += 1
            children = doc.get("manifests")
            if not isinstance(children, list):
                return self.error(where, "index lacks a manifests list")
            for i, c in enumerate(children):
                self.walk(c, "%s.manifests[%d]" % (where, i))
            return
        self.counts["manifest"] += 1
        if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
            return self.error(where, "manifest needs a config descriptor and a layers list")
        self.walk(doc["config"], where + ".config")
        for key in ("layers", "blobs"):
            for i, d in enumerate(doc.get(key) or []):
                self.walk(d, "%s.%s[%d]" % (where, key, i))
        if isinstance(doc.get("subject"), dict):  # a referrer: its subject may live elsewhere
            print("  %s: subject %s" % (where, doc["subject"].get("digest")))


def main():
    ap = ic.arg_parser(__doc__)
    ap.add_argument("layout")
    ap.add_argument("--strict-orphans", action="store_true", help="fail on blobs not reachable from index.json")
    a = ap.parse_args()
    if not os.path.isdir(a.layout):
        raise Fail("%s is not a directory" % a.layout, 2)
    w = Walker(a.layout)
    layout = ic.read_json(os.path.join(a.layout, "oci-layout"), "oci-layout")
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
        w.error("oci-layout", "imageLayoutVersion must be \"1.0.0\": %r" % layout)
    index = ic.read_json(os.path.join(a.layout, "index.json"), "index.json")
    if not isinstance(index, dict) or index.get("schemaVersion") != 2 or not isinstance(index.get("manifests"), list):
        raise Fail("index.json needs schemaVersion 2 and a manifests list")
    if index.get("mediaType") not in (None, "application/vnd.oci.image.index.v1+json"):
        w.error("index.json", "mediaType %r" % index["mediaType"])
    tags = []
    for i, d in enumerate(index["manifests"]):
        where, d = "index.json.manifests[%d]" % i, d if isinstance(d, dict) else {}
        tag = (d.get("annotations") or {}).get(REF_NAME)
        tags.append(tag)
        print("%s: %s %s tag=%s" % (where, d.get("mediaType"), d.get("digest"), tag))
        if d.get("mediaType") not in INDEX | MANIFEST:
            w.error(where, "mediaType %r is not an image manifest or index" % d.get("mediaType"))
        w.walk(d, where)
    dups = sorted({t for t in tags if t and tags.count(t) > 1})
    if dups:
        print("WARNING: tags used more than once (ambiguous for skopeo): %s" % dups)
    on_disk = set()
    for alg in sorted(os.listdir(os.path.join(a.layout, "blobs"))) if os.path.isdir(os.path.join(a.layout, "blobs")) else []:
        on_disk.update("%s:%s" % (alg, h) for h in os.listdir(os.path.join(a.layout, "blobs", alg)))
    orphans = sorted(on_disk - w.seen)
    if orphans:
        msg = "%d blob(s) not reachable from index.json: %s" % (len(orphans), " ".join(orphans))
        w.error("blobs", msg) if a.strict_orphans else print("WARNING: " + msg)
    if w.errors:
        raise Fail("OCI layout %s has %d error(s)" % (a.layout, len(w.errors)))
    c = w.counts
    print("OK: OCI layout valid: %d index entries (tags: %s), %d manifest(s), %d nested index(es), %d blobs verified%s"
          % (len(index["manifests"]), ", ".join(t for t in tags if t) or "none", c["manifest"], c["index"], c["blob"],
             ", %d orphan(s)" % len(orphans) if orphans else ""))


if __name__ == "__main__":
    ic.run(main)
