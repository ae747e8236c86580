//! What reading each file format costs: `records` seeded rows (an id, a user, a country,
//! a price in cents as a decimal, a time) written as NDJSON, CSV, Parquet and Avro files,
//! then read the way a files source and refine read them — the file's records
//! (`source::file_records`: lines, or rows turned into JSON objects) decoded into silver's
//! declared columns (`Refiner::decode_payloads`) — and, beside it, by the bare Arrow reader
//! of the format (arrow-json, arrow-csv, parquet, arrow-avro) into batches of the same
//! schema. Each on this thread, one after the other: CPU is this thread's counter.
//!
//! The ratio is the price of reading every format through JSON records: NDJSON is what
//! refine decodes anyway, CSV rows are JSON objects of their text, and Parquet's and Avro's
//! typed values are written out as JSON and parsed back.
//!
//! Checked: both ways read every row of every format.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Serialize;
use smelter_common::spec::{FilesSpec, PipelineSpec};
use smelter_worker::refine::Refiner;
use smelter_worker::source::file_records::records;

use super::measure::thread_cpu_seconds;
use crate::{CliError, Result};

/// Rows decoded by the bare readers at a time.
const BATCH_ROWS: usize = 8_192;

/// The figures of one format.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FormatRun {
    /// The file's size, bytes.
    pub file_bytes: u64,
    /// Smelter's path (file records, then silver's decoding): rows per CPU-second.
    pub smelter_rows_per_cpu_second: f64,
    /// The bare Arrow reader of the format: rows per CPU-second.
    pub bare_rows_per_cpu_second: f64,
    /// Smelter's rows per CPU-second over the bare reader's.
    pub smelter_to_bare: f64,
}

/// The figures of every format.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Formats {
    /// Rows per file.
    pub records: u64,
    /// NDJSON (one object per line).
    pub ndjson: FormatRun,
    /// CSV with a header.
    pub csv: FormatRun,
    /// Parquet (Smelter's writer settings are not involved: arrow's defaults).
    pub parquet: FormatRun,
    /// Avro object container file (no block codec).
    pub avro: FormatRun,
}

fn failed(message: impl std::fmt::Display) -> CliError {
    CliError::Bench(format!("formats: {message}"))
}

/// The rows, typed as silver declares them.
fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("price", DataType::Decimal128(10, 2), true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
}

fn rows(n: u64) -> Result<RecordBatch> {
    let countries = ["fr", "de", "us", "jp", "br"];
    let n = n as i64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..n)),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("user-{}", (i * 7919) % 50_000)),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| countries[(i % 5) as usize]),
        )),
        Arc::new(
            arrow::array::Decimal128Array::from_iter_values(
                (0..n).map(|i| i128::from((i * 37) % 100_000 + 1)),
            )
            .with_precision_and_scale(10, 2)?,
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                (0..n).map(|i| 1_761_955_200_000_000 + i * 1_000),
            )
            .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// `batch` as each format's file.
fn files(batch: &RecordBatch) -> Result<[(&'static str, Vec<u8>); 4]> {
    let mut ndjson = arrow::json::LineDelimitedWriter::new(Vec::new());
    ndjson.write(batch)?;
    ndjson.finish()?;
    let mut csv = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(Vec::new());
    csv.write(batch)?;
    let mut parquet = Vec::new();
    {
        let mut writer =
            deltalake::parquet::arrow::ArrowWriter::try_new(&mut parquet, batch.schema(), None)
                .map_err(|e| failed(format!("parquet: {e}")))?;
        writer
            .write(batch)
            .map_err(|e| failed(format!("parquet: {e}")))?;
        writer
            .close()
            .map_err(|e| failed(format!("parquet: {e}")))?;
    }
    let mut avro = arrow_avro::writer::AvroWriter::new(Vec::new(), batch.schema().as_ref().clone())
        .map_err(|e| failed(format!("avro: {e}")))?;
    avro.write(batch)
        .map_err(|e| failed(format!("avro: {e}")))?;
    avro.finish().map_err(|e| failed(format!("avro: {e}")))?;
    Ok([
        ("ndjson", ndjson.into_inner()),
        ("csv", csv.into_inner()),
        ("parquet", parquet),
        ("avro", avro.into_inner()),
    ])
}

/// Silver's refiner for files of `format`.
fn refiner(format: &str) -> Result<Refiner> {
    let parse = if format == "csv" { "csv" } else { "json" };
    let text = format!(
        "pipeline: formats\nsources:\n  s: {{ files: {{ path: /nonexistent, format: {format} }} }}\n\
         tables:\n  bronze.raw: {{ from: s }}\n  silver.rows:\n    from: bronze.raw\n    \
         parse: {{ format: {parse}, schema: {{ id: long, user_id: string, country: string, \
         price: \"decimal(10,2)\", ts: timestamp }} }}\n"
    );
    let spec = PipelineSpec::parse(&text, "formats.yaml").map_err(failed)?;
    Ok(Refiner::new(
        "silver.rows",
        &spec.tables["silver.rows"],
        "formats.yaml",
    )?)
}

/// Smelter's path over one file: its rows decoded.
fn smelter_read(format: &str, bytes: Vec<u8>) -> Result<usize> {
    let spec: FilesSpec =
        serde_yaml::from_str(&format!("{{ path: /nonexistent, format: {format} }}"))
            .map_err(failed)?;
    let name = format!("rows.{format}");
    let records = records(&name, bytes, &spec).map_err(failed)?;
    let payloads: Vec<&[u8]> = records
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(Vec::as_slice)
        .filter(|p| !p.iter().all(u8::is_ascii_whitespace))
        .collect();
    let decoded = refiner(format)?.decode_payloads(payloads)?;
    Ok(decoded.first().map_or(0, |c| c.len()))
}

/// The bare Arrow reader of `format` over one file: its rows read.
fn bare_read(format: &str, bytes: Vec<u8>) -> Result<usize> {
    let mut rows = 0;
    match format {
        "ndjson" => {
            let reader = arrow::json::ReaderBuilder::new(schema())
                .with_batch_size(BATCH_ROWS)
                .build(std::io::Cursor::new(bytes))?;
            for batch in reader {
                rows += batch?.num_rows();
            }
        }
        "csv" => {
            let reader = arrow::csv::ReaderBuilder::new(schema())
                .with_header(true)
                .with_batch_size(BATCH_ROWS)
                .build(std::io::Cursor::new(bytes))?;
            for batch in reader {
                rows += batch?.num_rows();
            }
        }
        "parquet" => {
            let reader =
                deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    bytes::Bytes::from(bytes),
                )
                .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
                .map_err(|e| failed(format!("parquet: {e}")))?;
            for batch in reader {
                rows += batch?.num_rows();
            }
        }
        _ => {
            let reader = arrow_avro::reader::ReaderBuilder::new()
                .with_batch_size(BATCH_ROWS)
                .build(std::io::Cursor::new(bytes))?;
            for batch in reader {
                rows += batch?.num_rows();
            }
        }
    }
    Ok(rows)
}

/// Rows per CPU-second of `read` over `bytes`, checking it read `records` rows.
fn timed(
    what: &str,
    records: u64,
    bytes: Vec<u8>,
    read: impl FnOnce(Vec<u8>) -> Result<usize>,
) -> Result<f64> {
    let cpu = thread_cpu_seconds();
    let rows = read(bytes)?;
    let spent = (thread_cpu_seconds() - cpu).max(1e-9);
    if rows as u64 != records {
        return Err(failed(format!("{what} read {rows} rows of {records}")));
    }
    Ok(records as f64 / spent)
}

/// Measures every format over `records` rows (see the module docs).
pub fn measure(records: u64) -> Result<Formats> {
    let batch = rows(records)?;
    let mut out = Formats {
        records,
        ..Formats::default()
    };
    for (format, bytes) in files(&batch)? {
        let smelter = timed(
            &format!("Smelter's {format} path"),
            records,
            bytes.clone(),
            |b| smelter_read(format, b),
        )?;
        let bare = timed(
            &format!("the bare {format} reader"),
            records,
            bytes.clone(),
            |b| bare_read(format, b),
        )?;
        let run = FormatRun {
            file_bytes: bytes.len() as u64,
            smelter_rows_per_cpu_second: smelter,
            bare_rows_per_cpu_second: bare,
            smelter_to_bare: smelter / bare.max(1e-9),
        };
        match format {
            "ndjson" => out.ndjson = run,
            "csv" => out.csv = run,
            "parquet" => out.parquet = run,
            _ => out.avro = run,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every format is read whole both ways, and the figures say so.
    #[test]
    fn every_format_is_read_whole_both_ways() {
        let formats = measure(3_000).unwrap();
        for run in [
            &formats.ndjson,
            &formats.csv,
            &formats.parquet,
            &formats.avro,
        ] {
            assert!(run.file_bytes > 0, "{formats:?}");
            assert!(run.smelter_rows_per_cpu_second > 0.0, "{formats:?}");
            assert!(run.bare_rows_per_cpu_second > 0.0, "{formats:?}");
            assert!(run.smelter_to_bare.is_finite(), "{formats:?}");
        }
    }

    /// A reader that loses a row fails the figures instead of reporting them.
    #[test]
    fn a_short_read_is_an_error() {
        let error = timed("a lossy reader", 10, vec![], |_| Ok(9)).unwrap_err();
        assert!(error.to_string().contains("read 9 rows of 10"), "{error}");
    }
}
