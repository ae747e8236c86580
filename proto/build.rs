//! Generates the tonic/prost code for `proto/smelter.proto` into `OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/smelter.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/smelter.proto"], &["proto"])?;
    Ok(())
}
