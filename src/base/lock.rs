//! Advisory, exclusive file locks (`flock(2)`), released by the kernel when the process
//! ends — also after kill -9 — so a lock is never left behind by a dead process.
//!
//! Locking can fail for two different reasons, and they must not be confused: another
//! process holds the lock ([`TryLock::Held`]), or the file system cannot lock at all
//! (`ENOSYS`, `ENOLCK`, `EOPNOTSUPP`: some NFS or Lustre mounts without `flock`), which is
//! an error carrying the errno and what to do.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl FileLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The outcome of [`try_lock`].
#[derive(Debug)]
pub enum TryLock {
    Acquired(FileLock),
    /// Another process holds it.
    Held,
}

/// Why a lock could not even be tried.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot create the lock file {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot lock {} ({source}): this file system does not support flock; put the workdir on \
         a local disk or a file system with locking (for Lustre: mount with -o flock), or run one \
         relay process at a time",
        path.display()
    )]
    Unsupported {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Open (creating it and its folder) the file a lock is taken on.
fn open_lock_file(path: &Path) -> Result<std::fs::File, LockError> {
    let create = |source| LockError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(create)
}

/// Try to take an exclusive lock on `path` (created if missing) without waiting.
pub fn try_lock(path: &Path) -> Result<TryLock, LockError> {
    let file = open_lock_file(path)?;
    // SAFETY: flock on a file descriptor we own and keep open in the returned guard.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(TryLock::Acquired(FileLock {
            path: path.to_path_buf(),
            _file: file,
        }));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(TryLock::Held);
    }
    Err(LockError::Unsupported {
        path: path.to_path_buf(),
        source: err,
    })
}

/// Take an exclusive lock on `path`, waiting for the holder to release it (for short
/// read-modify-write sections such as `relay.lock`).
pub fn lock_blocking(path: &Path) -> Result<FileLock, LockError> {
    let file = open_lock_file(path)?;
    loop {
        // SAFETY: as in `try_lock`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(FileLock {
                path: path.to_path_buf(),
                _file: file,
            });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(LockError::Unsupported {
                path: path.to_path_buf(),
                source: err,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_held_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.lock");
        let TryLock::Acquired(first) = try_lock(&p).unwrap() else {
            panic!("first lock")
        };
        // flock locks belong to the open file description: a second open conflicts even
        // within one process, as it would in another one.
        assert!(matches!(try_lock(&p).unwrap(), TryLock::Held));
        drop(first);
        assert!(matches!(try_lock(&p).unwrap(), TryLock::Acquired(_)));
        let _b = lock_blocking(&p).unwrap();
    }
}
