//! One module per CLI verb; each returns a `Result` the binary turns into an exit code.

pub mod admin;
pub mod roles;
pub mod up;
pub mod verify;

use std::path::Path;

use smelter_common::spec::PipelineSpec;

use crate::Result;

/// The demo pipeline, embedded so `smelter up --demo` works from any directory.
pub const DEMO_PIPELINE: &str = include_str!("../../../examples/clickstream.yaml");

/// Parses and fully validates a pipeline (schema, expectations, gold SQL).
pub async fn load_pipeline(text: &str, origin: &str) -> Result<PipelineSpec> {
    let spec = PipelineSpec::parse(text, origin)?;
    smelter_worker::validate::validate_pipeline(&spec, origin).await?;
    Ok(spec)
}

/// Reads a pipeline file.
pub fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| crate::ClientError::Io {
        context: format!("read {}", path.display()),
        source,
    })
}
