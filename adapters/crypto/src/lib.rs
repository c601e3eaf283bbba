//! # exportcore-crypto
//!
//! Signature providers for [`exportcore::sign`], each behind a cargo feature, all built on
//! maintained RustCrypto / dalek crates (no hand-written curve or hash code):
//!
//! | feature | algorithm | crate | signature encoding |
//! |---|---|---|---|
//! | `ed25519` | Ed25519 | `ed25519-dalek` | 64 bytes (deterministic) |
//! | `p256` | ECDSA P-256 + SHA-256 | `p256` | ASN.1 DER (RFC 6979 nonces) |
//! | `sm2` | SM2 + SM3, distinguishing ID `1234567812345678` | `sm2` | ASN.1 DER |
//! | `hmac` | HMAC-SHA256 (shared secret) | `hmac` | 32 bytes |
//!
//! Keys are PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) and SubjectPublicKeyInfo PEM
//! (`-----BEGIN PUBLIC KEY-----`), the formats `openssl genpkey` / `openssl pkey -pubout`
//! write; the algorithm is read from the key. Key ids are the lowercase hex SHA-256 of the
//! public key's DER SubjectPublicKeyInfo.
//!
//! ```
//! use exportcore::sign::{dsse, Signer, Verifier};
//! use exportcore_crypto::{generate, signer_from_pem, verifier_from_pem, Algorithm};
//! let pair = generate(Algorithm::Ed25519)?;
//! let signer = signer_from_pem(&pair.private_pem)?;
//! let envelope = dsse::sign(dsse::MANIFEST_PAYLOAD_TYPE, b"{}", &[&*signer])?;
//! let verifier = verifier_from_pem(&pair.public_pem)?;
//! assert_eq!(envelope.verify(dsse::MANIFEST_PAYLOAD_TYPE, &[&*verifier], "doc")?, b"{}");
//! # Ok::<(), exportcore::ExportError>(())
//! ```
//!
//! Key references (`file:PATH`, `env:VAR`, and any scheme an embedder registers) resolve
//! through [`KeyResolvers`].

mod keys;
mod resolve;

#[cfg(feature = "hmac")]
pub use keys::hmac_key;
pub use keys::{generate, signer_from_pem, verifier_from_pem, Algorithm, KeyPair};
pub use resolve::KeyResolvers;
