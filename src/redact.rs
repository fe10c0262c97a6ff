//! Keeping secrets out of what people see: a URL with a password is shown as
//! `amqp://guest:***@host/...` in help texts, logs and errors, and error text that goes into
//! a public record (`last_error`: PPA descriptions are public) is scrubbed and shortened.

/// What stands for a password (or a user info without one, which may be a token).
const HIDDEN: &str = "***";

/// `url` with its password replaced by `***` (`amqp://u:***@host/`); a user name without a
/// password (`https://TOKEN@host/`, a common way to pass a token) is replaced whole. Any
/// scheme; a text that is not a URL comes back as it was.
pub fn redact_url(url: &str) -> String {
    scrub_urls(url)
}

/// `text` with the password of every `scheme://user:password@` in it replaced by `***`, as
/// [`redact_url`] does for one URL: for error messages and log lines that may quote a URL.
pub fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority runs to the path, query or fragment, or to the end of the URL in
        // running text. A password's own `@`, `/` or space is percent-encoded in a URL.
        let end = after
            .find(|c: char| "/?#\"'<>".contains(c) || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                if let Some((user, _password)) = userinfo.split_once(':') {
                    out.push_str(user);
                    out.push(':');
                }
                out.push_str(HIDDEN);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// An error message fit for a public record: URLs scrubbed of credentials ([`scrub_urls`]),
/// on one line, and at most `max` bytes (cut at a character boundary, with `…` at the end
/// when cut).
pub fn public_error(message: &str, max: usize) -> String {
    let message = scrub_urls(message).replace(['\n', '\r'], " ");
    if message.len() <= max {
        return message;
    }
    let ellipsis = '…';
    let room = max.saturating_sub(ellipsis.len_utf8());
    let cut = (0..=room)
        .rev()
        .find(|&i| message.is_char_boundary(i))
        .unwrap_or(0);
    let mut short = message[..cut].to_owned();
    short.push(ellipsis);
    short
}

/// A broker node's `url` as berth names the node in a log line, a metric or `/readyz`:
/// scheme, user, host, port and virtual host, without the password and the query (unlike
/// [`redact_url`], which keeps a quoted URL's shape and marks where the password was).
pub fn node_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (rest, None),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    match path {
        Some(path) => format!("{scheme}://{authority}/{path}"),
        None => format!("{scheme}://{authority}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_url_has_no_password_and_no_query() {
        assert_eq!(
            node_url("amqp://guest:s3cret@10.0.0.1:5672/%2f?heartbeat=10"),
            "amqp://guest@10.0.0.1:5672/%2f"
        );
        assert_eq!(
            node_url("amqps://u:p%40ss@rabbit-2.example:5671/ci?cacertfile=/x"),
            "amqps://u@rabbit-2.example:5671/ci"
        );
        assert_eq!(node_url("amqp://rabbit-3"), "amqp://rabbit-3");
        assert_eq!(node_url("nonsense"), "(not a URL)");
    }

    #[test]
    fn a_password_in_a_url_is_hidden_and_the_rest_kept() {
        assert_eq!(
            redact_url("amqp://guest:secretpw@rabbit.example:5671/%2f?heartbeat=10"),
            "amqp://guest:***@rabbit.example:5671/%2f?heartbeat=10"
        );
        assert_eq!(
            redact_url("amqps://u:p%40ss@[::1]:5671"),
            "amqps://u:***@[::1]:5671"
        );
        assert_eq!(
            redact_url("https://ghp_token@example.com/x"),
            "https://***@example.com/x"
        );
        for plain in [
            "amqp://127.0.0.1:5672/%2f",
            "http://127.0.0.1:8081/",
            "not a url",
            "",
            "amqp://",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
        // An `@` after the authority is not user info.
        assert_eq!(
            redact_url("https://host/a@b?c=d@e"),
            "https://host/a@b?c=d@e"
        );
    }

    #[test]
    fn every_url_in_a_text_is_scrubbed() {
        let text = "cannot reach amqp://a:one@h1/ nor \"https://b:two@h2:443/x\", giving up";
        let scrubbed = scrub_urls(text);
        assert_eq!(
            scrubbed,
            "cannot reach amqp://a:***@h1/ nor \"https://b:***@h2:443/x\", giving up"
        );
        assert!(!scrubbed.contains("one") && !scrubbed.contains("two"));
    }

    #[test]
    fn a_public_error_is_scrubbed_on_one_line_and_short() {
        let long = format!(
            "store said:\nhttps://user:hunter2@lp.example/x {}",
            "é".repeat(300)
        );
        let public = public_error(&long, 100);
        assert!(public.len() <= 100, "{}", public.len());
        assert!(public.ends_with('…'), "{public}");
        assert!(
            !public.contains("hunter2") && !public.contains('\n'),
            "{public}"
        );
        assert!(public.starts_with("store said: https://user:***@lp.example/x "));
        assert_eq!(public_error("short", 100), "short");
        assert_eq!(public_error("exactly", 7), "exactly");
    }
}
