//! The clickstream workload as pipeline files: the demo pipeline with its generator made
//! bounded (and paced or not), or reading a Kafka topic instead, or cut down to its first
//! layers. Used by the benchmark and by the test suites, so both run the same pipeline.

use smelter_common::spec::{GeneratorSpec, PipelineSpec, SourceSpec};

use crate::commands::DEMO_PIPELINE;
use crate::{CliError, Result};

const DEMO_RATE: &str = "      rate: 2000            # events per second over all partitions\n";

/// The demo with `count` events over `partitions` partitions, at `rate` events per second
/// (unpaced if `None`).
pub fn bounded_demo(count: u64, partitions: u32, rate: Option<u64>) -> String {
    let rate = rate.map_or("null".to_string(), |r| r.to_string());
    DEMO_PIPELINE
        .replace(
            DEMO_RATE,
            &format!("      rate: {rate}\n      count: {count}\n"),
        )
        .replace("partitions: 4", &format!("partitions: {partitions}"))
}

/// The demo reading `topic` on `brokers` instead of its generator.
pub fn kafka_demo(brokers: &str, topic: &str) -> String {
    with_source(&format!(
        "kafka:\n      brokers: \"{brokers}\"\n      topic: {topic}\n"
    ))
}

/// The demo reading the NDJSON files under `path` with its files source instead of its
/// generator.
pub fn files_demo(path: &std::path::Path) -> String {
    with_source(&format!("files: {{ path: \"{}\" }}\n", path.display()))
}

/// The demo with its `events` source declared as `source` (YAML at the source's indent).
fn with_source(source: &str) -> String {
    let start = DEMO_PIPELINE
        .find("sources:\n")
        .expect("the demo declares sources");
    let end = DEMO_PIPELINE
        .find("\ntables:")
        .expect("the demo declares tables");
    format!(
        "{}sources:\n  events:\n    {source}{}",
        &DEMO_PIPELINE[..start],
        &DEMO_PIPELINE[end..]
    )
}

/// The demo's generator settings, unbounded and unpaced, over `partitions` partitions:
/// what gets produced into Kafka for the demo's Kafka variant.
pub fn demo_events(partitions: u32) -> GeneratorSpec {
    let spec = PipelineSpec::parse(DEMO_PIPELINE, "clickstream.yaml").expect("the demo parses");
    let Some(SourceSpec::Generator(generator)) = spec.sources.get("events") else {
        panic!("the demo's source is a generator");
    };
    GeneratorSpec {
        partitions,
        rate: None,
        count: None,
        ..generator.clone()
    }
}

/// `text` with only the tables of the given layers (`bronze`, `silver`, `gold`).
pub fn only_layers(text: &str, layers: &[&str]) -> Result<String> {
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| CliError::Bench(format!("pipeline: {e}")))?;
    if let Some(tables) = doc.get_mut("tables").and_then(|t| t.as_mapping_mut()) {
        tables.retain(|name, _| {
            name.as_str()
                .and_then(|n| n.split('.').next())
                .is_some_and(|layer| layers.contains(&layer))
        });
    }
    serde_yaml::to_string(&doc).map_err(|e| CliError::Bench(format!("pipeline: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse() {
        let bounded = PipelineSpec::parse(&bounded_demo(1000, 2, Some(500)), "b").unwrap();
        let Some(SourceSpec::Generator(g)) = bounded.sources.get("events") else {
            panic!("generator");
        };
        assert_eq!((g.count, g.partitions, g.rate), (Some(1000), 2, Some(500)));
        let kafka = PipelineSpec::parse(&kafka_demo("127.0.0.1:9092", "t"), "k").unwrap();
        assert!(matches!(kafka.sources["events"], SourceSpec::Kafka(_)));
        let cut = only_layers(&bounded_demo(10, 1, None), &["bronze", "silver"]).unwrap();
        let cut = PipelineSpec::parse(&cut, "c").unwrap();
        assert_eq!(cut.tables.len(), 2);
        assert_eq!(demo_events(3).partitions, 3);
    }
}
