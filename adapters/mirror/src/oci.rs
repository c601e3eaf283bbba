//! `oci/`: an OCI image layout holding the mirror bundle and each Trivy DB as artifacts, built
//! with the `oci-spec` types. Blobs are the staged files themselves (aliases, no copies);
//! descriptors are sorted by digest, every manifest carries the pinned time as
//! `org.opencontainers.image.created`, every layer its path as `org.opencontainers.image.title`,
//! every index entry its tag as `org.opencontainers.image.ref.name`. An image of more files
//! than one manifest should list ([`DEFAULT_MAX_LAYERS`]) is an image index (with the same
//! `artifactType`) of part manifests, in order, each titled `<tag> part I of N`; copy it with
//! `skopeo copy --all --preserve-digests`.

use exportcore::{
    canonical, ArtifactSpec, ArtifactType, ExportContext, ExportError, Result, StagedArtifact, Timestamp,
};
use oci_spec::image::{
    Descriptor, DescriptorBuilder, Digest, ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder,
};
use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

/// `artifactType` of the mirror bundle artifact.
pub const MIRROR_ARTIFACT_TYPE: &str = "application/vnd.exportcore.mirror.v1";
/// The most layers one manifest of the `oci/` layout lists unless configured otherwise
/// (`oci_max_layers`): registries refuse manifests over 4 MiB (distribution, containerd, ORAS)
/// and some cap the layers of an image (Amazon ECR: 4,200). 1,000 descriptors with their
/// titles stay near 300 KiB.
pub const DEFAULT_MAX_LAYERS: usize = 1000;
/// The OCI empty descriptor's media type (config of the mirror artifact).
pub(crate) const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// One layer: its title (a path) and its bytes (a staged artifact).
pub(crate) struct Layer<'a> {
    pub title: String,
    pub media_type: String,
    pub blob: &'a StagedArtifact,
}

/// One tagged artifact.
pub(crate) struct Image<'a> {
    pub tag: &'static str,
    pub artifact_type: &'static str,
    pub config_media_type: &'static str,
    pub layers: Vec<Layer<'a>>,
}

fn oci_err(what: &str) -> impl Fn(oci_spec::OciSpecError) -> ExportError + '_ {
    move |e| ExportError::internal_caused("oci", format!("building {what}"), e)
}

fn digest(d: &exportcore::Sha256Digest) -> Result<Digest> {
    Digest::from_str(&format!("sha256:{d}")).map_err(oci_err("a digest"))
}

fn descriptor(
    media_type: &str,
    d: &exportcore::Sha256Digest,
    size: u64,
    annotations: &[(&str, &str)],
    artifact_type: Option<&str>,
) -> Result<Descriptor> {
    let mut b = DescriptorBuilder::default().media_type(MediaType::from(media_type)).digest(digest(d)?).size(size);
    if !annotations.is_empty() {
        let map: HashMap<String, String> =
            annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        b = b.annotations(map);
    }
    if let Some(t) = artifact_type {
        b = b.artifact_type(MediaType::from(t));
    }
    b.build().map_err(oci_err("a descriptor"))
}

/// Stages the layout under `oci/`; an image of more than `max_layers` layers becomes an index
/// of part manifests of at most `max_layers` layers each (see [`DEFAULT_MAX_LAYERS`]).
pub(crate) fn write_layout(
    ctx: &mut ExportContext<'_>,
    images: &[Image<'_>],
    created: Timestamp,
    max_layers: usize,
) -> Result<()> {
    let max_layers = max_layers.max(1);
    let mut staged: BTreeSet<String> = BTreeSet::new();
    let mut blob = |ctx: &mut ExportContext<'_>, bytes: Option<&[u8]>, of: Option<&StagedArtifact>, media: &str| {
        let (sha, spec_path) = match (bytes, of) {
            (Some(b), _) => {
                let d = exportcore::Sha256Digest::of(b);
                (d, format!("oci/blobs/sha256/{d}"))
            }
            (None, Some(a)) => (a.sha256, format!("oci/blobs/sha256/{}", a.sha256)),
            (None, None) => return Err(ExportError::internal("oci", "a blob without bytes")),
        };
        if staged.insert(spec_path.clone()) {
            let spec = ArtifactSpec::new(&spec_path, ArtifactType::Data, "oci-blob", media)?;
            match (bytes, of) {
                (Some(b), _) => {
                    ctx.write_artifact(spec, |w| w.write_all(b).map_err(|e| ExportError::io(&spec_path, e)))?;
                }
                (None, Some(a)) => {
                    ctx.alias_artifact(spec, a)?;
                }
                _ => {}
            }
        }
        Ok(sha)
    };
    let created_s = created.to_string();
    let mut entries = Vec::new();
    for image in images {
        let config = b"{}";
        let config_sha = blob(ctx, Some(config), None, image.config_media_type)?;
        let mut layers = Vec::new();
        for l in &image.layers {
            blob(ctx, None, Some(l.blob), &l.media_type)?;
            layers.push(descriptor(
                &l.media_type,
                &l.blob.sha256,
                l.blob.size,
                &[("org.opencontainers.image.title", &l.title)],
                None,
            )?);
        }
        layers.sort_by_key(|d| (d.digest().to_string(), title(d)));
        let config = descriptor(image.config_media_type, &config_sha, config.len() as u64, &[], None)?;
        let created_note = [("org.opencontainers.image.created".to_owned(), created_s.clone())];
        let manifest = |layers: Vec<Descriptor>| -> Result<Vec<u8>> {
            let manifest = ImageManifestBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageManifest)
                .artifact_type(MediaType::from(image.artifact_type))
                .config(config.clone())
                .layers(layers)
                .annotations(HashMap::from(created_note.clone()))
                .build()
                .map_err(oci_err("an image manifest"))?;
            canonical::to_vec(&manifest)
                .map_err(|e| ExportError::internal_caused("oci", "serialising an image manifest", e))
        };
        // Registries refuse manifests over 4 MiB and some more than about 4,000 layers: an
        // image with more layers than `max_layers` is an index of part manifests, in order.
        let (media_type, bytes) = if layers.len() <= max_layers {
            (MediaType::ImageManifest, manifest(layers)?)
        } else {
            let count = layers.len().div_ceil(max_layers);
            let mut parts = Vec::with_capacity(count);
            for (i, chunk) in layers.chunks(max_layers).enumerate() {
                let bytes = manifest(chunk.to_vec())?;
                let sha = blob(ctx, Some(&bytes), None, "application/vnd.oci.image.manifest.v1+json")?;
                let title = format!("{} part {} of {count}", image.tag, i + 1);
                parts.push(descriptor(
                    "application/vnd.oci.image.manifest.v1+json",
                    &sha,
                    bytes.len() as u64,
                    &[("org.opencontainers.image.title", &title)],
                    // Not on the parts' descriptors: skopeo 1.9 then refuses to copy the
                    // index unchanged (`--preserve-digests`); each part manifest has it.
                    None,
                )?);
            }
            let index = ImageIndexBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageIndex)
                .artifact_type(MediaType::from(image.artifact_type))
                .manifests(parts)
                .annotations(HashMap::from(created_note.clone()))
                .build()
                .map_err(oci_err("an image index"))?;
            let bytes = canonical::to_vec(&index)
                .map_err(|e| ExportError::internal_caused("oci", "serialising an image index", e))?;
            (MediaType::ImageIndex, bytes)
        };
        let media = media_type.to_string();
        let sha = blob(ctx, Some(&bytes), None, &media)?;
        entries.push(descriptor(
            &media,
            &sha,
            bytes.len() as u64,
            &[("org.opencontainers.image.created", &created_s), ("org.opencontainers.image.ref.name", image.tag)],
            Some(image.artifact_type),
        )?);
    }
    entries.sort_by_key(|d| d.digest().to_string());
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(entries)
        .build()
        .map_err(oci_err("index.json"))?;
    let index_bytes =
        canonical::to_vec(&index).map_err(|e| ExportError::internal_caused("oci", "serialising index.json", e))?;
    let spec =
        ArtifactSpec::new("oci/index.json", ArtifactType::Metadata, "json", "application/vnd.oci.image.index.v1+json")?;
    ctx.write_artifact(spec, |w| w.write_all(&index_bytes).map_err(|e| ExportError::io("oci/index.json", e)))?;
    let layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build().map_err(oci_err("oci-layout"))?;
    let layout_bytes =
        canonical::to_vec(&layout).map_err(|e| ExportError::internal_caused("oci", "serialising oci-layout", e))?;
    let spec = ArtifactSpec::new("oci/oci-layout", ArtifactType::Metadata, "json", "application/json")?;
    ctx.write_artifact(spec, |w| w.write_all(&layout_bytes).map_err(|e| ExportError::io("oci/oci-layout", e)))?;
    Ok(())
}

fn title(d: &Descriptor) -> String {
    d.annotations().as_ref().and_then(|a| a.get("org.opencontainers.image.title").cloned()).unwrap_or_default()
}

/// Checks an OCI layout directory: `oci-layout`, `index.json`, and for every manifest it
/// names (recursively through nested indexes) the blob's size and digest, its config and
/// layers. Returns one message per problem, each naming the file.
pub fn check_layout(dir: &std::path::Path) -> Vec<String> {
    check_layout_with(dir, &|_| None)
}

/// [`check_layout`], taking the size and SHA-256 of a blob (`blobs/sha256/<hex>`, relative to
/// `dir`) from `known` when it has them (the digests a verification of the whole directory
/// already computed, so no blob is read twice). Manifests and indexes are read, hashed and
/// parsed from the same bytes.
pub fn check_layout_with(
    dir: &std::path::Path,
    known: &dyn Fn(&str) -> Option<(u64, exportcore::Sha256Digest)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let read = |rel: &str| exportcore::files::read_capped(&dir.join(rel), exportcore::files::MAX_MANIFEST_BYTES);
    match read("oci-layout").ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) {
        Some(v) if v["imageLayoutVersion"] == "1.0.0" => {}
        _ => problems.push("oci/oci-layout: missing or not imageLayoutVersion 1.0.0".to_owned()),
    }
    let index = match read("index.json").map(|b| serde_json::from_slice::<oci_spec::image::ImageIndex>(&b)) {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => return [problems, vec![format!("oci/index.json: not an image index: {e}")]].concat(),
        Err(e) => return [problems, vec![format!("oci/index.json: {e}")]].concat(),
    };
    let blob = |d: &Descriptor, problems: &mut Vec<String>| -> Option<Vec<u8>> {
        let Some(hex) = d.as_digest_sha256() else {
            problems.push(format!("oci: {} is not a sha256 digest", d.digest()));
            return None;
        };
        let rel = format!("blobs/sha256/{hex}");
        let path = dir.join(&rel);
        let manifest_like = matches!(d.media_type(), MediaType::ImageManifest | MediaType::ImageIndex);
        let (found, bytes) = if manifest_like {
            match exportcore::files::read_capped(&path, exportcore::files::MAX_MANIFEST_BYTES) {
                Ok(b) => ((b.len() as u64, exportcore::Sha256Digest::of(&b)), b),
                Err(e) => {
                    problems.push(format!("oci/{rel}: {e}"));
                    return None;
                }
            }
        } else {
            let hashed = known(&rel).map_or_else(|| exportcore::files::hash_regular(&path), Ok);
            match hashed {
                Ok(h) => (h, Vec::new()),
                Err(e) => {
                    problems.push(format!("oci/{rel}: {e}"));
                    return None;
                }
            }
        };
        let (size, sha) = found;
        if size != d.size() || sha.to_hex() != hex {
            problems
                .push(format!("oci/{rel}: size {size} and sha256 {sha} do not match the descriptor ({})", d.size()));
            return None;
        }
        Some(bytes)
    };
    // Each distinct descriptor once: an index may list another many times, and indexes that
    // list each other would otherwise make the walk exponential (or endless).
    let mut seen = std::collections::HashSet::new();
    let mut first = |d: &Descriptor| seen.insert((d.digest().to_string(), d.size(), d.media_type().to_string()));
    let mut todo: Vec<Descriptor> = index.manifests().clone();
    while let Some(d) = todo.pop() {
        if !first(&d) {
            continue;
        }
        let Some(bytes) = blob(&d, &mut problems) else { continue };
        match d.media_type() {
            MediaType::ImageManifest => match serde_json::from_slice::<oci_spec::image::ImageManifest>(&bytes) {
                Ok(m) => {
                    for b in std::iter::once(m.config()).chain(m.layers()) {
                        if first(b) {
                            let _ = blob(b, &mut problems);
                        }
                    }
                }
                Err(e) => problems.push(format!("oci: manifest {}: {e}", d.digest())),
            },
            MediaType::ImageIndex => match serde_json::from_slice::<oci_spec::image::ImageIndex>(&bytes) {
                Ok(i) => todo.extend(i.manifests().iter().cloned()),
                Err(e) => problems.push(format!("oci: index {}: {e}", d.digest())),
            },
            _ => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores `bytes` as a blob of `dir`; its descriptor.
    fn blob(dir: &std::path::Path, media: &str, bytes: &[u8]) -> serde_json::Value {
        let digest = exportcore::Sha256Digest::of(bytes).to_hex();
        std::fs::write(dir.join("blobs/sha256").join(&digest), bytes).unwrap();
        serde_json::json!({"mediaType": media, "digest": format!("sha256:{digest}"), "size": bytes.len()})
    }

    /// Indexes that list one another many times (a diamond three levels deep: 300^3 paths)
    /// are walked once per distinct descriptor: the check ends at once, reporting the one
    /// missing blob once.
    #[test]
    fn a_layout_that_lists_the_same_index_many_times_is_checked_once_per_blob() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let missing = serde_json::json!({"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", "0".repeat(64)), "size": 2});
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": missing, "layers": []});
        let mut leaf = blob(dir.path(), "application/vnd.oci.image.manifest.v1+json", manifest.to_string().as_bytes());
        for _ in 0..3 {
            let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": vec![leaf.clone(); 300]});
            leaf = blob(dir.path(), "application/vnd.oci.image.index.v1+json", index.to_string().as_bytes());
        }
        let top = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": vec![leaf; 300]});
        std::fs::write(dir.path().join("index.json"), top.to_string()).unwrap();
        // Walking every path would report the missing config 300^3 times (after hours).
        let problems = check_layout(dir.path());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains(&"0".repeat(64)), "{problems:?}");
    }
}
