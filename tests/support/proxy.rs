//! A TCP proxy a test controls, to cut or stall connections between berth and a server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards every connection to `target` until told otherwise.
pub struct Proxy {
    pub addr: SocketAddr,
    stalled: Arc<AtomicBool>,
    /// Bumped to cut every open connection.
    generation: watch::Sender<u64>,
    /// Bumped to close every open connection on the server's side only.
    severed: watch::Sender<u64>,
    cuts: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let gen_tx = generation.clone();
        let (severed, _) = watch::channel(0u64);
        let sever_tx = severed.clone();
        let stalled2 = stalled.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let cut = gen_tx.subscribe();
                let sever = sever_tx.subscribe();
                tokio::spawn(pipe(inbound, target, stalled2.clone(), cut, sever));
            }
        });
        Proxy {
            addr,
            stalled,
            generation,
            severed,
            cuts: AtomicU64::new(0),
            task,
        }
    }

    /// Closes every open connection at once (new ones are accepted again).
    pub fn cut(&self) {
        self.cuts.fetch_add(1, Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Closes every open connection on the server's side only: the server sees the client go,
    /// while the client hears nothing at all (its side stays open and silent), as when a
    /// network splits. Ends with [`Proxy::cut`].
    pub fn sever(&self) {
        self.severed.send_modify(|g| *g += 1);
    }

    /// Stops moving bytes (both ways) on every connection until [`Proxy::resume`].
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn pipe(
    mut inbound: TcpStream,
    target: SocketAddr,
    stalled: Arc<AtomicBool>,
    mut cut: watch::Receiver<u64>,
    mut sever: watch::Receiver<u64>,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        let _ = inbound.shutdown().await;
        return;
    };
    let severed = {
        let (mut ri, mut wi) = inbound.split();
        let (mut ro, mut wo) = outbound.split();
        let up = copy(&mut ri, &mut wo, &stalled);
        let down = copy(&mut ro, &mut wi, &stalled);
        tokio::select! {
            _ = up => false,
            _ = down => false,
            _ = cut.changed() => false,
            _ = sever.changed() => true,
        }
    };
    if severed {
        drop(outbound);
        // The client's side stays open, and silent, until the proxy cuts it.
        let _ = cut.changed().await;
    }
}

async fn copy<R, W>(reader: &mut R, writer: &mut W, stalled: &AtomicBool) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        writer.write_all(&buf[..n]).await?;
    }
}
