//! Packaging as Trivy consumes it: a deterministic `*.tar.gz` with the database file and
//! `metadata.json` at its root, and an OCI image layout of the single-layer artifact Trivy
//! pulls (`--db-repository` / `--java-db-repository`).

use exportcore::archive::{ArchiveOptions, ArchiveWriter, FileMode};
use exportcore::hashing::HashingReader;
use exportcore::Sha256Digest;
use exportcore::{
    canonical, ArtifactPath, ArtifactSpec, ArtifactType, Compression, ExportContext, ExportError, Result, Timestamp,
};
use serde_json::json;
use std::path::Path;

/// OCI media type of the (empty) config of Trivy's artifacts.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.aquasec.trivy.config.v1+json";
/// Layer media type of the vulnerability DB.
pub const DB_LAYER_MEDIA_TYPE: &str = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip";
/// Layer media type of the Java DB.
pub const JAVADB_LAYER_MEDIA_TYPE: &str = "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip";

/// Default gzip level of `db.tar.gz` / `javadb.tar.gz` (request `compressionLevel` overrides):
/// the knee of zlib-rs' curve on Trivy DBs, 4.7 % larger than level 6 for 40 % less CPU
/// (docs/benchmarks.md).
pub(crate) const GZIP_LEVEL: u32 = 5;

/// Go's zero time, what Trivy's own published metadata carries before a download.
pub(crate) const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `metadata.json` of a database: schema `version`, `UpdatedAt` = the pinned time,
/// `NextUpdate` = that plus `next_update_hours`.
pub(crate) fn metadata(version: u32, updated: Timestamp, next_update_hours: u32) -> Vec<u8> {
    let next = Timestamp::from_unix(updated.unix() + i64::from(next_update_hours) * 3600).unwrap_or(updated);
    let m = json!({"Version": version, "NextUpdate": next.to_string(), "UpdatedAt": updated.to_string(), "DownloadedAt": GO_ZERO_TIME});
    // Field order as Trivy writes it; serde_json keeps insertion order only with preserve_order,
    // so write canonical (sorted) JSON: Go's decoder does not care about order.
    canonical::to_vec(&m).unwrap_or_default()
}

/// Stages `name` (e.g. `db.tar.gz`): a gzip tar holding `files` (name, local path) in name order.
/// Returns it and the (size, SHA-256) of each input file, in `files` order, hashed as it was
/// archived.
pub(crate) fn tarball(
    ctx: &mut ExportContext<'_>,
    name: &str,
    files: &[(&str, &Path)],
    mtime: u64,
) -> Result<(exportcore::StagedArtifact, Vec<(u64, Sha256Digest)>)> {
    // A database package, not one of our bundles: it carries no manifest.json (Trivy extracts
    // every file of it into its cache).
    let spec = ArtifactSpec::new(name, ArtifactType::Database, "tar+gzip", "application/gzip")?;
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|i| files[*i].0);
    let options = gzip_options(ctx, mtime)?;
    let mut digests = vec![(0, Sha256Digest::of(b"")); files.len()];
    let (staged, ()) = ctx.write_artifact(spec, |w| {
        let mut ar = ArchiveWriter::new(w, options)?;
        for i in order {
            let (entry, local) = files[i];
            let f = std::fs::File::open(local).map_err(|e| ExportError::io(local, e))?;
            let size = f.metadata().map_err(|e| ExportError::io(local, e))?.len();
            let mut r = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, f));
            ar.append(&ArtifactPath::parse(entry)?, FileMode::Regular, size, &mut r)?;
            digests[i] = r.finish();
        }
        ar.finish()?;
        Ok(())
    })?;
    Ok((staged, digests))
}

/// gzip settings of the packages: [`GZIP_LEVEL`] unless the request sets `compressionLevel`.
pub(crate) fn gzip_options(ctx: &ExportContext<'_>, mtime: u64) -> Result<ArchiveOptions> {
    if ctx.request().compression_level.is_some() {
        return ctx.archive_options(Compression::Gzip, mtime);
    }
    let mut options = ArchiveOptions::new(Compression::Gzip, mtime);
    options.gzip_level = GZIP_LEVEL;
    Ok(options)
}

fn write_blob(
    ctx: &mut ExportContext<'_>,
    dir: &str,
    bytes: &[u8],
    media_type: &str,
) -> Result<exportcore::Sha256Digest> {
    let digest = exportcore::Sha256Digest::of(bytes);
    let spec = ArtifactSpec::new(&format!("{dir}/blobs/sha256/{digest}"), ArtifactType::Data, "oci-blob", media_type)?;
    ctx.write_artifact(spec, |w| w.write_all(bytes).map_err(|e| ExportError::io("oci blob", e)))?;
    Ok(digest)
}

/// Stages an OCI image layout under `dir/` whose one manifest (tagged `tag`) carries the staged
/// tarball as its single layer, titled `title`, with Trivy's media types.
pub(crate) fn oci_layout(
    ctx: &mut ExportContext<'_>,
    dir: &str,
    layer: &exportcore::StagedArtifact,
    layer_media_type: &str,
    title: &str,
    tag: &str,
    created: Timestamp,
) -> Result<()> {
    let config = b"{}";
    let config_digest = write_blob(ctx, dir, config, CONFIG_MEDIA_TYPE)?;
    let layer_spec = ArtifactSpec::new(
        &format!("{dir}/blobs/sha256/{}", layer.sha256),
        ArtifactType::Data,
        "oci-blob",
        layer_media_type,
    )?;
    ctx.alias_artifact(layer_spec, layer)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": CONFIG_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{
            "mediaType": layer_media_type,
            "digest": format!("sha256:{}", layer.sha256),
            "size": layer.size,
            "annotations": {"org.opencontainers.image.title": title},
        }],
        "annotations": {"org.opencontainers.image.created": created.to_string()},
    });
    let manifest_bytes = canonical::to_vec(&manifest)
        .map_err(|e| ExportError::internal_caused("oci", "serialising the image manifest", e))?;
    let manifest_digest = write_blob(ctx, dir, &manifest_bytes, "application/vnd.oci.image.manifest.v1+json")?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": CONFIG_MEDIA_TYPE,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    let index_bytes =
        canonical::to_vec(&index).map_err(|e| ExportError::internal_caused("oci", "serialising index.json", e))?;
    let spec = ArtifactSpec::new(
        &format!("{dir}/index.json"),
        ArtifactType::Metadata,
        "json",
        "application/vnd.oci.image.index.v1+json",
    )?;
    ctx.write_artifact(spec, |w| w.write_all(&index_bytes).map_err(|e| ExportError::io("index.json", e)))?;
    let spec = ArtifactSpec::new(&format!("{dir}/oci-layout"), ArtifactType::Metadata, "json", "application/json")?;
    ctx.write_artifact(spec, |w| {
        w.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| ExportError::io("oci-layout", e))
    })?;
    Ok(())
}
