//! One drain per buffer, across processes: an advisory lock on `<buffer>.drain-lock`.
//!
//! The lock is the operating system's (`flock` on Unix, `LockFileEx` on Windows, through
//! `fs4`), so it is released when its holder exits however it exits: a
//! crashed or killed drain never leaves a stale lock behind. The file itself stays, holding the
//! id of the last process that drained, which a refused drain names.

use std::fs::{File, OpenOptions};

use fs4::FileExt;
use fs4::TryLockError;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// A held drain lock; dropping it releases the lock.
#[derive(Debug)]
pub struct DrainLock {
    file: File,
}

/// The lock file of the buffer at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".drain-lock");
    PathBuf::from(name)
}

impl DrainLock {
    /// Takes the lock of the buffer at `db` without waiting. Fails with [`Error::Busy`] when
    /// another drain (in this or another process) holds it.
    pub fn try_acquire(db: &Path) -> Result<Self, Error> {
        let path = lock_path(db);
        let cannot = |e: std::io::Error| {
            Error::Storage(format!("cannot use the lock file {}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(cannot)?;
        // Called through the trait: `File`'s own methods of these names need a newer Rust.
        match FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another drain".to_owned()
                } else {
                    format!("another drain (process {holder})")
                };
                return Err(Error::Busy(format!(
                    "{who} holds the buffer {}",
                    db.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(cannot(e)),
        }
        file.set_len(0).map_err(cannot)?;
        file.rewind().map_err(cannot)?;
        write!(file, "{}", std::process::id()).map_err(cannot)?;
        Ok(Self { file })
    }
}

impl Drop for DrainLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_free_again_once_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("b.db");
        let first = DrainLock::try_acquire(&db).expect("free");
        let second = DrainLock::try_acquire(&db);
        assert!(
            matches!(&second, Err(Error::Busy(m)) if m.contains(&std::process::id().to_string())),
            "{second:?}"
        );
        drop(first);
        DrainLock::try_acquire(&db).expect("free again");
    }
}
