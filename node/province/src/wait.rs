//! Waiting, bounded, for what a starting province does by itself: nodes
//! register in the catalog and learn it through their watch.

use crate::ProvinceError;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Envelope, RecordKind};
use lgsp_registry::RegistryClient;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Waits (at most `within`) until node `name` of `agency` has registered
/// itself in the catalog (its node record `<agency>/<name>` exists); fails
/// with [`ProvinceError::Timeout`] after that.
pub async fn node_registered(
    client: &RegistryClient,
    agency: &str,
    name: &str,
    within: Duration,
) -> Result<(), ProvinceError> {
    let deadline = Instant::now() + within;
    let key = format!("{agency}/{name}");
    loop {
        let last = match client.get(RecordKind::Node, &key, false).await {
            Ok(r) if r.record.is_some() => return Ok(()),
            Ok(_) => "not in the catalog".to_owned(),
            Err(status) => status.message().to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(ProvinceError::Timeout {
                what: format!("node {name} of agency {agency} registering itself"),
                within,
                last: Some(last),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls `envelope` on `channel` (an agency's node, as its applications
/// do) until a call succeeds, at most `within`: a new grant reaches the
/// nodes through their watch. Fails with the last refusal.
pub async fn until_served(
    channel: Channel,
    envelope: &Envelope,
    within: Duration,
) -> Result<(), ProvinceError> {
    let mut client = DataExchangeClient::new(channel);
    let deadline = Instant::now() + within;
    loop {
        let refused = match client.call(envelope.clone()).await {
            Ok(_) => return Ok(()),
            Err(status) => status,
        };
        if Instant::now() >= deadline {
            return Err(ProvinceError::Timeout {
                what: format!("a call of {} being served", envelope.service_id),
                within,
                last: Some(format!("{:?}: {}", refused.code(), refused.message())),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
