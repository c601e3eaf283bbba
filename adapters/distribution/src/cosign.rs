//! A cosign-compatible signature of a pushed manifest: the "simple signing" payload naming
//! the manifest digest and the repository, signed with the run's key, pushed as a one-layer
//! manifest tagged `sha256-<hex>.sig` (cosign's tag scheme; what `cosign verify --key` reads
//! without a transparency log).

use crate::oci::{OciTarget, Registry};
use crate::DistributionError;
use bytes::Bytes;
use exportcore::sign::Signer;
use exportcore::Sha256Digest;
use serde_json::json;

/// Layer media type of a cosign signature payload.
pub(crate) const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

pub(crate) async fn push_signature(
    registry: &Registry,
    target: &OciTarget,
    digest: &Sha256Digest,
    signer: &dyn Signer,
) -> Result<String, DistributionError> {
    use base64::Engine as _;
    let payload = json!({
        "critical": {
            "identity": {"docker-reference": format!("{}/{}", target.registry, target.repository)},
            "image": {"docker-manifest-digest": format!("sha256:{digest}")},
            "type": "cosign container image signature",
        },
        "optional": null,
    });
    let payload = Bytes::from(serde_json::to_vec(&payload).map_err(|e| DistributionError::fatal(e.to_string()))?);
    let sig = signer.sign(&payload).map_err(|e| DistributionError::fatal(format!("signing: {e}")))?;
    let payload_digest = Sha256Digest::of(&payload);
    let config = Bytes::from_static(b"{}");
    let config_digest = Sha256Digest::of(&config);
    for (bytes, d) in [(payload.clone(), payload_digest), (config.clone(), config_digest)] {
        if !registry.has_blob(&d).await? {
            registry.upload_bytes(bytes, &d).await?;
        }
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{
            "mediaType": SIMPLE_SIGNING,
            "digest": format!("sha256:{payload_digest}"),
            "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": base64::engine::general_purpose::STANDARD.encode(sig)},
        }],
    });
    let bytes =
        Bytes::from(exportcore::canonical::to_vec(&manifest).map_err(|e| DistributionError::fatal(e.to_string()))?);
    let tag = format!("sha256-{digest}.sig");
    registry.put_manifest(&tag, "application/vnd.oci.image.manifest.v1+json", &bytes).await?;
    Ok(tag)
}
