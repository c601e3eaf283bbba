#!/usr/bin/env python3
"""An outside client of the gateway (`exportctl serve`), written against the contract only.

    gateway_client.py keys DIR          writes DIR/jwks.json and the issuer's and client's keys
    gateway_client.py run BASE DIR      drives a run end to end with DPoP (RFC 9449), follows its
                                        events with sseclient-py, resumes with Last-Event-ID,
                                        downloads every output, and checks every JSON reply
                                        against the server's OpenAPI document with openapi-core
                                        (the document itself with openapi-spec-validator)

Tokens and proofs are minted here with `cryptography` (ES256, raw r||s signatures), not with
the server's JOSE library. Prints OK or FAIL: reason (exit 1).
"""
import base64
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import interop_common  # noqa: F401  (re-executes in the interop venv)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://issuer.interop"
AUDIENCE = "export-center"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def jwk(pub):
    n = pub.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}


def thumbprint(pub):
    j = jwk(pub)
    canon = json.dumps({"crv": j["crv"], "kty": j["kty"], "x": j["x"], "y": j["y"]}, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canon.encode()).digest())


def sign(key, header, claims):
    msg = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(msg.encode(), ec.ECDSA(hashes.SHA256())))
    return msg + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def load(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def keys(d):
    os.makedirs(d, exist_ok=True)
    for name in ("issuer", "client"):
        k = ec.generate_private_key(ec.SECP256R1())
        with open(os.path.join(d, name + ".pem"), "wb") as f:
            f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    issuer = load(os.path.join(d, "issuer.pem"))
    j = jwk(issuer.public_key())
    j.update({"kid": "interop-1", "alg": "ES256", "use": "sig"})
    with open(os.path.join(d, "jwks.json"), "w") as f:
        json.dump({"keys": [j]}, f)
    print("OK")


class Client:
    def __init__(self, base, d):
        self.base = base.rstrip("/")
        self.issuer = load(os.path.join(d, "issuer.pem"))
        self.client = load(os.path.join(d, "client.pem"))
        now = int(time.time())
        self.token = sign(self.issuer, {"alg": "ES256", "typ": "at+jwt", "kid": "interop-1"}, {
            "iss": ISSUER, "aud": AUDIENCE, "sub": "interop", "iat": now, "exp": now + 600,
            "scope": "export:read export:write export:profile:manage", "tenants": ["acme"],
            "cnf": {"jkt": thumbprint(self.client.public_key())}})
        self.checked = []  # (method, path, status, content-type, body) for OpenAPI validation

    def proof(self, method, url, jti=None):
        htu = url.split("?")[0]
        return sign(self.client, {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk(self.client.public_key())}, {
            "jti": jti or str(uuid.uuid4()), "htm": method, "htu": htu, "iat": int(time.time()),
            "ath": b64(hashlib.sha256(self.token.encode()).digest())})

    def request(self, method, path, body=None, headers=None, proof=None, raw=False):
        url = self.base + path
        h = {"Authorization": "DPoP " + self.token, "DPoP": proof or self.proof(method, url), "X-StellaOps-Tenant": "acme"}
        h.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=h, method=method)
        try:
            resp = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            resp = e
        if raw:
            return resp
        content = resp.read()
        ctype = resp.headers.get("Content-Type", "")
        self.checked.append((method, path, resp.status, ctype, content))
        return resp.status, resp.headers, (json.loads(content) if ctype.startswith("application/json") else content)


def validate_openapi(c, spec):
    from openapi_core import OpenAPI
    from openapi_core.testing import MockRequest, MockResponse
    from openapi_spec_validator import validate as validate_spec

    validate_spec(spec)
    if not spec.get("openapi", "").startswith("3.1"):
        fail("not OpenAPI 3.1: %s" % spec.get("openapi"))
    api = OpenAPI.from_dict(spec)
    n = 0
    for method, path, status, ctype, body in c.checked:
        if not ctype.startswith("application/json"):
            continue
        p, _, q = path.partition("?")
        args = dict(kv.split("=", 1) for kv in q.split("&") if "=" in kv)
        req = MockRequest(c.base, method.lower(), p, args=args)
        resp = MockResponse(body, status_code=status, content_type="application/json")
        try:
            api.validate_response(req, resp)
        except Exception as e:  # noqa: BLE001 - report every validator error the same way
            fail("%s %s -> %d does not match the OpenAPI document: %s: %s" % (method, path, status, type(e).__name__, e))
        n += 1
    return n


def run(base, d):
    import sseclient

    c = Client(base, d)
    status, headers, spec = c.request("GET", "/export-center/openapi.json")
    if status != 200:
        fail("openapi.json: %d" % status)
    status, headers, accepted = c.request("POST", "/export-center/runs", {"profileId": "json:raw"},
                                          headers={"Idempotency-Key": "interop-1"})
    if status != 202:
        fail("POST /runs: %d %s" % (status, accepted))
    run_id = accepted["runId"]
    # Same key, same body: the first reply again.
    status2, headers2, again = c.request("POST", "/export-center/runs", {"profileId": "json:raw"},
                                         headers={"Idempotency-Key": "interop-1"})
    if (status2, again) != (status, accepted) or headers2.get("Idempotent-Replayed") != "true":
        fail("idempotent replay differs: %s %s" % (status2, again))
    status, _, conflict = c.request("POST", "/export-center/runs", {"profileId": "json:raw", "priority": "high"},
                                    headers={"Idempotency-Key": "interop-1"})
    if status != 409 or conflict.get("code") != "ERR_EXPORT_CONFLICT":
        fail("reused key with another body: %s %s" % (status, conflict))

    # Events through a third-party SSE client.
    resp = c.request("GET", "/export-center/runs/%s/events" % run_id, raw=True)
    if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
        fail("events content type %s" % resp.headers.get("Content-Type"))
    events = [(int(e.id), e.event, json.loads(e.data)) for e in sseclient.SSEClient(resp).events()]
    names = [e[1] for e in events]
    if names[:1] != ["started"] or names[-1:] != ["completed"] or "artifact_ready" not in names:
        fail("event sequence %s" % names)
    if [e[0] for e in events] != list(range(1, len(events) + 1)):
        fail("event ids %s" % [e[0] for e in events])
    resp = c.request("GET", "/export-center/runs/%s/events" % run_id, raw=True,
                     headers={"Last-Event-ID": str(events[1][0])})
    rest = [(int(e.id), e.event, json.loads(e.data)) for e in sseclient.SSEClient(resp).events()]
    if rest != events[2:]:
        fail("resume after %d gave %s" % (events[1][0], [e[0] for e in rest]))

    status, _, view = c.request("GET", "/export-center/runs/" + run_id)
    if status != 200 or view["status"] != "succeeded":
        fail("run view %s %s" % (status, view))
    ready = {e[2]["path"]: e[2]["sha256"] for e in events if e[1] == "artifact_ready"}
    for o in view["outputs"]:
        with urllib.request.urlopen(c.base + o["url"], timeout=30) as r:  # signed URL: no credentials
            data = r.read()
            digest = r.headers.get("Digest", "")
        if hashlib.sha256(data).hexdigest() != o["sha256"] or ready.get(o["path"]) != o["sha256"]:
            fail("download of %s does not match its sha256" % o["path"])
        if digest != "sha-256=" + base64.b64encode(hashlib.sha256(data).digest()).decode():
            fail("Digest header of %s: %s" % (o["path"], digest))

    # More of the contract, each reply validated below.
    c.request("GET", "/export-center/runs?limit=5")
    c.request("GET", "/export-center/profiles")
    status, _, p = c.request("POST", "/export-center/profiles",
                             {"name": "interop", "kind": "json", "variant": "raw", "include": ["advisory"]})
    if status != 201:
        fail("POST /profiles: %s %s" % (status, p))
    c.request("PUT", "/export-center/profiles/" + p["id"], {"name": "interop", "kind": "json", "variant": "raw"})
    c.request("GET", "/export-center/profiles/" + p["id"] + "?revision=1")
    c.request("GET", "/export-center/runs/export-run::acme::absent")
    c.request("POST", "/export-center/runs", {"profileId": "json:raw", "targets": ["nonsense"]})
    c.request("POST", "/export-center/runs/%s/cancel" % run_id)
    c.request("GET", "/export-center/distributions/dist-absent")
    c.request("GET", "/export-center/healthz")
    c.request("GET", "/export-center/readyz")
    # A replayed proof is refused (and the refusal has the contract's shape).
    url = c.base + "/export-center/runs"
    fixed = c.proof("GET", url, jti="interop-replay")
    first = c.request("GET", "/export-center/runs", proof=fixed)[0]
    status, _, err = c.request("GET", "/export-center/runs", proof=fixed)
    if first != 200 or status != 401 or err.get("code") != "ERR_EXPORT_UNAUTHENTICATED":
        fail("replayed proof: %s then %s %s" % (first, status, err))
    statuses = sorted({s for _, _, s, _, _ in c.checked})
    n = validate_openapi(c, spec)
    print("OK: run %s, %d events, %d outputs, %d replies valid against the OpenAPI document (statuses %s)"
          % (run_id, len(events), len(view["outputs"]), n, statuses))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "keys":
        keys(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        sys.exit(2)
