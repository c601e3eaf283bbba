//! Pluggable signing: the [`Signer`] and [`Verifier`] traits, key references
//! ([`KeyRef`]: `file:PATH`, `env:VAR`, or any `scheme://...` a [`KeyResolver`] handles),
//! DSSE envelopes ([`dsse`]) and in-toto/SLSA provenance ([`provenance`]).
//!
//! The core holds no cryptography: providers (Ed25519, ECDSA P-256, SM2/SM3, ...) live in
//! their own crate (`exportcore-crypto`) or in an embedder's, and plug in through these traits.

pub mod dsse;
pub mod provenance;

use crate::error::{ExportError, Result};
use std::fmt::{self, Debug};
use std::sync::Arc;

/// A signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum SignatureAlgorithm {
    /// Ed25519 (RFC 8032), 64-byte signatures, deterministic.
    #[serde(rename = "ed25519")]
    Ed25519,
    /// ECDSA over P-256 with SHA-256, ASN.1 DER signatures.
    #[serde(rename = "ecdsa-p256-sha256")]
    EcdsaP256Sha256,
    /// SM2 with SM3 (GB/T 32918, distinguishing ID `1234567812345678` unless set), DER.
    #[serde(rename = "sm2-sm3")]
    Sm2Sm3,
    /// HMAC-SHA256 (shared secret), 32-byte tags.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

impl SignatureAlgorithm {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            SignatureAlgorithm::Ed25519 => "ed25519",
            SignatureAlgorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            SignatureAlgorithm::Sm2Sm3 => "sm2-sm3",
            SignatureAlgorithm::HmacSha256 => "hmac-sha256",
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that signs bytes.
///
/// # Contract
/// `sign` signs exactly `message` (callers pass DSSE PAE bytes); the signature verifies with
/// the matching [`Verifier`]. `key_id` is stable for a key (we use the lowercase hex SHA-256 of
/// the public key's DER SubjectPublicKeyInfo).
pub trait Signer: Debug + Send + Sync + 'static {
    /// Key id.
    fn key_id(&self) -> &str;
    /// Algorithm.
    fn algorithm(&self) -> SignatureAlgorithm;
    /// Signs `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
    /// The public key as DER SubjectPublicKeyInfo, for formats that embed it (TUF root
    /// metadata); `None` for secret-key schemes (HMAC) or signers that do not expose it.
    fn public_key_der(&self) -> Option<Vec<u8>> {
        None
    }
}

/// Something that verifies signatures.
///
/// # Contract
/// `verify` returns `Ok` only when `signature` is a valid signature of exactly `message` by
/// this key; any malformed, truncated or foreign signature is an `Err`
/// ([`ExportError::VerificationFailed`]), never a panic.
pub trait Verifier: Debug + Send + Sync + 'static {
    /// Key id (same scheme as [`Signer::key_id`]).
    fn key_id(&self) -> &str;
    /// Algorithm.
    fn algorithm(&self) -> SignatureAlgorithm;
    /// Verifies `signature` over `message`.
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()>;
}

impl<S: Signer + ?Sized> Signer for Arc<S> {
    fn key_id(&self) -> &str {
        (**self).key_id()
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        (**self).algorithm()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        (**self).sign(message)
    }
    fn public_key_der(&self) -> Option<Vec<u8>> {
        (**self).public_key_der()
    }
}

impl<V: Verifier + ?Sized> Verifier for Arc<V> {
    fn key_id(&self) -> &str {
        (**self).key_id()
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        (**self).algorithm()
    }
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        (**self).verify(message, signature)
    }
}

/// A parsed key reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// `file:PATH` — a PEM file.
    File(std::path::PathBuf),
    /// `env:VAR` — PEM text in an environment variable.
    Env(String),
    /// `scheme://rest` — resolved by a registered [`KeyResolver`] (`kms://`, `k8s://`, ...).
    Other {
        /// The scheme (`kms`, `k8s`, ...).
        scheme: String,
        /// The whole reference.
        reference: String,
    },
}

impl KeyRef {
    /// Parses a key reference. A bare path (no scheme) is taken as `file:`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: &str| ExportError::invalid("distribution.signing.keyRef", format!("{reason}: {s:?}"));
        if s.trim().is_empty() {
            return Err(bad("empty key reference"));
        }
        if let Some(p) = s.strip_prefix("file:") {
            if p.is_empty() {
                return Err(bad("file: needs a path"));
            }
            return Ok(KeyRef::File(p.into()));
        }
        if let Some(v) = s.strip_prefix("env:") {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("env: needs a variable name"));
            }
            return Ok(KeyRef::Env(v.into()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
                return Ok(KeyRef::Other { scheme: scheme.to_ascii_lowercase(), reference: s.into() });
            }
        }
        Ok(KeyRef::File(s.into()))
    }
}

/// Resolves key references of one scheme (`kms`, `k8s`, a vault, an HSM...) to signers.
/// Implement it to plug a key store in; register it with the provider crate's resolver set.
pub trait KeyResolver: Debug + Send + Sync + 'static {
    /// The scheme handled (`kms`).
    fn scheme(&self) -> &str;
    /// A signer for `reference` (the whole `scheme://...` string).
    fn signer(&self, reference: &str) -> Result<Arc<dyn Signer>>;
}

/// The error for a scheme nobody resolves.
pub fn unknown_scheme(scheme: &str) -> ExportError {
    ExportError::NotSupported {
        feature: format!(
            "key reference scheme {scheme}:// (built in: file:, env:; implement exportcore::sign::KeyResolver for \
             {scheme}:// and register it)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_refs() {
        assert_eq!(KeyRef::parse("file:/k.pem").unwrap(), KeyRef::File("/k.pem".into()));
        assert_eq!(KeyRef::parse("keys/k.pem").unwrap(), KeyRef::File("keys/k.pem".into()));
        assert_eq!(KeyRef::parse("env:SIGNING_KEY").unwrap(), KeyRef::Env("SIGNING_KEY".into()));
        assert_eq!(
            KeyRef::parse("kms://tenant/key1").unwrap(),
            KeyRef::Other { scheme: "kms".into(), reference: "kms://tenant/key1".into() }
        );
        for bad in ["", "file:", "env:", "env:A-B"] {
            assert_eq!(KeyRef::parse(bad).unwrap_err().code(), "ERR_EXPORT_REQUEST_INVALID", "{bad:?}");
        }
        let msg = unknown_scheme("k8s").to_string();
        assert!(msg.contains("k8s://") && msg.contains("KeyResolver"), "{msg}");
    }
}
