//! Envelope encryption of `mirror/data/`: one random 32-byte data key per run, AES-256-GCM per
//! file with a fresh 12-byte nonce and the associated data `{runId}:{relativePath}`, the data
//! key wrapped for each recipient with age (X25519) or by a pluggable key service.
//!
//! A sealed file is `nonce (12 bytes) || ciphertext || tag (16 bytes)`; `relativePath` is the
//! file's path under `mirror/` (`data/raw/advisories/pypi.jsonl.zst`). The run manifest, the
//! OCI layout and TUF cover the ciphertext: a mirror verifies before anyone holds a key.
//! `mirror/export.json` and `mirror/provenance.json` record `encryption`: `mode`, `runId`,
//! `aadFormat`, `nonceFormat`, the encrypted `files` and the `recipients` sorted (age entries
//! by `recipient`, then key-service entries by `kmsKeyId`).
//!
//! Randomness comes from an [`Entropy`] source (the operating system's by default); tests
//! inject a seeded one so that everything but the age-wrapped keys is byte-stable.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use exportcore::{ExportError, Result, RunId, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt::Debug;
use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// `encryption.aadFormat`.
pub const AAD_FORMAT: &str = "{runId}:{relativePath}";
/// `encryption.nonceFormat`.
pub const NONCE_FORMAT: &str = "random-96bit-prefix";

/// Where random bytes come from.
pub trait Entropy: Debug + Send + Sync {
    /// Fills `buf`.
    ///
    /// # Errors
    /// When no randomness is available.
    fn fill(&self, buf: &mut [u8]) -> Result<()>;
}

/// The operating system's random numbers (`getrandom`).
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<()> {
        getrandom::fill(buf).map_err(|e| ExportError::internal("entropy", format!("no randomness: {e}")))
    }
}

/// A deterministic stream (SHA-256 of a seed and a counter), **for tests and reproducibility
/// checks only**: with it, two runs produce the same data key and nonces, so two runs of
/// different evidence with one seed reuse a GCM key and nonce (which breaks it). Its `Debug`
/// does not show the seed (the whole secret state).
pub struct SeededEntropy {
    seed: [u8; 32],
    counter: Mutex<u64>,
}

impl std::fmt::Debug for SeededEntropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededEntropy").field("seed", &"<redacted>").finish_non_exhaustive()
    }
}

impl SeededEntropy {
    /// A stream from `seed`.
    pub fn new(seed: &[u8]) -> Self {
        Self { seed: Sha256::digest(seed).into(), counter: Mutex::new(0) }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<()> {
        let mut counter = self.counter.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in buf.chunks_mut(32) {
            *counter += 1;
            let block = Sha256::new().chain_update(self.seed).chain_update(counter.to_be_bytes()).finalize();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

/// One recipient's copy of the data key, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrappedKey {
    /// `age` or `kms`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The age recipient (`age1…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The key service's key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// The key service's wrapping algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// The wrapped key, base64 (for age: a binary age file holding the 32 bytes).
    pub wrapped_key: String,
}

/// Wraps a run's data key for one recipient.
pub trait KeyWrapper: Debug + Send + Sync {
    /// Wraps `key`; `run_id` and `tenant` are the encryption context a key service binds.
    ///
    /// # Errors
    /// When the recipient cannot wrap (unreachable key service, ...).
    fn wrap(&self, key: &[u8; 32], run_id: &RunId, tenant: &TenantId) -> Result<WrappedKey>;
}

/// Turns an `encryption.kmsKey` reference into wrappers; `Ok(None)` for a reference it does
/// not handle. Plug a key service in with [`crate::MirrorFull::key_resolver`].
pub trait KeyResolver: Debug + Send + Sync {
    /// Resolves one reference.
    ///
    /// # Errors
    /// A reference it handles but cannot use.
    fn resolve(&self, reference: &str) -> Result<Option<Arc<dyn KeyWrapper>>>;
}

/// An age X25519 recipient.
#[derive(Clone, Debug)]
pub struct AgeRecipient(age::x25519::Recipient);

impl AgeRecipient {
    /// Parses `age1…`.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming `field` when it is not an age X25519 recipient.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        // An identity given where its recipient belongs (`age-keygen` output as the recipients
        // file is an easy mistake) is never quoted back: it is a secret key.
        if s.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
            return Err(ExportError::invalid(
                field,
                "an age identity (a secret key) was given, not a recipient: give its public key (`age-keygen -y FILE`), and keep the identity out of this command",
            ));
        }
        age::x25519::Recipient::from_str(s.trim())
            .map(Self)
            .map_err(|e| ExportError::invalid(field, format!("{s:?} is not an age X25519 recipient (age1…): {e}")))
    }
}

impl KeyWrapper for AgeRecipient {
    fn wrap(&self, key: &[u8; 32], _: &RunId, _: &TenantId) -> Result<WrappedKey> {
        let recipients: [&dyn age::Recipient; 1] = [&self.0];
        let enc = age::Encryptor::with_recipients(recipients.into_iter())
            .map_err(|e| ExportError::internal_caused("age", "wrapping the data key", e))?;
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).map_err(|e| ExportError::internal_caused("age", "wrapping", e))?;
        w.write_all(key).map_err(|e| ExportError::internal_caused("age", "wrapping", e))?;
        w.finish().map_err(|e| ExportError::internal_caused("age", "wrapping", e))?;
        use base64::Engine as _;
        Ok(WrappedKey {
            kind: "age".into(),
            recipient: Some(self.0.to_string()),
            kms_key_id: None,
            algorithm: None,
            wrapped_key: base64::engine::general_purpose::STANDARD.encode(out),
        })
    }
}

/// The built-in resolver: `age1…` or `age:age1…`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgeResolver;

impl KeyResolver for AgeResolver {
    fn resolve(&self, reference: &str) -> Result<Option<Arc<dyn KeyWrapper>>> {
        let r = reference.strip_prefix("age:").unwrap_or(reference);
        if !r.starts_with("age1") {
            return Ok(None);
        }
        Ok(Some(Arc::new(AgeRecipient::parse(r, "encryption.kmsKey")?)))
    }
}

/// The run's sealing state: the data key and what is recorded about it.
pub(crate) struct Sealer {
    aes: aes::Aes256,
    entropy: Arc<dyn Entropy>,
    run_id: String,
    pub(crate) recipients: Vec<WrappedKey>,
    pub(crate) files: Mutex<Vec<String>>,
}

impl Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("run_id", &self.run_id).field("recipients", &self.recipients.len()).finish()
    }
}

impl Sealer {
    /// Resolves the references in `kms_key` (comma-separated), makes a data key and wraps it.
    pub(crate) fn new(
        kms_key: &str,
        resolvers: &[Arc<dyn KeyResolver>],
        entropy: Arc<dyn Entropy>,
        run_id: &RunId,
        tenant: &TenantId,
    ) -> Result<Self> {
        let mut wrappers = Vec::new();
        for reference in kms_key.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let mut found = None;
            for r in std::iter::once(&(Arc::new(AgeResolver) as Arc<dyn KeyResolver>)).chain(resolvers) {
                if let Some(w) = r.resolve(reference)? {
                    found = Some(w);
                    break;
                }
            }
            wrappers.push(found.ok_or_else(|| {
                ExportError::invalid(
                    "encryption.kmsKey",
                    format!("{reference:?} is not an age recipient (age1…) and no key resolver knows it"),
                )
            })?);
        }
        if wrappers.is_empty() {
            return Err(ExportError::invalid("encryption.kmsKey", "names no recipient"));
        }
        let mut key = [0u8; 32];
        entropy.fill(&mut key)?;
        let mut recipients = wrappers.iter().map(|w| w.wrap(&key, run_id, tenant)).collect::<Result<Vec<_>>>()?;
        recipients.sort_by(|a, b| {
            (a.kind != "age", &a.recipient, &a.kms_key_id).cmp(&(b.kind != "age", &b.recipient, &b.kms_key_id))
        });
        let aes = aes::Aes256::new_from_slice(&key).map_err(|e| ExportError::internal("aes-gcm", e.to_string()))?;
        zeroize::Zeroize::zeroize(&mut key);
        Ok(Self { aes, entropy, run_id: run_id.to_string(), recipients, files: Mutex::new(Vec::new()) })
    }

    /// A fresh nonce. Draw them in a fixed order (the files' order), so that a run with
    /// [`SeededEntropy`] is repeatable however its work is spread over threads.
    pub(crate) fn nonce(&self) -> Result<[u8; 12]> {
        let mut nonce = [0u8; 12];
        self.entropy.fill(&mut nonce)?;
        Ok(nonce)
    }

    /// Seals what `plain` yields as the file at `rel` (its path under `mirror/`) into `out`,
    /// `nonce || ciphertext || tag`, streaming; returns the sealed length.
    pub(crate) fn seal_stream(
        &self,
        rel: &str,
        nonce: &[u8; 12],
        plain: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<u64> {
        let aad = format!("{}:{rel}", self.run_id);
        let len =
            crate::gcm::seal(&self.aes, nonce, aad.as_bytes(), plain, out).map_err(|e| ExportError::io(rel, e))?;
        self.files.lock().unwrap_or_else(|p| p.into_inner()).push(rel.to_owned());
        Ok(len + (crate::gcm::NONCE_LEN + crate::gcm::TAG_LEN) as u64)
    }

    /// The `encryption` record.
    pub(crate) fn record(&self) -> serde_json::Value {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner()).clone();
        files.sort();
        serde_json::json!({
            "mode": if self.recipients.iter().all(|r| r.kind == "age") { "age" } else { "aes-gcm+kms" },
            "algorithm": "AES-256-GCM",
            "runId": self.run_id,
            "aadFormat": AAD_FORMAT,
            "nonceFormat": NONCE_FORMAT,
            "files": files,
            "recipients": self.recipients,
        })
    }
}

/// Opens a sealed file: `sealed` is `nonce || ciphertext || tag`, `aad` its associated data.
///
/// # Errors
/// `ERR_EXPORT_VERIFY_FAILED` when the tag does not match (wrong key, wrong AAD, changed bytes).
pub fn open_file(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let fail = |why: &str| ExportError::VerificationFailed {
        path: String::from_utf8_lossy(aad).into_owned(),
        reason: why.into(),
    };
    if sealed.len() < 12 + 16 {
        return Err(fail("shorter than a nonce and a tag"));
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|e| ExportError::internal("aes-gcm", e.to_string()))?;
    cipher
        .decrypt(Nonce::from_slice(&sealed[..12]), Payload { msg: &sealed[12..], aad })
        .map_err(|_| fail("does not decrypt: wrong key, wrong associated data or changed bytes"))
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: exportcore::hashing::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Copies `src` (a regular file) to `dst`, opening it on the way when `aad` is given
/// (streaming: the plaintext of a forged file lands in `dst` before the tag is checked, so
/// callers write into a staging directory they drop on error), and checks that the bytes read
/// are `want` (the run manifest's size and SHA-256).
fn restore(
    aes: &aes::Aes256,
    aad: Option<&[u8]>,
    src: &std::path::Path,
    dst: &std::path::Path,
    want: (u64, exportcore::Sha256Digest),
) -> Result<()> {
    let file = exportcore::files::open_regular(src)?;
    let len = file.metadata().map_err(|e| ExportError::io(src, e))?.len();
    let mut reader = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        hasher: exportcore::hashing::Hasher::new(),
    };
    let out = std::fs::File::create(dst).map_err(|e| ExportError::io(dst, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    match aad {
        Some(aad) => match crate::gcm::open(aes, aad, &mut reader, len, &mut out) {
            Ok(_) => {}
            Err(crate::gcm::OpenError::Io(e)) => return Err(ExportError::io(src, e)),
            Err(crate::gcm::OpenError::Forged(why)) => {
                return Err(ExportError::VerificationFailed { path: src.display().to_string(), reason: why.into() })
            }
        },
        None => {
            std::io::copy(&mut reader, &mut out).map_err(|e| ExportError::io(src, e))?;
        }
    }
    out.flush().map_err(|e| ExportError::io(dst, e))?;
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| ExportError::io(src, e))?;
    if reader.hasher.finish() != want {
        return Err(ExportError::VerificationFailed {
            path: src.display().to_string(),
            reason: "changed after it was verified (size or SHA-256 differ from the run manifest)".into(),
        });
    }
    Ok(())
}

/// Unwraps the data key of the mirror whose `export.json` is given, with the first of
/// `identities` that matches a recipient.
///
/// # Errors
/// `ERR_EXPORT_REQUEST_INVALID` naming `--identity` when none matches; `ERR_EXPORT_VERIFY_FAILED`
/// for a malformed record.
pub fn unwrap_key(export: &serde_json::Value, identities: &[Box<dyn age::Identity>]) -> Result<[u8; 32]> {
    use base64::Engine as _;
    let recipients: Vec<WrappedKey> =
        serde_json::from_value(export["encryption"]["recipients"].clone()).map_err(|e| {
            ExportError::VerificationFailed {
                path: "mirror/export.json".into(),
                reason: format!("encryption.recipients: {e}"),
            }
        })?;
    for r in recipients.iter().filter(|r| r.kind == "age") {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&r.wrapped_key) else { continue };
        let Ok(dec) = age::Decryptor::new_buffered(&bytes[..]) else { continue };
        let Ok(mut reader) = dec.decrypt(identities.iter().map(|i| &**i as &dyn age::Identity)) else { continue };
        // Room for more than the key: no probe buffer on the stack, no reallocation left unwiped.
        let mut key = zeroize::Zeroizing::new(Vec::with_capacity(64));
        if reader.read_to_end(&mut key).is_ok() && key.len() == 32 {
            let mut out = [0u8; 32];
            out.copy_from_slice(&key);
            return Ok(out);
        }
    }
    Err(ExportError::invalid(
        "--identity",
        format!("matches none of the {} recipients the data key is wrapped for", recipients.len()),
    ))
}

/// Reads age identities (`AGE-SECRET-KEY-1…` lines) from a file.
///
/// # Errors
/// `ERR_EXPORT_REQUEST_INVALID` naming `--identity` for a file without identities.
pub fn read_identities(path: &std::path::Path) -> Result<Vec<Box<dyn age::Identity>>> {
    let text = zeroize::Zeroizing::new(exportcore::files::read_capped_string(path, exportcore::files::MAX_KEY_BYTES)?);
    age::IdentityFile::from_buffer(text.as_bytes())
        .and_then(|f| f.into_identities().map_err(std::io::Error::other))
        .map_err(|e| ExportError::invalid("--identity", format!("{}: not an age identity file: {e}", path.display())))
}

/// Prefix of `decrypt`'s staging directory beside its output (see
/// [`exportcore::files::staging_beside`]).
pub const DECRYPT_STAGING_PREFIX: &str = ".mirror-decrypt-";

/// Restores the plain tree of an encrypted mirror run in `out`: first the run is verified
/// (every file against its run manifest, and the signatures with `options.verifiers`), then
/// every file the run manifest lists under `mirror/` is copied to `plain/` (absent or empty;
/// filled atomically), the sealed ones opened, each checked again against the manifest as
/// it is read. Nothing else under `mirror/` is copied, and only regular files are read.
/// `export.json` in `plain/` still describes the sealed files (their digests are what was
/// signed). Returns how many files were decrypted.
///
/// # Errors
/// `ERR_EXPORT_VERIFY_FAILED` for a run that does not verify, a file that changed since, or
/// a forged ciphertext; as [`unwrap_key`]; `ERR_EXPORT_REQUEST_INVALID` for an unencrypted
/// mirror, a non-empty `plain` or one inside `out`; I/O errors.
pub fn decrypt(
    out: &std::path::Path,
    identities: &[Box<dyn age::Identity>],
    plain: &std::path::Path,
    options: &exportcore::verify::VerifyOptions,
) -> Result<usize> {
    if exportcore::files::lies_inside(plain, out) {
        return Err(ExportError::invalid(
            "--out",
            format!("{} lies inside the mirror {}", plain.display(), out.display()),
        ));
    }
    if std::fs::read_dir(plain).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ExportError::invalid("--out", format!("{} is not empty", plain.display())));
    }
    let export_path = out.join("mirror/export.json");
    if !crate::is_mirror(out) {
        return Err(ExportError::invalid("OUT", format!("{} is not a mirror run's output", out.display())));
    }
    let export: serde_json::Value =
        serde_json::from_slice(&exportcore::files::read_capped(&export_path, exportcore::files::MAX_MANIFEST_BYTES)?)
            .map_err(|e| ExportError::VerificationFailed {
            path: export_path.display().to_string(),
            reason: e.to_string(),
        })?;
    if export["encryption"].is_null() {
        return Err(ExportError::invalid("OUT", format!("{} is not encrypted", out.display())));
    }
    let mut options = options.clone();
    options.local_files.push(crate::APPLIED_LOG.to_owned());
    let report = exportcore::verify::verify_path_with(out, &options)?;
    if let Some(f) = report.failures.first() {
        return Err(ExportError::VerificationFailed {
            path: out.join(&f.path).display().to_string(),
            reason: format!(
                "the mirror does not verify ({} problem(s)), nothing decrypted: {}",
                report.failures.len(),
                f.problem
            ),
        });
    }
    // From here on only the bytes the verification read: the keys, run id and sealed files
    // of export.json, and the digests of the run manifest.
    let export: serde_json::Value =
        serde_json::from_slice(&report.read_verified(out, "mirror/export.json")?).map_err(|e| {
            ExportError::VerificationFailed { path: export_path.display().to_string(), reason: e.to_string() }
        })?;
    let manifest_path = out.join(exportcore::manifest::MANIFEST_FILE);
    let manifest = exportcore::Manifest::parse(&report.read_verified(out, exportcore::manifest::MANIFEST_FILE)?)
        .map_err(|e| ExportError::VerificationFailed { path: manifest_path.display().to_string(), reason: e })?;
    let mut key = unwrap_key(&export, identities)?;
    let aes = aes::Aes256::new_from_slice(&key).map_err(|e| ExportError::internal("aes-gcm", e.to_string()))?;
    zeroize::Zeroize::zeroize(&mut key);
    let run_id = export["encryption"]["runId"].as_str().unwrap_or_default().to_owned();
    let sealed: std::collections::BTreeSet<String> = export["encryption"]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let staging = exportcore::files::staging_beside(plain, DECRYPT_STAGING_PREFIX)?;
    let mut opened = 0;
    for entry in &manifest.entries {
        let Some(rel) = entry.path.as_str().strip_prefix("mirror/") else { continue };
        let (src, dst) = (out.join(entry.path.as_str()), staging.path().join(rel));
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(|e| ExportError::io(d, e))?;
        }
        let aad = format!("{run_id}:{rel}");
        let is_sealed = sealed.contains(rel);
        // An encrypted mirror seals every file of `data/`: one there in the clear was put
        // there (and listed as unsealed) by someone else, and would come out as if decrypted.
        if rel.starts_with("data/") && !is_sealed {
            return Err(ExportError::VerificationFailed {
                path: src.display().to_string(),
                reason: "is under mirror/data/ but not among export.json's encrypted files: an encrypted mirror seals all of mirror/data/".into(),
            });
        }
        restore(&aes, is_sealed.then_some(aad.as_bytes()), &src, &dst, (entry.size, entry.sha256))?;
        opened += usize::from(is_sealed);
    }
    if opened != sealed.len() {
        return Err(ExportError::VerificationFailed {
            path: export_path.display().to_string(),
            reason: format!("lists {} encrypted files, the run manifest {}", sealed.len(), opened),
        });
    }
    exportcore::files::publish_dir(staging, plain)?;
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_open_only_with_their_key_and_path() {
        let entropy = Arc::new(SeededEntropy::new(b"t"));
        let id = age::x25519::Identity::generate();
        let run = RunId::parse("r1").unwrap();
        let s = Sealer::new(&id.to_public().to_string(), &[], entropy, &run, &TenantId::from_static("t")).unwrap();
        let mut sealed = Vec::new();
        s.seal_stream("data/x", &s.nonce().unwrap(), &mut &b"hello"[..], &mut sealed).unwrap();
        let identities: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        let key = unwrap_key(&serde_json::json!({"encryption": s.record()}), &identities).unwrap();
        assert_eq!(open_file(&key, b"r1:data/x", &sealed).unwrap(), b"hello");
        assert!(open_file(&key, b"r1:data/y", &sealed).is_err(), "another path");
        let mut bent = sealed;
        bent[14] ^= 1;
        assert!(open_file(&key, b"r1:data/x", &bent).is_err());
        let other: Vec<Box<dyn age::Identity>> = vec![Box::new(age::x25519::Identity::generate())];
        let e = unwrap_key(&serde_json::json!({"encryption": s.record()}), &other).unwrap_err();
        assert!(e.to_string().contains("--identity"), "{e}");
    }

    /// A stand-in key service: "wraps" by XOR with a fixed pad, records its key id.
    #[derive(Debug)]
    struct FakeKms;

    impl KeyWrapper for FakeKms {
        fn wrap(&self, key: &[u8; 32], run_id: &RunId, tenant: &TenantId) -> Result<WrappedKey> {
            use base64::Engine as _;
            let wrapped: Vec<u8> = key.iter().map(|b| b ^ 0x5a).collect();
            assert_eq!((run_id.as_str(), tenant.as_str()), ("r1", "t"), "the encryption context");
            Ok(WrappedKey {
                kind: "kms".into(),
                recipient: None,
                kms_key_id: Some("alias/export/envelope".into()),
                algorithm: Some("SYMMETRIC_DEFAULT".into()),
                wrapped_key: base64::engine::general_purpose::STANDARD.encode(wrapped),
            })
        }
    }

    impl KeyResolver for FakeKms {
        fn resolve(&self, reference: &str) -> Result<Option<Arc<dyn KeyWrapper>>> {
            Ok(reference.starts_with("kms:").then(|| Arc::new(FakeKms) as Arc<dyn KeyWrapper>))
        }
    }

    #[test]
    fn a_key_service_plugs_in_and_is_recorded_after_age() {
        let id = age::x25519::Identity::generate();
        let refs = format!("kms:alias/export/envelope,{}", id.to_public());
        let resolvers: Vec<Arc<dyn KeyResolver>> = vec![Arc::new(FakeKms)];
        let s = Sealer::new(
            &refs,
            &resolvers,
            Arc::new(OsEntropy),
            &RunId::parse("r1").unwrap(),
            &TenantId::from_static("t"),
        )
        .unwrap();
        let rec = s.record();
        assert_eq!(rec["mode"], "aes-gcm+kms");
        let kinds: Vec<&str> =
            rec["recipients"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["age", "kms"], "age entries first, then key services");
        assert_eq!(rec["recipients"][1]["kmsKeyId"], "alias/export/envelope");
        // Both copies wrap the same key.
        use base64::Engine as _;
        let kms: Vec<u8> = base64::engine::general_purpose::STANDARD
            .decode(rec["recipients"][1]["wrappedKey"].as_str().unwrap())
            .unwrap()
            .iter()
            .map(|b| b ^ 0x5a)
            .collect();
        let identities: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        assert_eq!(unwrap_key(&serde_json::json!({"encryption": rec}), &identities).unwrap().to_vec(), kms);
    }

    #[test]
    fn bad_recipients_name_the_field() {
        let e =
            Sealer::new("age1nope", &[], Arc::new(OsEntropy), &RunId::parse("r").unwrap(), &TenantId::from_static("t"))
                .unwrap_err();
        assert!(e.to_string().contains("encryption.kmsKey"), "{e}");
        let e = Sealer::new(
            "kms:alias/x",
            &[],
            Arc::new(OsEntropy),
            &RunId::parse("r").unwrap(),
            &TenantId::from_static("t"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no key resolver"), "{e}");
    }

    #[test]
    fn seeded_entropy_repeats_and_os_entropy_does_not() {
        let (a, b) = (SeededEntropy::new(b"s"), SeededEntropy::new(b"s"));
        let (mut x, mut y) = ([0u8; 45], [0u8; 45]);
        a.fill(&mut x).unwrap();
        b.fill(&mut y).unwrap();
        assert_eq!(x, y);
        OsEntropy.fill(&mut x).unwrap();
        assert_ne!(x, y);
    }
}
