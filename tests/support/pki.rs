//! Certificates a test makes for itself (rcgen): a CA, and server certificates for
//! `localhost` / `127.0.0.1` signed by it, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA and one server certificate signed by it, as files in a directory of their own.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA's certificate: what a client is told to trust.
    pub ca: PathBuf,
    /// The server's certificate chain and key (the key `0600`).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A fresh CA named `name` and a server certificate for localhost, 127.0.0.1 and ::1.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("berth test CA {name}"));
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();

        let path = |file: &str| dir.path().join(file);
        std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        berth::secret_file::write_secret_file(&path("key.pem"), &key.serialize_pem()).unwrap();
        Pki {
            ca: path("ca.pem"),
            cert: path("cert.pem"),
            key: path("key.pem"),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
