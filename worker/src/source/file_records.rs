//! The records of one file of a files source, by format: NDJSON lines, CSV rows, Parquet
//! rows and Avro records, from plain, gzip (`.gz`) or zstd (`.zst`) files.
//!
//! A record's offset is its index in the file: the line (NDJSON; blank lines hold no
//! record but keep their number), the row after the header (CSV), the row (Parquet, Avro).
//! The same file always yields the same records at the same offsets, which is what makes
//! its bronze txn version (the last offset committed) exactly-once. CSV, Parquet and Avro
//! rows become JSON objects — CSV's of the row's text (an empty field null, read with
//! `parse: { format: csv }`), Parquet's and Avro's of their typed values (Avro read with
//! the schema its header embeds) — so silver decodes every format alike.
//! A CSV row that cannot be read (a field count that differs from the header's, bad
//! UTF-8) is a record with an error: it lands in bronze flagged and is quarantined.

use std::io::Read as _;

use serde_json::{Map, Value};
use smelter_common::spec::{FileFormat, FilesSpec};

/// One record of a file: its payload, or why it could not be read.
pub type FileRecord = Result<Vec<u8>, String>;

/// The records of the file `name` holding `bytes` (see the module docs). A file that cannot
/// be read as a whole (a broken compression stream, a file that is not Parquet) is one
/// record, at offset 0, with the error: flagged in bronze and quarantined, not skipped.
pub fn file_records(name: &str, bytes: Vec<u8>, spec: &FilesSpec) -> Vec<FileRecord> {
    records(name, bytes, spec).unwrap_or_else(|e| vec![Err(format!("file {name}: {e}"))])
}

/// [`file_records`], or the error that makes the whole file unreadable.
pub fn records(name: &str, bytes: Vec<u8>, spec: &FilesSpec) -> Result<Vec<FileRecord>, String> {
    let bytes = decompress(name, bytes)?;
    match spec.format {
        FileFormat::Ndjson => Ok(lines(bytes)),
        FileFormat::Csv => csv_rows(&bytes, spec),
        FileFormat::Parquet => parquet_rows(bytes),
        FileFormat::Avro => avro_rows(bytes),
    }
}

/// The offset of the last record of `records` that holds something (blank NDJSON lines
/// hold nothing), if any.
pub fn last_offset(records: &[FileRecord]) -> Option<i64> {
    records.iter().rposition(|r| !is_blank(r)).map(|i| i as i64)
}

/// Whether a record holds nothing (a blank line).
pub fn is_blank(record: &FileRecord) -> bool {
    record
        .as_ref()
        .is_ok_and(|line| line.iter().all(u8::is_ascii_whitespace))
}

fn decompress(name: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {e}"))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(bytes.as_slice())
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| format!("zstd: {e}"))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

fn lines(bytes: Vec<u8>) -> Vec<FileRecord> {
    let mut lines: Vec<FileRecord> = bytes
        .split(|b| *b == b'\n')
        .map(|line| Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec()))
        .collect();
    if lines
        .last()
        .is_some_and(|l| l.as_ref().is_ok_and(Vec::is_empty))
    {
        lines.pop();
    }
    lines
}

fn csv_rows(bytes: &[u8], spec: &FilesSpec) -> Result<Vec<FileRecord>, String> {
    let single_byte = |c: char, what: &str| {
        u8::try_from(c)
            .ok()
            .filter(u8::is_ascii)
            .ok_or_else(|| format!("csv.{what} must be one ASCII character, not {c:?}"))
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(single_byte(spec.csv.delimiter, "delimiter")?)
        .quote(single_byte(spec.csv.quote, "quote")?)
        .from_reader(bytes);
    let mut rows = reader.byte_records();
    let header: Option<Vec<String>> = if spec.csv.header {
        match rows.next() {
            None => return Ok(Vec::new()),
            Some(row) => {
                let row = row.map_err(|e| format!("header: {e}"))?;
                Some(
                    row.iter()
                        .map(|f| String::from_utf8_lossy(f).trim().to_string())
                        .collect(),
                )
            }
        }
    } else {
        None
    };
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                out.push(Err(format!("row {i}: {e}")));
                continue;
            }
        };
        if let Some(names) = &header
            && row.len() != names.len()
        {
            out.push(Err(format!(
                "row {i}: {} fields, the header names {}",
                row.len(),
                names.len()
            )));
            continue;
        }
        let mut object = Map::with_capacity(row.len());
        let mut bad = None;
        for (j, field) in row.iter().enumerate() {
            let name = match &header {
                Some(names) => names[j].clone(),
                None => format!("c{j}"),
            };
            let value = match std::str::from_utf8(field) {
                Ok("") => Value::Null,
                Ok(text) => Value::String(text.to_string()),
                Err(_) => {
                    bad = Some(format!("row {i}: field {name} is not UTF-8"));
                    break;
                }
            };
            object.insert(name, value);
        }
        out.push(match bad {
            Some(reason) => Err(reason),
            None => Ok(Value::Object(object).to_string().into_bytes()),
        });
    }
    Ok(out)
}

fn parquet_rows(bytes: Vec<u8>) -> Result<Vec<FileRecord>, String> {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| format!("parquet: {e}"))?;
    json_rows(reader.map(|b| b.map_err(|e| format!("parquet: {e}"))))
}

/// The rows of an Avro object container file, read with the schema its header embeds
/// (block codecs null, deflate, snappy and zstd).
fn avro_rows(bytes: Vec<u8>) -> Result<Vec<FileRecord>, String> {
    let reader = arrow_avro::reader::ReaderBuilder::new()
        .build(std::io::Cursor::new(bytes))
        .map_err(|e| format!("avro: {e}"))?;
    json_rows(reader.map(|b| b.map_err(|e| format!("avro: {e}"))))
}

/// Each row of `batches` as a JSON object of its typed values (nulls left out).
fn json_rows(
    batches: impl Iterator<Item = Result<arrow::record_batch::RecordBatch, String>>,
) -> Result<Vec<FileRecord>, String> {
    let mut out = Vec::new();
    for batch in batches {
        let batch = batch?;
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer
            .write(&batch)
            .and_then(|()| writer.finish())
            .map_err(|e| format!("rows as JSON: {e}"))?;
        out.extend(lines(writer.into_inner()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FilesSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn matches(name: &str, spec: &FilesSpec) -> bool {
        spec.selector().unwrap().selects(name)
    }

    fn texts(records: &[FileRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| match r {
                Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Err(e) => format!("ERROR {e}"),
            })
            .collect()
    }

    #[test]
    fn csv_rows_become_objects_of_text_with_quoting_and_errors() {
        let spec = spec("{ path: /x, format: csv, csv: { delimiter: ';' } }");
        let file =
            "id;name;note\n1;\"Doe; Jane\";\"said \"\"hi\"\"\nthen left\"\n2;Bob;\n3;short\n";
        let rows = records("a.csv", file.as_bytes().to_vec(), &spec).unwrap();
        assert_eq!(
            texts(&rows),
            vec![
                r#"{"id":"1","name":"Doe; Jane","note":"said \"hi\"\nthen left"}"#.to_string(),
                r#"{"id":"2","name":"Bob","note":null}"#.to_string(),
                "ERROR row 2: 2 fields, the header names 3".to_string(),
            ]
        );
        assert_eq!(last_offset(&rows), Some(2));
        let headless = spec_no_header();
        let rows = records("b.csv", b"x,y\n".to_vec(), &headless).unwrap();
        assert_eq!(texts(&rows), vec![r#"{"c0":"x","c1":"y"}"#]);
    }

    fn spec_no_header() -> FilesSpec {
        spec("{ path: /x, format: csv, csv: { header: false } }")
    }

    #[test]
    fn compressed_ndjson_reads_as_plain_and_names_match_with_their_compression() {
        use std::io::Write as _;
        let plain = b"{\"a\":1}\r\n\n{\"a\":2}\n".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(plain.as_slice(), 3).unwrap();
        let spec = spec("{ path: /x }");
        for (name, bytes) in [
            ("f.ndjson", plain.clone()),
            ("f.ndjson.gz", gz),
            ("f.ndjson.zst", zst),
        ] {
            assert!(matches(name, &spec), "{name}");
            let rows = records(name, bytes, &spec).unwrap();
            assert_eq!(texts(&rows), vec![r#"{"a":1}"#, "", r#"{"a":2}"#], "{name}");
            assert_eq!(last_offset(&rows), Some(2));
        }
        assert!(!matches(".f.ndjson", &spec) && !matches("f.csv", &spec));
        let broken = file_records("f.ndjson.gz", b"not gzip".to_vec(), &spec);
        assert_eq!(broken.len(), 1);
        assert!(
            broken[0]
                .as_ref()
                .unwrap_err()
                .starts_with("file f.ndjson.gz: gzip:")
        );
    }

    #[test]
    fn parquet_rows_become_typed_objects() {
        use arrow::array::{ArrayRef, Int64Array, StringArray};
        use std::sync::Arc;
        let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut file = Vec::new();
        let mut writer =
            deltalake::parquet::arrow::ArrowWriter::try_new(&mut file, batch.schema(), None)
                .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let spec = spec("{ path: /x, format: parquet }");
        assert!(matches("part-0.parquet", &spec));
        let rows = records("part-0.parquet", file, &spec).unwrap();
        assert_eq!(texts(&rows), vec![r#"{"id":"a","n":1}"#, r#"{"id":"b"}"#]);
        assert!(records("x.parquet", b"nope".to_vec(), &spec).is_err());
    }

    /// An Avro `long` (and length): zigzag, then 7 bits per byte, low first.
    fn long(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    /// An Avro object container file written byte by byte from the specification (not
    /// by the reader's crate): `records` are already binary-encoded; `codec` is `null` or
    /// `deflate`.
    fn avro_file(schema: &str, codec: &str, records: &[Vec<u8>]) -> Vec<u8> {
        use std::io::Write as _;
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            long(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        let sync = *b"0123456789abcdef";
        let mut file = b"Obj\x01".to_vec();
        long(&mut file, 2);
        bytes(&mut file, b"avro.schema");
        bytes(&mut file, schema.as_bytes());
        bytes(&mut file, b"avro.codec");
        bytes(&mut file, codec.as_bytes());
        long(&mut file, 0);
        file.extend_from_slice(&sync);
        // Two blocks, to cross a block boundary.
        for block in records.chunks(2) {
            let mut data: Vec<u8> = block.concat();
            if codec == "deflate" {
                let mut d =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                d.write_all(&data).unwrap();
                data = d.finish().unwrap();
            }
            long(&mut file, block.len() as i64);
            long(&mut file, data.len() as i64);
            file.extend_from_slice(&data);
            file.extend_from_slice(&sync);
        }
        file
    }

    /// One `Order` record in Avro's binary encoding.
    fn order(
        id: &str,
        qty: i64,
        price: f64,
        paid: bool,
        coupon: Option<&str>,
        tags: &[&str],
    ) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            long(out, s.len() as i64);
            out.extend_from_slice(s.as_bytes());
        }
        let mut out = Vec::new();
        string(&mut out, id);
        long(&mut out, qty);
        out.extend_from_slice(&price.to_le_bytes());
        out.push(u8::from(paid));
        match coupon {
            None => long(&mut out, 0),
            Some(c) => {
                long(&mut out, 1);
                string(&mut out, c);
            }
        }
        string(&mut out, &format!("c-{id}")); // customer.id
        if !tags.is_empty() {
            long(&mut out, tags.len() as i64);
            for t in tags {
                string(&mut out, t);
            }
        }
        long(&mut out, 0);
        out
    }

    #[test]
    fn avro_records_become_typed_objects_with_the_embedded_schema() {
        let schema = r#"{"type":"record","name":"Order","fields":[
            {"name":"id","type":"string"},{"name":"qty","type":"long"},
            {"name":"price","type":"double"},{"name":"paid","type":"boolean"},
            {"name":"coupon","type":["null","string"]},
            {"name":"customer","type":{"type":"record","name":"Customer","fields":[{"name":"id","type":"string"}]}},
            {"name":"tags","type":{"type":"array","items":"string"}}]}"#;
        let orders = vec![
            order("a1", 3, 2.5, true, Some("X"), &["t1", "t2"]),
            order("a2", -70_000, 0.1, false, None, &[]),
            order("a3", 1 << 40, 1e-3, true, None, &["t3"]),
        ];
        let spec = spec("{ path: /x, format: avro }");
        assert!(matches("part-0.avro", &spec) && matches("part-0.avro.zst", &spec));
        for codec in ["null", "deflate"] {
            let rows = records("part-0.avro", avro_file(schema, codec, &orders), &spec).unwrap();
            assert_eq!(
                texts(&rows),
                vec![
                    r#"{"id":"a1","qty":3,"price":2.5,"paid":true,"coupon":"X","customer":{"id":"c-a1"},"tags":["t1","t2"]}"#,
                    r#"{"id":"a2","qty":-70000,"price":0.1,"paid":false,"customer":{"id":"c-a2"},"tags":[]}"#,
                    r#"{"id":"a3","qty":1099511627776,"price":0.001,"paid":true,"customer":{"id":"c-a3"},"tags":["t3"]}"#,
                ],
                "{codec}"
            );
        }
        let broken = file_records("x.avro", b"Obj\x01 truncated".to_vec(), &spec);
        assert_eq!(broken.len(), 1);
        assert!(
            broken[0]
                .as_ref()
                .unwrap_err()
                .starts_with("file x.avro: avro:"),
            "{broken:?}"
        );
    }
}
