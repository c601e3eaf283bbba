use super::{file_stream, sink_io, ByteStream, ObjectMeta, PutReceipt, Sink};
use crate::error::{ExportError, IoContext, Result};
use crate::hashing::{Hasher, Sha256Digest};
use crate::path::ArtifactPath;
use async_trait::async_trait;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Prefix of in-flight temporary files; never listed, never a final name.
pub(crate) const TEMP_PREFIX: &str = ".exportcore-tmp-";

/// Hard-links `src` at `tmp` (only if `src` already has mode 0644), hashes what `tmp` holds
/// and fsyncs it.
fn link_and_hash(src: &Path, tmp: &Path) -> std::io::Result<(u64, Sha256Digest)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(src)?.permissions().mode() & 0o7777 != 0o644 {
            return Err(std::io::Error::other("source mode is not 0644"));
        }
    }
    std::fs::hard_link(src, tmp)?;
    let f = std::fs::File::open(tmp)?;
    if f.metadata()?.len() < OVERLAP_FROM {
        f.sync_all()?;
        return crate::hashing::hash_reader(&f);
    }
    // The flush to disk (I/O) and the hash (CPU) of the same bytes overlap.
    std::thread::scope(|s| {
        let synced = s.spawn(|| f.sync_all());
        let stored = crate::hashing::hash_reader(&f);
        synced.join().unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked")))?;
        stored
    })
}

/// Files from this size on are flushed and hashed at once, on two threads; smaller ones one
/// after the other (a thread costs more than it saves on them).
const OVERLAP_FROM: u64 = 4 << 20;

/// Copies `src` to a new `tmp` (mode 0644), hashing the bytes as they pass, and fsyncs it.
fn copy_and_hash(src: &Path, tmp: &Path) -> std::io::Result<(u64, Sha256Digest)> {
    use std::io::{Read, Write};
    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::File::options().write(true).create_new(true).open(tmp)?;
    set_published_mode(tmp)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    to.sync_all()?;
    Ok(hasher.finish())
}

/// Gives a file about to be published mode 0644, whatever the umask or where it came from.
fn set_published_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Flushes a directory, making the renames in it durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// A sink writing under a local directory.
///
/// Every put streams into a temporary file next to the final one, fsyncs it, renames it over
/// the final name and fsyncs the directory, so a reader (or a restart after a crash) sees
/// either the old content or the whole new one. Temporary files start with
/// `.exportcore-tmp-` and are never listed; [`Sink::delete_prefix`] removes them with the rest
/// of a prefix (the engine calls it on the prefix of a run whose process died).
/// Paths whose existing parent components are symlinks are refused, so nothing is written
/// outside the root.
#[derive(Clone, Debug)]
pub struct FsSink {
    root: PathBuf,
}

impl FsSink {
    /// Opens (creating if needed) a sink rooted at `root`.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).at(root)?;
        let root = std::fs::canonicalize(root).at(root)?;
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Local path of an artifact.
    pub fn local_path(&self, path: &ArtifactPath) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(path.as_str().split('/'));
        p
    }

    /// Checks that no existing directory between the root and `path` is a symlink, creating
    /// missing ones when `create` is set.
    fn safe_parent(&self, path: &ArtifactPath, create: bool) -> Result<PathBuf> {
        let mut dir = self.root.clone();
        let segs: Vec<&str> = path.as_str().split('/').collect();
        for seg in &segs[..segs.len() - 1] {
            dir.push(seg);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ExportError::PathUnsafe {
                        path: path.to_string(),
                        reason: format!("{} is a symlink", dir.display()),
                    })
                }
                Ok(m) if !m.is_dir() => {
                    return Err(ExportError::PathUnsafe {
                        path: path.to_string(),
                        reason: format!("{} is not a directory", dir.display()),
                    })
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    std::fs::create_dir(&dir)
                        .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                        .at(&dir)?;
                    // The new directory's entry must survive a power cut too, or the files
                    // renamed into it (each flushed) could vanish with it.
                    if let Some(parent) = dir.parent() {
                        sync_dir(parent)?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ExportError::NotFound { path: path.to_string() })
                }
                Err(e) => return Err(ExportError::io(&dir, e)),
            }
        }
        Ok(dir)
    }

    fn put_file_blocking(&self, path: &ArtifactPath, src: &Path) -> Result<PutReceipt> {
        let (receipt, dir) = self.place_file(path, src)?;
        sync_dir(&dir)?;
        Ok(receipt)
    }

    /// `put_file` up to the directory's flush: the file is stored, flushed and renamed into
    /// place; the caller flushes the directory it returns to make the rename durable.
    fn place_file(&self, path: &ArtifactPath, src: &Path) -> Result<(PutReceipt, PathBuf)> {
        let dir = self.safe_parent(path, true)?;
        let final_path = self.local_path(path);
        if final_path.is_dir() {
            return Err(ExportError::PathUnsafe { path: path.to_string(), reason: "is a directory".into() });
        }
        let tmp = dir.join(format!("{TEMP_PREFIX}{}", crate::id::uuid_v7().replace('-', "")));
        // Link when the source already has the published mode (nothing about it changes);
        // copy when it has another mode, lives on another filesystem, or linking fails at all.
        let stored = link_and_hash(src, &tmp).or_else(|_| {
            let _ = std::fs::remove_file(&tmp);
            copy_and_hash(src, &tmp)
        });
        let (size, sha256) = match stored {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ExportError::io(src, e));
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &final_path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(ExportError::io(&final_path, e));
        }
        // Renaming a link onto a name of the same inode does nothing: clear the temp name then.
        let _ = std::fs::remove_file(&tmp);
        Ok((PutReceipt { path: path.clone(), size, sha256, url: self.url(path) }, dir))
    }

    /// Where a walk of `prefix` starts: its directory, `None` when there is nothing there or
    /// it is not a plain directory (a symlink is never followed).
    fn prefix_dir(&self, prefix: &ArtifactPath) -> Result<Option<(PathBuf, std::fs::Metadata)>> {
        match self.safe_parent(prefix, false) {
            Ok(_) => {}
            Err(ExportError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let top = self.local_path(prefix);
        match std::fs::symlink_metadata(&top) {
            Ok(m) => Ok(Some((top, m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ExportError::io(&top, e)),
        }
    }

    /// [`Sink::delete_prefix`]: every file under `prefix`, temporary files of interrupted puts
    /// included, then the directories left empty; counts the artifacts (not the temporary
    /// files) removed.
    fn delete_tree(&self, prefix: &ArtifactPath) -> Result<usize> {
        let Some((top, meta)) = self.prefix_dir(prefix)? else { return Ok(0) };
        let parent = top.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        if meta.is_file() {
            std::fs::remove_file(&top).at(&top)?;
            sync_dir(&parent)?;
            return Ok(1);
        }
        if !meta.is_dir() {
            return Ok(0);
        }
        let (mut removed, mut dirs, mut stack) = (0, Vec::new(), vec![top]);
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).at(&dir)? {
                let entry = entry.at(&dir)?;
                let ft = entry.file_type().at(entry.path())?;
                if ft.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ExportError::io(entry.path(), e)),
                }
                if ft.is_file() && !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    removed += 1;
                }
            }
            dirs.push(dir);
        }
        // Deepest first; a directory someone wrote into meanwhile stays.
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        sync_dir(&parent)?;
        Ok(removed)
    }
}

#[async_trait]
impl Sink for FsSink {
    fn name(&self) -> &str {
        "fs"
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn url(&self, path: &ArtifactPath) -> String {
        format!("file://{}", self.local_path(path).display())
    }

    async fn put(&self, path: &ArtifactPath, mut body: ByteStream) -> Result<PutReceipt> {
        let this = self.clone();
        let p = path.clone();
        let (dir, tmp) = tokio::task::spawn_blocking(move || -> Result<_> {
            let dir = this.safe_parent(&p, true)?;
            if this.local_path(&p).is_dir() {
                return Err(ExportError::PathUnsafe { path: p.to_string(), reason: "is a directory".into() });
            }
            let tmp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(&dir).at(&dir)?;
            set_published_mode(tmp.path()).at(tmp.path())?;
            Ok((dir, tmp))
        })
        .await
        .map_err(|e| ExportError::internal_caused("fs sink", "a blocking file task stopped", e))??;

        let (std_file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut hasher = Hasher::new();
        let result: std::io::Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            file.sync_all().await?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(e) = result {
            drop(tmp_path); // removes the temporary file
            return Err(sink_io(self.name(), e));
        }
        let final_path = self.local_path(path);
        let fp = final_path.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            tmp_path.persist(&fp).map_err(|e| ExportError::io(&fp, e.error))?;
            // Make the rename itself durable.
            sync_dir(&dir)
        })
        .await
        .map_err(|e| ExportError::internal_caused("fs sink", "a blocking file task stopped", e))??;
        let (size, sha256) = hasher.finish();
        Ok(PutReceipt { path: path.clone(), size, sha256, url: self.url(path) })
    }

    /// Hard-links the file in when it is on the same filesystem and already mode 0644 (else
    /// copies it), hashes what was stored, fsyncs it, renames it into place and fsyncs the
    /// directory. A linked file shares its bytes with the source: do not modify the source
    /// afterwards (staged artifacts never are).
    async fn put_file(&self, path: &ArtifactPath, file: &Path) -> Result<PutReceipt> {
        let this = self.clone();
        let p = path.clone();
        let src = file.to_path_buf();
        tokio::task::spawn_blocking(move || this.put_file_blocking(&p, &src))
            .await
            .map_err(|e| ExportError::internal_caused("fs sink", "a blocking file task stopped", e))?
    }

    /// `put_file` for each file on one blocking thread, each directory flushed once, after
    /// the last file placed in it: a mirror of many small files puts four artifacts for each.
    async fn put_files(&self, files: &[(ArtifactPath, PathBuf)]) -> Vec<Result<PutReceipt>> {
        let this = self.clone();
        let batch = files.to_vec();
        let joined = tokio::task::spawn_blocking(move || {
            let mut results = Vec::with_capacity(batch.len());
            let mut dirs = std::collections::BTreeSet::new();
            for (path, src) in &batch {
                match this.place_file(path, src) {
                    Ok((receipt, dir)) => {
                        results.push(Ok(receipt));
                        dirs.insert(dir);
                    }
                    Err(e) => {
                        results.push(Err(e));
                        break;
                    }
                }
            }
            // The renames are durable only once their directories are: until then no file
            // counts as stored.
            for dir in &dirs {
                if let Err(e) = sync_dir(dir) {
                    for r in &mut results {
                        if r.is_ok() {
                            *r = Err(ExportError::io(dir, std::io::Error::other(e.to_string())));
                        }
                    }
                    break;
                }
            }
            results
        })
        .await;
        joined.unwrap_or_else(|e| {
            // Which files were placed is unknown: report every one as tried.
            let e = ExportError::internal_caused("fs sink", "a blocking file task stopped", e);
            files.iter().map(|_| Err(ExportError::internal("fs sink", e.to_string()))).collect()
        })
    }

    async fn get(&self, path: &ArtifactPath) -> Result<ByteStream> {
        self.safe_parent(path, false)?;
        let local = self.local_path(path);
        match tokio::fs::symlink_metadata(&local).await {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(ExportError::NotFound { path: path.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ExportError::NotFound { path: path.to_string() })
            }
            Err(e) => return Err(ExportError::io(&local, e)),
        }
        let f = tokio::fs::File::open(&local).await.at(&local)?;
        Ok(file_stream(f))
    }

    async fn list(&self, prefix: Option<&ArtifactPath>) -> Result<Vec<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let start = match &prefix {
                None => (this.root.clone(), String::new()),
                Some(pre) => match this.prefix_dir(pre)? {
                    Some((_, m)) if m.is_file() => {
                        return Ok(vec![ObjectMeta { path: pre.clone(), size: m.len() }]);
                    }
                    Some((dir, m)) if m.is_dir() => (dir, pre.to_string()),
                    _ => return Ok(out),
                },
            };
            let mut stack = vec![start];
            while let Some((dir, rel)) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ExportError::io(&dir, e)),
                };
                for entry in rd {
                    let entry = entry.at(&dir)?;
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                    if name.starts_with(TEMP_PREFIX) {
                        continue;
                    }
                    let rel_child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                    let ft = entry.file_type().at(entry.path())?;
                    if ft.is_dir() {
                        stack.push((entry.path(), rel_child));
                    } else if ft.is_file() {
                        let Ok(p) = ArtifactPath::parse(&rel_child) else { continue };
                        if prefix.as_ref().is_none_or(|pre| p.starts_with(pre)) {
                            let size = entry.metadata().at(entry.path())?.len();
                            out.push(ObjectMeta { path: p, size });
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await
        .map_err(|e| ExportError::internal_caused("fs sink", "a blocking file task stopped", e))?
    }

    async fn delete_prefix(&self, prefix: &ArtifactPath) -> Result<usize> {
        let this = self.clone();
        let prefix = prefix.clone();
        tokio::task::spawn_blocking(move || this.delete_tree(&prefix))
            .await
            .map_err(|e| ExportError::internal_caused("fs sink", "a blocking file task stopped", e))?
    }

    async fn delete(&self, path: &ArtifactPath) -> Result<()> {
        match self.safe_parent(path, false) {
            Ok(_) => {}
            Err(ExportError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let local = self.local_path(path);
        match tokio::fs::remove_file(&local).await {
            // Durable: a deleted manifest of a failed or expired run must not come back.
            Ok(()) => match local.parent() {
                Some(dir) => {
                    let dir = dir.to_path_buf();
                    tokio::task::spawn_blocking(move || sync_dir(&dir))
                        .await
                        .map_err(|e| ExportError::internal_caused("fs sink", "a blocking file task stopped", e))?
                }
                None => Ok(()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ExportError::io(&local, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkExt;

    #[tokio::test]
    async fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::sink_suite(&FsSink::new(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn published_files_are_0644_and_put_file_links_when_it_can() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let sink = FsSink::new(dir.path().join("out")).unwrap();
        sink.put_bytes(&ArtifactPath::parse("a/streamed").unwrap(), "x".into()).await.unwrap();
        for (name, mode, linked) in [("linked", 0o644, true), ("copied", 0o600, false)] {
            let staged = dir.path().join(format!("{name}.src"));
            std::fs::write(&staged, b"staged bytes").unwrap();
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = sink.put_file(&ArtifactPath::parse(format!("a/{name}")).unwrap(), &staged).await.unwrap();
            assert_eq!(r.sha256, Sha256Digest::of(b"staged bytes"));
            let published = std::fs::metadata(dir.path().join("out/a").join(name)).unwrap();
            let source = std::fs::metadata(&staged).unwrap();
            // Same filesystem and mode: the staged inode itself; otherwise a copy, and the
            // source keeps its mode either way.
            assert_eq!(published.ino() == source.ino(), linked, "{name}");
            assert_eq!(source.permissions().mode() & 0o777, mode, "{name}");
        }
        for name in ["streamed", "linked", "copied"] {
            let m = std::fs::metadata(dir.path().join("out/a").join(name)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o644, "{name}");
        }
        // Publishing a file onto the very name it is already linked at leaves no temp file.
        let own = dir.path().join("out/a/linked");
        sink.put_file(&ArtifactPath::parse("a/linked").unwrap(), &own).await.unwrap();
        let temp = std::fs::read_dir(dir.path().join("out/a")).unwrap().flatten();
        assert!(temp.filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX)).count() == 0);
    }

    #[tokio::test]
    async fn refuses_symlinked_parents() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        let sink = FsSink::new(dir.path()).unwrap();
        let p = ArtifactPath::parse("escape/x.txt").unwrap();
        let err = sink.put_bytes(&p, "x".into()).await.unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_PATH_UNSAFE");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert_eq!(sink.get(&p).await.err().unwrap().code(), "ERR_EXPORT_PATH_UNSAFE");
    }

    #[tokio::test]
    async fn failed_put_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FsSink::new(dir.path()).unwrap();
        let p = ArtifactPath::parse("a/b.bin").unwrap();
        let body =
            futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"part")), Err(std::io::Error::other("boom"))])
                .boxed();
        sink.put(&p, body).await.unwrap_err();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a")).unwrap().collect();
        assert!(names.is_empty(), "{names:?}");
        // A leftover from a crash is ignored by list, not counted as an artifact, and removed
        // with its prefix, directories included; a symlinked prefix is not followed.
        std::fs::write(dir.path().join("a").join(format!("{TEMP_PREFIX}x")), b"junk").unwrap();
        assert!(sink.list(None).await.unwrap().is_empty());
        assert!(sink.list(Some(&ArtifactPath::parse("a").unwrap())).await.unwrap().is_empty());
        sink.put_bytes(&ArtifactPath::parse("a/c/d").unwrap(), "d".into()).await.unwrap();
        assert_eq!(sink.delete_prefix(&ArtifactPath::parse("a").unwrap()).await.unwrap(), 1);
        assert!(!dir.path().join("a").exists());
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let link = ArtifactPath::parse("link").unwrap();
        assert!(sink.list(Some(&link)).await.unwrap().is_empty());
        assert_eq!(sink.delete_prefix(&link).await.unwrap(), 0);
        assert!(outside.path().join("keep").exists());
        let under = ArtifactPath::parse("link/keep").unwrap();
        assert_eq!(sink.delete_prefix(&under).await.unwrap_err().code(), "ERR_EXPORT_PATH_UNSAFE");
        assert!(outside.path().join("keep").exists());
    }
}
