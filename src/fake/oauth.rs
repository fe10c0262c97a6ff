//! Checking the OAuth 1.0 PLAINTEXT `Authorization` header that writes must carry, the way
//! launchpadlib sends it (see docs/launchpad.md). The fake only verifies: it never
//! signs, so it shares only the credentials-file parser with the store client.

use std::collections::HashMap;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use super::FakeCredentials;

/// Why a write was refused with `401`. The text goes into the response body, so it names
/// what was wrong but never echoes a secret.
pub(crate) type AuthError = &'static str;

/// Accepts a well-formed PLAINTEXT header; when `expected` is set, also exactly its
/// consumer key, token and signature (`&` + token secret: the consumer secret is empty).
pub(crate) fn check(
    headers: &HeaderMap,
    expected: Option<&FakeCredentials>,
) -> Result<(), AuthError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or("Authorization header missing")?;
    let header = header
        .to_str()
        .map_err(|_| "Authorization header is not text")?;
    let params = parse(header).ok_or("Authorization header is not an OAuth header")?;
    let field = |name: &str| params.get(name).map(String::as_str);
    if field("oauth_signature_method") != Some("PLAINTEXT") {
        return Err("oauth_signature_method must be PLAINTEXT");
    }
    let consumer_key = field("oauth_consumer_key").ok_or("oauth_consumer_key missing")?;
    let token = field("oauth_token").ok_or("oauth_token missing")?;
    let signature = field("oauth_signature").ok_or("oauth_signature missing")?;
    let (consumer_secret, token_secret) = signature
        .split_once('&')
        .and_then(|(c, t)| Some((percent_decode(c)?, percent_decode(t)?)))
        .ok_or("oauth_signature is not CONSUMER_SECRET&TOKEN_SECRET")?;
    if let Some(expected) = expected {
        let right = consumer_key == expected.consumer_key
            && token == expected.token
            && consumer_secret.is_empty()
            && token_secret == expected.token_secret;
        if !right {
            return Err("Invalid OAuth token or signature");
        }
    }
    Ok(())
}

/// Splits `OAuth k="v", k="v"` into decoded pairs; `None` unless every part is well formed.
fn parse(header: &str) -> Option<HashMap<String, String>> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("OAuth") {
        return None;
    }
    rest.split(',')
        .map(|part| {
            let (key, value) = part.trim().split_once('=')?;
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            Some((key.to_owned(), percent_decode(value)?))
        })
        .collect()
}

/// RFC 3986 percent-decoding; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn launchpadlib(token: &str, signature: &str) -> HeaderMap {
        headers(&format!(
            "OAuth realm=\"https://api.launchpad.net/\", oauth_consumer_key=\"berth\", \
             oauth_token=\"{token}\", oauth_signature_method=\"PLAINTEXT\", \
             oauth_signature=\"{signature}\", oauth_timestamp=\"1700000000\", \
             oauth_nonce=\"123\", oauth_version=\"1.0\""
        ))
    }

    fn expected() -> FakeCredentials {
        FakeCredentials {
            consumer_key: "berth".into(),
            token: "tok".into(),
            token_secret: "s&cret".into(),
        }
    }

    #[test]
    fn accepts_launchpadlib_headers() {
        assert_eq!(check(&launchpadlib("any", "%26x"), None), Ok(()));
        // The secret `s&cret` is encoded once in the signature and again in the header.
        assert_eq!(
            check(&launchpadlib("tok", "%26s%2526cret"), Some(&expected())),
            Ok(())
        );
    }

    #[test]
    fn refuses_wrong_or_malformed_headers() {
        assert!(check(&HeaderMap::new(), None).is_err());
        assert!(check(&headers("Bearer abc"), None).is_err());
        assert!(check(&launchpadlib("tok", "nosecret"), None).is_err());
        assert!(check(&launchpadlib("other", "%26s%2526cret"), Some(&expected())).is_err());
        assert!(check(&launchpadlib("tok", "%26wrong"), Some(&expected())).is_err());
        assert!(check(&headers("OAuth oauth_token=\"t\""), None).is_err());
    }
}
