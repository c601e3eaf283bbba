#!/usr/bin/env python3
"""Verify a DSSE-signed in-toto Statement v1 (with SLSA Provenance v1) against artifact files.

usage: verify_intoto.py <envelope.json> <public_key.pem> <artifact files...>
                        [--allow-extra-subjects] [--no-slsa]

Checks: DSSE signature as verify_dsse.py, payloadType application/vnd.in-toto+json;
_type https://in-toto.io/Statement/v1; subject non-empty, each digest.sha256 64 lowercase hex;
each file's sha256 equals the subject with the same basename (any subject if no name matches);
every subject is covered by a file unless --allow-extra-subjects; unless --no-slsa,
predicateType https://slsa.dev/provenance/v1 with buildDefinition.buildType (string),
.externalParameters (object), resolvedDependencies entries with uri/digest/content and
runDetails.builder.id (string). Cross-checks with in_toto.models.metadata.Envelope.
Exit 0 = verified; otherwise a `FAIL:` line, exit 1 (2 = bad input).
"""
import json
import os
import re

import interop_common as ic
from interop_common import Fail

INTOTO_TYPE = "application/vnd.in-toto+json"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
SLSA_V1 = "https://slsa.dev/provenance/v1"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_subjects(st, files, allow_extra):
    subjects = st.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise Fail("statement subject must be a non-empty list")
    for i, s in enumerate(subjects):
        d = s.get("digest") if isinstance(s, dict) else None
        if not isinstance(d, dict) or not isinstance(d.get("sha256"), str) or not HEX64.match(d["sha256"]):
            raise Fail("subject[%d] needs digest.sha256 as 64 lowercase hex: %r" % (i, s))
    covered = set()
    for path in files:
        try:
            h = ic.sha256_file(path)
        except OSError as e:
            raise Fail("cannot read artifact %s: %s" % (path, e), 2)
        base = os.path.basename(path)
        named = [i for i, s in enumerate(subjects) if os.path.basename(str(s.get("name", ""))) == base]
        pool = named or range(len(subjects))
        hit = [i for i in pool if subjects[i]["digest"]["sha256"] == h]
        if not hit:
            where = "subject %r" % subjects[named[0]].get("name") if named else "any subject"
            raise Fail("artifact %s sha256 %s does not match %s" % (path, h, where))
        covered.update(hit)
        print("subject ok: %s sha256=%s" % (path, h))
    extra = [s.get("name") for i, s in enumerate(subjects) if i not in covered]
    if extra and not allow_extra:
        raise Fail("subjects not covered by the given files: %s (use --allow-extra-subjects)" % extra)


def need(obj, path, typ, what):
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    if not isinstance(obj, typ) or (typ is str and not obj):
        raise Fail("SLSA predicate: %s must be %s" % (path, what))
    return obj


def check_slsa(st):
    if st.get("predicateType") != SLSA_V1:
        raise Fail("predicateType %r != %r" % (st.get("predicateType"), SLSA_V1))
    p = st.get("predicate")
    build_type = need(p, "buildDefinition.buildType", str, "a non-empty string")
    need(p, "buildDefinition.externalParameters", dict, "an object")
    builder = need(p, "runDetails.builder.id", str, "a non-empty string")
    deps = p["buildDefinition"].get("resolvedDependencies", [])
    if not isinstance(deps, list):
        raise Fail("SLSA predicate: resolvedDependencies must be a list")
    for i, d in enumerate(deps):
        dig = d.get("digest") if isinstance(d, dict) else None
        if not isinstance(d, dict) or not (isinstance(d.get("uri"), str) or isinstance(d.get("content"), str) or dig):
            raise Fail("SLSA predicate: resolvedDependencies[%d] needs uri, digest or content: %r" % (i, d))
        if dig is not None and not (isinstance(dig, dict) and all(isinstance(v, str) for v in dig.values())):
            raise Fail("SLSA predicate: resolvedDependencies[%d].digest must map algorithm -> hex" % i)
    print("SLSA provenance v1: buildType=%s builder.id=%s resolvedDependencies=%d" % (build_type, builder, len(deps)))


def main():
    ap = ic.arg_parser(__doc__)
    ap.add_argument("envelope")
    ap.add_argument("public_key")
    ap.add_argument("artifacts", nargs="*")
    ap.add_argument("--allow-extra-subjects", action="store_true")
    ap.add_argument("--no-slsa", action="store_true", help="do not require an SLSA provenance v1 predicate")
    a = ap.parse_args()
    env = ic.read_json(a.envelope, "envelope")
    key = ic.load_public_key(a.public_key)
    body, accepted = ic.check_dsse(env, key, INTOTO_TYPE)
    from in_toto.models.metadata import Envelope
    ic.cross_check(env, key, accepted, Envelope, "in-toto")
    try:
        st = json.loads(body)
    except ValueError as e:
        raise Fail("payload is not JSON: %s" % e)
    if not isinstance(st, dict) or st.get("_type") != STATEMENT_V1:
        raise Fail("_type %r != %r" % (st.get("_type") if isinstance(st, dict) else None, STATEMENT_V1))
    check_subjects(st, a.artifacts, a.allow_extra_subjects)
    if a.no_slsa:
        print("predicateType: %s (not checked, --no-slsa)" % st.get("predicateType"))
    else:
        check_slsa(st)
    print("OK: in-toto Statement v1 verified (%d subjects, %d files)" % (len(st["subject"]), len(a.artifacts)))


if __name__ == "__main__":
    ic.run(main)
