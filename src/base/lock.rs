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
    file: std::fs::File,
    /// Whether this holder wrote its name into the file (cleared again on release).
    named: bool,
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if self.named {
            // Still locked here: nobody reads a stale holder once the lock is free.
            let _ = self.file.set_len(0);
        }
    }
}

impl FileLock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Say who holds the lock (pid, host, since when), for the message another process
    /// prints when it finds the lock held. Best effort: the lock itself is what counts.
    pub fn write_holder(&mut self) {
        use std::io::{Seek, Write};
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let text = format!(
            "pid {} on {} since {}\n",
            std::process::id(),
            if host.is_empty() { "this host" } else { &host },
            crate::base::record::rfc3339(std::time::SystemTime::now())
        );
        let _ = self.file.set_len(0);
        let _ = self.file.seek(std::io::SeekFrom::Start(0));
        let _ = self.file.write_all(text.as_bytes());
        self.named = true;
    }
}

/// Who holds the lock at `path`, as its holder wrote it (empty when unknown).
pub fn holder(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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

/// How a lock is held: by one process, or by any number of readers (shard workers of one
/// stage share its lock; the run that commits the stage holds it alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

/// Try to take an exclusive lock on `path` (created if missing) without waiting.
pub fn try_lock(path: &Path) -> Result<TryLock, LockError> {
    try_lock_mode(path, Mode::Exclusive)
}

/// Try to take a lock on `path` in `mode` without waiting.
pub fn try_lock_mode(path: &Path, mode: Mode) -> Result<TryLock, LockError> {
    let file = open_lock_file(path)?;
    let op = match mode {
        Mode::Exclusive => libc::LOCK_EX,
        Mode::Shared => libc::LOCK_SH,
    };
    // SAFETY: flock on a file descriptor we own and keep open in the returned guard.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(TryLock::Acquired(FileLock {
            path: path.to_path_buf(),
            file,
            named: false,
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
/// read-modify-write sections, and for shards another live process is writing).
pub fn lock_blocking(path: &Path) -> Result<FileLock, LockError> {
    wait_for(open_lock_file(path)?, path)
}

/// Take an exclusive lock on a folder itself (waiting for the holder), for short
/// read-modify-write sections of a file in it, such as `relay.lock` beside the pipeline:
/// no lock file is left in the user's folder.
pub fn lock_dir(dir: &Path) -> Result<FileLock, LockError> {
    let file = std::fs::File::open(dir).map_err(|source| LockError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    wait_for(file, dir)
}

/// `flock(LOCK_EX)` on `file`, retried when a signal interrupts the wait.
fn wait_for(file: std::fs::File, path: &Path) -> Result<FileLock, LockError> {
    loop {
        // SAFETY: flock on a file descriptor we own and keep open in the returned guard.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(FileLock {
                path: path.to_path_buf(),
                file,
                named: false,
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

    #[test]
    fn shared_locks_exclude_only_the_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.lock");
        let TryLock::Acquired(a) = try_lock_mode(&p, Mode::Shared).unwrap() else {
            panic!("shared")
        };
        let TryLock::Acquired(_b) = try_lock_mode(&p, Mode::Shared).unwrap() else {
            panic!("a second shared lock")
        };
        assert!(matches!(try_lock(&p).unwrap(), TryLock::Held));
        drop(a);
        drop(_b);
        let TryLock::Acquired(mut x) = try_lock(&p).unwrap() else {
            panic!("exclusive")
        };
        x.write_holder();
        assert!(holder(&p).starts_with(&format!("pid {}", std::process::id())));
        assert!(matches!(
            try_lock_mode(&p, Mode::Shared).unwrap(),
            TryLock::Held
        ));
    }
}
