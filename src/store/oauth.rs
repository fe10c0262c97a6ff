//! OAuth 1.0 PLAINTEXT signing.
