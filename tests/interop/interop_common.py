"""Helpers shared by the interop verifiers: venv re-exec, FAIL handling, keys, DSSE.

Importing this module first makes every verifier runnable as `./verify_x.py`: if the third-party
modules are missing from the current interpreter, it re-executes the script with the interop
venv's python (${EXPORTCORE_INTEROP_VENV:-~/.cache/exportcore/interop-venv}, see install.sh).
"""
import argparse
import base64
import hashlib
import json
import os
import sys


def _venv_python():
    venv = os.environ.get("EXPORTCORE_INTEROP_VENV") or os.path.expanduser("~/.cache/exportcore/interop-venv")
    return os.path.abspath(venv), os.path.join(venv, "bin", "python")


try:
    import cryptography  # noqa: F401
    import in_toto  # noqa: F401
    import securesystemslib  # noqa: F401
    import tuf  # noqa: F401
except ImportError as e:
    venv, py = _venv_python()
    if os.path.abspath(sys.prefix) != venv and os.access(py, os.X_OK):
        os.execv(py, [py] + sys.argv)
    print("FAIL: %s; run tests/interop/install.sh (venv %s)" % (e, venv))
    sys.exit(2)

from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402

RAW_NOTE = "ecdsa-p256 RAW r||s (not DER!)"


class Fail(Exception):
    """Verification failure: printed as `FAIL: <msg>`, exit code `code` (1 = rejected, 2 = bad input)."""

    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code


class _ArgParser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are failures too: `FAIL:` line, exit 2
        self.print_usage(sys.stderr)
        print("FAIL: %s" % message)
        sys.exit(2)


def arg_parser(doc):
    return _ArgParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run(main):
    """Runs main(); maps Fail and unexpected errors to a `FAIL:` line and a non-zero exit."""
    try:
        rc = main()
    except Fail as e:
        print("FAIL: %s" % e, flush=True)
        rc = e.code
    except Exception as e:  # a crash is a failure too, never a pass
        print("FAIL: unexpected %s: %s" % (type(e).__name__, e), flush=True)
        rc = 2
    sys.exit(rc or 0)


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_json(path, what):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise Fail("%s %s unreadable: %s" % (what, path, e), 2)


def b64decode(s, what):
    """Standard base64 (padding optional); URL-safe alphabet tolerated."""
    if not isinstance(s, str):
        raise Fail("%s is not a base64 string" % what, 2)
    s = s.strip() + "=" * (-len(s.strip()) % 4)
    try:
        if "-" in s or "_" in s:
            return base64.urlsafe_b64decode(s)
        return base64.b64decode(s, validate=True)
    except ValueError as e:
        raise Fail("%s is not valid base64: %s" % (what, e), 2)


def load_public_key(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Fail("cannot read key %s: %s" % (path, e), 2)
    for load in (serialization.load_pem_public_key, serialization.load_der_public_key):
        try:
            return load(data)
        except ValueError:
            pass
    raise Fail("%s is not a PEM/DER SubjectPublicKeyInfo public key" % path, 2)


def key_kind(key):
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa-%d" % key.key_size
    raise Fail("unsupported key type %s (need ed25519, EC P-256 or RSA)" % type(key).__name__, 2)


def verify_signature(key, sig, msg, rsa_padding="pss", allow_raw_ecdsa=True):
    """Returns a short note naming the scheme that verified; raises InvalidSignature otherwise.
    ed25519: pure, 64 bytes. P-256: ASN.1 DER over SHA-256 (raw 64-byte r||s accepted if allowed,
    flagged by RAW_NOTE). RSA: PSS/MGF1-SHA-256 (DSSE) or PKCS#1 v1.5 SHA-256 (cosign)."""
    kind = key_kind(key)
    if kind == "ed25519":
        key.verify(sig, msg)
        return kind
    if kind == "ecdsa-p256":
        try:
            key.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
            return "ecdsa-p256 DER"
        except (InvalidSignature, ValueError):
            if not (allow_raw_ecdsa and len(sig) == 64):
                raise InvalidSignature("ecdsa-p256 signature does not verify")
        rs = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        key.verify(rs, msg, ec.ECDSA(hashes.SHA256()))
        return RAW_NOTE
    if rsa_padding == "pss":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
        key.verify(sig, msg, pad, hashes.SHA256())
        return kind + " PSS-SHA256"
    key.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
    return kind + " PKCS1v15-SHA256"


def pae(payload_type, body):
    """DSSE v1 pre-authentication encoding: "DSSEv1" SP LEN(T) SP T SP LEN(BODY) SP BODY."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def check_dsse(env, key, payload_type=None):
    """Checks envelope shape, payloadType and the signatures over PAE with `key`.
    Returns (body, accepted) where accepted = [(index, signature dict, note)]; prints per-signature lines."""
    if not isinstance(env, dict):
        raise Fail("envelope is not a JSON object", 2)
    for field in ("payload", "payloadType", "signatures"):
        if field not in env:
            raise Fail("envelope lacks %r" % field, 2)
    ptype, sigs = env["payloadType"], env["signatures"]
    if not isinstance(ptype, str):
        raise Fail("payloadType is not a string", 2)
    print("payloadType: %s" % ptype)
    if payload_type is not None and ptype != payload_type:
        raise Fail("payloadType %r != expected %r" % (ptype, payload_type))
    if not isinstance(sigs, list) or not sigs:
        raise Fail("signatures must be a non-empty list")
    body = b64decode(env["payload"], "payload")
    print("payload sha256=%s (%d bytes)" % (hashlib.sha256(body).hexdigest(), len(body)))
    print("key: %s" % key_kind(key))
    msg, accepted = pae(ptype, body), []
    for i, s in enumerate(sigs):
        kid = s.get("keyid") if isinstance(s, dict) else None
        try:
            sig = b64decode(s.get("sig") if isinstance(s, dict) else None, "signatures[%d].sig" % i)
            note = verify_signature(key, sig, msg)
            print("signature[%d] keyid=%r: valid (%s)" % (i, kid, note))
            accepted.append((i, s, note))
        except (Fail, InvalidSignature, ValueError) as e:
            print("signature[%d] keyid=%r: invalid (%s)" % (i, kid, str(e) or "bad signature"))
    if not accepted:
        raise Fail("none of %d signature(s) verifies with the key" % len(sigs))
    return body, accepted


def sslib_scheme(key):
    kind = key_kind(key)
    return {"ed25519": "ed25519", "ecdsa-p256": "ecdsa-sha2-nistp256"}.get(kind, "rsassa-pss-sha256")


def cross_check(env, key, accepted, envelope_cls, label):
    """Re-verifies each accepted signature with securesystemslib's DSSE code (envelope_cls is
    securesystemslib.dsse.Envelope or a subclass such as in-toto's). Prints `<label> cross-check: ok`."""
    from securesystemslib.signer import SSlibKey
    if any(note == RAW_NOTE for _, _, note in accepted):
        print("%s cross-check: skipped (raw r||s signature; securesystemslib requires DER)" % label)
        return
    for i, s, _ in accepted:
        keyid = s.get("keyid") or ""  # securesystemslib matches signatures to keys by keyid
        one = dict(env, signatures=[dict(s, keyid=keyid)])  # fresh dicts: from_dict mutates them
        try:
            e = envelope_cls.from_dict(one)
            e.verify([SSlibKey.from_crypto(key, keyid=keyid, scheme=sslib_scheme(key))], 1)
        except Exception as ex:
            raise Fail("%s cross-check rejects signature[%d]: %s: %s" % (label, i, type(ex).__name__, ex))
    print("%s cross-check: ok" % label)
