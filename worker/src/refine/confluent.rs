//! Payloads in Confluent's wire format: a zero byte, the writer schema's id in the schema
//! registry (4 bytes, big-endian), then the record — in Avro's binary encoding
//! (`parse: { format: avro, registry: URL }`), or as JSON text written by a JSON Schema
//! serializer (`parse: { format: json, registry: URL }`).
//!
//! JSON records only lose their frame: the id must name a `JSON` schema the registry holds
//! (asked once per id), and the JSON is then decoded as any JSON payload, its declared
//! schema checking each field's type (the registry's JSON Schema itself is not evaluated).
//!
//! Before a refine pass decodes bronze rows, each Avro payload is decoded with the writer
//! schema its id names (fetched once per id from the registry's `GET /schemas/ids/{id}`,
//! then kept) and written back as the JSON object of its fields, so that everything after
//! — the declared schema read by field name, `_rescued_data` for fields not declared,
//! flattening, expectations, dedupe, merge — is what JSON payloads get. Records written
//! with different versions of a subject's schema (each its own id) land side by side: a
//! field a version lacks is NULL.
//!
//! A payload that does not decode (no magic byte, too short, a schema id the registry does
//! not know, a schema of another kind, a body that is truncated or has bytes left over)
//! keeps its bytes and is quarantined under `_parse` with the reason. A registry that
//! cannot be reached (or answers 5xx) fails the pass, which is retried: no record is
//! quarantined for the registry's sake.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};

use crate::{Result, WorkerError};

/// The column of a prepared bronze batch that holds why its payload did not decode.
pub const DECODE_ERROR: &str = "_decode_error";

/// Bytes before the Avro body: the magic byte and the schema id.
const PREFIX: usize = 5;

/// How long one registry request may take.
const REGISTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a schema id resolved to.
enum Writer {
    /// A decoder for records written with it (one record per flush).
    Decoder(Box<Decoder>, AvroSchema),
    /// A JSON Schema: records written with it are JSON text.
    Json,
    /// Why records naming it cannot be read.
    Unreadable(String),
}

/// Which serializer framed the payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Avro binary records.
    Avro,
    /// JSON text (a JSON Schema serializer).
    Json,
}

impl Framing {
    /// How the registry's `schemaType` names its schemas (absent means Avro).
    fn schema_type(self) -> &'static str {
        match self {
            Framing::Avro => "AVRO",
            Framing::Json => "JSON",
        }
    }

    /// How reasons name the format.
    fn name(self) -> &'static str {
        match self {
            Framing::Avro => "avro",
            Framing::Json => "json",
        }
    }
}

/// One framed payload, unframed.
enum Unframed {
    /// An Avro record (a one-row batch) and its writer schema id.
    Record(u32, RecordBatch),
    /// JSON text.
    Json(Vec<u8>),
}

/// Turns Confluent-framed payloads into JSON ones (see the module docs). One per refine
/// task: it keeps the writer schemas it fetched.
pub struct Confluent {
    framing: Framing,
    registry: String,
    client: reqwest::Client,
    writers: HashMap<u32, Writer>,
}

impl Confluent {
    /// Reads writer schemas of `framing` from the registry at `registry` (an `http://` URL).
    pub fn new(framing: Framing, registry: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(REGISTRY_TIMEOUT)
            .build()
            .map_err(|e| registry_error(registry, format!("HTTP client: {e}")))?;
        Ok(Self {
            framing,
            registry: registry.trim_end_matches('/').to_string(),
            client,
            writers: HashMap::new(),
        })
    }

    /// `batch` (bronze-shaped: `payload`, `error`, ...) with each payload replaced by the
    /// JSON object of its record (an Avro record's, or the unframed JSON text), and a [`DECODE_ERROR`] column saying why a payload
    /// did not decode (its bytes kept). Rows already in error, and missing payloads, are
    /// left as they are.
    pub async fn prepare(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let payload = super::column::<BinaryArray>(batch, "payload")?;
        let error = batch
            .column_by_name("error")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let rows = batch.num_rows();
        let mut json: Vec<Option<Vec<u8>>> = vec![None; rows];
        let mut failed: Vec<Option<String>> = vec![None; rows];
        // Decoded records, by writer schema id: (row, one-row batch).
        let mut decoded: HashMap<u32, Vec<(usize, RecordBatch)>> = HashMap::new();
        for (row, failure) in failed.iter_mut().enumerate() {
            if payload.is_null(row) || error.is_some_and(|e| e.is_valid(row)) {
                continue;
            }
            match self.decode(payload.value(row)).await? {
                Ok(Unframed::Record(id, record)) => {
                    decoded.entry(id).or_default().push((row, record))
                }
                Ok(Unframed::Json(text)) => json[row] = Some(text),
                Err(reason) => *failure = Some(reason),
            }
        }
        for records in decoded.into_values() {
            let schema = records[0].1.schema();
            let batches: Vec<&RecordBatch> = records.iter().map(|(_, b)| b).collect();
            let all = arrow::compute::concat_batches(&schema, batches)?;
            let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
            writer.write(&all)?;
            writer.finish()?;
            let text = writer.into_inner();
            let lines = text.split(|b| *b == b'\n').filter(|l| !l.is_empty());
            for ((row, _), line) in records.iter().zip(lines) {
                json[*row] = Some(line.to_vec());
            }
        }
        let payloads: BinaryArray = (0..rows)
            .map(|row| match &json[row] {
                Some(json) => Some(json.as_slice()),
                None if payload.is_valid(row) => Some(payload.value(row)),
                None => None,
            })
            .collect();
        let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let at = batch.schema().index_of("payload")?;
        columns[at] = Arc::new(payloads);
        fields.push(Arc::new(Field::new(DECODE_ERROR, DataType::Utf8, true)));
        columns.push(Arc::new(StringArray::from(failed)));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(
                fields,
                batch.schema().metadata().clone(),
            )),
            columns,
        )?)
    }

    /// One payload unframed, or why it does not decode. Fails only when the registry
    /// cannot be asked.
    async fn decode(&mut self, payload: &[u8]) -> Result<std::result::Result<Unframed, String>> {
        if payload.len() < PREFIX || payload[0] != 0 {
            return Ok(Err(format!(
                "{}: not in the Confluent wire format (a zero byte, a 4-byte schema id, \
                 the record): {} byte(s) starting {:02x?}",
                self.framing.name(),
                payload.len(),
                &payload[..payload.len().min(PREFIX)]
            )));
        }
        let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
        if !self.writers.contains_key(&id) {
            let writer = self.writer(id).await?;
            self.writers.insert(id, writer);
        }
        let (decoder, schema) = match self.writers.get_mut(&id) {
            Some(Writer::Decoder(decoder, schema)) => (decoder, schema),
            Some(Writer::Json) => return Ok(Ok(Unframed::Json(payload[PREFIX..].to_vec()))),
            Some(Writer::Unreadable(reason)) => return Ok(Err(reason.clone())),
            None => {
                return Ok(Err(format!(
                    "{}: schema id {id} was not resolved",
                    self.framing.name()
                )));
            }
        };
        let outcome = match decoder.decode(payload) {
            Ok(consumed) if consumed == payload.len() && decoder.batch_is_full() => {
                match decoder.flush() {
                    Ok(Some(record)) => Ok(Unframed::Record(id, record)),
                    Ok(None) => Err(format!("avro: schema id {id}: no record decoded")),
                    Err(e) => Err(format!("avro: schema id {id}: {e}")),
                }
            }
            Ok(consumed) if consumed < payload.len() && decoder.batch_is_full() => Err(format!(
                "avro: schema id {id}: {} byte(s) left after the record",
                payload.len() - consumed
            )),
            Ok(_) => Err(format!(
                "avro: schema id {id}: the record is truncated ({} byte(s) of body)",
                payload.len() - PREFIX
            )),
            Err(e) => Err(format!(
                "avro: schema id {id}: the body does not decode ({} byte(s)): {e}",
                payload.len() - PREFIX
            )),
        };
        if outcome.is_err() {
            // A decoder that failed midway may hold part of a record: start afresh.
            let schema = schema.clone();
            self.writers.insert(id, decoder_for(id, schema));
        }
        Ok(outcome)
    }

    /// Asks the registry for schema `id`.
    async fn writer(&self, id: u32) -> Result<Writer> {
        let url = format!("{}/schemas/ids/{id}", self.registry);
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| registry_error(&self.registry, format!("GET {url}: {e}")))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(registry_error(
                &self.registry,
                format!("GET {url}: {status}"),
            ));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| registry_error(&self.registry, format!("GET {url}: {e}")))?;
        if !status.is_success() {
            return Ok(Writer::Unreadable(format!(
                "{}: schema id {id} is not in the registry ({status}: {})",
                self.framing.name(),
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let answer: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(answer) => answer,
            Err(e) => {
                return Err(registry_error(
                    &self.registry,
                    format!("GET {url}: not JSON: {e}"),
                ));
            }
        };
        let kind = answer["schemaType"].as_str().unwrap_or("AVRO");
        if kind != self.framing.schema_type() {
            return Ok(Writer::Unreadable(format!(
                "{}: schema id {id} is a {kind} schema, not {}",
                self.framing.name(),
                self.framing.schema_type()
            )));
        }
        if self.framing == Framing::Json {
            return Ok(Writer::Json);
        }
        let Some(schema) = answer["schema"].as_str() else {
            return Err(registry_error(
                &self.registry,
                format!("GET {url}: no `schema` in the answer"),
            ));
        };
        Ok(decoder_for(id, AvroSchema::new(schema.to_string())))
    }
}

/// A one-record decoder for records written with `schema` under `id`, or why there is
/// none (a schema Arrow's Avro reader does not take).
fn decoder_for(id: u32, schema: AvroSchema) -> Writer {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    let built = store
        .set(Fingerprint::Id(id), schema.clone())
        .map_err(|e| e.to_string())
        .and_then(|_| {
            ReaderBuilder::new()
                .with_writer_schema_store(store)
                .with_batch_size(1)
                .build_decoder()
                .map_err(|e| e.to_string())
        });
    match built {
        Ok(decoder) => Writer::Decoder(Box::new(decoder), schema),
        Err(e) => Writer::Unreadable(format!("avro: schema id {id} cannot be read: {e}")),
    }
}

/// A registry that cannot be asked now: retried.
fn registry_error(registry: &str, message: String) -> WorkerError {
    WorkerError::Source {
        source_name: format!("schema registry {registry}"),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"id","type":"long"},{"name":"name","type":["null","string"]}]}"#;

    impl Confluent {
        /// The same without a registry: `schemas` are what it would answer.
        fn with_schemas(schemas: &[(u32, &str)]) -> Self {
            let mut avro = Self::new(Framing::Avro, "http://127.0.0.1:9").unwrap();
            for (id, schema) in schemas {
                avro.writers
                    .insert(*id, decoder_for(*id, AvroSchema::new(schema.to_string())));
            }
            avro
        }
    }

    /// `{id, name}` framed under schema `schema_id`, encoded by hand (zigzag varints).
    fn framed(schema_id: u32, id: i64, name: Option<&str>) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&schema_id.to_be_bytes());
        let zigzag = |out: &mut Vec<u8>, n: i64| {
            let mut z = ((n << 1) ^ (n >> 63)) as u64;
            while z >= 0x80 {
                out.push((z as u8 & 0x7f) | 0x80);
                z >>= 7;
            }
            out.push(z as u8);
        };
        zigzag(&mut out, id);
        match name {
            None => zigzag(&mut out, 0),
            Some(name) => {
                zigzag(&mut out, 1);
                zigzag(&mut out, name.len() as i64);
                out.extend_from_slice(name.as_bytes());
            }
        }
        out
    }

    fn bronze(payloads: Vec<Option<Vec<u8>>>, errors: Vec<Option<&str>>) -> RecordBatch {
        let payloads: BinaryArray = payloads.iter().map(|p| p.as_deref()).collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("payload", DataType::Binary, true),
                Field::new("error", DataType::Utf8, true),
            ])),
            vec![Arc::new(payloads), Arc::new(StringArray::from(errors))],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_payload_becomes_its_record_as_json_or_says_why_not() {
        let mut avro = Confluent::with_schemas(&[(7, SCHEMA), (8, r#"{"type":"enum"}"#)]);
        let good = framed(7, 42, Some("ada"));
        let mut trailing = framed(7, 1, None);
        trailing.push(0);
        let mut truncated = framed(7, 3, Some("grace"));
        truncated.truncate(truncated.len() - 2);
        let batch = bronze(
            vec![
                Some(good.clone()),
                Some(b"{\"id\":1}".to_vec()),
                Some(trailing),
                Some(truncated),
                Some(framed(8, 1, None)),
                None,
                Some(b"kept as bronze flagged it".to_vec()),
                Some(framed(7, -5, None)),
            ],
            vec![None, None, None, None, None, None, Some("oversized"), None],
        );
        let prepared = avro.prepare(&batch).await.unwrap();
        let payload = super::super::column::<BinaryArray>(&prepared, "payload").unwrap();
        let why = prepared
            .column_by_name(DECODE_ERROR)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let json = |row: usize| -> serde_json::Value {
            serde_json::from_slice(payload.value(row)).unwrap()
        };
        assert_eq!(json(0), serde_json::json!({"id": 42, "name": "ada"}));
        assert_eq!(json(7), serde_json::json!({"id": -5}), "NULL left out");
        for (row, reason) in [
            (1, "not in the Confluent wire format"),
            (2, "1 byte(s) left after the record"),
            (3, "truncated"),
            (4, "schema id 8 cannot be read"),
        ] {
            assert!(
                why.value(row).contains(reason),
                "row {row}: {}",
                why.value(row)
            );
            assert_eq!(
                payload.value(row),
                batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .unwrap()
                    .value(row),
                "row {row} keeps its bytes"
            );
        }
        // Missing payloads and rows bronze flagged are left to refine as they were.
        assert!(payload.is_null(5) && why.is_null(5));
        assert_eq!(payload.value(6), b"kept as bronze flagged it");
        assert!(why.is_null(6));
        assert!(why.is_null(0) && why.is_null(7));
        // A decoder that failed midway starts afresh: the next record still decodes.
        let again = avro
            .prepare(&bronze(vec![Some(good)], vec![None]))
            .await
            .unwrap();
        let payload = super::super::column::<BinaryArray>(&again, "payload").unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(payload.value(0)).unwrap(),
            serde_json::json!({"id": 42, "name": "ada"})
        );
    }

    #[tokio::test]
    async fn json_records_lose_their_frame_when_their_schema_is_json() {
        let mut json = Confluent::new(Framing::Json, "http://127.0.0.1:9").unwrap();
        json.writers.insert(3, Writer::Json);
        json.writers.insert(
            4,
            Writer::Unreadable("json: schema id 4 is a AVRO schema, not JSON".into()),
        );
        let frame = |id: u32, text: &str| {
            let mut out = vec![0];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
            out
        };
        let batch = bronze(
            vec![
                Some(frame(3, r#"{"id":1,"name":"ada"}"#)),
                Some(br#"{"id":2}"#.to_vec()),
                Some(frame(4, r#"{"id":3}"#)),
            ],
            vec![None, None, None],
        );
        let prepared = json.prepare(&batch).await.unwrap();
        let payload = prepared
            .column_by_name("payload")
            .unwrap()
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap();
        let why = prepared
            .column_by_name(DECODE_ERROR)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(payload.value(0), br#"{"id":1,"name":"ada"}"#);
        assert!(why.is_null(0));
        assert!(
            why.value(1)
                .starts_with("json: not in the Confluent wire format"),
            "{}",
            why.value(1)
        );
        assert!(why.value(2).contains("not JSON"), "{}", why.value(2));
    }
}
