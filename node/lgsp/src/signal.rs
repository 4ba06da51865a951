//! How the long-running commands (node, registry, demo) learn to stop.

/// Waits for Ctrl-C or SIGTERM (what `systemctl stop` sends); says which.
pub(crate) async fn stop_signal() -> anyhow::Result<&'static str> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = sigterm.recv() => "SIGTERM",
    })
}
