//! How the client commands print what they got: `text` for people, `json` for programs,
//! `env` (`export BERTH_SLOT=…` lines) for shell pipelines: `eval "$(berth acquire …)"`.

use serde_json::{Value, json};

use crate::client::{Lease, Status};

/// Output format of the client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Env,
}

/// The environment a slot's holder gets (`berth run` sets it in its command's environment).
pub fn lease_env(lease: &Lease) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("BERTH_SLOT", lease.slot.clone()),
        ("BERTH_POOL", lease.pool.clone()),
        ("BERTH_LEASE_TOKEN", lease.lease_token.clone()),
        ("BERTH_LEASE_EXPIRES", lease.lease_expires.to_rfc3339()),
        ("BERTH_LEASE_SECS", lease.lease_secs.to_string()),
    ];
    if let Some(ppa) = lease.ppa() {
        vars.push(("BERTH_PPA", ppa));
    }
    vars
}

/// `export NAME=VALUE` lines, values quoted for any POSIX shell.
pub fn exports(vars: &[(&str, String)]) -> String {
    vars.iter()
        .map(|(name, value)| format!("export {name}={}\n", shell_quote(value)))
        .collect()
}

/// Quotes `value` for a POSIX shell unless it is made of safe characters only.
pub fn shell_quote(value: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !value.is_empty() && value.chars().all(safe) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// What `berth acquire` prints.
pub fn acquired(lease: &Lease, format: Format) -> String {
    match format {
        Format::Json => json_line(&serde_json::to_value(lease).unwrap_or_default()),
        Format::Env => exports(&lease_env(lease)),
        Format::Text => {
            let mut text = format!(
                "slot:          {}\npool:          {}\nlease_token:   {}\nlease_expires: {}\n",
                lease.slot,
                lease.pool,
                lease.lease_token,
                lease.lease_expires.to_rfc3339()
            );
            if let Some(ppa) = lease.ppa() {
                text.push_str(&format!("ppa:           {ppa}\n"));
            }
            text
        }
    }
}

/// The variables a holder's environment has, which `berth release --format env` unsets.
const HOLDER_VARS: [&str; 6] = [
    "BERTH_SLOT",
    "BERTH_POOL",
    "BERTH_PPA",
    "BERTH_LEASE_TOKEN",
    "BERTH_LEASE_EXPIRES",
    "BERTH_LEASE_SECS",
];

/// What `berth renew` prints: the new expiry, and the lease length it keeps.
pub fn renewed(
    slot: &str,
    expires: chrono::DateTime<chrono::Utc>,
    lease_secs: Option<u64>,
    format: Format,
) -> String {
    match format {
        Format::Json => {
            json_line(&json!({"slot": slot, "lease_expires": expires, "lease_secs": lease_secs}))
        }
        Format::Env => {
            let mut vars = vec![("BERTH_LEASE_EXPIRES", expires.to_rfc3339())];
            if let Some(secs) = lease_secs {
                vars.push(("BERTH_LEASE_SECS", secs.to_string()));
            }
            exports(&vars)
        }
        Format::Text => format!("lease of {slot} renewed until {}\n", expires.to_rfc3339()),
    }
}

/// What `berth release` prints; in `env`, a line that unsets the holder's variables.
pub fn released(slot: &str, format: Format) -> String {
    match format {
        Format::Json => json_line(&json!({"slot": slot, "released": true})),
        Format::Env => format!("unset {}\n", HOLDER_VARS.join(" ")),
        Format::Text => format!("released {slot}; it is cleaned, then free again\n"),
    }
}

/// What `berth slot disable|enable|reclaim|clean` prints once the action is handed over.
pub fn action(slot: &str, action: &str, format: Format) -> String {
    match format {
        Format::Json => json_line(&json!({"slot": slot, "action": action, "accepted": true})),
        Format::Env => exports(&[("BERTH_SLOT", slot.to_owned())]),
        Format::Text => format!(
            "{action} of {slot} handed to its worker (applied as soon as it runs); see `berth slot show {slot}`\n"
        ),
    }
}

/// What `berth slot show` prints, from `GET /v1/slots/{slot}`.
pub fn slot(slot: &Value, format: Format) -> String {
    match format {
        Format::Json => return json_line(slot),
        Format::Env => {
            let mut vars = Vec::new();
            for (key, var) in [
                ("slot", "BERTH_SLOT"),
                ("pool", "BERTH_POOL"),
                ("state", "BERTH_SLOT_STATE"),
                ("owner", "BERTH_SLOT_OWNER"),
                ("held_since", "BERTH_SLOT_HELD_SINCE"),
                ("lease_expires", "BERTH_SLOT_LEASE_EXPIRES"),
                ("disabled_reason", "BERTH_SLOT_DISABLED_REASON"),
            ] {
                if let Some(value) = slot[key].as_str() {
                    vars.push((var, value.to_owned()));
                }
            }
            vars.push(("BERTH_SLOT_DRAINING", slot["drain"].is_object().to_string()));
            return exports(&vars);
        }
        Format::Text => {}
    }
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<16} {value}\n"));
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    line("slot", text(&slot["slot"]));
    line("pool", text(&slot["pool"]));
    line("state", state_text(slot));
    line("owner", text(&slot["owner"]));
    let held = match held_for(slot) {
        Some(held) => format!("{} (for {held})", text(&slot["held_since"])),
        None => "-".to_owned(),
    };
    line("held since", held);
    line("lease expires", text(&slot["lease_expires"]));
    line("touched", text(&slot["touched"]));
    line("clean failures", text(&slot["clean_failures"]));
    line("last error", text(&slot["last_error"]));
    if slot["state"] == "disabled" {
        line("disabled since", text(&slot["disabled_since"]));
        line("disabled by", text(&slot["disabled_by"]));
        line("disabled reason", text(&slot["disabled_reason"]));
    }
    if let Some(drain) = slot["drain"].as_object() {
        let get = |k: &str| drain.get(k).map(text).unwrap_or_else(|| "-".into());
        line(
            "draining",
            format!(
                "disabled after its next cleaning (since {}, by {}): {}",
                get("since"),
                get("by"),
                get("reason")
            ),
        );
    }
    out
}

/// A slot's state, marked when a drain is pending.
fn state_text(slot: &Value) -> String {
    let state = slot["state"].as_str().unwrap_or("-");
    if slot["draining"].as_bool() == Some(true) || slot["drain"].is_object() {
        format!("{state},draining")
    } else {
        state.to_owned()
    }
}

/// How long the slot's holder has held it (`held_since` to now), as `3d4h`, `2h13m`,
/// `5m20s` or `42s`.
fn held_for(slot: &Value) -> Option<String> {
    let since: chrono::DateTime<chrono::Utc> = slot["held_since"].as_str()?.parse().ok()?;
    let secs = (chrono::Utc::now() - since).num_seconds().max(0);
    Some(short_duration(secs))
}

fn short_duration(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match () {
        _ if d > 0 => format!("{d}d{h}h"),
        _ if h > 0 => format!("{h}h{m}m"),
        _ if m > 0 => format!("{m}m{s}s"),
        _ => format!("{s}s"),
    }
}

/// What `berth status` prints, from `GET /v1/pools` and `GET /v1/slots`. In `env`: the
/// counts of every pool as `BERTH_POOL_<NAME>_<COUNT>` (name upper-cased, other characters
/// than letters and digits as `_`), and the pools' names in `BERTH_POOLS`.
pub fn status(status: &Status, format: Format) -> String {
    let Status {
        as_of,
        pools,
        slots,
    } = status;
    match format {
        Format::Json => {
            return json_line(&json!({"pools": pools, "slots": slots, "as_of": as_of}));
        }
        Format::Env => return status_env(status),
        Format::Text => {}
    }
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = format!("as of {}\n\n", text(as_of));
    out.push_str(&format!(
        "{:<16} {:>5} {:>5} {:>5} {:>5} {:>8} {:>7} {:>9}\n",
        "POOL", "SLOTS", "FREE", "USED", "DIRTY", "DISABLED", "WAITING", "CONSUMERS"
    ));
    for pool in pools.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:>5} {:>5} {:>5} {:>5} {:>8} {:>7} {:>9}\n",
            text(&pool["pool"]),
            text(&pool["slots"]),
            text(&pool["free"]),
            text(&pool["used"]),
            text(&pool["dirty"]),
            text(&pool["disabled"]),
            text(&pool["waiting"]),
            text(&pool["consumers"]),
        ));
    }
    out.push_str(&format!(
        "\n{:<16} {:<12} {:<18} {:<8} {:<26} {}\n",
        "SLOT", "POOL", "STATE", "HELD", "LEASE_EXPIRES", "OWNER"
    ));
    for slot in slots.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:<12} {:<18} {:<8} {:<26} {}\n",
            text(&slot["slot"]),
            text(&slot["pool"]),
            state_text(slot),
            held_for(slot).unwrap_or_else(|| "-".into()),
            text(&slot["lease_expires"]),
            text(&slot["owner"]),
        ));
        if let Some(error) = slot["last_error"].as_str() {
            out.push_str(&format!("{:<16} last error: {error}\n", ""));
        }
    }
    out
}

fn status_env(status: &Status) -> String {
    let mut vars = Vec::new();
    if let Some(as_of) = status.as_of.as_str() {
        vars.push(("BERTH_AS_OF".to_owned(), as_of.to_owned()));
    }
    let mut names = Vec::new();
    for pool in status.pools.as_array().into_iter().flatten() {
        let Some(name) = pool["pool"].as_str() else {
            continue;
        };
        names.push(name.to_owned());
        let key: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        for count in [
            "slots",
            "free",
            "used",
            "dirty",
            "disabled",
            "waiting",
            "consumers",
        ] {
            if let Some(n) = pool[count].as_u64() {
                let var = format!("BERTH_POOL_{key}_{}", count.to_ascii_uppercase());
                vars.push((var, n.to_string()));
            }
        }
    }
    vars.push(("BERTH_POOLS".to_owned(), names.join(" ")));
    let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    exports(&vars)
}

fn json_line(value: &Value) -> String {
    format!("{value}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_for_is_short_and_draining_is_marked() {
        assert_eq!(short_duration(42), "42s");
        assert_eq!(short_duration(320), "5m20s");
        assert_eq!(short_duration(2 * 3600 + 13 * 60), "2h13m");
        assert_eq!(short_duration(3 * 86400 + 4 * 3600), "3d4h");
        let since = (chrono::Utc::now() - chrono::Duration::seconds(125)).to_rfc3339();
        let slot = json!({"slot": "ppa-1", "state": "used", "held_since": since, "draining": true});
        let held = held_for(&slot).unwrap();
        assert!(held.starts_with("2m"), "{held}");
        assert_eq!(state_text(&slot), "used,draining");
        let status = Status {
            as_of: json!("now"),
            pools: json!([]),
            slots: json!([slot]),
        };
        let text = super::status(&status, Format::Text);
        assert!(
            text.contains("used,draining") && text.contains(" 2m"),
            "{text}"
        );
    }

    #[test]
    fn env_lines_are_shell_safe() {
        let lease = Lease {
            slot: "ppa-1".into(),
            pool: "ppa".into(),
            lease_token: "abc".into(),
            lease_secs: 600,
            lease_expires: chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .into(),
            resource: json!({"reference": "ppa:berth-ci/ppa-1"}),
        };
        let text = acquired(&lease, Format::Env);
        assert!(text.contains("export BERTH_SLOT=ppa-1\n"), "{text}");
        assert!(
            text.contains("export BERTH_PPA=ppa:berth-ci/ppa-1\n"),
            "{text}"
        );
        assert!(text.contains("export BERTH_LEASE_SECS=600\n"), "{text}");
        assert_eq!(shell_quote("it's $x"), r"'it'\''s $x'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn launchpad_reference_becomes_ppa_name() {
        let mut lease = Lease {
            slot: "s".into(),
            pool: "p".into(),
            lease_token: "t".into(),
            lease_secs: 60,
            lease_expires: chrono::Utc::now(),
            resource: json!({"reference": "~team/ubuntu/ppa-2"}),
        };
        assert_eq!(lease.ppa().as_deref(), Some("ppa:team/ppa-2"));
        lease.resource = json!({});
        assert_eq!(lease.ppa(), None);
    }
}
