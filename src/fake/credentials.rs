//! The launchpadlib credentials file whose token a `--credentials` fake requires, read with
//! the store client's parser ([`Credentials`]); the fake only adds its own limit.

use std::path::Path;

use thiserror::Error;

use super::FakeCredentials;
use crate::store::Credentials;
use crate::store::oauth::CredentialsError as FileError;

/// Why a credentials file was refused. Never carries a secret.
#[derive(Debug, Error)]
pub enum CredentialsError {
    /// The file cannot be read or is not a launchpadlib credentials file.
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the fake Launchpad supports only an empty consumer_secret, as launchpadlib writes")]
    ConsumerSecret,
}

impl FakeCredentials {
    /// Reads a launchpadlib credentials file (section `[1]` with `consumer_key`,
    /// `consumer_secret` (which must be empty, as launchpadlib writes it), `access_token`
    /// and `access_secret`).
    pub fn from_file(path: &Path) -> Result<FakeCredentials, CredentialsError> {
        FakeCredentials::try_from(Credentials::from_file(path)?)
    }
}

impl TryFrom<Credentials> for FakeCredentials {
    type Error = CredentialsError;

    fn try_from(credentials: Credentials) -> Result<FakeCredentials, CredentialsError> {
        if !credentials.consumer_secret.is_empty() {
            return Err(CredentialsError::ConsumerSecret);
        }
        Ok(FakeCredentials {
            consumer_key: credentials.consumer_key,
            token: credentials.token,
            token_secret: credentials.token_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_text(text: &str) -> Result<FakeCredentials, CredentialsError> {
        FakeCredentials::try_from(Credentials::parse(text)?)
    }

    #[test]
    fn reads_launchpadlib_files() {
        let text = "[1]\nconsumer_key = berth\nconsumer_secret =\naccess_token = TOK\n\
                    access_secret = SEC\n";
        let credentials = from_text(text).unwrap();
        assert_eq!(credentials.consumer_key, "berth");
        assert_eq!(credentials.token, "TOK");
        assert_eq!(credentials.token_secret, "SEC");
        assert!(!format!("{credentials:?}").contains("SEC"));
    }

    #[test]
    fn refuses_incomplete_files() {
        assert!(matches!(
            from_text(""),
            Err(CredentialsError::File(FileError::NoSection { .. }))
        ));
        let text = "[1]\nconsumer_key = berth\naccess_token = TOK\n";
        assert!(matches!(
            from_text(text),
            Err(CredentialsError::File(FileError::MissingKey {
                key: "access_secret",
                ..
            }))
        ));
        let text = "[1]\nconsumer_key=k\nconsumer_secret=x\naccess_token=t\naccess_secret=s\n";
        assert!(matches!(
            from_text(text),
            Err(CredentialsError::ConsumerSecret)
        ));
    }
}
