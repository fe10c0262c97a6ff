//! OAuth 1.0 PLAINTEXT signing, as launchpadlib does it: the credentials file it writes and
//! the `Authorization` header it sends. PLAINTEXT puts the secrets themselves in the header,
//! so nothing here ever prints them: not [`Credentials`]' `Debug`, not any error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngExt;

/// The realm launchpadlib signs with, whatever host it talks to.
pub const REALM: &str = "https://api.launchpad.net/";

/// The section of a launchpadlib credentials file that holds the one set of credentials.
const SECTION: &str = "1";

/// An OAuth access token and the consumer it was issued to.
#[derive(Clone)]
pub struct Credentials {
    pub consumer_key: String,
    /// Empty for tokens obtained through launchpadlib.
    pub consumer_secret: String,
    pub token: String,
    pub token_secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("consumer_key", &self.consumer_key)
            .field("consumer_secret", &"<redacted>")
            .field("token", &"<redacted>")
            .field("token_secret", &"<redacted>")
            .finish()
    }
}

/// Why a credentials file was refused. Names the file and the key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Unreadable, or readable by others than its owner.
    #[error("credentials file: {0}")]
    File(#[from] crate::secret_file::SecretFileError),
    #[error(
        "credentials file {}: no [1] section (expected launchpadlib's credentials format)",
        path.display()
    )]
    NoSection { path: PathBuf },
    #[error("credentials file {}: missing key `{key}` in section [1]", path.display())]
    MissingKey { path: PathBuf, key: &'static str },
    #[error("credentials file {}: key `{key}` in section [1] is empty", path.display())]
    EmptyKey { path: PathBuf, key: &'static str },
    #[error(
        "credentials file {}, line {line}: neither a `[section]` nor a `key = value` line",
        path.display()
    )]
    Malformed { path: PathBuf, line: usize },
}

impl Credentials {
    /// Reads a launchpadlib credentials file (INI, section `[1]`, keys `consumer_key`,
    /// `consumer_secret`, `access_token`, `access_secret`); refuses one that the group or
    /// others may read ([`crate::secret_file::read_secret_file`]).
    pub fn from_file(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = crate::secret_file::read_secret_file(path)?;
        Credentials::parse(&text).map_err(|e| e.at(path))
    }

    /// Parses the file's text the way Python's `ConfigParser` reads it (the subset
    /// launchpadlib writes): `#`/`;` comment lines, `=` or `:` separators, keys in any case.
    /// Errors name no file; [`Credentials::from_file`] fills it in. The fake Launchpad reads
    /// its `--credentials` file with this parser too.
    pub(crate) fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        let mut section: Option<&str> = None;
        let mut seen_section = false;
        let mut values: [Option<String>; 4] = Default::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.trim());
                seen_section |= name.trim() == SECTION;
                continue;
            }
            let Some((key, value)) = line.split_once(['=', ':']) else {
                return Err(CredentialsError::Malformed {
                    path: PathBuf::new(),
                    line: i + 1,
                });
            };
            match section {
                None => {
                    return Err(CredentialsError::Malformed {
                        path: PathBuf::new(),
                        line: i + 1,
                    });
                }
                Some(SECTION) => {
                    let key = key.trim().to_ascii_lowercase();
                    if let Some(slot) = KEYS.iter().position(|k| *k == key) {
                        values[slot] = Some(value.trim().to_owned());
                    }
                }
                Some(_) => {}
            }
        }
        if !seen_section {
            return Err(CredentialsError::NoSection {
                path: PathBuf::new(),
            });
        }
        let [consumer_key, consumer_secret, token, token_secret] = values;
        let required = |value: Option<String>, key: &'static str| match value {
            None => Err(CredentialsError::MissingKey {
                path: PathBuf::new(),
                key,
            }),
            Some(v) if v.is_empty() => Err(CredentialsError::EmptyKey {
                path: PathBuf::new(),
                key,
            }),
            Some(v) => Ok(v),
        };
        // The keys that must not be empty first, then the consumer secret (empty as
        // launchpadlib writes it, but present).
        let consumer_key = required(consumer_key, KEYS[0])?;
        let token = required(token, KEYS[2])?;
        let token_secret = required(token_secret, KEYS[3])?;
        Ok(Credentials {
            consumer_key,
            consumer_secret: consumer_secret.ok_or(CredentialsError::MissingKey {
                path: PathBuf::new(),
                key: KEYS[1],
            })?,
            token,
            token_secret,
        })
    }

    /// What signs requests with these credentials; the parts of the header that never
    /// change are built once, here.
    ///
    /// The signature is `percent(consumer_secret)&percent(token_secret)`, percent-encoded
    /// once more as a header value (RFC 5849 §3.4.4, §3.5.1); the realm is a plain quoted
    /// string.
    pub fn signer(&self) -> Signer {
        let signature = format!(
            "{}&{}",
            percent_encode(&self.consumer_secret),
            percent_encode(&self.token_secret)
        );
        let fields = [
            ("oauth_consumer_key", self.consumer_key.as_str()),
            ("oauth_token", self.token.as_str()),
            ("oauth_signature_method", "PLAINTEXT"),
            ("oauth_signature", signature.as_str()),
        ]
        .map(|(name, value)| format!("{name}=\"{}\"", percent_encode(value)));
        Signer {
            prefix: format!("OAuth realm=\"{REALM}\", {}", fields.join(", ")),
        }
    }
}

/// Signs requests: [`Signer::header`] is the `Authorization` header value of one request.
/// Holds the secrets (PLAINTEXT sends them), so its `Debug` shows none of it.
#[derive(Clone)]
pub struct Signer {
    /// Everything up to the timestamp: realm, consumer key, token, method, signature.
    prefix: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A fresh header value: new timestamp and nonce on every call.
    pub fn header(&self) -> String {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let nonce: u64 = rand::rng().random();
        self.header_at(timestamp, &nonce.to_string())
    }

    /// The header for a given timestamp and nonce (both digits: nothing to encode).
    fn header_at(&self, timestamp: u64, nonce: &str) -> String {
        format!(
            "{}, oauth_timestamp=\"{timestamp}\", oauth_nonce=\"{nonce}\", oauth_version=\"1.0\"",
            self.prefix
        )
    }
}

/// The file's keys, in the order of [`Credentials`]' fields.
const KEYS: [&str; 4] = [
    "consumer_key",
    "consumer_secret",
    "access_token",
    "access_secret",
];

impl CredentialsError {
    /// Fills in the file the error was found in.
    fn at(self, file: &Path) -> CredentialsError {
        let path = file.to_owned();
        match self {
            CredentialsError::File(err) => CredentialsError::File(err),
            CredentialsError::NoSection { .. } => CredentialsError::NoSection { path },
            CredentialsError::MissingKey { key, .. } => CredentialsError::MissingKey { path, key },
            CredentialsError::EmptyKey { key, .. } => CredentialsError::EmptyKey { path, key },
            CredentialsError::Malformed { line, .. } => CredentialsError::Malformed { path, line },
        }
    }
}

/// RFC 3986 / RFC 5849 §3.6 percent-encoding: everything but `A-Za-z0-9-._~` as `%XX`
/// (upper-case hex) of its UTF-8 bytes.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(consumer_secret: &str) -> Credentials {
        Credentials {
            consumer_key: "berth".into(),
            consumer_secret: consumer_secret.into(),
            token: "TOK".into(),
            token_secret: "S&cr t".into(),
        }
    }

    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("a b&c=d/é%"), "a%20b%26c%3Dd%2F%C3%A9%25");
    }

    #[test]
    fn header_matches_launchpadlib() {
        let header = credentials("").signer().header_at(1_700_000_000, "42");
        assert_eq!(
            header,
            "OAuth realm=\"https://api.launchpad.net/\", oauth_consumer_key=\"berth\", \
             oauth_token=\"TOK\", oauth_signature_method=\"PLAINTEXT\", \
             oauth_signature=\"%26S%2526cr%2520t\", oauth_timestamp=\"1700000000\", \
             oauth_nonce=\"42\", oauth_version=\"1.0\""
        );
        let with_secret = credentials("c s").signer().header_at(1, "n");
        assert!(
            with_secret.contains("oauth_signature=\"c%2520s%26S%2526cr%2520t\""),
            "{with_secret}"
        );
    }

    #[test]
    fn parses_launchpadlib_format() {
        let text = "# written by launchpadlib\n[1]\nconsumer_key = berth\nconsumer_secret = \n\
                    Access_Token: TOK\naccess_secret = S=1\n[2]\nconsumer_key = other\n";
        let c = Credentials::parse(text).unwrap();
        assert_eq!(
            (
                c.consumer_key.as_str(),
                c.consumer_secret.as_str(),
                c.token.as_str()
            ),
            ("berth", "", "TOK")
        );
        assert_eq!(c.token_secret, "S=1");
    }

    #[test]
    fn refuses_bad_files_by_key() {
        let missing = Credentials::parse("[1]\nconsumer_key=a\naccess_token=t\naccess_secret=s\n");
        assert!(matches!(
            missing,
            Err(CredentialsError::MissingKey {
                key: "consumer_secret",
                ..
            })
        ));
        let empty = Credentials::parse(
            "[1]\nconsumer_key=a\nconsumer_secret=\naccess_token=\naccess_secret=s",
        );
        assert!(matches!(
            empty,
            Err(CredentialsError::EmptyKey {
                key: "access_token",
                ..
            })
        ));
        assert!(matches!(
            Credentials::parse("[2]\na=b\n"),
            Err(CredentialsError::NoSection { .. })
        ));
        assert!(matches!(
            Credentials::parse("[1]\njunk secret\n"),
            Err(CredentialsError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            Credentials::parse("a=b\n[1]\n"),
            Err(CredentialsError::Malformed { .. })
        ));
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", credentials("CONSUMERSECRET"));
        assert!(shown.contains("berth"));
        for secret in ["CONSUMERSECRET", "TOK", "S&cr"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
