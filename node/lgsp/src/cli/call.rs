//! `lgsp call`: call another agency's service through this agency's node,
//! as any application would.

use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Envelope, FieldFilter, QueryRequest};
use std::collections::HashMap;
use std::io::Write;

#[derive(Debug, Args)]
pub(super) struct CallArgs {
    /// The service id, <agency-code>/<service-name>.
    service: String,
    /// The operation (for a dataset: get).
    #[arg(long, default_value = "get")]
    op: String,
    /// Parameters, NAME=VALUE (repeat for several), e.g. --param key=001099012345.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// A JSON payload for the operation.
    #[arg(long)]
    json: Option<String>,
    /// Stream records of a dataset instead: filters (--param f=v), projection (--fields).
    #[arg(long)]
    query: bool,
    /// Query: the fields to return, comma-separated.
    #[arg(long, value_delimiter = ',')]
    fields: Vec<String>,
    /// Query: records per page.
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    /// This agency's node (its consumer listener).
    #[arg(long, env = "LGSP_NODE", default_value = "127.0.0.1:7401")]
    node: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

fn params(list: &[String]) -> Result<HashMap<String, String>> {
    list.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--param {p:?} is not NAME=VALUE"))
        })
        .collect()
}

pub(super) fn run(args: CallArgs) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let params = params(&args.params)?;
        let uri = format!("http://{}", args.node);
        let channel = tonic::transport::Endpoint::from_shared(uri)?
            .timeout(std::time::Duration::from_secs(args.timeout))
            .connect()
            .await
            .with_context(|| {
                format!(
                    "cannot reach this agency's node at {} (is `lgsp node start` running?)",
                    args.node
                )
            })?;
        let mut client = DataExchangeClient::new(channel).max_decoding_message_size(64 << 20);
        if args.query {
            let mut stream = client
                .query(QueryRequest {
                    service_id: args.service.clone(),
                    filters: params
                        .into_iter()
                        .map(|(field, equals)| FieldFilter { field, equals })
                        .collect(),
                    fields: args.fields,
                    page_size: args.page_size,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut n = 0;
            let mut out = std::io::stdout().lock();
            while let Some(page) = stream.next().await {
                for r in page?.records {
                    // A reader gone (`| head`) ends the command quietly.
                    writeln!(out, "{}", r.json)?;
                    n += 1;
                }
            }
            out.flush()?;
            drop(out);
            eprintln!("{n} record(s)");
            return Ok(());
        }
        let payload = match &args.json {
            Some(j) => {
                serde_json::from_str::<serde_json::Value>(j).context("--json is not valid JSON")?;
                j.clone().into_bytes()
            }
            None => Vec::new(),
        };
        let response = client
            .call(Envelope {
                service_id: args.service,
                operation: args.op,
                parameters: params,
                payload,
                request_id: String::new(),
            })
            .await?
            .into_inner();
        match serde_json::from_slice::<serde_json::Value>(&response.payload) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
            Err(_) => println!("{}", String::from_utf8_lossy(&response.payload)),
        }
        eprintln!("request id {}", response.request_id);
        Ok(())
    })
}
