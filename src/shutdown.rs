//! Stopping on SIGINT (Ctrl-C) and SIGTERM alike: one set-up for every berth process.

use tokio_util::sync::CancellationToken;

/// A token that fires on the first SIGINT or SIGTERM. Call it inside a Tokio runtime.
pub fn signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("stopping (signal received)");
        fire.cancel();
    });
    token
}

/// Resolves on the first SIGINT or SIGTERM (only Ctrl-C where SIGTERM cannot be watched).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
