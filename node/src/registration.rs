//! The node's own entry in the catalog: which instance holds it, kept fresh
//! by a heartbeat, given up when the node stops in order.
//!
//! A node's certificate names it (`<agency>/<name>`), so two processes given
//! the same certificate (a copied server, a second install) would each
//! register that name and take the other's calls. Each data directory gets
//! a random **instance id** at first start; the node sends it with every
//! registration, and the registry refuses another instance's registration
//! while the one holding the name was heard from within its lease. The
//! refused node stops with a configuration error; the running one sees the
//! refusal noted on its record and logs a warning.

use crate::server::NodeError;
use lgsp_proto::NodeRecord;
use lgsp_registry::Catalog;
use lgsp_registry::catalog::{NODE_HEARTBEAT_SECONDS, NODE_LEASE_SECONDS};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The file under the node's data directory that keeps its instance id.
pub const INSTANCE_FILE: &str = "instance-id";

/// This data directory's instance id: read from [`INSTANCE_FILE`], or made
/// (16 random bytes, hex) and written there at first start. Fails when the
/// file cannot be read or written, or holds something else than an id.
pub fn instance_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} does not hold an instance id (hex digits); remove it to make a new one",
                        path.display()
                    ),
                ));
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| std::io::Error::other("no random source for the instance id"))?;
            let id = hex::encode(bytes);
            std::fs::create_dir_all(data_dir)?;
            lgsp_certs::write_new(&path, format!("{id}\n").as_bytes(), 0o644)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Registers `record` and renews it every heartbeat until `shutdown`,
/// retrying while the registry cannot be reached. When the registry says
/// the name is held by another live instance, sends that on `fatal` and
/// stops. Sets `registered` once the registry first accepted it.
pub(crate) async fn keep_registered(
    catalog: Catalog,
    record: NodeRecord,
    mut shutdown: watch::Receiver<bool>,
    fatal: oneshot::Sender<NodeError>,
    registered: Arc<std::sync::atomic::AtomicBool>,
) {
    let heartbeat = Duration::from_secs(NODE_HEARTBEAT_SECONDS);
    let mut delay = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let wait = match catalog.register_node(record.clone()).await {
            Ok(revision) => {
                if !registered.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!(endpoint = %record.endpoint, instance = %record.instance_id, revision, "node registered in the catalog");
                }
                delay = Duration::from_millis(200);
                heartbeat
            }
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                tracing::error!(error = %status.message(), "another instance holds this node's name in the catalog");
                let _ = fatal.send(NodeError::NameInUse(status.message().to_owned()));
                return;
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "cannot register the node in the catalog yet; retrying");
                let wait = delay;
                delay = (delay * 2).min(heartbeat);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Gives the node's name up when it stops in order, so that another
/// instance (the same node moved to a new server) may take it at once
/// instead of after the lease. Best effort: bounded to two seconds.
pub(crate) async fn release(catalog: &Catalog, record: &NodeRecord) {
    let stopping = NodeRecord {
        stopping: true,
        ..record.clone()
    };
    match tokio::time::timeout(Duration::from_secs(2), catalog.register_node(stopping)).await {
        Ok(Ok(_)) => tracing::info!("node's catalog registration released"),
        Ok(Err(status)) => {
            tracing::warn!(error = %status.message(), "cannot release the node's catalog registration; another instance may take it after {NODE_LEASE_SECONDS} s")
        }
        Err(_) => tracing::warn!(
            "the registry did not answer the release of the node's registration; another instance may take it after {NODE_LEASE_SECONDS} s"
        ),
    }
}

/// Logs a warning each time the registry notes on this node's record that
/// it refused another instance's registration under the same name.
pub(crate) async fn warn_of_contenders(
    cache: Arc<crate::catalog_cache::CatalogCache>,
    record: NodeRecord,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = cache.subscribe();
    let mut last_warned = 0;
    loop {
        if let Some(own) = cache.node(&record.agency_code, &record.name)
            && own.instance_id == record.instance_id
            && let Some(contender) = own.contender
            && contender.at_unix != last_warned
        {
            last_warned = contender.at_unix;
            tracing::warn!(
                node = %format!("{}/{}", record.agency_code, record.name),
                contender.instance = %contender.instance_id,
                contender.endpoint = %contender.endpoint,
                "another process with this node's certificate tried to register it and was refused (this node keeps serving); stop that process, or give it its own name and certificate"
            );
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_id_is_made_once_and_kept_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = instance_id(dir.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(instance_id(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(instance_id(other.path()).unwrap(), first);
    }

    #[test]
    fn a_damaged_instance_file_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INSTANCE_FILE), "not an id").unwrap();
        let err = instance_id(dir.path()).unwrap_err();
        assert!(err.to_string().contains("remove it"), "{err}");
    }
}
