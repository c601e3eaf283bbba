//! The gateway over real HTTP on loopback: every route and error status, DPoP and its
//! refusals, tenant isolation on every route, idempotency, limits, SSE resume, downloads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use exportcore_gateway::GatewayConfig;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_accepts_a_bound_proof_and_refuses_every_flaw() {
    let idp = Idp::default();
    let server = Server::start(idp.authenticator(), GatewayConfig::default(), false).await;
    let url = server.url("/runs");
    let c = http();
    let token = idp.token(&idp.claims(&["acme"], "export:read export:write", json!({})));
    let call = |token: String, proof: String, url: String| {
        let c = c.clone();
        async move {
            send(
                c.get(&url)
                    .header("authorization", format!("DPoP {token}"))
                    .header("dpop", proof)
                    .header("x-stellaops-tenant", "acme"),
            )
            .await
        }
    };
    // The happy path, with ES256 and with EdDSA tokens.
    let ok = call(token.clone(), idp.proof("GET", &url, &token), url.clone()).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.header("x-stella-quota-limit"), Some("6000"));
    let ed = idp.token_ed(&idp.claims(&["acme"], "export:read", json!({})));
    assert_eq!(call(ed.clone(), idp.proof("GET", &url, &ed), url.clone()).await.status, 200, "EdDSA token");
    // A query string is not part of htu.
    let with_query = format!("{url}?limit=5");
    assert_eq!(call(token.clone(), idp.proof("GET", &url, &token), with_query).await.status, 200);

    // Replayed jti.
    let jti = idp.next_jti();
    let p = idp.proof_with(&idp.client, "GET", &url, &token, 0, &jti);
    assert_eq!(call(token.clone(), p.clone(), url.clone()).await.status, 200);
    let replay = call(token.clone(), p, url.clone()).await;
    let j = replay.expect_error(401, "ERR_EXPORT_UNAUTHENTICATED");
    assert!(j["message"].as_str().unwrap().contains("replayed"), "{j}");
    assert!(replay.header("www-authenticate").unwrap().starts_with("DPoP"));

    let refused = |r: Reply, why: &str| {
        let j = r.expect_error(401, "ERR_EXPORT_UNAUTHENTICATED");
        assert!(j["message"].as_str().unwrap().contains(why), "expected {why:?}: {j}");
        assert!(!j.to_string().contains(&token), "never echo the token");
    };
    // Wrong htm, wrong htu, stale and future iat.
    refused(call(token.clone(), idp.proof("POST", &url, &token), url.clone()).await, "htm");
    refused(call(token.clone(), idp.proof("GET", &server.url("/profiles"), &token), url.clone()).await, "htu");
    let stale = idp.proof_with(&idp.client, "GET", &url, &token, -120, &idp.next_jti());
    refused(call(token.clone(), stale, url.clone()).await, "iat");
    let future = idp.proof_with(&idp.client, "GET", &url, &token, 120, &idp.next_jti());
    refused(call(token.clone(), future, url.clone()).await, "iat");
    // A proof signed by a key the token is not bound to.
    let other = Key::ed(9);
    let p = idp.proof_with(&other, "GET", &url, &token, 0, &idp.next_jti());
    refused(call(token.clone(), p, url.clone()).await, "cnf.jkt");
    // A proof for another token (ath).
    let token2 = idp.token(&idp.claims(&["acme"], "export:read", json!({"sub": "bob"})));
    refused(call(token.clone(), idp.proof("GET", &url, &token2), url.clone()).await, "ath");
    // A proof whose signature does not verify: one character inside the signature changed
    // (the last one would not do: some of its bits are base64url padding).
    let good = idp.proof("GET", &url, &token);
    let at = good.rfind('.').unwrap() + 10;
    let flipped = if &good[at..=at] == "A" { "B" } else { "A" };
    let bad = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
    refused(call(token.clone(), bad, url.clone()).await, "signature");
    // A proof of the wrong type, and one carrying the private key.
    let claims = json!({"jti": idp.next_jti(), "htm": "GET", "htu": url, "iat": now(), "ath": b64(&Sha256::digest(token.as_bytes()))});
    let jwt_typ = idp.client.sign(&json!({"typ": "JWT", "alg": "ES256", "jwk": idp.client.public_jwk()}), &claims);
    refused(call(token.clone(), jwt_typ, url.clone()).await, "typ");
    let mut leaked = idp.client.public_jwk();
    leaked["d"] = json!("AAAA");
    let with_d = idp.client.sign(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": leaked}), &claims);
    refused(call(token.clone(), with_d, url.clone()).await, "private");
    // No proof at all; the Bearer scheme.
    refused(
        send(c.get(&url).header("authorization", format!("DPoP {token}")).header("x-stellaops-tenant", "acme")).await,
        "DPoP proof",
    );
    refused(
        send(
            c.get(&url)
                .header("authorization", format!("Bearer {token}"))
                .header("dpop", idp.proof("GET", &url, &token))
                .header("x-stellaops-tenant", "acme"),
        )
        .await,
        "scheme",
    );
    // Tokens: expired, wrong audience, wrong issuer, not DPoP-bound, signed by an unknown key.
    for (patch, why) in [
        (json!({"exp": now() - 120}), "expired"),
        (json!({"aud": "someone-else"}), "audience"),
        (json!({"iss": "https://evil.test"}), "issuer"),
        (json!({"cnf": null}), "DPoP-bound"),
    ] {
        let t = idp.token(&idp.claims(&["acme"], "export:read", patch));
        refused(call(t.clone(), idp.proof("GET", &url, &t), url.clone()).await, why);
    }
    let rogue = Key::es(42)
        .sign(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}), &idp.claims(&["acme"], "export:read", json!({})));
    refused(call(rogue.clone(), idp.proof("GET", &url, &rogue), url.clone()).await, "signature");

    // Authenticated, but not allowed: 403.
    let no_scope = idp.token(&idp.claims(&["acme"], "export:read", json!({})));
    let r = send(
        c.post(&url)
            .header("authorization", format!("DPoP {no_scope}"))
            .header("dpop", idp.proof("POST", &url, &no_scope))
            .header("x-stellaops-tenant", "acme")
            .header("content-type", "application/json")
            .body(r#"{"profileId":"json:raw"}"#),
    )
    .await;
    assert!(r.expect_error(403, "ERR_EXPORT_FORBIDDEN")["message"].as_str().unwrap().contains("export:write"));
    let other_tenant = idp.token(&idp.claims(&["beta"], "export:read", json!({})));
    let r = call(other_tenant.clone(), idp.proof("GET", &url, &other_tenant), url.clone()).await;
    assert!(r.expect_error(403, "ERR_EXPORT_FORBIDDEN")["message"].as_str().unwrap().contains("tenant acme"));
    // No tenant header: 400 naming it.
    let r = send(
        c.get(&url).header("authorization", format!("DPoP {token}")).header("dpop", idp.proof("GET", &url, &token)),
    )
    .await;
    assert_eq!(r.expect_error(400, "ERR_EXPORT_REQUEST_INVALID")["details"][0]["field"], "X-StellaOps-Tenant");
    // The older tenant header is an alias.
    let r = send(
        c.get(&url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", idp.proof("GET", &url, &token))
            .header("x-stella-tenant", "acme"),
    )
    .await;
    assert_eq!(r.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_runs_and_downloads_through_every_route() {
    let server = Server::start(dev_auth(), GatewayConfig::default(), true).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };

    // Profiles: built-ins and saved ones with immutable revisions.
    let list = acme.get("/profiles").await.json();
    assert!(list["builtin"].as_array().unwrap().iter().any(|p| p["id"] == "json:raw"), "{list}");
    assert_eq!(list["saved"], json!([]));
    let spec =
        json!({"name": "adv-only", "kind": "json", "variant": "raw", "include": ["advisory"], "retentionDays": 3});
    let created = acme.post("/profiles", &spec).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let p = created.json();
    assert_eq!((p["id"].as_str().unwrap(), p["revision"].as_u64()), ("export-profile::acme::adv-only", Some(1)));
    assert_eq!(created.header("location"), Some("/export-center/profiles/export-profile::acme::adv-only"));
    acme.post("/profiles", &spec).await.expect_error(409, "ERR_EXPORT_CONFLICT");
    let mut spec2 = spec.clone();
    spec2["retentionDays"] = json!(5);
    let updated = acme.put("/profiles/export-profile::acme::adv-only", &spec2).await.json();
    assert_eq!((updated["revision"].as_u64(), updated["retentionDays"].as_u64()), (Some(2), Some(5)));
    let r1 = acme.get("/profiles/export-profile::acme::adv-only?revision=1").await.json();
    assert_eq!(r1["retentionDays"], 3, "revision 1 never changes");
    assert_eq!(acme.get("/profiles/export-profile::acme::adv-only").await.json()["revision"], 2);
    let mut renamed = spec.clone();
    renamed["name"] = json!("other");
    acme.put("/profiles/export-profile::acme::adv-only", &renamed)
        .await
        .expect_error(400, "ERR_EXPORT_REQUEST_INVALID");
    acme.post("/profiles", &json!({"name": "x", "kind": "nope", "variant": "raw"}))
        .await
        .expect_error(404, "ERR_EXPORT_PROFILE_NOT_FOUND");
    let bad = acme.post("/profiles", &json!({"name": "Bad Name", "kind": "json", "variant": "raw"})).await;
    assert_eq!(bad.expect_error(400, "ERR_EXPORT_REQUEST_INVALID")["details"][0]["field"], "name");
    let typo = acme.post("/profiles", &json!({"name": "x", "kind": "json", "variant": "raw", "retention": 1})).await;
    typo.expect_error(400, "ERR_EXPORT_REQUEST_INVALID");
    acme.get("/profiles/export-profile::acme::absent").await.expect_error(404, "ERR_EXPORT_PROFILE_NOT_FOUND");

    // A run of the saved profile: its defaults apply, the revision is recorded.
    let run = acme.run_to_end(&json!({"profileId": "export-profile::acme::adv-only"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        (run["profileId"].as_str(), run["kind"].as_str(), run["profileRevision"].as_u64()),
        (Some("export-profile::acme::adv-only"), Some("json:raw"), Some(2))
    );
    assert!(run["expiresAt"].is_string(), "retentionDays 5 came from the profile: {run}");
    // A run may narrow the profile, never widen it.
    let wide = acme.post("/runs", &json!({"profileId": "export-profile::acme::adv-only", "targets": ["vex"]})).await;
    assert_eq!(wide.expect_error(400, "ERR_EXPORT_REQUEST_INVALID")["details"][0]["field"], "targets[0]");

    // Downloads through the signed URLs: bytes, digest headers, ranges, conditional requests.
    let out = run["outputs"].as_array().unwrap().iter().find(|o| o["path"] == "manifest.json").unwrap().clone();
    let url = format!("{}{}", server.base, out["url"].as_str().unwrap());
    let plain = reqwest::Client::new();
    let whole = send(plain.get(&url)).await;
    assert_eq!(whole.status, 200);
    assert_eq!(hex::encode(Sha256::digest(&whole.body)), out["sha256"].as_str().unwrap());
    let etag = whole.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", out["sha256"].as_str().unwrap()));
    let digest = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, Sha256::digest(&whole.body));
    assert_eq!(whole.header("digest"), Some(format!("sha-256={digest}").as_str()));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let part = send(plain.get(&url).header("range", "bytes=5-14")).await;
    assert_eq!((part.status, &part.body[..]), (206, &whole.body[5..15]));
    assert_eq!(part.header("content-range"), Some(format!("bytes 5-14/{}", whole.body.len()).as_str()));
    let tail = send(plain.get(&url).header("range", "bytes=-4")).await;
    assert_eq!(&tail.body[..], &whole.body[whole.body.len() - 4..]);
    let beyond = send(plain.get(&url).header("range", format!("bytes={}-", whole.body.len()))).await;
    beyond.expect_error(416, "ERR_EXPORT_REQUEST_INVALID");
    assert_eq!(send(plain.get(&url).header("if-none-match", &etag)).await.status, 304);
    // A tampered, re-targeted or re-tenanted signed URL is refused.
    for (from, to) in [("sig=", "sig=00"), ("manifest.json", "json-raw.tar.zst"), ("tenant=acme", "tenant=beta")] {
        send(plain.get(url.replacen(from, to, 1))).await.expect_error(403, "ERR_EXPORT_FORBIDDEN");
    }
    // Authenticated download without a signature works for the owner.
    let path = format!("/runs/{}/artifacts/manifest.json", run["runId"].as_str().unwrap());
    assert_eq!(acme.get(&path).await.body, whole.body);

    // distribution.type http: a record whose signed URLs this gateway serves.
    let http_run = acme.run_to_end(&json!({"profileId": "json:raw", "distribution": {"type": "http"}})).await;
    assert_eq!(http_run["status"], "succeeded", "{http_run}");
    let d = &http_run["distributions"][0];
    assert_eq!((d["type"].as_str(), d["status"].as_str()), (Some("http"), Some("succeeded")), "{http_run}");
    let dist = acme.get(&format!("/distributions/{}", d["id"].as_str().unwrap())).await.json();
    assert_eq!(dist["urls"].as_array().unwrap().len(), http_run["outputs"].as_array().unwrap().len());
    for u in dist["urls"].as_array().unwrap() {
        let got = send(plain.get(format!("{}{}", server.base, u["url"].as_str().unwrap()))).await;
        assert_eq!(got.status, 200, "{u}");
        assert_eq!(hex::encode(Sha256::digest(&got.body)), u["sha256"].as_str().unwrap());
    }

    // Listing, filters and paging.
    acme.run_to_end(&json!({"profileId": "json:raw"})).await;
    let page1 = acme.get("/runs?limit=1").await.json();
    assert_eq!(page1["runs"].as_array().unwrap().len(), 1);
    let cursor = page1["nextCursor"].as_str().expect("a second page");
    let page2 = acme.get(&format!("/runs?limit=1&cursor={cursor}")).await.json();
    assert_ne!(page1["runs"][0]["runId"], page2["runs"][0]["runId"]);
    assert_eq!(acme.get("/runs?status=failed").await.json()["runs"], json!([]));
    acme.get("/runs?status=bogus").await.expect_error(400, "ERR_EXPORT_REQUEST_INVALID");
    acme.get("/runs?limit=0").await.expect_error(400, "ERR_EXPORT_REQUEST_INVALID");
    acme.get("/runs?colour=red").await.expect_error(400, "ERR_EXPORT_REQUEST_INVALID");

    // Cancel: a finished run is a conflict; unknown runs are 404.
    let id = run["runId"].as_str().unwrap();
    acme.post(&format!("/runs/{id}/cancel"), &json!({})).await.expect_error(409, "ERR_EXPORT_CONFLICT");
    acme.post("/runs/export-run::acme::nope/cancel", &json!({})).await.expect_error(404, "ERR_EXPORT_NOT_FOUND");

    // Request errors.
    acme.post("/runs", &json!({"profileId": "nope:nope"})).await.expect_error(404, "ERR_EXPORT_PROFILE_NOT_FOUND");
    let r = acme.post("/runs", &json!({"profileId": "json:raw", "targets": ["advisory", "nonsense"]})).await;
    assert_eq!(r.expect_error(400, "ERR_EXPORT_REQUEST_INVALID")["details"][0]["field"], "targets[1]");
    let many: Vec<&str> = std::iter::repeat_n("advisory", 51).collect();
    acme.post("/runs", &json!({"profileId": "json:raw", "targets": many}))
        .await
        .expect_error(400, "ERR_EXPORT_REQUEST_INVALID");
    let r = send(acme.req(Method::POST, "/runs").header("content-type", "text/plain").body("{}")).await;
    assert_eq!(r.expect_error(400, "ERR_EXPORT_REQUEST_INVALID")["details"][0]["field"], "Content-Type");
    send(acme.req(Method::POST, "/runs").header("content-type", "application/json").body("{not json"))
        .await
        .expect_error(400, "ERR_EXPORT_REQUEST_INVALID");
    // A field this profile does not implement is refused, never ignored: 501.
    let enc = json!({"profileId": "json:raw", "encryption": {"enabled": true, "kmsKey": "age1xyz"}});
    acme.post("/runs", &enc).await.expect_error(501, "ERR_EXPORT_NOT_SUPPORTED");
    acme.get("/nowhere").await.expect_error(404, "ERR_EXPORT_NOT_FOUND");
    acme.get("/runs/export-run::acme::absent").await.expect_error(404, "ERR_EXPORT_NOT_FOUND");
    let read_only = Dev { http: http(), server: &server, token: "tok-read-1", tenant: "acme" };
    read_only.post("/runs", &json!({"profileId": "json:raw"})).await.expect_error(403, "ERR_EXPORT_FORBIDDEN");
    read_only.post("/profiles", &spec).await.expect_error(403, "ERR_EXPORT_FORBIDDEN");
    let unknown = Dev { http: http(), server: &server, token: "tok-nobody", tenant: "acme" };
    unknown.get("/runs").await.expect_error(401, "ERR_EXPORT_UNAUTHENTICATED");

    // Meta routes. A made-up method is one "other" label, not a series of its own.
    let odd = Method::from_bytes(b"MADEUPMETHOD").unwrap();
    let _ = send(plain.request(odd, server.url("/healthz"))).await;
    assert_eq!(send(plain.get(server.url("/healthz"))).await.json()["status"], "ok");
    assert_eq!(send(plain.get(server.url("/readyz"))).await.json()["status"], "ok");
    let metrics = String::from_utf8(send(plain.get(server.url("/metrics"))).await.body.to_vec()).unwrap();
    for m in ["exporter_run_duration_seconds", "http_server_request_duration_seconds", "exporter_runs_total"] {
        assert!(metrics.contains(m), "{m} missing from /metrics");
    }
    assert!(metrics.contains("route=\"/runs/{runId}\""), "routes are labelled by template");
    assert!(metrics.contains("exporter_run_duration_seconds_bucket{profile_kind=\"json:raw\""), "{metrics}");
    assert!(!metrics.contains("export-run::"), "ids never become label values");
    assert!(!metrics.contains("MADEUPMETHOD") && metrics.contains("method=\"other\""), "methods are a bounded set");
    let ui = send(plain.get(server.url("/ui/"))).await;
    assert!(ui.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(ui.header("x-frame-options"), Some("DENY"));
    assert!(ui.header("content-security-policy").unwrap().contains("frame-ancestors 'none'"));
    assert!(String::from_utf8_lossy(&ui.body).contains("/runs/"), "the page talks to the API");
    server.gateway.drain();
    assert_eq!(send(plain.get(server.url("/readyz"))).await.status, 503, "draining");
    acme.post("/runs", &json!({"profileId": "json:raw"})).await.expect_error(503, "ERR_EXPORT_UNAVAILABLE");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_reaches_another_tenants_things() {
    let server = Server::start(dev_auth(), GatewayConfig::default(), true).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };
    let beta = Dev { http: http(), server: &server, token: "tok-beta-1", tenant: "beta" };
    acme.post("/profiles", &json!({"name": "mine", "kind": "json", "variant": "raw"})).await;
    let run = acme.run_to_end(&json!({"profileId": "json:raw"})).await;
    let id = run["runId"].as_str().unwrap();
    let rec = exportcore::DistributionRecord::succeeded(
        exportcore::RunId::parse(id).unwrap(),
        exportcore::TenantId::parse("acme").unwrap(),
        exportcore::DistributionType::Http,
        "gateway",
        vec![exportcore::DistributedArtifact::new(
            exportcore::ArtifactPath::parse("manifest.json").unwrap(),
            exportcore::Sha256Digest::of(b"x"),
            1,
            "manifest.json",
        )],
        exportcore::Timestamp::now(),
    );
    server.exporter.store().put_distribution(&rec).await.unwrap();
    // The owner sees everything…
    assert_eq!(acme.get(&format!("/distributions/{}", rec.id)).await.status, 200);
    let view = acme.get(&format!("/distributions/{}", rec.id)).await.json();
    assert!(view["urls"][0]["url"].as_str().unwrap().contains("sig="), "{view}");
    // …another tenant gets 404 on every route, never 403.
    let saved = "/profiles/export-profile::acme::mine";
    for r in [
        beta.get(&format!("/runs/{id}")).await,
        beta.get(&format!("/runs/{id}/events")).await,
        beta.post(&format!("/runs/{id}/cancel"), &json!({})).await,
        beta.get(&format!("/runs/{id}/artifacts/manifest.json")).await,
        beta.get(&format!("/distributions/{}", rec.id)).await,
    ] {
        r.expect_error(404, "ERR_EXPORT_NOT_FOUND");
    }
    beta.get(saved).await.expect_error(404, "ERR_EXPORT_PROFILE_NOT_FOUND");
    beta.put(saved, &json!({"name": "mine", "kind": "json", "variant": "raw"}))
        .await
        .expect_error(404, "ERR_EXPORT_PROFILE_NOT_FOUND");
    beta.post("/runs", &json!({"profileId": "export-profile::acme::mine"}))
        .await
        .expect_error(404, "ERR_EXPORT_PROFILE_NOT_FOUND");
    assert_eq!(beta.get("/runs").await.json()["runs"], json!([]));
    assert_eq!(beta.get("/profiles").await.json()["saved"], json!([]));
    // A token for both tenants sees each only under its own header.
    let both_as_beta = Dev { http: http(), server: &server, token: "tok-both-1", tenant: "beta" };
    both_as_beta.get(&format!("/runs/{id}")).await.expect_error(404, "ERR_EXPORT_NOT_FOUND");
    let both_as_acme = Dev { http: http(), server: &server, token: "tok-both-1", tenant: "acme" };
    assert_eq!(both_as_acme.get(&format!("/runs/{id}")).await.status, 200);
    // A token for acme cannot claim beta with the header.
    let spoof = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "beta" };
    spoof.get("/runs").await.expect_error(403, "ERR_EXPORT_FORBIDDEN");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_first_reply() {
    let server = Server::start(dev_auth(), GatewayConfig::default(), false).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };
    let post = |key: &str, body: Value| {
        send(
            acme.req(Method::POST, "/runs")
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body.to_string()),
        )
    };
    let first = post("k-1", json!({"profileId": "json:raw"})).await;
    assert_eq!(first.status, 202);
    let again = post("k-1", json!({"profileId": "json:raw"})).await;
    assert_eq!((again.status, &again.body), (202, &first.body), "the first reply, byte for byte");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(acme.get("/runs").await.json()["runs"].as_array().unwrap().len(), 1, "one run");
    post("k-1", json!({"profileId": "json:raw", "priority": "high"})).await.expect_error(409, "ERR_EXPORT_CONFLICT");
    // Keys are per tenant.
    let beta = Dev { http: http(), server: &server, token: "tok-beta-1", tenant: "beta" };
    let b = send(
        beta.req(Method::POST, "/runs")
            .header("content-type", "application/json")
            .header("idempotency-key", "k-1")
            .body(r#"{"profileId":"json:raw"}"#),
    )
    .await;
    assert_eq!(b.status, 202);
    assert_ne!(b.json()["runId"], first.json()["runId"]);
    // The project is part of the request: the same key and body under a project is another
    // request, so a conflict (not a replay of the first run).
    let p = send(
        acme.req(Method::POST, "/runs")
            .header("content-type", "application/json")
            .header("idempotency-key", "k-1")
            .header("x-stellaops-project", "p2")
            .body(r#"{"profileId":"json:raw"}"#),
    )
    .await;
    assert_eq!(p.status, 409, "{:?}", p.body);
    assert_eq!(p.header("idempotent-replayed"), None);
    // Profiles too.
    let spec = json!({"name": "p", "kind": "json", "variant": "raw"});
    let send_p = |key: &str, body: &Value| {
        send(
            acme.req(Method::POST, "/profiles")
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body.to_string()),
        )
    };
    let p1 = send_p("pk", &spec).await;
    let p2 = send_p("pk", &spec).await;
    assert_eq!((p1.status, p2.status, &p1.body), (201, 201, &p2.body));
    server.stop().await;
}

/// Sends `head` over a raw connection, then (when `chunks` > 0) that many 64 KiB chunks of a
/// chunked body while reading the reply; returns the status line and the body bytes the
/// server accepted before it answered.
async fn raw_post(addr: &str, head: String, chunks: usize) -> (String, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
        for _ in 0..chunks {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            w.fetch_add(0x10000, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let mut at_reply = None;
    // The head, then the rest until the server closes or pauses.
    loop {
        let wait = if at_reply.is_some() { Duration::from_millis(500) } else { Duration::from_secs(20) };
        match tokio::time::timeout(wait, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => reply.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if at_reply.is_none() && reply.windows(4).any(|w| w == b"\r\n\r\n") {
            at_reply = Some(written.load(std::sync::atomic::Ordering::SeqCst));
        }
    }
    writer.abort();
    (String::from_utf8_lossy(&reply).to_string(), at_reply.unwrap_or(usize::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_before_they_are_read() {
    let server = Server::start(dev_auth(), GatewayConfig::default(), false).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };
    let addr = server.base.trim_start_matches("http://").to_owned();
    let head = |extra: &str| {
        format!(
            "POST /export-center/runs HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer tok-acme-1\r\n\
             x-stellaops-tenant: acme\r\ncontent-type: application/json\r\n{extra}\r\n"
        )
    };
    // A declared length over the limit: answered before a single body byte is sent.
    let (reply, _) = raw_post(&addr, head("content-length: 10485760\r\n"), 0).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let j: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(j["code"], "ERR_EXPORT_TOO_LARGE");
    assert!(j["traceId"].is_string() && j["timestamp"].is_string() && j["details"].is_array(), "{j}");
    // A chunked 10 MiB body: the server stops reading at the limit and answers; count what
    // the client had managed to send by then (socket buffers included).
    let (reply, sent) = raw_post(&addr, head("transfer-encoding: chunked\r\n"), 160).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("ERR_EXPORT_TOO_LARGE"), "{reply}");
    assert!(sent < 6 * 1024 * 1024, "the server took {sent} bytes of a 10 MiB body before answering");
    // Just under the limit is read and accepted.
    let mut ok = b"{\"profileId\":\"json:raw\"}".to_vec();
    ok.resize(200 * 1024, b' ');
    assert_eq!(
        send(acme.req(Method::POST, "/runs").header("content-type", "application/json").body(ok)).await.status,
        202
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_rate_limit_and_stream_cap() {
    let cfg = GatewayConfig::default().rate_limit(5, Duration::from_secs(60)).max_streams_per_tenant(2);
    let server = Server::start(dev_auth(), cfg, false).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = acme.get("/runs").await;
        assert_eq!(r.status, 200);
        remaining.push(r.header("x-stella-quota-remaining").unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    let over = acme.get("/runs").await;
    over.expect_error(429, "ERR_EXPORT_RATE_LIMIT");
    let retry: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(over.header("x-stella-quota-remaining"), Some("0"));
    assert_eq!(over.header("x-stella-quota-limit"), Some("5"));
    // Another tenant has its own quota.
    let beta = Dev { http: http(), server: &server, token: "tok-beta-1", tenant: "beta" };
    assert_eq!(beta.get("/runs").await.status, 200);
    server.stop().await;
    // Streams: at most two open per tenant (the runs stay queued: no workers).
    let server = Server::start(dev_auth(), GatewayConfig::default().max_streams_per_tenant(2), false).await;
    let beta = Dev { http: http(), server: &server, token: "tok-beta-1", tenant: "beta" };
    let r = beta.post("/runs", &json!({"profileId": "json:raw"})).await.json();
    let events = format!("/runs/{}/events", r["runId"].as_str().unwrap());
    let s1 = beta.req(Method::GET, &events).send().await.unwrap();
    let s2 = beta.req(Method::GET, &events).send().await.unwrap();
    assert_eq!((s1.status().as_u16(), s2.status().as_u16()), (200, 200));
    beta.get(&events).await.expect_error(429, "ERR_EXPORT_RATE_LIMIT");
    drop(s1);
    let mut again = 0;
    for _ in 0..100 {
        let r = beta.req(Method::GET, &events).send().await.unwrap();
        again = r.status().as_u16();
        if again == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, 200, "a closed stream frees its slot");
    drop(s2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_resume_heartbeat_and_close() {
    let cfg = GatewayConfig::default().sse_timing(Duration::from_millis(100), Duration::from_millis(600));
    let server = Server::start(dev_auth(), cfg, true).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };
    let run = acme.run_to_end(&json!({"profileId": "json:raw"})).await;
    let events = format!("/runs/{}/events", run["runId"].as_str().unwrap());
    let resp = acme.req(Method::GET, &events).send().await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let (all, _) = read_sse(resp).await;
    let names: Vec<&str> = all.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"started"));
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    assert!(names.contains(&"artifact_ready") && names.contains(&"progress"), "{names:?}");
    let ids: Vec<u64> = all.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "ids count up from 1");
    let ready = all.iter().find(|(_, e, _)| e == "artifact_ready").unwrap();
    assert!(ready.2["url"].as_str().unwrap().contains("sig="), "artifact_ready carries a signed URL: {}", ready.2);
    assert!(ready.2["sha256"].as_str().unwrap().len() == 64 && ready.2["type"].is_string());
    // Resume: exactly the missed events.
    let k = 2;
    let resumed = acme.req(Method::GET, &events).header("last-event-id", k.to_string()).send().await.unwrap();
    let (rest, _) = read_sse(resumed).await;
    assert_eq!(rest.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(), ids[k as usize..].to_vec());
    assert_eq!(
        rest.iter().map(|(_, _, d)| d.clone()).collect::<Vec<_>>(),
        all[k as usize..].iter().map(|(_, _, d)| d.clone()).collect::<Vec<_>>()
    );
    acme.req(Method::GET, &events)
        .header("last-event-id", "x")
        .send()
        .await
        .map(|r| assert_eq!(r.status(), 400))
        .unwrap();

    // A run that never starts (queued behind nothing: cancel it later): heartbeats, then the
    // idle timeout closes the stream.
    let idle_server = Server::start(
        dev_auth(),
        GatewayConfig::default().sse_timing(Duration::from_millis(100), Duration::from_millis(700)),
        false,
    )
    .await;
    let idle = Dev { http: http(), server: &idle_server, token: "tok-acme-1", tenant: "acme" };
    let queued = idle.post("/runs", &json!({"profileId": "json:raw"})).await.json();
    let ev = format!("/runs/{}/events", queued["runId"].as_str().unwrap());
    let started = std::time::Instant::now();
    let (none, heartbeats) = read_sse(idle.req(Method::GET, &ev).send().await.unwrap()).await;
    let took = started.elapsed();
    assert!(none.is_empty(), "{none:?}");
    assert!(heartbeats >= 3, "{heartbeats} heartbeats in {took:?}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(10),
        "closed after the idle timeout: {took:?}"
    );
    // Cancelling the queued run ends a live stream with `failed`.
    let live = idle.req(Method::GET, &ev).send().await.unwrap();
    let reader = tokio::spawn(read_sse(live));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let c = idle.post(&format!("/runs/{}/cancel", queued["runId"].as_str().unwrap()), &json!({})).await;
    assert_eq!(c.status, 202);
    let (evs, _) = reader.await.unwrap();
    assert_eq!(
        evs.last().map(|(_, e, d)| (e.as_str(), d["code"].as_str())),
        Some(("failed", Some("ERR_EXPORT_CANCELLED")))
    );
    // Draining ends open streams at once.
    let q2 = idle.post("/runs", &json!({"profileId": "json:raw"})).await.json();
    let live = idle.req(Method::GET, &format!("/runs/{}/events", q2["runId"].as_str().unwrap())).send().await.unwrap();
    let reader = tokio::spawn(read_sse(live));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    idle_server.gateway.drain();
    reader.await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(500), "drain closed the stream in {:?}", t.elapsed());
    idle_server.stop().await;
    server.stop().await;
}

/// An identity provider that answers too late.
#[derive(Debug)]
struct Slow;

#[async_trait::async_trait]
impl exportcore_gateway::auth::Authenticator for Slow {
    async fn authenticate(
        &self,
        _: &exportcore_gateway::auth::AuthRequest<'_>,
    ) -> Result<exportcore_gateway::auth::Principal, exportcore_gateway::auth::AuthError> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Err(exportcore_gateway::auth::AuthError("too late".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_takes_too_long_is_503_with_retry_after() {
    let cfg = GatewayConfig::default().request_timeout(Duration::from_millis(200));
    let server = Server::start(std::sync::Arc::new(Slow), cfg, false).await;
    let started = std::time::Instant::now();
    let r = send(http().get(server.url("/runs")).header("x-stellaops-tenant", "acme")).await;
    r.expect_error(503, "ERR_EXPORT_TIMEOUT");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_server_sheds_requests_at_once() {
    let cfg = GatewayConfig::default().max_in_flight(1);
    let server = Server::start(std::sync::Arc::new(Slow), cfg, false).await;
    let first = tokio::spawn(send(http().get(server.url("/runs")).header("x-stellaops-tenant", "acme")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let shed = send(http().get(server.url("/healthz"))).await;
    shed.expect_error(503, "ERR_EXPORT_UNAVAILABLE");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(1), "answered at once: {:?}", started.elapsed());
    assert_eq!(first.await.unwrap().status, 401, "the request in flight is answered");
    assert_eq!(send(http().get(server.url("/healthz"))).await.status, 200, "the slot is free again");
    server.stop().await;
}

/// A tenant sending request bodies slowly holds at most half the in-flight slots: its next
/// request is 429 while another tenant is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_hold_every_request_slot() {
    use tokio::io::AsyncWriteExt;
    let cfg = GatewayConfig::default().max_in_flight(4);
    let server = Server::start(dev_auth(), cfg, false).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = "POST /export-center/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-acme-1\r\n\
                    X-StellaOps-Tenant: acme\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };
    acme.get("/runs").await.expect_error(429, "ERR_EXPORT_RATE_LIMIT");
    let beta = Dev { http: http(), server: &server, token: "tok-beta-1", tenant: "beta" };
    assert_eq!(beta.get("/runs").await.status, 200, "another tenant is answered");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(acme.get("/runs").await.status, 200, "the slots are free again");
    // Two copies of the tenant header (a proxy appending its own) must agree.
    let two = send(
        http()
            .get(server.url("/runs"))
            .header("authorization", "Bearer tok-both-1")
            .header("x-stellaops-tenant", "acme")
            .header("x-stellaops-tenant", "beta"),
    )
    .await;
    two.expect_error(400, "ERR_EXPORT_REQUEST_INVALID");
    server.stop().await;
}

/// Signed downloads count against their tenant's quota like any other request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_downloads_count_against_the_quota() {
    let cfg = GatewayConfig::default().rate_limit(30, Duration::from_secs(60));
    let server = Server::start(dev_auth(), cfg, true).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };
    let run = acme.run_to_end(&json!({"profileId": "json:raw"})).await;
    let out = run["outputs"].as_array().unwrap().iter().find(|o| o["path"] == "manifest.json").unwrap().clone();
    let url = format!("{}{}", server.base, out["url"].as_str().unwrap());
    let plain = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(send(plain.get(&url)).await.status);
    }
    assert!(statuses.contains(&200) && statuses.last() == Some(&429), "{statuses:?}");
    server.stop().await;
    // Open downloads per tenant are capped (here: none at all).
    let server = Server::start(dev_auth(), GatewayConfig::default().max_streams_per_tenant(0), true).await;
    let acme = Dev { http: http(), server: &server, token: "tok-acme-1", tenant: "acme" };
    let run = acme.run_to_end(&json!({"profileId": "json:raw"})).await;
    let out = run["outputs"].as_array().unwrap().iter().find(|o| o["path"] == "manifest.json").unwrap().clone();
    let r = send(reqwest::Client::new().get(format!("{}{}", server.base, out["url"].as_str().unwrap()))).await;
    r.expect_error(429, "ERR_EXPORT_RATE_LIMIT");
    server.stop().await;
}

/// A sink whose downloads send their first bytes and then never end (as a client that
/// stopped reading holds one).
#[derive(Debug, Clone)]
struct Stalling(exportcore::InMemorySink);

#[async_trait::async_trait]
impl exportcore::Sink for Stalling {
    fn name(&self) -> &str {
        "stalling"
    }
    fn url(&self, p: &exportcore::ArtifactPath) -> String {
        self.0.url(p)
    }
    async fn put(
        &self,
        p: &exportcore::ArtifactPath,
        body: exportcore::sink::ByteStream,
    ) -> exportcore::Result<exportcore::sink::PutReceipt> {
        self.0.put(p, body).await
    }
    async fn get(&self, p: &exportcore::ArtifactPath) -> exportcore::Result<exportcore::sink::ByteStream> {
        use futures::StreamExt;
        // One byte of the first chunk, then nothing: the body never reaches its length.
        let first = self.0.get(p).await?.take(1).map(|c| c.map(|b| b.slice(..1.min(b.len()))));
        Ok(Box::pin(first.chain(futures::stream::pending())))
    }
    async fn list(
        &self,
        p: Option<&exportcore::ArtifactPath>,
    ) -> exportcore::Result<Vec<exportcore::sink::ObjectMeta>> {
        self.0.list(p).await
    }
    async fn delete(&self, p: &exportcore::ArtifactPath) -> exportcore::Result<()> {
        self.0.delete(p).await
    }
}

/// Shutdown is bounded: a download whose body never ends (a client that stopped reading)
/// cannot keep `serve` from returning once the drain timeout passed, and the node stops
/// claiming runs first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_by_the_drain_timeout() {
    let evidence = concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/evidence");
    let exporter = exportcore::engine::Exporter::builder()
        .profiles(exportcore_json::profiles())
        .sink(Stalling(exportcore::InMemorySink::new()))
        .evidence(exportcore::DirEvidence::new(evidence).unwrap())
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/export-center", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = exportcore_gateway::ServeOptions::new(dev_auth()).drain_timeout(Duration::from_secs(1));
    let served = tokio::spawn(exportcore_gateway::serve(exporter, listener, options, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| {
        r.header("authorization", "Bearer tok-acme-1").header("x-stellaops-tenant", "acme")
    };
    let r = auth(http.post(format!("{base}/runs")))
        .header("content-type", "application/json")
        .body(json!({"profileId": "json:raw"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["runId"].as_str().unwrap().to_owned();
    let mut view = Value::Null;
    for _ in 0..500 {
        view = serde_json::from_slice(
            &auth(http.get(format!("{base}/runs/{id}"))).send().await.unwrap().bytes().await.unwrap(),
        )
        .unwrap();
        if view["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(view["status"], "succeeded", "{view}");
    // The download starts (headers and the first bytes) and never ends.
    let path = view["outputs"][0]["path"].as_str().unwrap();
    let download = auth(http.get(format!("{base}/runs/{id}/artifacts/{path}"))).send().await.unwrap();
    assert_eq!(download.status(), 200);
    let started = std::time::Instant::now();
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), served).await;
    assert!(result.is_ok(), "serve did not return within 20 s of shutdown with a stalled download open");
    assert!(started.elapsed() >= Duration::from_millis(900), "serve did not wait for the drain");
    // And the stalled connection was dropped, not left running in the embedder's runtime.
    let body = tokio::time::timeout(Duration::from_secs(5), download.bytes()).await;
    assert!(body.is_ok_and(|b| b.is_err()), "the stalled download is still open after serve returned");
}
