//! DSSE v1 envelopes: PAE exactly as the DSSE protocol specifies, standard padded base64.
//!
//! ```
//! use exportcore::sign::dsse;
//! assert_eq!(dsse::pae("application/vnd.in-toto+json", b"{}"), b"DSSEv1 28 application/vnd.in-toto+json 2 {}");
//! ```

use super::{Signer, Verifier};
use crate::error::{ExportError, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Payload type of our signed manifests.
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.exportcore.manifest+json";
/// Payload type of in-toto statements.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// One signature of an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Key id (informational).
    #[serde(default)]
    pub keyid: String,
    /// Base64 signature over the PAE.
    pub sig: String,
}

/// A DSSE envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 payload.
    pub payload: String,
    /// Payload type.
    pub payload_type: String,
    /// Signatures.
    pub signatures: Vec<Signature>,
}

/// The pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Signs `payload` with every signer.
pub fn sign(payload_type: &str, payload: &[u8], signers: &[&dyn Signer]) -> Result<Envelope> {
    let message = pae(payload_type, payload);
    let signatures = signers
        .iter()
        .map(|s| Ok(Signature { keyid: s.key_id().to_owned(), sig: STANDARD.encode(s.sign(&message)?) }))
        .collect::<Result<Vec<_>>>()?;
    Ok(Envelope { payload: STANDARD.encode(payload), payload_type: payload_type.to_owned(), signatures })
}

impl Envelope {
    /// Parses an envelope (JSON).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| ExportError::VerificationFailed {
            path: what.to_owned(),
            reason: format!("not a DSSE envelope: {e}"),
        })
    }

    /// Parses an envelope that must be exactly as this crate writes it (canonical JSON): no
    /// trailing bytes, no duplicate or reordered members, nothing a verifier would skip over.
    ///
    /// # Errors
    /// `ERR_EXPORT_VERIFY_FAILED` naming `what`.
    pub fn parse_exact(bytes: &[u8], what: &str) -> Result<Self> {
        let env = Self::parse(bytes, what)?;
        if env.to_bytes() != bytes {
            return Err(ExportError::VerificationFailed {
                path: what.to_owned(),
                reason: "not byte-for-byte the canonical envelope (trailing bytes, whitespace or reordered members)"
                    .into(),
            });
        }
        Ok(env)
    }

    /// Serialises the envelope (canonical JSON, so equal envelopes give equal bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::canonical::to_vec(self).unwrap_or_default()
    }

    /// The decoded payload (no signature check).
    pub fn payload_bytes(&self) -> Result<Vec<u8>> {
        STANDARD.decode(self.payload.trim()).map_err(|e| ExportError::VerificationFailed {
            path: "payload".into(),
            reason: format!("payload is not base64: {e}"),
        })
    }

    /// Verifies that at least one signature is valid for one of `verifiers` and that the
    /// payload type is `payload_type`; returns the payload.
    pub fn verify(&self, payload_type: &str, verifiers: &[&dyn Verifier], what: &str) -> Result<Vec<u8>> {
        let fail = |reason: String| ExportError::VerificationFailed { path: what.to_owned(), reason };
        if self.payload_type != payload_type {
            return Err(fail(format!("payload type {:?}, expected {payload_type:?}", self.payload_type)));
        }
        if self.signatures.is_empty() {
            return Err(fail("envelope has no signatures".into()));
        }
        let payload = self.payload_bytes().map_err(|e| fail(e.to_string()))?;
        let message = pae(&self.payload_type, &payload);
        let mut problems = Vec::new();
        for s in &self.signatures {
            let sig = match STANDARD.decode(s.sig.trim()) {
                Ok(sig) => sig,
                Err(e) => {
                    problems.push(format!("signature {:?} is not base64: {e}", s.keyid));
                    continue;
                }
            };
            for v in verifiers {
                match v.verify(&message, &sig) {
                    Ok(()) => return Ok(payload),
                    Err(e) => problems.push(format!("keyid {:?} with key {}: {e}", s.keyid, v.key_id())),
                }
            }
        }
        Err(fail(format!("no valid signature by a trusted key ({})", problems.join("; "))))
    }
}
