#!/usr/bin/env python3
"""Verify a DSSE envelope with a public key.

usage: verify_dsse.py <envelope.json> <public_key.pem> [--payload-type T] [--no-sslib]

Signatures are over PAE = "DSSEv1" SP LEN(T) SP T SP LEN(BODY) SP BODY (BODY = decoded payload).
Keys: ed25519 (raw 64-byte sig), ECDSA P-256 (DER over SHA-256; raw r||s accepted but flagged
"RAW r||s (not DER!)"), RSA (PSS, MGF1-SHA-256). Exit 0 iff at least one signature verifies
(and securesystemslib agrees unless --no-sslib); otherwise a `FAIL:` line, exit 1 (2 = bad input).
"""

import interop_common as ic


def main():
    ap = ic.arg_parser(__doc__)
    ap.add_argument("envelope")
    ap.add_argument("public_key")
    ap.add_argument("--payload-type", help="require this exact payloadType")
    ap.add_argument("--no-sslib", action="store_true", help="skip the securesystemslib cross-check")
    a = ap.parse_args()
    env = ic.read_json(a.envelope, "envelope")
    key = ic.load_public_key(a.public_key)
    _, accepted = ic.check_dsse(env, key, a.payload_type)
    if not a.no_sslib:
        from securesystemslib.dsse import Envelope
        ic.cross_check(env, key, accepted, Envelope, "securesystemslib")
    print("OK: DSSE envelope verified (%d of %d signatures valid)" % (len(accepted), len(env["signatures"])))


if __name__ == "__main__":
    ic.run(main)
