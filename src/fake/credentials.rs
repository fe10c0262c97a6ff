//! Reading the launchpadlib credentials file whose token a `--credentials` fake requires.
//! Only what that format holds: an INI section `[1]` with `consumer_key`,
//! `consumer_secret` (must be empty, as launchpadlib's), `access_token` and `access_secret`.

use std::collections::HashMap;

use thiserror::Error;

use super::FakeCredentials;

/// Why a credentials file was refused. Never carries a secret.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("the credentials file has no [1] section")]
    NoSection,
    #[error("the credentials file lacks `{0}` in its [1] section")]
    Missing(&'static str),
    #[error("the fake Launchpad supports only an empty consumer_secret, as launchpadlib writes")]
    ConsumerSecret,
}

impl FakeCredentials {
    /// Parses the text of a launchpadlib credentials file.
    pub fn from_launchpadlib(text: &str) -> Result<FakeCredentials, CredentialsError> {
        let mut section = None;
        let mut seen = false;
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.trim());
                seen |= section == Some("1");
            } else if section == Some("1")
                && let Some((key, value)) = line.split_once('=').or_else(|| line.split_once(':'))
            {
                fields.insert(key.trim(), value.trim());
            }
        }
        if !seen {
            return Err(CredentialsError::NoSection);
        }
        let field = |name: &'static str| {
            fields
                .get(name)
                .map(|v| v.to_string())
                .ok_or(CredentialsError::Missing(name))
        };
        if !field("consumer_secret").unwrap_or_default().is_empty() {
            return Err(CredentialsError::ConsumerSecret);
        }
        Ok(FakeCredentials {
            consumer_key: field("consumer_key")?,
            token: field("access_token")?,
            token_secret: field("access_secret")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_launchpadlib_files() {
        let text = "[1]\nconsumer_key = berth\nconsumer_secret =\naccess_token = TOK\n\
                    access_secret = SEC\n";
        let credentials = FakeCredentials::from_launchpadlib(text).unwrap();
        assert_eq!(credentials.consumer_key, "berth");
        assert_eq!(credentials.token, "TOK");
        assert_eq!(credentials.token_secret, "SEC");
        assert!(!format!("{credentials:?}").contains("SEC"));
    }

    #[test]
    fn refuses_incomplete_files() {
        assert_eq!(
            FakeCredentials::from_launchpadlib(""),
            Err(CredentialsError::NoSection)
        );
        let text = "[1]\nconsumer_key = berth\naccess_token = TOK\n";
        assert_eq!(
            FakeCredentials::from_launchpadlib(text),
            Err(CredentialsError::Missing("access_secret"))
        );
        let text = "[1]\nconsumer_key=k\nconsumer_secret=x\naccess_token=t\naccess_secret=s\n";
        assert_eq!(
            FakeCredentials::from_launchpadlib(text),
            Err(CredentialsError::ConsumerSecret)
        );
    }
}
