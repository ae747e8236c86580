//! The worker's side of the task-to-task exchange (the protocol and its invariants are
//! `smelter_lake::exchange`'s): the Flight client that fetches rows another worker offers,
//! and the `DoGet` that answers such fetches from this worker's recently committed files.
//!
//! Fetches go to the offering worker's Flight SQL service with its ticket wrapped in a
//! protobuf `Any` of type [`TICKET_TYPE`], so the one service on the one port answers
//! both queries and exchange fetches, with the same TLS and tokens (a fetch needs the
//! admin role, which workers' own tokens carry).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::Any;
use arrow_flight::{FlightData, Ticket as FlightTicket};
use futures::{StreamExt, TryStreamExt};
use prost::Message as _;
use smelter_common::config::SmelterConfig;
use smelter_common::security::auth::Bearer;
use smelter_common::security::{Principal, Role, tls};
use smelter_lake::exchange::{Exchange, Fetch, Message, TICKET_TYPE, Ticket};
use smelter_lake::recent_files::RecentFiles;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The HTTP/2 flow-control window of a fetch's stream, bytes.
const WINDOW: u32 = 16 << 20;

/// Largest message a fetch accepts (a file's batch; files are tens of MB at most).
const MAX_MESSAGE: usize = 1 << 30;

/// Fetches offered rows over Flight, one cached connection per endpoint.
#[derive(Debug)]
pub struct FlightFetch {
    security: smelter_common::security::SecurityConfig,
    bearer: Bearer,
    channels: Mutex<HashMap<String, Channel>>,
}

impl FlightFetch {
    /// A client presenting this worker's token, over TLS when the cluster uses it.
    pub fn new(config: &SmelterConfig) -> smelter_common::Result<Self> {
        Ok(Self {
            security: config.security.clone(),
            bearer: Bearer::from_config(&config.security)?,
            channels: Mutex::default(),
        })
    }

    /// This worker's part in the exchange, offering at `advertised`, when
    /// `worker.flight_exchange` is on (unset: when the tables are on an object store).
    pub fn exchange(
        config: &SmelterConfig,
        advertised: &str,
    ) -> smelter_common::Result<Option<Exchange>> {
        let on = config
            .worker
            .flight_exchange
            .unwrap_or_else(|| config.storage.is_object_store());
        if !on {
            return Ok(None);
        }
        Ok(Some(Exchange {
            endpoint: advertised.to_string(),
            fetcher: std::sync::Arc::new(Self::new(config)?),
            timeout: Duration::from_millis(config.worker.exchange_timeout_ms),
        }))
    }

    async fn client(
        &self,
        endpoint: &str,
    ) -> Result<FlightServiceClient<InterceptedService<Channel, Bearer>>, String> {
        let cached = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(endpoint)
            .cloned();
        let channel = match cached {
            Some(channel) => channel,
            None => {
                let channel = tls::endpoint(endpoint, &self.security)
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    // A file is hundreds of KB to tens of MB: HTTP/2's default 64 KB
                    // window would stop the sender for a window update every 64 KB.
                    .initial_stream_window_size(WINDOW)
                    .initial_connection_window_size(WINDOW * 2)
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                self.channels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(endpoint.to_string(), channel.clone());
                channel
            }
        };
        Ok(
            FlightServiceClient::with_interceptor(channel, self.bearer.clone())
                .max_decoding_message_size(MAX_MESSAGE),
        )
    }
}

#[async_trait::async_trait]
impl Fetch for FlightFetch {
    async fn fetch(&self, endpoint: &str, ticket: &Ticket) -> Result<Vec<Message>, String> {
        let mut client = self.client(endpoint).await?;
        let any = Any {
            type_url: TICKET_TYPE.to_string(),
            value: ticket.to_bytes().into(),
        };
        let request = FlightTicket {
            ticket: any.encode_to_vec().into(),
        };
        let fetched = async {
            let stream = client.do_get(request).await?.into_inner();
            stream
                .map_ok(|data: FlightData| Message {
                    header: data.data_header,
                    body: data.data_body,
                })
                .try_collect::<Vec<_>>()
                .await
        }
        .await;
        fetched.map_err(|status: Status| {
            if status.code() == tonic::Code::Unavailable {
                // A worker that went away: connect afresh next time.
                self.channels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(endpoint);
            }
            format!("{}: {}", status.code(), status.message())
        })
    }
}

/// The rows of the file `ticket` names, from `recent`, as Flight data (`NOT_FOUND` when no
/// longer kept). With `forge` (a fault-test hook) the middle byte of the last message is changed,
/// which the fetching worker must notice.
pub fn serve(
    recent: &RecentFiles,
    caller: &Principal,
    ticket: &[u8],
    forge: bool,
) -> Result<Vec<FlightData>, Status> {
    caller.require(Role::Admin, "fetch exchanged rows")?;
    let ticket = Ticket::from_bytes(ticket).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let kept = recent
        .serve(&ticket.table, &ticket.path)
        .ok_or_else(|| Status::not_found(format!("{} is not kept here", ticket.path)))?;
    let mut messages = kept
        .messages
        .clone()
        .ok_or_else(|| Status::not_found(format!("{} is not offered", ticket.path)))?;
    if forge && let Some(last) = messages.last_mut() {
        let mut body = last.body.to_vec();
        let middle = body.len() / 2;
        if let Some(byte) = body.get_mut(middle) {
            *byte ^= 0x01;
        }
        last.body = body.into();
    }
    Ok(messages
        .into_iter()
        .map(|message| FlightData {
            data_header: message.header,
            data_body: message.body,
            ..Default::default()
        })
        .collect())
}

/// [`serve`]'s data as a `DoGet` stream.
pub fn stream(
    data: Vec<FlightData>,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<FlightData, Status>> + Send>> {
    futures::stream::iter(data.into_iter().map(Ok)).boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::RecordBatch;
    use arrow::compute::concat_batches;
    use smelter_common::config::SmelterConfig;
    use smelter_lake::changes;
    use smelter_lake::commit::{CommitOutcome, WriteMode, commit};
    use smelter_lake::exchange::Exchange;
    use smelter_lake::recent_files::{Reads, RecentFiles};
    use smelter_lake::testing::{DAY_COLUMN, flagged_positions, positions_schema};
    use smelter_lake::{CommitEnv, TableStore};
    use tokio_util::task::AbortOnDropHandle;

    use super::FlightFetch;
    use crate::serve::flight::FlightSqlServer;
    use crate::serve::query::QueryEngine;

    /// Offsets `from..from + n` of partition 0, every fifth flagged with an error.
    fn records(from: i64, n: i64) -> RecordBatch {
        flagged_positions(0, from..from + n, 5)
    }

    fn exchange(endpoint: &str) -> Exchange {
        Exchange {
            endpoint: endpoint.to_string(),
            fetcher: Arc::new(FlightFetch::new(&SmelterConfig::default()).unwrap()),
            timeout: Duration::from_secs(5),
        }
    }

    /// A writer worker serving the exchange on a loopback port (answers forged when
    /// `forge`) commits one file; a reader worker reads it. What the reader got, its
    /// reads, and what the writer served. With `stop_writer`, the writer's service is gone
    /// before the read.
    async fn write_then_read(
        forge: bool,
        stop_writer: bool,
    ) -> (Vec<RecordBatch>, Vec<RecordBatch>, Reads, Reads) {
        let dir = tempfile::tempdir().unwrap();
        let store = TableStore::new(dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let writer = CommitEnv {
            recent: RecentFiles::new(64 << 20).with_exchange(exchange(&address)),
            ..Default::default()
        };
        let engine = QueryEngine::for_clients(store.clone(), Default::default());
        let service = FlightSqlServer::new(engine)
            .unwrap()
            .with_exchange(writer.recent.clone(), forge)
            .into_service(&smelter_common::security::Authenticator::open());
        let server = AbortOnDropHandle::new(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        }));
        let by = [DAY_COLUMN.to_string()];
        let name = "bronze.events";
        let mut table = store
            .open_or_create(name, &positions_schema(), &by, &writer)
            .await
            .unwrap();
        let batches = vec![records(0, 3_000), records(3_000, 2_000)];
        let outcome = commit(
            &mut table,
            name,
            batches,
            WriteMode::Append,
            &by,
            vec![],
            &writer,
        )
        .await;
        let Ok(CommitOutcome::Committed { version }) = outcome else {
            panic!("not committed: {outcome:?}");
        };
        if stop_writer {
            drop(server);
        }
        let added = changes::range(&table, name, version, version)
            .await
            .unwrap()
            .added;
        assert_eq!(added.len(), 1);
        let file = &added[0];
        let offer = file.offer.as_ref().expect("the commit offers its file");
        assert_eq!(offer.endpoint, address);
        assert_eq!(
            file.rows,
            Some(5_000),
            "the offer is for the log's row count"
        );

        let reader = RecentFiles::new(64 << 20).with_exchange(exchange("127.0.0.1:1"));
        let read = changes::read(&table, name, file, None, &reader)
            .await
            .unwrap();
        let disk = changes::read(&table, name, file, None, &RecentFiles::default())
            .await
            .unwrap();
        (read, disk, reader.reads(), writer.recent.reads())
    }

    fn rows(batches: &[RecordBatch]) -> RecordBatch {
        concat_batches(&batches[0].schema(), batches).unwrap()
    }

    /// Rows taken over the exchange are the file's rows, and no byte of the file is read.
    #[tokio::test]
    async fn a_reader_takes_the_offered_rows_instead_of_the_file() {
        let (read, disk, reads, served) = write_then_read(false, false).await;
        assert_eq!(rows(&read), rows(&disk));
        assert_eq!(
            (reads.exchanged, reads.storage, reads.storage_bytes),
            (1, 0, 0),
            "{reads:?}"
        );
        assert!(reads.exchanged_bytes > 0, "{reads:?}");
        assert_eq!(served.served, 1, "{served:?}");
    }

    /// A forged answer (one byte changed by the writer's test hook) is refused by its
    /// checksum, and the rows come from the file.
    #[tokio::test]
    async fn forged_rows_are_refused_and_the_file_read() {
        let (read, disk, reads, served) = write_then_read(true, false).await;
        assert_eq!(served.served, 1, "the forged answer was sent: {served:?}");
        assert_eq!(
            (reads.rejected, reads.exchanged, reads.storage),
            (1, 0, 1),
            "{reads:?}"
        );
        assert!(reads.storage_bytes > 0);
        assert_eq!(rows(&read), rows(&disk));
    }

    /// A writer that is gone costs a failed fetch and a file read.
    #[tokio::test]
    async fn a_writer_gone_means_the_file_is_read() {
        let (read, disk, reads, served) = write_then_read(false, true).await;
        assert_eq!(served.served, 0);
        assert_eq!(
            (reads.failed, reads.exchanged, reads.storage),
            (1, 0, 1),
            "{reads:?}"
        );
        assert_eq!(rows(&read), rows(&disk));
    }
}
