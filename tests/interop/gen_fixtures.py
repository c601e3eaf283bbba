#!/usr/bin/env python3
"""Generate good and deliberately broken inputs for selftest.sh (fresh keys every run).

usage: gen_fixtures.py <outdir>      (outdir must not exist or be empty)

  dsse/    envelopes signed with ed25519, P-256 (DER and raw r||s), RSA-PSS, plus tampered ones
  intoto/  in-toto Statement v1 + SLSA provenance v1 envelopes, artifacts and broken variants
  tuf/     python-tuf Metadata API repos (consistent snapshots + a delegation; plain) and variants
  oci/     OCI layouts with an image, a nested index and cosign-style signatures, and variants
SM2 inputs are made by selftest.sh with openssl itself.
"""
import base64
import copy
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

OUT = sys.argv[1] if len(sys.argv) == 2 else sys.exit(__doc__)


def path(*p):
    full = os.path.join(OUT, *p)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    return full


def mkdir(*p):
    os.makedirs(os.path.join(OUT, *p), exist_ok=True)
    return os.path.join(OUT, *p)


def write(rel, data):
    with open(path(rel), "wb") as f:
        f.write(data if isinstance(data, bytes) else json.dumps(data, indent=1).encode())


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def b64(b):
    return base64.b64encode(b).decode()


def flip(b, i=10):
    b = bytearray(b)
    b[i] ^= 1
    return bytes(b)


def new_key(kind, rel=None):
    k = {"ed25519": ed25519.Ed25519PrivateKey.generate, "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
         "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)}[kind]()
    if rel:
        write(rel, k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return k


def sign(key, msg, rsa_pad="pss", raw=False):
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(msg)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        der = key.sign(msg, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big") if raw else der
    pad = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH) if rsa_pad == "pss" else padding.PKCS1v15()
    return key.sign(msg, pad, hashes.SHA256())


def pae(t, body):
    return b"DSSEv1 %d %s %d %s" % (len(t.encode()), t.encode(), len(body), body)


def envelope(key, ptype, body, keyid="k1", raw=False, sig_suffix=b""):
    sig = sign(key, pae(ptype, body), raw=raw) + sig_suffix
    return {"payload": b64(body), "payloadType": ptype, "signatures": [{"keyid": keyid, "sig": b64(sig)}]}


def gen_dsse():
    ptype, body = "application/vnd.exportcore.manifest+json", compact({"entries": [{"path": "a", "sha256": "00" * 32}]})
    write("dsse/payload.bin", body)
    for kind in ("ed25519", "p256", "rsa"):
        k = new_key(kind, "dsse/%s.pub" % kind)
        new_key(kind, "dsse/%s_other.pub" % kind)
        good = envelope(k, ptype, body)
        write("dsse/%s.json" % kind, good)
        write("dsse/%s_tampered_payload.json" % kind, dict(good, payload=b64(flip(body))))
        write("dsse/%s_appended_payload.json" % kind, dict(good, payload=b64(body + b"\n")))
        write("dsse/%s_appended_sig.json" % kind, envelope(k, ptype, body, sig_suffix=b"\0"))
        sig = base64.b64decode(good["signatures"][0]["sig"])
        write("dsse/%s_truncated_sig.json" % kind, dict(good, signatures=[{"keyid": "k1", "sig": b64(sig[:-4])}]))
        if kind == "p256":
            write("dsse/p256_raw.json", envelope(k, ptype, body, raw=True))
            two = envelope(new_key("p256"), ptype, body, keyid="other")
            two["signatures"].append(good["signatures"][0])
            write("dsse/p256_two_sigs.json", two)


def statement(subjects, **over):
    st = {"_type": "https://in-toto.io/Statement/v1", "subject": subjects,
          "predicateType": "https://slsa.dev/provenance/v1",
          "predicate": {"buildDefinition": {"buildType": "https://exportcore.example/run/v1",
                                            "externalParameters": {"profile": "json:policy"},
                                            "resolvedDependencies": [{"uri": "file:samples/a.json",
                                                                      "digest": {"sha256": "11" * 32}}]},
                        "runDetails": {"builder": {"id": "https://exportcore.example/builder"},
                                       "metadata": {"invocationId": "run-1"}}}}
    for dotted, value in over.items():
        *parents, leaf = dotted.split("__")
        node = st
        for p in parents:
            node = node[p]
        node[leaf] = value
    return st


def gen_intoto():
    files = {"bundle.tar.zst": os.urandom(300), "manifest.json": b'{"entries":[]}\n'}
    for name, data in files.items():
        write("intoto/" + name, data)
    write("intoto/tampered/bundle.tar.zst", flip(files["bundle.tar.zst"], 100))
    write("intoto/appended/bundle.tar.zst", files["bundle.tar.zst"] + b"\0")
    subj = [{"name": "out/bundle.tar.zst", "digest": {"sha256": hashlib.sha256(files["bundle.tar.zst"]).hexdigest()}},
            {"name": "manifest.json", "digest": {"sha256": hashlib.sha256(files["manifest.json"]).hexdigest()}}]
    ed, p256 = new_key("ed25519", "intoto/ed25519.pub"), new_key("p256", "intoto/p256.pub")
    new_key("ed25519", "intoto/other.pub")
    pt = "application/vnd.in-toto+json"
    good = compact(statement(subj))
    write("intoto/good_ed25519.json", envelope(ed, pt, good))
    write("intoto/good_p256.json", envelope(p256, pt, good))
    write("intoto/tampered.json", dict(envelope(ed, pt, good), payload=b64(good.replace(b"run-1", b"run-2"))))
    upper = copy.deepcopy(subj)
    upper[1]["digest"]["sha256"] = upper[1]["digest"]["sha256"].upper()
    extra = subj + [{"name": "other.bin", "digest": {"sha256": "22" * 32}}]
    bad = {"ptype": (statement(subj), "application/json"),
           "v01": (statement(subj, _type="https://in-toto.io/Statement/v0.1"), pt),
           "uppercase": (statement(upper), pt),
           "no_subject": (statement([]), pt),
           "no_builder": (statement(subj, predicate__runDetails__builder={}), pt),
           "bad_dep": (statement(subj, predicate__buildDefinition__resolvedDependencies=[{"name": "x"}]), pt),
           "ext_params_list": (statement(subj, predicate__buildDefinition__externalParameters=[]), pt),
           "extra_subject": (statement(extra), pt),
           "not_slsa": (statement(subj, predicateType="https://spdx.dev/Document", predicate={}), pt)}
    for name, (st, ptype) in bad.items():
        write("intoto/%s.json" % name, envelope(ed, ptype, compact(st)))


def gen_tuf():
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import (DelegatedRole, Delegations, Metadata, MetaFile, Root, Snapshot, TargetFile,
                                  Targets, Timestamp)
    expires = datetime.datetime(2099, 1, 1, tzinfo=datetime.timezone.utc)

    def build(name, consistent):
        md, tg = mkdir("tuf", name, "metadata"), mkdir("tuf", name, "targets")
        signers = {r: CryptoSigner.generate_ed25519() for r in ("root", "timestamp", "snapshot", "targets", "exports")}
        root = Root(expires=expires, consistent_snapshot=consistent)
        for role in ("root", "timestamp", "snapshot", "targets"):
            root.add_key(signers[role].public_key, role)
        top, exports = Targets(expires=expires), Targets(expires=expires)
        top.delegations = Delegations(keys={}, roles={"exports": DelegatedRole(
            name="exports", keyids=[], threshold=1, terminating=True, paths=["exports/*"])})
        top.add_key(signers["exports"].public_key, "exports")
        for role, tpath, data in ((top, "readme.txt", b"hello tuf\n"), (top, "dir/data.bin", os.urandom(64)),
                                  (exports, "exports/report.json", b'{"report":1}\n')):
            tf = TargetFile.from_data(tpath, data, ["sha256", "sha512"])
            role.targets[tpath] = tf
            d, _, base = tpath.rpartition("/")
            stored = os.path.join(tg, d, "%s.%s" % (tf.hashes["sha256"], base) if consistent else base)
            os.makedirs(os.path.dirname(stored), exist_ok=True)
            with open(stored, "wb") as f:
                f.write(data)
        snap = Snapshot(expires=expires)
        snap.meta = {"targets.json": MetaFile(1), "exports.json": MetaFile(1)}
        ts = Timestamp(expires=expires)
        ts.snapshot_meta = MetaFile(1)
        for role, signed, fname in (("root", root, "1.root.json"), ("targets", top, "targets.json"),
                                    ("exports", exports, "exports.json"), ("snapshot", snap, "snapshot.json"),
                                    ("timestamp", ts, "timestamp.json")):
            m = Metadata(signed)
            m.sign(signers[role])
            if consistent and role not in ("root", "timestamp"):
                fname = "1." + fname
            m.to_file(os.path.join(md, fname))
        return os.path.join(OUT, "tuf", name)

    cs = build("cs", True)
    build("plain", False)
    variants = {"tampered_target": ("targets", "readme.txt", lambda b: b.replace(b"hello", b"HELLO")),
                "appended_target": ("targets", "readme.txt", lambda b: b + b"x"),
                "tampered_delegated_target": ("targets", "report.json", lambda b: b.replace(b"1", b"2")),
                "tampered_metadata": ("metadata", "1.targets.json", lambda b: b.replace(b"dir/data.bin", b"dir/evil.bin"))}
    for name, (sub, suffix, change) in variants.items():
        dst = os.path.join(OUT, "tuf", name)
        shutil.copytree(cs, dst)
        for dirpath, _, fnames in os.walk(os.path.join(dst, sub)):
            for fn in fnames:
                if fn.endswith(suffix):
                    p = os.path.join(dirpath, fn)
                    with open(p, "rb") as f:
                        data = f.read()
                    with open(p, "wb") as f:
                        f.write(change(data))


class Layout:
    def __init__(self, d):
        self.d, self.index = d, []
        write(os.path.join(d, "oci-layout"), b'{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data, media_type, annotations=None):
        h = hashlib.sha256(data).hexdigest()
        write(os.path.join(self.d, "blobs", "sha256", h), data)
        return dict({"mediaType": media_type, "digest": "sha256:" + h, "size": len(data)},
                    **({"annotations": annotations} if annotations else {}))

    def tag(self, desc, name):
        self.index.append(dict(desc, annotations={"org.opencontainers.image.ref.name": name}))

    def close(self):
        write(os.path.join(self.d, "index.json"), compact({"schemaVersion": 2, "manifests": self.index,
                                                           "mediaType": "application/vnd.oci.image.index.v1+json"}))


OCI_MANIFEST, OCI_CONFIG = "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.config.v1+json"


def make_layout(d, key, ref, tamper=None, signed_digest=None):
    """Image tagged v1 (+ nested index tagged multi) and its cosign signature manifest."""
    L = Layout(os.path.join("oci", d))
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        data = b"hello from exportcore\n"
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mode = len(data), 0o644
        tf.addfile(info, io.BytesIO(data))
    layer = L.blob(gzip.compress(tar.getvalue(), mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = L.blob(compact({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar.getvalue()).hexdigest()]}}), OCI_CONFIG)
    image = L.blob(compact({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}),
                   OCI_MANIFEST)
    L.tag(image, "v1")
    nested = L.blob(compact({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                             "manifests": [dict(image, platform={"architecture": "amd64", "os": "linux"})]}),
                    "application/vnd.oci.image.index.v1+json")
    L.tag(nested, "multi")
    payload = compact({"critical": {"identity": {"docker-reference": ref},
                                    "image": {"docker-manifest-digest": signed_digest or image["digest"]},
                                    "type": "cosign container image signature"}, "optional": None})
    sig = sign(key, payload, rsa_pad="pkcs1")
    sig_layer = L.blob(tamper(payload) if tamper else payload, "application/vnd.dev.cosign.simplesigning.v1+json",
                       {"dev.cosignproject.cosign/signature": b64(sig)})
    sig_config = L.blob(compact({"architecture": "", "os": "", "config": {}, "rootfs": {
        "type": "layers", "diff_ids": [sig_layer["digest"]]}}), OCI_CONFIG)
    sig_manifest = L.blob(compact({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": sig_config,
                                   "layers": [sig_layer]}), OCI_MANIFEST)
    L.tag(sig_manifest, "sha256-%s.sig" % image["digest"][7:])
    L.close()
    return layer["digest"][7:]


def gen_oci():
    ref = "registry.example/exportcore/app"
    p256, ed = new_key("p256", "oci/cosign.pub"), new_key("ed25519", "oci/cosign_ed25519.pub")
    new_key("p256", "oci/other.pub")
    layer_hex = make_layout("layout", p256, ref)
    make_layout("layout_ed25519", ed, ref)
    make_layout("tampered_payload", p256, ref, tamper=lambda p: p.replace(b"exportcore/app", b"exportcore/evil"))
    make_layout("wrong_digest", p256, ref, signed_digest="sha256:" + "ab" * 32)
    good = os.path.join(OUT, "oci", "layout")
    for name in ("bad_blob", "appended_blob", "orphan", "bad_version"):
        shutil.copytree(good, os.path.join(OUT, "oci", name))
    layer = os.path.join(OUT, "oci", "%s", "blobs", "sha256", layer_hex)
    with open(layer % "bad_blob", "r+b") as f:
        f.seek(20)
        f.write(b"\xff")
    with open(layer % "appended_blob", "ab") as f:
        f.write(b"\0")
    write("oci/orphan/blobs/sha256/" + hashlib.sha256(b"orphan\n").hexdigest(), b"orphan\n")
    write("oci/bad_version/oci-layout", b'{"imageLayoutVersion":"2.0.0"}')


if __name__ == "__main__":
    if os.path.isdir(OUT) and os.listdir(OUT):
        sys.exit("gen_fixtures.py: %s is not empty" % OUT)
    gen_dsse()
    gen_intoto()
    gen_tuf()
    gen_oci()
    print("fixtures written to %s" % OUT)
