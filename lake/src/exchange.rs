//! The task-to-task exchange: a downstream task on another worker than the one that
//! committed a data file takes the file's rows from that worker over Arrow Flight, instead
//! of reading the file from storage and decoding its Parquet again.
//!
//! The Delta log stays the only source of truth. A downstream task learns versions and
//! their files from the log as always; the exchange only changes where a file's rows come
//! from. The protocol:
//!
//! * **Offer.** A commit that wrote a single file whose rows [`RecentFiles`] keeps (see
//!   there for when the kept rows are exactly the file's) records in the file's add action
//!   the tags [`ENDPOINT_TAG`] (the writer's Flight endpoint) and [`CHECKSUM_TAG`] (a
//!   checksum of the rows encoded as Arrow IPC messages, [`encode`] and [`checksum`]). The
//!   tags are part of the commit: no reader sees an offer the log does not hold.
//! * **Serve.** The writer's Flight service answers a `DoGet` whose ticket names the table
//!   and the file ([`Ticket`]) with the messages it encoded for the checksum, kept with
//!   the rows (within the same budget). A file no longer kept (the budget moved on) is
//!   answered `NOT_FOUND`.
//! * **Take.** A reader takes the rows only if the checksum of the bytes it received is
//!   the offer's and the row count is the add action's `numRecords`; on any miss, error,
//!   timeout or mismatch it reads the file, as without the exchange. A forged or
//!   corrupted answer therefore costs a file read, never a wrong row.
//!
//! The Flight client and server are the worker's (this crate holds the format and the
//! rules, the worker the transport, behind [`Fetch`]). Workers of one process share their
//! [`RecentFiles`] and have no use for the exchange: `smelter up` turns it off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::recent_files::RecentFiles;
use crate::{LakeError, Result};

/// Add-action tag: the Flight endpoint of the worker that offers the file's rows.
pub const ENDPOINT_TAG: &str = "smelter.exchange.endpoint";
/// Add-action tag: the checksum of the offered rows' IPC messages ([`checksum`]).
pub const CHECKSUM_TAG: &str = "smelter.exchange.checksum";
/// The `type_url` of an exchange ticket wrapped as a protobuf `Any`, which is how a Flight
/// SQL service tells its tickets apart.
pub const TICKET_TYPE: &str = "type.googleapis.com/smelter.ExchangeTicket";

/// Where a file's rows are offered and what they must hash to, from its add action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The offering worker's Flight endpoint (`host:port`).
    pub endpoint: String,
    /// [`checksum`] of the rows' messages.
    pub checksum: String,
}

impl Offer {
    /// The offer an add action's tags carry, if any.
    pub fn from_tags(tags: Option<&HashMap<String, Option<String>>>) -> Option<Self> {
        let tags = tags?;
        let tag = |key: &str| tags.get(key).cloned().flatten();
        Some(Self {
            endpoint: tag(ENDPOINT_TAG)?,
            checksum: tag(CHECKSUM_TAG)?,
        })
    }

    /// The tags that record this offer in an add action.
    pub fn tags(&self) -> HashMap<String, Option<String>> {
        HashMap::from([
            (ENDPOINT_TAG.to_string(), Some(self.endpoint.clone())),
            (CHECKSUM_TAG.to_string(), Some(self.checksum.clone())),
        ])
    }
}

/// What a `DoGet` for exchanged rows names: a table (its URL) and one of its files (its
/// path as the log writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The table's URL.
    pub table: String,
    /// The file's path relative to the table.
    pub path: String,
}

impl Ticket {
    /// The ticket as bytes (the `Any`'s value).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A ticket from [`Ticket::to_bytes`]'s bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| LakeError::generic("exchange", format!("bad exchange ticket: {e}")))
    }
}

/// One Arrow IPC message, as a Flight `FlightData` carries it: the flatbuffer header and
/// the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The IPC message header (`data_header`).
    pub header: Bytes,
    /// The message body (`data_body`).
    pub body: Bytes,
}

/// `batches` (all of `schema`) as IPC messages: the schema, then one message per batch.
/// Deterministic: the same batches encode to the same bytes.
pub fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<Message>> {
    let generator = IpcDataGenerator::default();
    let options = IpcWriteOptions::default();
    let mut tracker = DictionaryTracker::new(false);
    let mut context = IpcWriteContext::default();
    let mut messages = Vec::with_capacity(batches.len() + 1);
    let encoded = generator.schema_to_bytes_with_dictionary_tracker(schema, &mut tracker, &options);
    messages.push(Message {
        header: encoded.ipc_message.into(),
        body: encoded.arrow_data.into(),
    });
    for batch in batches {
        let (dictionaries, encoded) =
            generator.encode(batch, &mut tracker, &options, &mut context)?;
        if !dictionaries.is_empty() {
            return Err(LakeError::generic(
                "exchange",
                "dictionary-encoded columns are not exchanged",
            ));
        }
        messages.push(Message {
            header: encoded.ipc_message.into(),
            body: encoded.arrow_data.into(),
        });
    }
    Ok(messages)
}

/// A checksum of `messages`: CRC-32 of every header and body in order, and their total
/// length.
pub fn checksum(messages: &[Message]) -> String {
    let mut crc = crc32fast::Hasher::new();
    let mut bytes = 0usize;
    for message in messages {
        for part in [&message.header, &message.body] {
            crc.update(&(part.len() as u64).to_le_bytes());
            crc.update(part);
            bytes += part.len();
        }
    }
    format!("crc32:{:08x}:{bytes}", crc.finalize())
}

/// The batches `messages` ([`encode`]'s) hold, sharing their buffers.
pub fn decode(messages: &[Message]) -> Result<Vec<RecordBatch>> {
    let bad = |what: String| LakeError::generic("exchange", what);
    let (first, rest) = messages
        .split_first()
        .ok_or_else(|| bad("no schema message".into()))?;
    let schema = Arc::new(arrow::ipc::convert::try_schema_from_flatbuffer_bytes(
        &first.header,
    )?);
    rest.iter()
        .map(|message| {
            let header = arrow::ipc::root_as_message(&message.header)
                .map_err(|e| bad(format!("bad message header: {e}")))?;
            let batch = header
                .header_as_record_batch()
                .ok_or_else(|| bad("a message that is not a record batch".into()))?;
            Ok(arrow::ipc::reader::read_record_batch(
                &Buffer::from(message.body.clone()),
                batch,
                schema.clone(),
                &HashMap::new(),
                None,
                &header.version(),
            )?)
        })
        .collect()
}

/// How a worker fetches offered rows from another worker (the worker's Flight client).
#[async_trait::async_trait]
pub trait Fetch: Send + Sync + std::fmt::Debug {
    /// The messages `endpoint` answers `ticket` with.
    async fn fetch(
        &self,
        endpoint: &str,
        ticket: &Ticket,
    ) -> std::result::Result<Vec<Message>, String>;
}

/// This worker's part in the exchange: the endpoint it offers rows at and how it fetches
/// others' rows.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// This worker's Flight endpoint, recorded in the offers of the files it commits.
    pub endpoint: String,
    /// Fetches rows offered by other workers.
    pub fetcher: Arc<dyn Fetch>,
    /// How long a fetch may take before the reader reads the file instead.
    pub timeout: Duration,
}

/// The offer for rows about to be committed as one file, when this worker exchanges and
/// keeps them (`rows`: [`RecentFiles::stored_rows`]), with the messages it will send.
pub(crate) fn offer(
    recent: &RecentFiles,
    schema: &SchemaRef,
    rows: &[RecordBatch],
) -> Option<(Offer, Vec<Message>)> {
    let exchange = recent.exchange()?;
    match encode(schema, rows) {
        Ok(messages) => Some((
            Offer {
                endpoint: exchange.endpoint.clone(),
                checksum: checksum(&messages),
            },
            messages,
        )),
        Err(error) => {
            tracing::debug!(%error, "rows not offered");
            None
        }
    }
}

/// The rows of `path` (of the table at `table_uri`, with `rows` rows when the log says)
/// fetched from the worker that offers them, if they arrive in time and match the offer.
pub(crate) async fn take(
    recent: &RecentFiles,
    table_uri: &str,
    path: &str,
    rows: Option<u64>,
    offer: &Offer,
) -> Option<Vec<RecordBatch>> {
    let exchange = recent.exchange()?;
    if offer.endpoint == exchange.endpoint {
        // Ours: it was in memory or is no longer anywhere.
        return None;
    }
    let ticket = Ticket {
        table: table_uri.to_string(),
        path: path.to_string(),
    };
    let fetched = tokio::time::timeout(
        exchange.timeout,
        exchange.fetcher.fetch(&offer.endpoint, &ticket),
    )
    .await;
    let messages = match fetched {
        Ok(Ok(messages)) => messages,
        Ok(Err(error)) => {
            recent.counters().failed();
            tracing::debug!(endpoint = %offer.endpoint, path, %error, "exchange fetch failed; reading the file");
            return None;
        }
        Err(_) => {
            recent.counters().failed();
            tracing::debug!(endpoint = %offer.endpoint, path, "exchange fetch timed out; reading the file");
            return None;
        }
    };
    let received = checksum(&messages);
    let batches = (received == offer.checksum)
        .then(|| decode(&messages).ok())
        .flatten()
        .filter(|batches| {
            let count: usize = batches.iter().map(RecordBatch::num_rows).sum();
            rows.is_none_or(|rows| rows == count as u64)
        });
    match batches {
        Some(batches) => {
            let bytes = messages.iter().map(|m| m.header.len() + m.body.len()).sum();
            recent.counters().exchanged(bytes);
            Some(batches)
        }
        None => {
            recent.counters().rejected();
            tracing::warn!(
                endpoint = %offer.endpoint,
                path,
                expected = %offer.checksum,
                %received,
                "exchanged rows do not match the commit's offer; reading the file"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::flagged_positions;

    fn rows() -> Vec<RecordBatch> {
        vec![
            flagged_positions(0, 0..100, 9),
            flagged_positions(0, 100..200, 9),
        ]
    }

    /// Rows round-trip through their messages; encoding is deterministic, and a changed
    /// byte anywhere changes the checksum.
    #[test]
    fn messages_round_trip_and_checksums_catch_changes() {
        let rows = rows();
        let schema = rows[0].schema();
        let messages = encode(&schema, &rows).unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(decode(&messages).unwrap(), rows);
        let sum = checksum(&messages);
        assert_eq!(checksum(&encode(&schema, &rows).unwrap()), sum);
        let mut forged = messages.clone();
        let mut body = forged[2].body.to_vec();
        let last = body.len() - 1;
        body[last] ^= 1;
        forged[2].body = body.into();
        assert_ne!(checksum(&forged), sum);
        // Other rows, same count: another checksum.
        let mut other = rows.clone();
        other.reverse();
        assert_ne!(checksum(&encode(&schema, &other).unwrap()), sum);
        assert!(decode(&messages[1..]).is_err(), "no schema first");
    }

    #[test]
    fn offers_live_in_tags_and_tickets_in_bytes() {
        let offer = Offer {
            endpoint: "10.0.0.7:50051".into(),
            checksum: "crc32:0badf00d:12".into(),
        };
        assert_eq!(Offer::from_tags(Some(&offer.tags())), Some(offer));
        assert_eq!(Offer::from_tags(Some(&HashMap::new())), None);
        assert_eq!(Offer::from_tags(None), None);
        let ticket = Ticket {
            table: "s3://lake/silver/events".into(),
            path: "day=2026-12-06/part-0.parquet".into(),
        };
        assert_eq!(Ticket::from_bytes(&ticket.to_bytes()).unwrap(), ticket);
        assert!(Ticket::from_bytes(b"nonsense").is_err());
    }
}
