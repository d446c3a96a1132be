//! The secret files an OAuth2 client keeps: a client secret, a private
//! key, a refresh token. Each must be readable by its owner only; the
//! refresh token is rewritten atomically (temporary file, fsync, rename,
//! fsync of the folder) under a lock shared with every other process that
//! refreshes it, so the daemon and `submitd check` never spend the same
//! single-use refresh token twice.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Why a secret file cannot be used. The text names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Others may read it.
    #[error("{}: readable by others (mode {mode:o}); run `chmod 600 {}` and make the service user its owner", path.display(), path.display())]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Its first line is empty.
    #[error("{}: the first line is empty; {fix}", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What to put there.
        fix: &'static str,
    },
    /// A key or certificate that cannot be used.
    #[error("{}: {reason}", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole file that must be private to its owner.
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(Zeroizing::new(std::fs::read(path).map_err(io(path))?))
}

/// The first line of a private file, without its line end.
pub(crate) fn read_first_line(
    path: &Path,
    fix: &'static str,
) -> Result<Zeroizing<String>, FileError> {
    let bytes = read_private(path)?;
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let text = std::str::from_utf8(first).map_err(|_| FileError::Unusable {
        path: path.to_path_buf(),
        reason: "the first line is not UTF-8 text".into(),
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(FileError::Empty {
            path: path.to_path_buf(),
            fix,
        });
    }
    Ok(Zeroizing::new(text.to_owned()))
}

/// Replaces `path` with `line` atomically, mode 0600: a crash leaves the
/// old token or the new one, never half of one.
pub(crate) fn write_private_atomically(path: &Path, line: &str) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.new"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // An old temporary file may have had other bits.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        // Written by root (`sudo submitd oauth2 authorize`) into the
        // service's folder: the file goes to the folder's owner, or the
        // service could not read it.
        let folder = std::fs::metadata(dir)?;
        if file.metadata()?.uid() != folder.uid() {
            let _ = std::os::unix::fs::fchown(&file, Some(folder.uid()), Some(folder.gid()));
        }
        file.write_all(line.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        FileError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// An exclusive lock on `<path>.lock`, held while a refresh token is read,
/// spent and its successor written.
#[derive(Debug)]
pub(crate) struct RefreshLock {
    _file: std::fs::File,
}

impl RefreshLock {
    /// Waits for the lock (another process refreshing holds it for one
    /// request at most).
    pub(crate) fn take(path: &Path) -> Result<Self, FileError> {
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(io(&lock))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            FileError::Io {
                path: lock.clone(),
                source: e.into(),
            }
        })?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_only_and_rewritten_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh.token");
        std::fs::write(&path, "old-token\r\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = read_first_line(&path, "x").unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_first_line(&path, "x").unwrap().as_str(), "old-token");
        let _lock = RefreshLock::take(&path).unwrap();
        write_private_atomically(&path, "new-token").unwrap();
        assert_eq!(read_first_line(&path, "x").unwrap().as_str(), "new-token");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".new")), "{names:?}");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_first_line(&path, "put the token there")
            .unwrap_err()
            .to_string()
            .contains("put the token there"));
    }
}
