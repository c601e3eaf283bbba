use exportcore::sign::{SignatureAlgorithm, Signer, Verifier};
use exportcore::{ExportError, Result};
use pkcs8::der::Decode;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::sync::Arc;

/// Key-generating algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Ed25519.
    Ed25519,
    /// ECDSA P-256.
    EcdsaP256,
    /// SM2.
    Sm2,
}

impl FromStr for Algorithm {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ed25519" => Ok(Algorithm::Ed25519),
            "ecdsa-p256" | "p256" => Ok(Algorithm::EcdsaP256),
            "sm2" => Ok(Algorithm::Sm2),
            other => Err(ExportError::invalid(
                "algorithm",
                format!("unknown algorithm {other:?} (ed25519, ecdsa-p256, sm2)"),
            )),
        }
    }
}

/// A generated key pair, as PEM.
#[derive(Clone)]
pub struct KeyPair {
    /// PKCS#8 private key.
    pub private_pem: String,
    /// SubjectPublicKeyInfo public key.
    pub public_pem: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("public_pem", &self.public_pem).finish_non_exhaustive()
    }
}

const OID_ED25519: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_EC_PUBLIC_KEY: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_SM2: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");

/// The SM2 distinguishing ID (GM/T 0009 default).
#[cfg(feature = "sm2")]
const SM2_DISTID: &str = "1234567812345678";

fn key_err(reason: impl Into<String>) -> ExportError {
    ExportError::invalid("key", reason)
}

fn bad_sig(alg: SignatureAlgorithm, reason: impl std::fmt::Display) -> ExportError {
    ExportError::VerificationFailed { path: "signature".into(), reason: format!("{alg}: {reason}") }
}

fn key_id(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

fn not_built(what: &str) -> ExportError {
    ExportError::NotSupported { feature: format!("{what} keys (exportcore-crypto built without that feature)") }
}

/// Which algorithm a key's AlgorithmIdentifier names.
fn classify(alg: &spki::AlgorithmIdentifierRef<'_>) -> Result<Algorithm> {
    if alg.oid == OID_ED25519 {
        return Ok(Algorithm::Ed25519);
    }
    if alg.oid == OID_EC_PUBLIC_KEY {
        let curve = alg.parameters_oid().map_err(|_| key_err("EC key without a named curve"))?;
        if curve == OID_P256 {
            return Ok(Algorithm::EcdsaP256);
        }
        if curve == OID_SM2 {
            return Ok(Algorithm::Sm2);
        }
        return Err(key_err(format!("unsupported EC curve {curve}")));
    }
    Err(key_err(format!("unsupported key algorithm {}", alg.oid)))
}

fn pem_der(pem: &str, want: &str) -> Result<Vec<u8>> {
    let (label, der) =
        pkcs8::der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| key_err(format!("malformed PEM: {e}")))?;
    if label == "ENCRYPTED PRIVATE KEY" {
        return Err(key_err(
            "encrypted private keys are not supported; decrypt with `openssl pkcs8 -in KEY -out PLAIN` first",
        ));
    }
    if label != want {
        return Err(key_err(format!("expected a PEM \"{want}\", found \"{label}\"")));
    }
    Ok(der)
}

/// Loads a PKCS#8 PEM private key of any supported algorithm.
pub fn signer_from_pem(pem: &str) -> Result<Arc<dyn Signer>> {
    let der = pem_der(pem, "PRIVATE KEY")?;
    let info = pkcs8::PrivateKeyInfo::from_der(&der).map_err(|e| key_err(format!("malformed PKCS#8: {e}")))?;
    match classify(&info.algorithm)? {
        #[cfg(feature = "ed25519")]
        Algorithm::Ed25519 => {
            use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
                .map_err(|e| key_err(format!("bad Ed25519 key: {e}")))?;
            let spki = key.verifying_key().to_public_key_der().map_err(|e| key_err(e.to_string()))?;
            Ok(Arc::new(Ed25519Signer { id: key_id(spki.as_bytes()), spki: spki.as_bytes().to_vec(), key }))
        }
        #[cfg(feature = "p256")]
        Algorithm::EcdsaP256 => {
            use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
            let key =
                p256::ecdsa::SigningKey::from_pkcs8_der(&der).map_err(|e| key_err(format!("bad P-256 key: {e}")))?;
            let spki = key.verifying_key().to_public_key_der().map_err(|e| key_err(e.to_string()))?;
            Ok(Arc::new(P256Signer { id: key_id(spki.as_bytes()), spki: spki.as_bytes().to_vec(), key }))
        }
        #[cfg(feature = "sm2")]
        Algorithm::Sm2 => {
            use sm2::pkcs8::{DecodePrivateKey, EncodePublicKey};
            let secret = sm2::SecretKey::from_pkcs8_der(&der).map_err(|e| key_err(format!("bad SM2 key: {e}")))?;
            let spki = secret.public_key().to_public_key_der().map_err(|e| key_err(e.to_string()))?;
            let key =
                sm2::dsa::SigningKey::new(SM2_DISTID, &secret).map_err(|e| key_err(format!("bad SM2 key: {e}")))?;
            Ok(Arc::new(Sm2Signer { id: key_id(spki.as_bytes()), spki: spki.as_bytes().to_vec(), key }))
        }
        #[allow(unreachable_patterns)]
        other => Err(not_built(&format!("{other:?}"))),
    }
}

/// Loads a SubjectPublicKeyInfo PEM public key of any supported algorithm.
#[cfg_attr(not(any(feature = "ed25519", feature = "p256", feature = "sm2")), allow(unused_variables))]
pub fn verifier_from_pem(pem: &str) -> Result<Arc<dyn Verifier>> {
    let der = pem_der(pem, "PUBLIC KEY")?;
    let info =
        spki::SubjectPublicKeyInfoRef::from_der(&der).map_err(|e| key_err(format!("malformed public key: {e}")))?;
    let id = key_id(&der);
    match classify(&info.algorithm)? {
        #[cfg(feature = "ed25519")]
        Algorithm::Ed25519 => {
            use ed25519_dalek::pkcs8::DecodePublicKey;
            let key = ed25519_dalek::VerifyingKey::from_public_key_der(&der)
                .map_err(|e| key_err(format!("bad Ed25519 key: {e}")))?;
            Ok(Arc::new(Ed25519Verifier { id, key }))
        }
        #[cfg(feature = "p256")]
        Algorithm::EcdsaP256 => {
            use p256::pkcs8::DecodePublicKey;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&der)
                .map_err(|e| key_err(format!("bad P-256 key: {e}")))?;
            Ok(Arc::new(P256Verifier { id, key }))
        }
        #[cfg(feature = "sm2")]
        Algorithm::Sm2 => {
            use sm2::pkcs8::DecodePublicKey;
            let public = sm2::PublicKey::from_public_key_der(&der).map_err(|e| key_err(format!("bad SM2 key: {e}")))?;
            let key =
                sm2::dsa::VerifyingKey::new(SM2_DISTID, public).map_err(|e| key_err(format!("bad SM2 key: {e}")))?;
            Ok(Arc::new(Sm2Verifier { id, key }))
        }
        #[allow(unreachable_patterns)]
        other => Err(not_built(&format!("{other:?}"))),
    }
}

/// Generates a key pair with the OS random number generator.
#[cfg_attr(not(any(feature = "ed25519", feature = "p256", feature = "sm2")), allow(unused_variables))]
pub fn generate(alg: Algorithm) -> Result<KeyPair> {
    let enc = |e: &dyn std::fmt::Display| ExportError::internal("key generation", e.to_string());
    let lf = pkcs8::LineEnding::LF;
    match alg {
        #[cfg(feature = "ed25519")]
        Algorithm::Ed25519 => {
            use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
            Ok(KeyPair {
                private_pem: key.to_pkcs8_pem(lf).map_err(|e| enc(&e))?.to_string(),
                public_pem: key.verifying_key().to_public_key_pem(lf).map_err(|e| enc(&e))?,
            })
        }
        #[cfg(feature = "p256")]
        Algorithm::EcdsaP256 => {
            use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
            Ok(KeyPair {
                private_pem: key.to_pkcs8_pem(lf).map_err(|e| enc(&e))?.to_string(),
                public_pem: key.verifying_key().to_public_key_pem(lf).map_err(|e| enc(&e))?,
            })
        }
        #[cfg(feature = "sm2")]
        Algorithm::Sm2 => {
            use sm2::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let key = sm2::SecretKey::random(&mut rand_core::OsRng);
            Ok(KeyPair {
                private_pem: key.to_pkcs8_pem(lf).map_err(|e| enc(&e))?.to_string(),
                public_pem: key.public_key().to_public_key_pem(lf).map_err(|e| enc(&e))?,
            })
        }
        #[allow(unreachable_patterns)]
        other => Err(not_built(&format!("{other:?}"))),
    }
}

#[cfg(feature = "ed25519")]
struct Ed25519Signer {
    id: String,
    spki: Vec<u8>,
    key: ed25519_dalek::SigningKey,
}

#[cfg(feature = "ed25519")]
struct Ed25519Verifier {
    id: String,
    key: ed25519_dalek::VerifyingKey,
}

#[cfg(feature = "ed25519")]
impl Signer for Ed25519Signer {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::Ed25519
    }
    fn public_key_der(&self) -> Option<Vec<u8>> {
        Some(self.spki.clone())
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(message).to_bytes().to_vec())
    }
}

#[cfg(feature = "ed25519")]
impl Verifier for Ed25519Verifier {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::Ed25519
    }
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|e| bad_sig(self.algorithm(), e))?;
        self.key.verify_strict(message, &sig).map_err(|e| bad_sig(self.algorithm(), e))
    }
}

#[cfg(feature = "p256")]
struct P256Signer {
    id: String,
    spki: Vec<u8>,
    key: p256::ecdsa::SigningKey,
}

#[cfg(feature = "p256")]
struct P256Verifier {
    id: String,
    key: p256::ecdsa::VerifyingKey,
}

#[cfg(feature = "p256")]
impl Signer for P256Signer {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }
    fn public_key_der(&self) -> Option<Vec<u8>> {
        Some(self.spki.clone())
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = self.key.sign(message);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

#[cfg(feature = "p256")]
impl Verifier for P256Verifier {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        use p256::ecdsa::signature::Verifier as _;
        let sig = p256::ecdsa::Signature::from_der(signature)
            .map_err(|e| bad_sig(self.algorithm(), format!("not DER: {e}")))?;
        self.key.verify(message, &sig).map_err(|e| bad_sig(self.algorithm(), e))
    }
}

#[cfg(feature = "sm2")]
struct Sm2Signer {
    id: String,
    spki: Vec<u8>,
    key: sm2::dsa::SigningKey,
}

#[cfg(feature = "sm2")]
struct Sm2Verifier {
    id: String,
    key: sm2::dsa::VerifyingKey,
}

#[cfg(feature = "sm2")]
impl Signer for Sm2Signer {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::Sm2Sm3
    }
    fn public_key_der(&self) -> Option<Vec<u8>> {
        Some(self.spki.clone())
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        use sm2::dsa::signature::Signer as _;
        let sig: sm2::dsa::Signature = self.key.try_sign(message).map_err(|e| bad_sig(self.algorithm(), e))?;
        // Same ASN.1 SEQUENCE { r INTEGER, s INTEGER } as ECDSA; reuse its encoder.
        let der = ecdsa::Signature::<sm2::Sm2>::from_scalars(sig.r_bytes(), sig.s_bytes())
            .map_err(|e| bad_sig(self.algorithm(), e))?
            .to_der();
        Ok(der.as_bytes().to_vec())
    }
}

#[cfg(feature = "sm2")]
impl Verifier for Sm2Verifier {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::Sm2Sm3
    }
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        use sm2::dsa::signature::Verifier as _;
        let der = ecdsa::Signature::<sm2::Sm2>::from_der(signature)
            .map_err(|e| bad_sig(self.algorithm(), format!("not DER: {e}")))?;
        let (r, s) = der.split_bytes();
        let sig = sm2::dsa::Signature::from_scalars(r, s).map_err(|e| bad_sig(self.algorithm(), e))?;
        self.key.verify(message, &sig).map_err(|e| bad_sig(self.algorithm(), e))
    }
}

#[allow(unused_macros)] // unused when no algorithm feature is on
macro_rules! debug_key {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).field("key_id", &self.id).finish_non_exhaustive()
            }
        }
    )*};
}
#[cfg(feature = "ed25519")]
debug_key!(Ed25519Signer, Ed25519Verifier);
#[cfg(feature = "p256")]
debug_key!(P256Signer, P256Verifier);
#[cfg(feature = "sm2")]
debug_key!(Sm2Signer, Sm2Verifier);

/// An HMAC-SHA256 key: both [`Signer`] and [`Verifier`]. Its key id is the hex SHA-256 of
/// `"exportcore-hmac:" || key`, so the id never reveals the key.
#[cfg(feature = "hmac")]
pub fn hmac_key(secret: &[u8]) -> Result<Arc<HmacKey>> {
    if secret.len() < 16 {
        return Err(key_err("HMAC keys need at least 16 bytes"));
    }
    let mut h = Sha256::new();
    h.update(b"exportcore-hmac:");
    h.update(secret);
    Ok(Arc::new(HmacKey { id: hex::encode(h.finalize()), secret: secret.to_vec() }))
}

/// See [`hmac_key`].
#[cfg(feature = "hmac")]
pub struct HmacKey {
    id: String,
    secret: Vec<u8>,
}

#[cfg(feature = "hmac")]
debug_key!(HmacKey);

#[cfg(feature = "hmac")]
impl HmacKey {
    fn mac(&self) -> hmac::Hmac<Sha256> {
        use hmac::Mac;
        // HMAC accepts keys of any length.
        <hmac::Hmac<Sha256> as Mac>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!())
    }
}

#[cfg(feature = "hmac")]
impl Signer for HmacKey {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::HmacSha256
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        use hmac::Mac;
        let mut m = self.mac();
        m.update(message);
        Ok(m.finalize().into_bytes().to_vec())
    }
}

#[cfg(feature = "hmac")]
impl Verifier for HmacKey {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::HmacSha256
    }
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        use hmac::Mac;
        let mut m = self.mac();
        m.update(message);
        m.verify_slice(signature).map_err(|_| bad_sig(SignatureAlgorithm::HmacSha256, "tag mismatch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exportcore::sign::dsse;

    fn algs() -> [Algorithm; 3] {
        [Algorithm::Ed25519, Algorithm::EcdsaP256, Algorithm::Sm2]
    }

    #[test]
    fn round_trip_and_tamper_every_algorithm() {
        for alg in algs() {
            let pair = generate(alg).unwrap();
            let signer = signer_from_pem(&pair.private_pem).unwrap();
            let verifier = verifier_from_pem(&pair.public_pem).unwrap();
            assert_eq!(signer.key_id(), verifier.key_id(), "{alg:?}");
            assert_eq!(signer.algorithm(), verifier.algorithm());
            let sig = signer.sign(b"message").unwrap();
            verifier.verify(b"message", &sig).unwrap();
            assert!(verifier.verify(b"messagE", &sig).is_err(), "{alg:?} tampered message");
            let mut bad = sig.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(verifier.verify(b"message", &bad).is_err(), "{alg:?} flipped signature");
            assert!(verifier.verify(b"message", &sig[..sig.len() - 3]).is_err(), "{alg:?} truncated");
            assert!(verifier.verify(b"message", &[]).is_err());
            let other = verifier_from_pem(&generate(alg).unwrap().public_pem).unwrap();
            assert!(other.verify(b"message", &sig).is_err(), "{alg:?} wrong key");
            // DSSE through the core.
            let env = dsse::sign("t", b"payload", &[&*signer]).unwrap();
            assert_eq!(env.verify("t", &[&*verifier], "x").unwrap(), b"payload");
            assert_eq!(env.verify("t", &[&*other], "x").unwrap_err().code(), "ERR_EXPORT_VERIFY_FAILED");
        }
    }

    #[test]
    fn ed25519_and_p256_are_deterministic() {
        for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256] {
            let s = signer_from_pem(&generate(alg).unwrap().private_pem).unwrap();
            assert_eq!(s.sign(b"x").unwrap(), s.sign(b"x").unwrap(), "{alg:?}");
        }
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        let pair = generate(Algorithm::Ed25519).unwrap();
        for (pem, want) in [
            ("not a pem".to_owned(), "malformed PEM"),
            (pair.public_pem.clone(), "expected a PEM \"PRIVATE KEY\""),
            ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n".into(), "encrypted"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(), "PKCS#8"),
        ] {
            let e = signer_from_pem(&pem).unwrap_err();
            assert_eq!(e.code(), "ERR_EXPORT_REQUEST_INVALID");
            assert!(e.to_string().contains(want), "{e}");
        }
        assert!(verifier_from_pem(&pair.private_pem).unwrap_err().to_string().contains("PUBLIC KEY"));
        // An RSA key (from openssl's test vectors' shape): unsupported algorithm.
        let rsa = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAMzRm3K2Ul4h4P1Kw6O5jQKd6h3r2v8W\nwHc0sMxZl7d1nNwM9mPQk0wz5pJ4WJrFSjv6nY7UeJmYz2uGJ0h3hXECAwEAAQ==\n-----END PUBLIC KEY-----\n";
        let e = verifier_from_pem(rsa).unwrap_err();
        assert!(e.to_string().contains("unsupported key algorithm"), "{e}");
    }

    #[test]
    fn hmac() {
        let k = hmac_key(b"0123456789abcdef").unwrap();
        let tag = Signer::sign(&*k, b"m").unwrap();
        Verifier::verify(&*k, b"m", &tag).unwrap();
        assert!(Verifier::verify(&*k, b"n", &tag).is_err());
        assert!(hmac_key(b"short").is_err());
        assert!(!Signer::key_id(&*k).contains("0123"));
    }
}
