//! HTTPS for the assigner (`tls_cert` / `tls_key`): a listener that hands axum connections
//! whose TLS handshake is done. Each handshake runs in its own task, with a time limit, so a
//! slow or silent client holds up no one else's accept; a failed one is logged and dropped.
//! Shutdown is axum's: it stops accepting and drains what it has.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the certificate or key was refused at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    #[error("tls_cert {}: {message}", path.display())]
    Cert {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("tls_key {}: {message}", path.display())]
    Key {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    KeyFile(#[from] crate::secret_file::SecretFileError),
    #[error("tls_cert and tls_key do not make a usable server identity: {0}")]
    Identity(rustls::Error),
}

/// The acceptor of the certificate chain `cert` and private key `key` (both PEM). The key
/// is a secret: refused when others may read it, like the Launchpad credentials.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsSetupError> {
    let cert_error = |message: String| TlsSetupError::Cert {
        path: cert.to_owned(),
        message,
    };
    let pem = std::fs::read(cert).map_err(|e| cert_error(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in it".into()));
    }
    let key_pem = crate::secret_file::read_secret_file(key)?;
    // The error names the file only: the parser's message could quote the key.
    let key_der =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsSetupError::Key {
            path: key.to_owned(),
            message: "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into(),
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Identity)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(TlsSetupError::Identity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Connections of `listener` after their TLS handshake, for `axum::serve`.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (done, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, acceptor, done));
        Ok(TlsListener {
            ready,
            addr,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    done: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if done.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let done = done.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = done.send((tls, peer)).await;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                }
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when this listener drops, or panics: wait forever
            // rather than hand axum nothing (it stops calling at shutdown anyway).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
