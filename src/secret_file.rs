//! Reading a file that holds a secret (the Launchpad credentials file, an API token file):
//! refused, like ssh refuses a private key, when the group or others may read or write it,
//! naming the file and the `chmod` that fixes it.

use std::path::{Path, PathBuf};

/// Why a secret file was not read. Names the file, never what it holds.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} holds a secret but is open to other users (mode {mode:04o}); refusing to use it: run `chmod 600 {}`",
        path.display(), path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
}

/// The text of the secret file `path`, once its permissions are checked: no access for the
/// group or others (`0600` or `0400`; under systemd's `LoadCredential=` the copies in
/// `$CREDENTIALS_DIRECTORY` are `0400`). The check is on the file itself, after symlinks.
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let read_error = |source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    check_mode(path, &file)?;
    std::io::read_to_string(file).map_err(read_error)
}

/// Writes `text` to the secret file `path`, created (or truncated) with mode `0600`, so that
/// [`read_secret_file`] takes it: for `berth dev`'s dummy credentials and the tests'.
pub fn write_secret_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut file = options.open(path)?;
        // An existing file keeps its mode through `open`: narrow it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())
    }
    #[cfg(not(unix))]
    {
        options.open(path)?.write_all(text.as_bytes())
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, file: &std::fs::File) -> Result<(), SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    // Checked on the open file: what is read is what was checked.
    let metadata = file.metadata().map_err(|source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _file: &std::fs::File) -> Result<(), SecretFileError> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn secret(mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_file_only_its_owner_reads_is_read() {
        for mode in [0o600, 0o400] {
            let (_dir, path) = secret(mode);
            assert_eq!(read_secret_file(&path).unwrap(), "s3cret\n");
        }
    }

    #[test]
    fn a_file_the_group_or_others_may_read_is_refused_with_the_chmod_to_run() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            let (_dir, path) = secret(mode);
            let message = read_secret_file(&path).unwrap_err().to_string();
            let shown = path.display();
            assert!(
                message.contains(&format!("run `chmod 600 {shown}`"))
                    && message.contains(&format!("mode {mode:04o}")),
                "{message}"
            );
            assert!(!message.contains("s3cret"), "{message}");
        }
    }

    #[test]
    fn a_written_secret_file_is_only_its_owners() {
        let (_dir, path) = secret(0o644);
        write_secret_file(&path, "new").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret_file(&path).unwrap(), "new");
    }

    #[test]
    fn a_missing_file_is_named() {
        let message = read_secret_file(Path::new("/nonexistent/berth-token"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("/nonexistent/berth-token"), "{message}");
    }
}
