//! Connections the fault injector can cut without answering.
//!
//! axum's `serve` gives a handler no way to drop its connection: hyper always writes the
//! response it gets. So the listener wraps every accepted socket with a shared switch; a
//! handler flips it through [`Severance`] (the connection's `ConnectInfo`), and from then
//! on every read and write fails, hyper gives the connection up before writing a byte of
//! the response, and the socket is closed. The client sees the connection end with no
//! answer, as when a proxy or the network drops it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP listener whose connections can be severed.
#[derive(Debug)]
pub(crate) struct SeverableListener(pub(crate) TcpListener);

impl Listener for SeverableListener {
    type Io = SeverableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SeverableStream, SocketAddr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        (
            SeverableStream {
                inner: stream,
                cut: Severance::default(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The switch of one connection; handlers get it as `ConnectInfo<Severance>`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Severance(Arc<AtomicBool>);

impl Severance {
    /// Makes every further read and write on the connection fail.
    pub(crate) fn sever(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "severed by fault injection",
            ))
        } else {
            Ok(())
        }
    }
}

impl Connected<IncomingStream<'_, SeverableListener>> for Severance {
    fn connect_info(stream: IncomingStream<'_, SeverableListener>) -> Self {
        stream.io().cut.clone()
    }
}

/// A TCP stream that fails every operation once severed.
#[derive(Debug)]
pub(crate) struct SeverableStream {
    inner: TcpStream,
    cut: Severance,
}

impl AsyncRead for SeverableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.cut.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SeverableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.cut.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.cut.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
