//! Opening files that must be regular files, without ever blocking: a FIFO, a device or a
//! directory where a file was expected is an error at once (not a reader waiting forever for
//! a writer), and small files (keys, manifests, envelopes) are read with a size cap (not until
//! `/dev/zero` runs out of memory).
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let key = dir.path().join("key.pem");
//! std::fs::write(&key, "-----BEGIN PUBLIC KEY-----")?;
//! assert_eq!(exportcore::files::read_capped(&key, 1 << 20)?.len(), 26);
//! let err = exportcore::files::read_capped(std::path::Path::new("/dev/zero"), 1 << 20).unwrap_err();
//! assert_eq!(err.code(), "ERR_EXPORT_IO");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{ExportError, IoContext, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The size and SHA-256 of the regular file at `path` ([`open_regular`], then streamed).
///
/// # Errors
/// `ERR_EXPORT_IO` naming `path`.
pub fn hash_regular(path: &Path) -> Result<(u64, crate::hashing::Sha256Digest)> {
    crate::hashing::hash_reader(open_regular(path)?).at(path)
}

/// Opens `path` for reading and checks, on the opened descriptor, that it is a regular file.
/// On Unix the open itself does not block (`O_NONBLOCK`: opening a FIFO with no writer returns
/// at once), so a FIFO swapped in for a file is an error, not a hang.
///
/// # Errors
/// `ERR_EXPORT_IO` naming `path`: missing, unreadable, or not a regular file.
pub fn open_regular(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).at(path)?;
    let meta = file.metadata().at(path)?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(ExportError::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, what)));
    }
    Ok(file)
}

/// Reads a whole regular file of at most `max` bytes.
///
/// # Errors
/// `ERR_EXPORT_IO` naming `path` (as [`open_regular`], or longer than `max` bytes: a file that
/// keeps growing or never ends, like `/dev/zero`, stops at the cap).
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).at(path)?;
    if bytes.len() as u64 > max {
        return Err(ExportError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than the {max}-byte limit for this file"),
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
///
/// # Errors
/// As [`read_capped`], and `ERR_EXPORT_IO` for bytes that are not UTF-8.
pub fn read_capped_string(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|e| ExportError::io(path, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// The cap for key files (PEM keys are a few KiB).
pub const MAX_KEY_BYTES: u64 = 1 << 20;
/// The cap for manifests and signature envelopes read whole.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// True when `path` (which need not exist yet) is `dir` or lies under it, symlinks of what
/// exists resolved: an output written there would change the input it is made from.
pub fn lies_inside(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else { return false };
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut full) = std::fs::canonicalize(&existing) {
            // What does not exist holds no links: `..` there is lexical.
            for part in rest.iter().rev() {
                if part == ".." {
                    full.pop();
                } else if part != "." {
                    full.push(part);
                }
            }
            return full.starts_with(&dir);
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last.as_os_str().to_owned());
                existing =
                    if parent.as_os_str().is_empty() { Path::new(".").to_path_buf() } else { parent.to_path_buf() };
            }
            _ => return false,
        }
    }
}

/// A staging directory (from [`staging_beside`]): removed when dropped, and held locked for
/// its whole life through `NAME.lock` beside it (an `flock` on a regular file opened for
/// writing, which NFS clients turn into a byte-range lock the server sees; directories
/// cannot be locked over NFSv4), so no other process — on this host or another — sweeps it
/// as stale while it is in use.
#[derive(Debug)]
pub struct Staging {
    dir: Option<tempfile::TempDir>,
    /// The directory, held open: its inode cannot be reused while this lives, so a directory
    /// made at the same path after it was removed never passes for it.
    handle: File,
    lock_path: PathBuf,
    _lock: File,
}

impl Staging {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), tempfile::TempDir::path)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The directory goes right after (the `TempDir`), unless it was published.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// A leftover the sweep may remove: a staging directory or lock file of a process gone from
/// this host, whose lock nobody holds (a lock that cannot be taken for another reason, e.g.
/// `ENOLCK`, counts as held). A directory without its lock file (a process killed between the
/// two) goes once it is a minute old.
fn stale(path: &Path, pid: u32) -> bool {
    if process_alive(pid) {
        return false;
    }
    let lock_path = if path.extension().is_some_and(|e| e == "lock") {
        path.to_path_buf()
    } else {
        let mut p = path.as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    };
    match std::fs::OpenOptions::new().read(true).write(true).open(&lock_path) {
        Ok(f) => f.try_lock().is_ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60)),
        Err(_) => false,
    }
}

/// A staging directory beside `out` (in its parent) named `{prefix}{pid}-…`, removed when
/// dropped and locked while it lives. Staging directories of the same prefix left by
/// processes that no longer run (a `kill -9`, a power cut) are removed first — only those
/// whose process is gone from this host *and* whose lock is free — so a crash leaves nothing
/// for good and a live one elsewhere is never touched.
///
/// # Errors
/// `ERR_EXPORT_IO` naming the parent directory.
pub fn staging_beside(out: &Path, prefix: &str) -> Result<Staging> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(entries) = std::fs::read_dir(parent) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if stale(&path, pid) {
                    let _ = std::fs::remove_dir_all(&path);
                    let mut lock = path.into_os_string();
                    lock.push(".lock");
                    let _ = std::fs::remove_file(lock);
                }
            } else if path.extension().is_some_and(|e| e == "lock")
                && !path.with_extension("").exists()
                && stale(&path, pid)
            {
                // A lock file whose directory is gone (its process died between the two).
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let dir =
        tempfile::Builder::new().prefix(&format!("{prefix}{}-", std::process::id())).tempdir_in(parent).at(parent)?;
    let mut lock_path = dir.path().as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let lock = options.open(&lock_path).and_then(|f| f.lock().map(|()| f)).at(&lock_path)?;
    let handle = File::open(dir.path()).at(dir.path())?;
    Ok(Staging { dir: Some(dir), handle, lock_path, _lock: lock })
}

/// Moves a tree built in `staging` (from [`staging_beside`]) to `out`, durably: every file and
/// directory of the tree is flushed first, so the rename can only publish whole files, then
/// the rename, then the directory holding `out` is flushed, so the rename itself survives a
/// power cut. `out` may exist if empty.
///
/// # Errors
/// `ERR_EXPORT_REQUEST_INVALID` naming `--out` when another process filled it meanwhile;
/// `ERR_EXPORT_IO`.
pub fn publish_dir(mut staging: Staging, out: &Path) -> Result<()> {
    // Still the directory this process created and locked: had it been removed meanwhile
    // (swept by a process that took it for a leftover), writing into its path would have made
    // a new one holding only part of the tree.
    let same = match (std::fs::symlink_metadata(staging.path()), staging.handle.metadata()) {
        (Ok(a), Ok(b)) => file_identity(&a) == file_identity(&b),
        _ => false,
    };
    if !same {
        return Err(ExportError::io(
            staging.path(),
            std::io::Error::other("the staging directory was removed or replaced while in use"),
        ));
    }
    sync_tree(staging.path())?;
    // The rename is a critical section shared with `cancel_publishing` (a signal handler):
    // either it happens whole, with the parent flushed, before a cancel, or not at all.
    let mut state = PUBLISHING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if state.cancelled {
        return Err(ExportError::Cancelled);
    }
    if out.exists() {
        std::fs::remove_dir(out).at(out)?;
    }
    std::fs::rename(staging.path(), out).map_err(|e| match e.kind() {
        std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists => {
            ExportError::invalid("--out", format!("{} was filled by another process meanwhile", out.display()))
        }
        _ => ExportError::io(out, e),
    })?;
    if let Some(dir) = staging.dir.take() {
        let _ = dir.keep();
    }
    state.published += 1;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(parent).and_then(|d| d.sync_all()).at(parent)
}

/// Whether this process may still publish, and how many trees it published.
struct Publishing {
    cancelled: bool,
    published: u64,
}

static PUBLISHING: std::sync::Mutex<Publishing> = std::sync::Mutex::new(Publishing { cancelled: false, published: 0 });

/// For a command that exits on a signal while a worker thread may be in [`publish_dir`]:
/// waits for a rename in progress to finish, then makes every later `publish_dir` of this
/// process fail with `ERR_EXPORT_CANCELLED`. Returns true when a tree was already published
/// (the command's work is done: it should finish and report it, not claim it was
/// cancelled); false when nothing was, and the caller may remove its staging
/// ([`remove_own_staging`]) and exit, knowing no rename can follow.
pub fn cancel_publishing() -> bool {
    let mut state = PUBLISHING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    state.cancelled = true;
    state.published > 0
}

/// Flushes every regular file and directory under `root` (symlinks are not followed).
fn sync_tree(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let kind = entry.file_type().at(entry.path())?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                File::open(entry.path()).and_then(|f| f.sync_all()).at(entry.path())?;
            }
        }
        File::open(&dir).and_then(|d| d.sync_all()).at(&dir)?;
    }
    Ok(())
}

/// Removes this process's staging directories of `prefix` beside `out` (a signal handler's
/// cleanup before exiting; call [`cancel_publishing`] first, so no rename races it).
pub fn remove_own_staging(out: &Path, prefix: &str) {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let own = format!("{prefix}{}-", std::process::id());
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(&own)) {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let _ = if is_dir { std::fs::remove_dir_all(entry.path()) } else { std::fs::remove_file(entry.path()) };
        }
    }
}

/// A file's (device, inode) where the platform has them.
pub(crate) fn file_identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Whether process `pid` exists (Linux: `/proc/PID`; elsewhere assumed alive, so nothing is
/// removed that might be in use).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        let st = std::process::Command::new("mkfifo").arg(&p).status().expect("mkfifo");
        assert!(st.success());
        p
    }

    #[test]
    fn fifos_directories_and_endless_files_are_errors_not_hangs() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = fifo(dir.path(), "f");
        let err = open_regular(&f).unwrap_err().report();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(open_regular(dir.path()).unwrap_err().report().contains("directory"));
        let err = read_capped(Path::new("/dev/zero"), 1024).unwrap_err().report();
        assert!(err.contains("/dev/zero"), "{err}");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, [1u8; 1024]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_capped(&ok, 1024).unwrap_or_else(|e| panic!("{e}")).len(), 1024);
        assert!(read_capped(&ok, 1023).is_err());
    }
}

#[cfg(all(test, unix))]
mod staging_tests {
    use super::*;

    #[test]
    fn lies_inside_resolves_links_and_paths_that_do_not_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        std::fs::create_dir_all(base.join("mirror")).unwrap();
        assert!(lies_inside(&base, &base));
        assert!(lies_inside(&base.join("mirror/new/deeper"), &base));
        assert!(lies_inside(&base.join("absent/../x"), &base));
        assert!(!lies_inside(&tmp.path().join("elsewhere"), &base));
        assert!(!lies_inside(&base.join("../elsewhere"), &base));
        std::os::unix::fs::symlink(base.join("mirror"), tmp.path().join("link")).unwrap();
        assert!(lies_inside(&tmp.path().join("link/new"), &base));
        assert!(!lies_inside(&base, &tmp.path().join("absent")));
    }

    #[test]
    fn staging_of_dead_processes_is_swept_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        // PIDs above the kernel's limit (4194304) never run.
        let dead = tmp.path().join(".x-staging-4194999-abc");
        let alive = tmp.path().join(format!(".x-staging-{}-abc", std::process::id()));
        let other = tmp.path().join(".x-staging-notapid");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d.join("inner")).unwrap();
        }
        // Each with its lock file, as staging_beside makes them (unlocked: their process died).
        for d in [&dead, &alive] {
            std::fs::write(format!("{}.lock", d.display()), b"").unwrap();
        }
        // A dead process's directory that never got its lock file: young, so kept (it may be
        // another host's, between the two).
        let young = tmp.path().join(".x-staging-4194998-abc");
        std::fs::create_dir_all(&young).unwrap();
        let s = staging_beside(&out, ".x-staging-").unwrap();
        assert!(!dead.exists() && alive.exists() && other.exists() && young.exists());
        assert!(!tmp.path().join(".x-staging-4194999-abc.lock").exists(), "its lock file went with it");
        assert!(Path::new(&format!("{}.lock", s.path().display())).is_file(), "a lock file beside the new one");
        assert!(s
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!(".x-staging-{}-", std::process::id())));
        remove_own_staging(&out, ".x-staging-");
        assert!(!alive.exists() && !s.path().exists() && other.exists());
    }

    /// A staging directory in use by a process this host cannot see (another host sharing
    /// the directory over NFS: its PID means nothing here) is locked, and not swept; once its
    /// lock is released it is. One swept anyway (or replaced) is never published: the rename
    /// checks it is still the directory that was locked.
    #[test]
    fn locked_staging_is_kept_and_a_replaced_one_is_not_published() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let remote = tmp.path().join(".y-staging-4194999-abc");
        std::fs::create_dir_all(remote.join("inner")).unwrap();
        let held = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(tmp.path().join(".y-staging-4194999-abc.lock"))
            .unwrap();
        held.lock().unwrap();
        drop(staging_beside(&out, ".y-staging-").unwrap());
        assert!(remote.exists(), "a locked staging directory was swept");
        drop(held);
        drop(staging_beside(&out, ".y-staging-").unwrap());
        assert!(!remote.exists(), "an unlocked leftover was kept");

        let s = staging_beside(&out, ".y-staging-").unwrap();
        std::fs::write(s.path().join("whole"), b"1").unwrap();
        std::fs::remove_dir_all(s.path()).unwrap();
        std::fs::create_dir_all(s.path().join("part")).unwrap();
        let e = publish_dir(s, &out).unwrap_err();
        assert!(e.report().contains("removed or replaced"), "{}", e.report());
        assert!(!out.exists(), "a replaced staging directory was published");
    }
}
