//! Compiles `proto/` into Rust with tonic-prost-build.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so a fresh machine
//! builds Baton with no system protoc. The file descriptor set is written
//! next to the generated code for the server's gRPC reflection service.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("baton_descriptor.bin"))
        .compile_with_config(config, &["proto/baton/v1/baton.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
