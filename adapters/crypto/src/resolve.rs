use crate::keys::signer_from_pem;
use exportcore::sign::{unknown_scheme, KeyRef, KeyResolver, Signer};
use exportcore::{ExportError, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Resolves key references to signers: `file:PATH` and `env:VAR` (PEM) built in, other
/// schemes through registered [`KeyResolver`]s.
///
/// ```
/// let resolvers = exportcore_crypto::KeyResolvers::new();
/// let err = resolvers.signer("kms://tenant/key1").unwrap_err();
/// assert_eq!(err.code(), "ERR_EXPORT_NOT_SUPPORTED");
/// assert!(err.to_string().contains("KeyResolver"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct KeyResolvers {
    custom: BTreeMap<String, Arc<dyn KeyResolver>>,
}

impl KeyResolvers {
    /// The built-in resolvers only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a resolver for its scheme.
    pub fn with(mut self, resolver: Arc<dyn KeyResolver>) -> Self {
        self.custom.insert(resolver.scheme().to_ascii_lowercase(), resolver);
        self
    }

    /// A signer for `key_ref`.
    ///
    /// # Errors
    /// `ERR_EXPORT_IO` for an unreadable file, `ERR_EXPORT_REQUEST_INVALID` for a missing env
    /// var or a bad key, `ERR_EXPORT_NOT_SUPPORTED` for an unregistered scheme.
    pub fn signer(&self, key_ref: &str) -> Result<Arc<dyn Signer>> {
        match KeyRef::parse(key_ref)? {
            KeyRef::File(path) => {
                let pem = exportcore::files::read_capped_string(&path, exportcore::files::MAX_KEY_BYTES)?;
                signer_from_pem(&pem)
            }
            KeyRef::Env(var) => {
                let pem = std::env::var(&var).map_err(|_| {
                    ExportError::invalid(
                        "distribution.signing.keyRef",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                signer_from_pem(&pem)
            }
            KeyRef::Other { scheme, reference } => match self.custom.get(&scheme) {
                Some(r) => r.signer(&reference),
                None => Err(unknown_scheme(&scheme)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Arc<dyn Signer>);
    impl KeyResolver for Fixed {
        fn scheme(&self) -> &str {
            "vault"
        }
        fn signer(&self, _reference: &str) -> Result<Arc<dyn Signer>> {
            Ok(Arc::clone(&self.0))
        }
    }

    #[test]
    fn file_env_and_custom_schemes() {
        let pair = crate::generate(crate::Algorithm::Ed25519).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, &pair.private_pem).unwrap();
        let r = KeyResolvers::new();
        let s = r.signer(&format!("file:{}", path.display())).unwrap();
        assert_eq!(r.signer(path.to_str().unwrap()).unwrap().key_id(), s.key_id());
        assert_eq!(r.signer("file:/nonexistent/k.pem").unwrap_err().code(), "ERR_EXPORT_IO");
        let e = r.signer("env:EXPORTCORE_TEST_SURELY_UNSET_VAR").unwrap_err();
        assert!(e.to_string().contains("EXPORTCORE_TEST_SURELY_UNSET_VAR"), "{e}");
        let e = r.signer("k8s://secrets/x").unwrap_err();
        assert!(e.to_string().contains("k8s://"), "{e}");
        let r = r.with(Arc::new(Fixed(Arc::clone(&s))));
        assert_eq!(r.signer("vault://a/b").unwrap().key_id(), s.key_id());
    }
}
