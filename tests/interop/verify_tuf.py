#!/usr/bin/env python3
"""Verify a static TUF repository with the reference client (python-tuf 7.0.1 ngclient).

usage: verify_tuf.py <metadata_dir> <targets_dir> [--root trusted_root.json]
                     [--reference-time 2030-01-01T00:00:00Z] [--no-hash-prefix]
                     [--trusted-metadata DIR]

Runs Updater.refresh() (root rotation N.root.json..., timestamp, snapshot, targets: signature
thresholds, versions, meta hashes/lengths, expiry), then get_targetinfo() + download_target()
(length and every hash) for every target path listed in the newest version of any targets-type
metadata file in metadata_dir. Files are served from the two directories by an in-process
fetcher (no sockets); the client cache is a temp dir, the inputs are never written.
--root is the trust anchor (default <metadata_dir>/1.root.json, else root.json: trust on
first use, acceptable for tests only). With consistent_snapshot targets are fetched as
<dir>/<first hash>.<name> unless --no-hash-prefix.
--reference-time pins the clock used for expiry checks by setting the PRIVATE attribute
Updater._trusted_set.reference_time before refresh() (works with tuf 7.0.1; may break on upgrade).
--trusted-metadata DIR is a repository this client verified before (e.g. a base mirror's
tuf/metadata): its timestamp, snapshot and targets are put in the client cache as its trusted
state, so the refresh is an update from it, and an older version served now is a rollback.
Exit 0 = verified; otherwise a `FAIL:` line, exit 1 (2 = bad input).
"""
import datetime
import glob
import json
import os
import re
import shutil
import tempfile
from urllib.parse import unquote

import interop_common as ic
from interop_common import Fail
from tuf.api import exceptions
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

METADATA_URL, TARGETS_URL = "local://metadata/", "local://targets/"


class DirFetcher(FetcherInterface):
    """Serves local://metadata/... and local://targets/... from two directories."""

    def __init__(self, metadata_dir, targets_dir):
        self.dirs = {METADATA_URL: os.path.realpath(metadata_dir), TARGETS_URL: os.path.realpath(targets_dir)}

    def _fetch(self, url):
        for base, root in self.dirs.items():
            if url.startswith(base):
                path = os.path.realpath(os.path.join(root, unquote(url[len(base):])))
                if not path.startswith(root + os.sep) or not os.path.isfile(path):
                    raise exceptions.DownloadHTTPError("not found: %s" % url, 404)
                with open(path, "rb") as f:
                    return iter([f.read()])
        raise exceptions.DownloadHTTPError("unknown url %s" % url, 404)


def listed_targets(metadata_dir):
    """Target paths of the newest version of each targets-type role file (untrusted: the
    Updater decides whether each path is really reachable through trusted delegations)."""
    newest = {}
    for path in glob.glob(os.path.join(metadata_dir, "*.json")):
        try:
            with open(path, "rb") as f:
                signed = json.load(f)["signed"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        role = re.sub(r"^\d+\.", "", os.path.basename(path))[: -len(".json")]
        if isinstance(signed, dict) and signed.get("_type") == "targets":
            version = signed.get("version") if isinstance(signed.get("version"), int) else 0
            if role not in newest or version > newest[role][0]:
                newest[role] = (version, sorted(signed.get("targets") or {}))
    return sorted({t for _, ts in newest.values() for t in ts})


def seed_cache(prev, cache):
    """Copies the current timestamp, snapshot and targets of the repository in `prev` into the
    client cache under the names ngclient keeps them by."""
    def signed(name):
        try:
            with open(os.path.join(prev, name), "rb") as f:
                return json.load(f)["signed"]
        except (OSError, ValueError, KeyError) as e:
            raise Fail("--trusted-metadata: %s: %s" % (name, e), 2)

    sv = signed("timestamp.json")["meta"]["snapshot.json"]["version"]
    snap = "%d.snapshot.json" % sv if os.path.isfile(os.path.join(prev, "%d.snapshot.json" % sv)) else "snapshot.json"
    tv = signed(snap)["meta"]["targets.json"]["version"]
    targets = "%d.targets.json" % tv if os.path.isfile(os.path.join(prev, "%d.targets.json" % tv)) else "targets.json"
    for src, dst in (("timestamp.json", "timestamp.json"), (snap, "snapshot.json"), (targets, "targets.json")):
        shutil.copyfile(os.path.join(prev, src), os.path.join(cache, dst))
    print("trusted state: timestamp and snapshot v%d, targets v%d from %s" % (sv, tv, prev))


def parse_time(s):
    try:
        t = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise Fail("--reference-time %r is not ISO 8601 (e.g. 2030-01-01T00:00:00Z)" % s, 2)
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def main():
    ap = ic.arg_parser(__doc__)
    ap.add_argument("metadata_dir")
    ap.add_argument("targets_dir")
    ap.add_argument("--root", help="trusted root metadata (trust anchor)")
    ap.add_argument("--reference-time", help="ISO 8601 time for expiry checks (sets a private attribute)")
    ap.add_argument("--no-hash-prefix", action="store_true", help="targets are stored without <hash>. prefix")
    ap.add_argument("--trusted-metadata", help="metadata this client trusted before (rollback checks)")
    a = ap.parse_args()
    for d in (a.metadata_dir, a.targets_dir):
        if not os.path.isdir(d):
            raise Fail("%s is not a directory" % d, 2)
    root = a.root or next((p for p in (os.path.join(a.metadata_dir, n) for n in ("1.root.json", "root.json"))
                           if os.path.isfile(p)), None)
    if not root:
        raise Fail("no --root given and no 1.root.json/root.json in %s" % a.metadata_dir, 2)
    print("trust anchor: %s%s" % (root, "" if a.root else " (trust on first use)"))
    with open(root, "rb") as f:
        bootstrap = f.read()
    ref_time = parse_time(a.reference_time) if a.reference_time else None
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        if a.trusted_metadata:
            seed_cache(a.trusted_metadata, cache)
        try:
            up = Updater(metadata_dir=cache, metadata_base_url=METADATA_URL, target_base_url=TARGETS_URL,
                         target_dir=out, fetcher=DirFetcher(a.metadata_dir, a.targets_dir),
                         config=UpdaterConfig(prefix_targets_with_hash=not a.no_hash_prefix), bootstrap=bootstrap)
            if ref_time:
                up._trusted_set.reference_time = ref_time  # private attribute of tuf 7.0.1
                print("reference time: %s" % ref_time.isoformat())
            up.refresh()
        except exceptions.ExpiredMetadataError as e:
            raise Fail("expired metadata: %s" % e)
        except (exceptions.RepositoryError, exceptions.DownloadError, ValueError) as e:
            raise Fail("metadata refresh: %s: %s" % (type(e).__name__, e))
        ts = up._trusted_set
        print("metadata ok: root v%d (spec %s, consistent_snapshot=%s), timestamp v%d, snapshot v%d, targets v%d"
              % (ts.root.version, ts.root.spec_version, ts.root.consistent_snapshot, ts.timestamp.version,
                 ts.snapshot.version, ts.targets.version))
        paths = listed_targets(a.metadata_dir)
        if not paths:
            raise Fail("no targets listed in any targets metadata in %s" % a.metadata_dir)
        for p in paths:
            try:
                info = up.get_targetinfo(p)
                if info is None:
                    raise Fail("target %r is listed but not reachable through trusted delegations" % p)
                up.download_target(info, os.path.join(out, "%d" % paths.index(p)))
            except (exceptions.RepositoryError, exceptions.DownloadError) as e:
                raise Fail("target %r: %s: %s" % (p, type(e).__name__, e))
            print("target ok: %s (%d bytes, %s)" % (p, info.length, ", ".join(sorted(info.hashes))))
    print("OK: TUF repository verified (%d targets)" % len(paths))


if __name__ == "__main__":
    ic.run(main)
