use super::{EvidenceItem, EvidenceKind, EvidenceSource};
use crate::error::{ExportError, IoContext, Result};
use crate::path::ArtifactPath;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Evidence read from a local directory (see the module docs for the layout).
///
/// Symlinks are followed only while they stay inside the root; one pointing outside makes
/// `list` fail with `ERR_EXPORT_PATH_UNSAFE`, as do device files, FIFOs, sockets and names
/// that are not UTF-8.
#[derive(Clone, Debug)]
pub struct DirEvidence {
    root: PathBuf,
}

impl DirEvidence {
    /// Opens `root`, which must be an existing directory.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let canon = std::fs::canonicalize(root).at(root)?;
        if !canon.is_dir() {
            return Err(ExportError::io(root, std::io::Error::other("not a directory")));
        }
        Ok(Self { root: canon })
    }

    /// The (canonical) root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn unsafe_path(&self, path: &Path, reason: &str) -> ExportError {
        ExportError::PathUnsafe { path: path.display().to_string(), reason: reason.to_owned() }
    }

    /// Resolves `p` and checks it stays within the root.
    fn contained(&self, p: &Path) -> Result<PathBuf> {
        let canon = std::fs::canonicalize(p).at(p)?;
        if !canon.starts_with(&self.root) {
            return Err(
                self.unsafe_path(p, &format!("resolves to {}, outside the evidence directory", canon.display()))
            );
        }
        Ok(canon)
    }

    fn walk(&self, dir: &Path, rel: &str, visited: &mut BTreeSet<PathBuf>, out: &mut Vec<EvidenceItem>) -> Result<()> {
        let canon = self.contained(dir)?;
        if !visited.insert(canon) {
            return Ok(()); // symlink cycle
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir).at(dir)?.collect::<std::io::Result<_>>().at(dir)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(self.unsafe_path(&path, "file name is not UTF-8"));
            };
            if name.starts_with('.') {
                continue;
            }
            let rel_child = format!("{rel}/{name}");
            let meta = std::fs::symlink_metadata(&path).at(&path)?;
            let (ft, size) = if meta.file_type().is_symlink() {
                let target = self.contained(&path)?;
                let m = std::fs::metadata(&target).at(&target)?;
                (m.file_type(), m.len())
            } else {
                (meta.file_type(), meta.len())
            };
            if ft.is_dir() {
                self.walk(&path, &rel_child, visited, out)?;
            } else if ft.is_file() {
                out.push(EvidenceItem { path: ArtifactPath::parse(&rel_child)?, size });
            } else {
                return Err(self.unsafe_path(&path, "not a regular file or directory"));
            }
        }
        Ok(())
    }
}

impl EvidenceSource for DirEvidence {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        let mut out = Vec::new();
        for top in kind.dirs() {
            let dir = self.root.join(top);
            match std::fs::symlink_metadata(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ExportError::io(&dir, e)),
                Ok(_) => {}
            }
            let mut visited = BTreeSet::new();
            self.walk(&dir, top, &mut visited, &mut out)?;
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn open(&self, path: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        let mut local = self.root.clone();
        local.extend(path.as_str().split('/'));
        let canon = self.contained(&local)?;
        let f = crate::files::open_regular(&canon)?;
        // What was opened is what was checked: a directory on the way swapped for a link to
        // elsewhere between the check and the open is caught on the descriptor (Linux).
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            if let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())) {
                if !real.starts_with(&self.root) {
                    return Err(self.unsafe_path(
                        &local,
                        &format!("resolved to {} when opened, outside the evidence directory", real.display()),
                    ));
                }
            }
        }
        Ok(Box::new(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_sorted_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let adv = dir.path().join("advisories/npm");
        std::fs::create_dir_all(&adv).unwrap();
        std::fs::write(adv.join("b.json"), "{}").unwrap();
        std::fs::write(adv.join("a.json"), "{}").unwrap();
        std::fs::write(adv.join(".gitkeep"), "").unwrap();
        let ev = DirEvidence::new(dir.path()).unwrap();
        let paths: Vec<String> =
            ev.list(EvidenceKind::Advisory).unwrap().into_iter().map(|i| i.path.to_string()).collect();
        assert_eq!(paths, ["advisories/npm/a.json", "advisories/npm/b.json"]);
        assert!(ev.list(EvidenceKind::Vex).unwrap().is_empty());
    }

    #[test]
    fn symlink_out_of_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.path().join("advisories")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.json"), dir.path().join("advisories/x.json")).unwrap();
        let ev = DirEvidence::new(dir.path()).unwrap();
        let err = ev.list(EvidenceKind::Advisory).unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_PATH_UNSAFE");
        assert!(err.to_string().contains("outside the evidence directory"), "{err}");
    }

    #[test]
    fn symlink_inside_tree_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("advisories")).unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        std::fs::write(dir.path().join("store/a.json"), "{}").unwrap();
        std::os::unix::fs::symlink(dir.path().join("store/a.json"), dir.path().join("advisories/a.json")).unwrap();
        let ev = DirEvidence::new(dir.path()).unwrap();
        let items = ev.list(EvidenceKind::Advisory).unwrap();
        assert_eq!(items.len(), 1);
        let mut s = String::new();
        ev.open(&items[0].path).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "{}");
    }

    #[test]
    fn fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vex")).unwrap();
        let status = std::process::Command::new("mkfifo").arg(dir.path().join("vex/pipe.json")).status().unwrap();
        assert!(status.success());
        let err = DirEvidence::new(dir.path()).unwrap().list(EvidenceKind::Vex).unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_PATH_UNSAFE");
    }

    /// A writer to the evidence tree swaps a directory for a link to a secret elsewhere, as
    /// fast as it can, while the files under it are opened: every open either fails or reads
    /// the evidence, never the secret.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_directory_swapped_for_a_link_while_opening_never_reads_outside() {
        use std::io::Read as _;
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("ev"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("advisories/x")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("advisories/x/a.json"), "evidence").unwrap();
        std::fs::write(outside.join("a.json"), "SECRET").unwrap();
        let ev = DirEvidence::new(&root).unwrap();
        let path = ArtifactPath::parse("advisories/x/a.json").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, adv, outside) = (std::sync::Arc::clone(&stop), root.join("advisories"), outside);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // The directory moved aside and a link to the secret put in its place, then back.
                    std::fs::rename(adv.join("x"), adv.join("stash")).unwrap();
                    std::os::unix::fs::symlink(&outside, adv.join("x")).unwrap();
                    std::thread::yield_now();
                    std::fs::remove_file(adv.join("x")).unwrap();
                    std::fs::rename(adv.join("stash"), adv.join("x")).unwrap();
                }
            })
        };
        let mut read = 0;
        // The window is a few microseconds: without the descriptor check this read the
        // secret within 100,000 tries here (at most 5 s of them).
        let start = std::time::Instant::now();
        for _ in 0..100_000 {
            if start.elapsed() > std::time::Duration::from_secs(5) {
                break;
            }
            if let Ok(mut r) = ev.open(&path) {
                let mut s = String::new();
                r.read_to_string(&mut s).unwrap();
                assert_eq!(s, "evidence", "an open read outside the evidence directory");
                read += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(read > 0, "no open succeeded: the test checked nothing");
    }
}
