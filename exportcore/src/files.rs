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
use std::path::Path;

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
