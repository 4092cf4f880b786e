//! The keys that sign cursors: the current one signs, and the previous one (during a rotation)
//! still verifies. Without `CURSOR_SECRET`, the embedded backend keeps a generated secret in
//! its data directory, so a cursor outlives the process that issued it: a browser's
//! EventSource reconnecting after a restart resumes instead of being refused.

use std::{
    fmt,
    io::{self, Write},
    path::Path,
};

use base64::Engine;

/// Shortest secret: an HMAC-SHA256 key guessable by brute force signs nothing.
pub const MIN_CURSOR_SECRET_BYTES: usize = 32;

/// The file in the data directory that holds the kept secret. Its text is the key, as
/// `CURSOR_SECRET` would be: copied there, it keeps every cursor valid.
pub const SECRET_FILE: &str = "cursor-secret";

/// The keys of [`super::cursor`]. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct CursorKeys {
    current: Vec<u8>,
    /// `CURSOR_SECRET_PREVIOUS`: cursors it signed are still accepted; none are signed with it.
    previous: Option<Vec<u8>>,
}

impl CursorKeys {
    pub fn new(current: impl Into<Vec<u8>>, previous: Option<Vec<u8>>) -> Self {
        Self {
            current: current.into(),
            previous,
        }
    }

    /// A key for this process alone: its cursors die with it.
    pub fn random() -> Self {
        Self::new(random_secret(), None)
    }

    /// The key new cursors are signed with.
    pub(super) fn signing(&self) -> &[u8] {
        &self.current
    }

    /// The keys a cursor may be signed with, current first.
    pub(super) fn verifying(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.current.as_slice()).chain(self.previous.as_deref())
    }
}

impl fmt::Debug for CursorKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CursorKeys")
            .field("current", &"[redacted]")
            .field("previous", &self.previous.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// 32 bytes from the OS's random source (two v4 UUIDs, 244 random bits), as base64url text:
/// text, so that an operator can move it into `CURSOR_SECRET` as it is.
fn random_secret() -> Vec<u8> {
    let bytes: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .flat_map(|id| id.as_bytes().to_vec())
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(bytes)
        .into_bytes()
}

/// Why the kept secret cannot be used; start-up stops on it (a resource it needs).
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read the cursor secret {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot keep the cursor secret in {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error(
        "the cursor secret in {path} is {len} bytes, shorter than {MIN_CURSOR_SECRET_BYTES}: \
         remove the file to have a new one made (cursors issued so far are then refused)"
    )]
    TooShort { path: String, len: usize },
}

/// The secret kept in `dir` (`cursor-secret`), made on first use. It is written whole, readable
/// by its owner only, to a file of its own that is then linked into place, so a crash never
/// leaves half a secret and a secret already there is never replaced.
pub fn kept_secret(dir: &Path) -> Result<Vec<u8>, SecretFileError> {
    let path = dir.join(SECRET_FILE);
    match read(&path) {
        Err(SecretFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        found => return found,
    }
    let secret = random_secret();
    let written = dir.join(format!(".{SECRET_FILE}.{}", uuid::Uuid::new_v4().simple()));
    let made = write_new(&written, &secret).and_then(|()| std::fs::hard_link(&written, &path));
    // The link holds the secret now (or did not happen); the name it was written under goes.
    let _ = std::fs::remove_file(&written);
    match made {
        Ok(()) => {
            // The new name is durable once the directory is.
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|source| SecretFileError::Write {
                    path: path.display().to_string(),
                    source,
                })?;
            Ok(secret)
        }
        // Made by someone else meanwhile: theirs is the one.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => read(&path),
        Err(source) => Err(SecretFileError::Write {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let text = std::fs::read(path).map_err(|source| SecretFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    // A secret put there by hand may end with a newline, which is no part of it.
    let secret = text.trim_ascii().to_vec();
    if secret.len() < MIN_CURSOR_SECRET_BYTES {
        return Err(SecretFileError::TooShort {
            path: path.display().to_string(),
            len: secret.len(),
        });
    }
    Ok(secret)
}

/// Creates `path` (never an existing file) readable and writable by its owner only, and
/// writes `secret` to disk.
fn write_new(path: &Path, secret: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(secret)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_secret_is_made_once_owner_only_and_read_back_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let made = kept_secret(dir.path()).expect("made");
        assert!(made.len() >= MIN_CURSOR_SECRET_BYTES);
        assert_eq!(kept_secret(dir.path()).expect("read back"), made);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("listed")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, [SECRET_FILE], "nothing else is left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_secret_put_there_by_hand_is_used_and_a_short_one_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(SECRET_FILE);
        std::fs::write(&path, format!("{}\n", "s".repeat(40))).expect("written");
        assert_eq!(
            kept_secret(dir.path()).expect("used"),
            "s".repeat(40).into_bytes()
        );
        std::fs::write(&path, "short").expect("written");
        let err = kept_secret(dir.path()).expect_err("too short");
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let keys = CursorKeys::new(b"current-secret".to_vec(), Some(b"old-secret".to_vec()));
        let printed = format!("{keys:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(!printed.contains("99"), "no bytes either: {printed}");
    }
}
