//! Compiles `proto/*.proto` with protox (pure Rust, no protoc needed).
//!
//! Two artefacts land in OUT_DIR:
//! - `criu.rs`: prost structs for every message (via `prost_build::compile_fds`);
//! - `criu_descriptors.bin`: the encoded descriptor pool, which keeps our custom field
//!   options (`(criu).hex`, `flags`, ...) so the JSON renderer can read them at run time.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let mut compiler = protox::Compiler::new([&proto_dir])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(&files)?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("criu_descriptors.bin"),
        compiler.descriptor_pool().encode_to_vec(),
    )?;

    // descriptor.proto is only imported for the option extension; no Rust is wanted for it.
    let mut fds = compiler.file_descriptor_set();
    fds.file
        .retain(|f| !f.name().starts_with("google/protobuf/"));
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
