//! Object storage: a run's files under `s3://BUCKET/PREFIX/`, on the `object_store` crate
//! (S3 protocol, signature V4, its own retries with backoff). Files over 8 MiB go up as
//! multipart uploads streamed from disk; every object is read back and its SHA-256 compared
//! with the run manifest's before the push counts. Readers get presigned `GET` URLs.

use crate::{Credentials, Secret};
use exportcore::manifest::{MANIFEST_FILE, PROVENANCE_FILE, SIGNED_MANIFEST_FILE};
use exportcore::{ExportError, Result, Sha256Digest};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer as _;
use object_store::{ObjectStore, PutPayload};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Files up to this size go up in one `PUT`; larger ones as multipart uploads of this part size.
pub const PART: usize = 8 << 20;

/// Where to put a run: `s3://BUCKET[/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Target {
    /// Bucket.
    pub bucket: String,
    /// Key prefix (no leading or trailing `/`; empty for the bucket's root).
    pub prefix: String,
}

impl S3Target {
    /// Parses `s3://BUCKET[/PREFIX]`.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming `field`.
    pub fn parse(uri: &str, field: &str) -> Result<Self> {
        let shown = exportcore::error::redact_urls(uri);
        let bad = |why: &str| ExportError::invalid(field, format!("{shown:?}: {why} (s3://BUCKET/PREFIX)"));
        let rest = uri.strip_prefix("s3://").ok_or_else(|| bad("not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') {
            return Err(bad("credentials are not allowed in the URL (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"));
        }
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !bucket_ok {
            return Err(bad("a bucket name is 3 to 63 lowercase letters, digits, - or ."));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == ".." || s == ".") || prefix.contains("//") || prefix.contains(['?', '#']) {
            return Err(bad("a prefix is plain path segments"));
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }

    fn key(&self, path: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(path)
        } else {
            ObjectPath::from(format!("{}/{path}", self.prefix))
        }
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// How to reach the object store: the endpoint (a local S3-compatible server; path-style
/// requests), the region and the credentials.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct S3Config {
    /// `http(s)://HOST:PORT`; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key and secret.
    pub credentials: Option<Credentials>,
    /// Retries of a failed request (default 4).
    pub max_retries: Option<usize>,
    /// Skips reading every object back to compare its SHA-256 (the upload then relies on the
    /// store's own integrity checks: signature V4 payload hashes, `x-amz-checksum-sha256`).
    /// Reading back doubles the traffic; it is on by default.
    pub skip_read_back: bool,
}

impl S3Config {
    /// From the environment: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), `AWS_REGION` (or
    /// `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub fn from_env() -> Self {
        let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()));
        let credentials = match (var(&["AWS_ACCESS_KEY_ID"]), var(&["AWS_SECRET_ACCESS_KEY"])) {
            (Some(username), Some(secret)) => Some(Credentials { username, password: Secret::new(secret) }),
            _ => None,
        };
        Self {
            endpoint: var(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            region: var(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            credentials,
            max_retries: None,
            skip_read_back: false,
        }
    }

    /// A config for `endpoint` with these credentials.
    pub fn new(endpoint: impl Into<String>, access_key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            endpoint: Some(endpoint.into()),
            region: None,
            credentials: Some(Credentials { username: access_key.into(), password: Secret::new(secret) }),
            max_retries: None,
            skip_read_back: false,
        }
    }

    pub(crate) fn store(&self, bucket: &str) -> Result<AmazonS3> {
        let mut b =
            AmazonS3Builder::new().with_bucket_name(bucket).with_region(self.region.as_deref().unwrap_or("us-east-1"));
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://")).with_virtual_hosted_style_request(false);
        }
        if let Some(c) = &self.credentials {
            b = b.with_access_key_id(&c.username).with_secret_access_key(c.password.expose());
        }
        let retry = object_store::RetryConfig {
            max_retries: self.max_retries.unwrap_or(4),
            retry_timeout: Duration::from_secs(120),
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(4),
                base: 2.0,
            },
        };
        b.with_retry(retry).build().map_err(|e| {
            ExportError::invalid("s3", format!("cannot configure the object store: {}", redact(&e.to_string())))
        })
    }
}

/// object_store errors can quote request details; keep only the first line and never a key
/// (nor credentials written into the endpoint URL).
fn redact(s: &str) -> String {
    exportcore::error::redact_urls(s.lines().next().unwrap_or_default()).chars().take(300).collect()
}

/// One object of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Object {
    /// The run path.
    pub path: String,
    /// Its key in the bucket.
    pub key: String,
    /// Size.
    pub size: u64,
    /// SHA-256 (checked by reading it back).
    pub sha256: Sha256Digest,
}

/// What an S3 push left in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Pushed {
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    /// The objects, in run path order.
    pub objects: Vec<S3Object>,
    /// Bytes uploaded.
    pub bytes: u64,
}

fn failed(target: &str, e: impl std::fmt::Display) -> ExportError {
    ExportError::distribution_failed(target, redact(&e.to_string()))
}

/// Uploads the run output in `dir` (verified first against its run manifest) under
/// `target`, the run manifest last; checks every object's digest by reading it back.
///
/// # Errors
/// `ERR_EXPORT_VERIFY_FAILED` for output that does not verify; `ERR_EXPORT_DISTRIBUTION_FAILED`
/// naming the target (wrong credentials, no bucket, a digest that differs after upload...).
pub async fn push_s3(dir: &Path, target: &S3Target, config: &S3Config) -> Result<S3Pushed> {
    let report = exportcore::verify::verify_path(dir)?;
    if let Some(f) = report.failures.first() {
        return Err(ExportError::VerificationFailed {
            path: dir.join(&f.path).display().to_string(),
            reason: format!("not pushed: the output does not verify: {}", f.problem),
        });
    }
    let manifest = exportcore::Manifest::parse(&report.read_verified(dir, MANIFEST_FILE)?)
        .map_err(|e| ExportError::VerificationFailed { path: MANIFEST_FILE.into(), reason: e })?;
    let mut files: Vec<(String, u64, Sha256Digest)> =
        manifest.entries.iter().map(|e| (e.path.to_string(), e.size, e.sha256)).collect();
    for side in [SIGNED_MANIFEST_FILE, PROVENANCE_FILE, MANIFEST_FILE] {
        let p = dir.join(side);
        if p.is_file() {
            let (size, sha) = exportcore::hashing::hash_reader(exportcore::files::open_regular(&p)?)
                .map_err(|e| ExportError::io(&p, e))?;
            files.push((side.to_owned(), size, sha));
        }
    }
    let name = target.url();
    let store: Arc<dyn ObjectStore> = Arc::new(config.store(&target.bucket)?);
    // A push over an earlier one: its manifest and signatures go first, so no reader sees an
    // old manifest over objects this push is replacing (the new manifest goes up last).
    for side in [MANIFEST_FILE, SIGNED_MANIFEST_FILE, PROVENANCE_FILE] {
        match store.delete(&target.key(side)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(failed(&name, e)),
        }
    }
    let mut objects = Vec::new();
    let mut bytes = 0;
    for (path, size, sha256) in files {
        let key = target.key(&path);
        let local = dir.join(&path);
        if size as usize <= PART {
            let body = tokio::fs::read(&local).await.map_err(|e| ExportError::io(&local, e))?;
            store.put(&key, PutPayload::from(body)).await.map_err(|e| failed(&name, e))?;
        } else {
            let mut w = object_store::buffered::BufWriter::with_capacity(Arc::clone(&store), key.clone(), PART)
                .with_max_concurrency(3);
            let mut f = tokio::fs::File::open(&local).await.map_err(|e| ExportError::io(&local, e))?;
            let copied = tokio::io::copy(&mut f, &mut w).await;
            match copied {
                Ok(_) => w.shutdown().await.map_err(|e| failed(&name, e))?,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(failed(&name, e));
                }
            }
        }
        bytes += size;
        if config.skip_read_back {
            objects.push(S3Object { path, key: key.to_string(), size, sha256 });
            continue;
        }
        // Read back: the bytes in the bucket are the bytes the manifest names.
        let got = store.get(&key).await.map_err(|e| failed(&name, e))?;
        let mut stream = got.into_stream();
        let mut hasher = exportcore::hashing::Hasher::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk.map_err(|e| failed(&name, e))?);
        }
        let (got_size, got_sha) = hasher.finish();
        if got_size != size || got_sha != sha256 {
            if path == MANIFEST_FILE {
                // A manifest that did not arrive whole must not stand for the push.
                let _ = store.delete(&key).await;
            }
            return Err(failed(
                &name,
                format!("{key}: stored {got_size} bytes sha256 {got_sha}, sent {size} bytes sha256 {sha256}"),
            ));
        }
        objects.push(S3Object { path, key: key.to_string(), size, sha256 });
    }
    Ok(S3Pushed { url: name, objects, bytes })
}

/// A presigned `GET` URL of `key` in `bucket`, valid for `expires_in`. It needs credentials in
/// `config`: without them it refuses rather than let the object store look for some at a
/// cloud instance-metadata address (a request made because a reader asked for a URL).
///
/// # Errors
/// `ERR_EXPORT_DISTRIBUTION_FAILED` when the store cannot sign (no credentials).
pub async fn presign(config: &S3Config, bucket: &str, key: &str, expires_in: Duration) -> Result<String> {
    if config.credentials.is_none() {
        return Err(failed(
            &format!("s3://{bucket}"),
            "no S3 credentials are configured to presign with (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
        ));
    }
    let store = config.store(bucket)?;
    store
        .signed_url(reqwest::Method::GET, &ObjectPath::from(key), expires_in)
        .await
        .map(|u| u.to_string())
        .map_err(|e| failed(&format!("s3://{bucket}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without credentials a presign is refused at once: no request to a cloud metadata
    /// address on a reader's behalf.
    #[tokio::test]
    async fn presigning_without_credentials_is_refused() {
        let e = presign(&S3Config::default(), "exports", "acme/a.tgz", Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(e.code(), "ERR_EXPORT_DISTRIBUTION_FAILED");
        assert!(e.report().contains("no S3 credentials"), "{}", e.report());
    }

    #[test]
    fn targets_parse_strictly() {
        let t = S3Target::parse("s3://exports/acme/runs/", "d").unwrap();
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("exports", "acme/runs"));
        assert_eq!(t.key("manifest.json").to_string(), "acme/runs/manifest.json");
        assert_eq!(S3Target::parse("s3://exports", "d").unwrap().key("a").to_string(), "a");
        for bad in ["s3://Ex", "s3://ab", "s3://bucket/../x", "oci://b/x", "s3://bucket/a?x"] {
            assert!(S3Target::parse(bad, "d").is_err(), "{bad}");
        }
    }
}
