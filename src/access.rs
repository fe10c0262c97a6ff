//! Who may ask the assigner, and how much (DESIGN §4 "Clients and roles"): the `[auth]`
//! section of the configuration, its checks, and the rules the assigner applies with it
//! (what of an owner goes into the public record, which client a record's owner names, the
//! priority a client may ask for). The HTTP side of it is `assigner::auth`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none`: no checks (refused on a non-loopback listen address unless `allow_open`);
    /// `tokens`: every `/v1/` request carries `Authorization: Bearer <token>` of a client.
    pub mode: AuthMode,
    /// Lets mode `none` listen on a non-loopback address (behind a proxy that checks).
    pub allow_open: bool,
    /// Status reads (`GET /v1/…`) need no token.
    pub public_read: bool,
    /// When set, `GET /metrics` needs `Authorization: Bearer` with the token of this hex
    /// SHA-256; else it is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token_sha256: Option<String>,
    /// What of an acquire's owner goes into the slot record (which is public on Launchpad):
    /// `client` (the client's name only), `hash` (`<client>/<12 hex of the owner's SHA-256>`)
    /// or `plain` (`<client>/<owner>`). Default: `client` in mode `tokens`, `plain` in mode
    /// `none` (there is no client name to record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_owner: Option<PublicOwner>,
    pub clients: Vec<ClientConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            allow_open: false,
            public_read: false,
            metrics_token_sha256: None,
            public_owner: None,
            clients: Vec::new(),
        }
    }
}

/// `auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    None,
    Tokens,
}

/// `auth.public_owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublicOwner {
    Plain,
    Hash,
    Client,
}

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads only.
    Reader,
    /// Acquire, renew, release (its own slots), and reads.
    Client,
    /// A client that may also act on slots (disable, enable, reclaim, clean).
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Client => "client",
            Role::Operator => "operator",
        }
    }
}

/// `[[auth.clients]]`: one client of the assigner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Recorded with the owner (`<client>/<owner>`); the rule of pool names.
    pub name: String,
    /// Hex SHA-256 of the client's token (never the token itself).
    pub token_sha256: String,
    pub role: Role,
    /// The pools it may use; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<String>>,
    /// Slots held at once (counted from the store's view, over every assigner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_held: Option<u32>,
    /// Acquire requests waiting at once on one assigner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<u32>,
    /// Its longest lease, below the global `max_lease_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lease_secs: Option<u64>,
    /// The highest acquire priority it may ask for (0–9); higher asks are capped to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_priority: Option<u8>,
}

pub use crate::protocol::MAX_PRIORITY;

impl ClientConfig {
    /// Client `name` of `role` whose token is `token` (only its hash is kept), with no pool
    /// restriction and no limit of its own.
    pub fn new(name: &str, token: &str, role: Role) -> ClientConfig {
        ClientConfig {
            name: name.to_owned(),
            token_sha256: api_token_hash(token),
            role,
            pools: None,
            max_held: None,
            max_waiting: None,
            max_lease_secs: None,
            max_priority: None,
        }
    }

    /// Whether it may use `pool`.
    pub fn may_use_pool(&self, pool: &str) -> bool {
        self.pools
            .as_ref()
            .is_none_or(|pools| pools.iter().any(|p| p == pool))
    }

    /// The highest priority it may ask for.
    pub fn max_priority(&self) -> u8 {
        self.max_priority.unwrap_or(MAX_PRIORITY).min(MAX_PRIORITY)
    }
}

/// The priority an acquire gets: what it asked for, capped by its client's `max_priority`
/// (no client, as in mode `none`: only by [`MAX_PRIORITY`]).
pub fn effective_priority(requested: u8, client: Option<&ClientConfig>) -> u8 {
    let cap = client.map_or(MAX_PRIORITY, ClientConfig::max_priority);
    requested.min(cap)
}

/// The hex SHA-256 of an API token, as `token_sha256` holds it.
pub fn api_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl AuthConfig {
    /// Whether anyone may read the slots without a token (mode `none`, or `public_read`): what
    /// a page that shows slot rows outside `/v1/` should ask before it renders them.
    pub fn reads_are_public(&self) -> bool {
        self.mode == AuthMode::None || self.public_read
    }

    /// What `public_owner` is, its default filled in.
    pub fn public_owner(&self) -> PublicOwner {
        self.public_owner.unwrap_or(match self.mode {
            AuthMode::Tokens => PublicOwner::Client,
            AuthMode::None => PublicOwner::Plain,
        })
    }

    /// The owner written into the record for `owner` asked by `client` (`None` in mode
    /// `none`). It always starts with the client's name, so that the record says which
    /// client holds the slot ([`client_of_owner`]).
    pub fn recorded_owner(&self, client: Option<&str>, owner: &str) -> String {
        let hashed = || hex::encode(Sha256::digest(owner.as_bytes()))[..12].to_owned();
        match (self.public_owner(), client) {
            (PublicOwner::Plain, Some(client)) => format!("{client}/{owner}"),
            (PublicOwner::Plain, None) => owner.to_owned(),
            (PublicOwner::Hash, Some(client)) => format!("{client}/{}", hashed()),
            (PublicOwner::Hash, None) => hashed(),
            (PublicOwner::Client, Some(client)) => client.to_owned(),
            (PublicOwner::Client, None) => "anonymous".to_owned(),
        }
    }

    /// Checks what the types cannot: `Err((key, message))`. `pool_exists` says whether a
    /// pool is configured; `lease_range` is the global `(min_lease_secs, max_lease_secs)`.
    pub fn validate(
        &self,
        pool_exists: impl Fn(&str) -> bool,
        lease_range: (u64, u64),
    ) -> Result<(), (String, String)> {
        let invalid = |key: String, message: &str| Err((key, message.to_owned()));
        if let Some(hash) = &self.metrics_token_sha256
            && !valid_sha256(hash)
        {
            return invalid("auth.metrics_token_sha256".into(), SHA_RULE);
        }
        if self.mode == AuthMode::Tokens && self.clients.is_empty() {
            return invalid(
                "auth.clients".into(),
                "mode \"tokens\" needs at least one [[auth.clients]] (`berth token new` makes one)",
            );
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            let key = |field: &str| format!("auth.clients[{i}].{field}");
            if !crate::protocol::valid_name(&client.name) {
                return invalid(
                    key("name"),
                    "must be 1 to 100 characters of ASCII letters, digits, '-' and '_'",
                );
            }
            if !names.insert(&client.name) {
                return invalid(key("name"), "names a client that is already defined");
            }
            if !valid_sha256(&client.token_sha256) {
                return invalid(key("token_sha256"), SHA_RULE);
            }
            if !hashes.insert(client.token_sha256.to_ascii_lowercase()) {
                return invalid(
                    key("token_sha256"),
                    "is the hash of another client's token; give each client a token of its own",
                );
            }
            for (j, pool) in client.pools.iter().flatten().enumerate() {
                if !pool_exists(pool) {
                    return invalid(format!("auth.clients[{i}].pools[{j}]"), "names no pool");
                }
            }
            if client.max_held == Some(0) {
                return invalid(key("max_held"), "must be at least 1");
            }
            if client.max_waiting == Some(0) {
                return invalid(key("max_waiting"), "must be at least 1");
            }
            if let Some(max) = client.max_lease_secs
                && (max < lease_range.0 || max > lease_range.1)
            {
                return invalid(
                    key("max_lease_secs"),
                    "must be between min_lease_secs and max_lease_secs",
                );
            }
            if client.max_priority.is_some_and(|p| p > MAX_PRIORITY) {
                return invalid(key("max_priority"), "must be between 0 and 9");
            }
        }
        Ok(())
    }

    /// Refuses mode `none` on an address other hosts can reach, unless `allow_open`.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), String> {
        if self.mode == AuthMode::None && !listen.ip().is_loopback() && !self.allow_open {
            return Err(format!(
                "auth.mode is \"none\" (no token checks) but the assigner would listen on {listen}, which other hosts can reach; \
                 set [auth] mode = \"tokens\" with [[auth.clients]] (`berth token new --name N --role client`), \
                 listen on 127.0.0.1, or set [auth] allow_open = true if something in front of it checks who asks"
            ));
        }
        Ok(())
    }
}

/// The client a recorded owner names: what comes before the first `/`, or all of it.
pub fn client_of_owner(owner: &str) -> &str {
    owner.split_once('/').map_or(owner, |(client, _)| client)
}

const SHA_RULE: &str =
    "must be the 64 hex digits of a SHA-256 (`berth token new` prints it; never the token itself)";

fn valid_sha256(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> ClientConfig {
        ClientConfig::new(name, name, Role::Client)
    }

    #[test]
    fn the_priority_is_capped_by_the_clients_max_priority() {
        let mut c = client("ci");
        assert_eq!(effective_priority(9, Some(&c)), 9);
        c.max_priority = Some(5);
        assert_eq!(effective_priority(9, Some(&c)), 5);
        assert_eq!(effective_priority(3, Some(&c)), 3);
        assert_eq!(c.max_priority(), 5);
        assert_eq!(effective_priority(7, None), 7);
        assert_eq!(effective_priority(12, None), MAX_PRIORITY);
    }

    #[test]
    fn the_recorded_owner_starts_with_the_client() {
        let mut auth = AuthConfig {
            mode: AuthMode::Tokens,
            ..AuthConfig::default()
        };
        let owner = "https://ci.example/job/42";
        assert_eq!(auth.recorded_owner(Some("ci"), owner), "ci");
        auth.public_owner = Some(PublicOwner::Plain);
        assert_eq!(
            auth.recorded_owner(Some("ci"), owner),
            format!("ci/{owner}")
        );
        auth.public_owner = Some(PublicOwner::Hash);
        let hashed = auth.recorded_owner(Some("ci"), owner);
        assert!(hashed.starts_with("ci/") && hashed.len() == 15, "{hashed}");
        assert!(!hashed.contains("example"));
        for p in [PublicOwner::Plain, PublicOwner::Hash, PublicOwner::Client] {
            auth.public_owner = Some(p);
            assert_eq!(
                client_of_owner(&auth.recorded_owner(Some("ci"), owner)),
                "ci"
            );
        }
        let none = AuthConfig::default();
        assert_eq!(none.recorded_owner(None, "me"), "me");
    }

    #[test]
    fn clients_are_checked() {
        let lease = (30, 3600);
        let mut auth = AuthConfig {
            mode: AuthMode::Tokens,
            ..AuthConfig::default()
        };
        let err = auth.validate(|_| true, lease).unwrap_err();
        assert_eq!(err.0, "auth.clients");
        auth.clients = vec![client("a"), client("a")];
        assert_eq!(
            auth.validate(|_| true, lease).unwrap_err().0,
            "auth.clients[1].name"
        );
        auth.clients[1] = client("b");
        auth.clients[1].token_sha256 = "secret".into();
        assert_eq!(
            auth.validate(|_| true, lease).unwrap_err().0,
            "auth.clients[1].token_sha256"
        );
        auth.clients[1] = client("b");
        auth.clients[1].pools = Some(vec!["ppa".into(), "nope".into()]);
        assert_eq!(
            auth.validate(|p| p == "ppa", lease).unwrap_err().0,
            "auth.clients[1].pools[1]"
        );
        auth.clients[1].pools = None;
        auth.clients[1].max_lease_secs = Some(7200);
        assert_eq!(
            auth.validate(|_| true, lease).unwrap_err().0,
            "auth.clients[1].max_lease_secs"
        );
        auth.clients[1].max_lease_secs = Some(600);
        auth.clients[1].max_priority = Some(10);
        assert_eq!(
            auth.validate(|_| true, lease).unwrap_err().0,
            "auth.clients[1].max_priority"
        );
        auth.clients[1].max_priority = Some(9);
        auth.validate(|_| true, lease).unwrap();
    }

    #[test]
    fn mode_none_is_refused_on_an_open_address_unless_allowed() {
        let mut auth = AuthConfig::default();
        auth.check_listen("127.0.0.1:8080".parse().unwrap())
            .unwrap();
        auth.check_listen("[::1]:8080".parse().unwrap()).unwrap();
        let err = auth
            .check_listen("0.0.0.0:8080".parse().unwrap())
            .unwrap_err();
        assert!(
            err.contains("allow_open") && err.contains("0.0.0.0:8080"),
            "{err}"
        );
        auth.allow_open = true;
        auth.check_listen("0.0.0.0:8080".parse().unwrap()).unwrap();
        auth.allow_open = false;
        auth.mode = AuthMode::Tokens;
        auth.check_listen("0.0.0.0:8080".parse().unwrap()).unwrap();
    }
}
