//! Compiles `proto/*.proto` with protox (pure Rust, no protoc needed).
//!
//! Three artefacts land in OUT_DIR:
//! - `criu.rs`: prost structs for every message (via `prost_build::compile_fds`);
//! - `criu_descriptors.bin`: the schema as a lean `FileDescriptorSet` (our files only, no
//!   field options, no `descriptor.proto`), which builds a runtime descriptor pool in
//!   about a millisecond;
//! - `criu_field_options.rs`: the `(criu)` display options of every field that has one,
//!   as a sorted static table, so nothing has to parse options at run time;
//! - `criu_descriptors_full.bin`: the complete pool, custom options included, for tools
//!   that want to read options reflectively.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_reflect::{DescriptorPool, Value};

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
    let full_pool = compiler.descriptor_pool();
    std::fs::write(
        out_dir.join("criu_descriptors_full.bin"),
        full_pool.encode_to_vec(),
    )?;
    write_field_options(&full_pool, &out_dir.join("criu_field_options.rs"))?;

    // descriptor.proto and opts.proto only carry the display options: no Rust for them, and
    // nothing of them in the lean runtime set.
    let mut fds = compiler.file_descriptor_set();
    fds.file
        .retain(|f| !f.name().starts_with("google/protobuf/") && f.name() != "opts.proto");
    prost_build::Config::new().compile_fds(fds.clone())?;

    for file in &mut fds.file {
        file.dependency
            .retain(|d| !d.starts_with("google/protobuf/") && d != "opts.proto");
        for message in &mut file.message_type {
            strip_field_options(message);
        }
    }
    std::fs::write(out_dir.join("criu_descriptors.bin"), fds.encode_to_vec())?;
    Ok(())
}

fn strip_field_options(message: &mut prost_reflect::prost_types::DescriptorProto) {
    for field in &mut message.field {
        let packed = field.options.as_ref().and_then(|o| o.packed);
        // Only `packed` changes the wire format; keep it, drop the display extension.
        field.options = packed.map(|packed| prost_reflect::prost_types::FieldOptions {
            packed: Some(packed),
            ..Default::default()
        });
    }
    for nested in &mut message.nested_type {
        strip_field_options(nested);
    }
}

fn write_field_options(
    pool: &DescriptorPool,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let ext = pool
        .get_extension_by_name("criu.criu")
        .ok_or("opts.proto must declare extension criu.criu")?;
    let mut rows = Vec::new();
    for message in pool.all_messages() {
        for field in message.fields() {
            let options = field.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let value = options.get_extension(&ext);
            let Some(criu) = value.as_message() else {
                continue;
            };
            let flag = |name: &str| {
                matches!(
                    criu.get_field_by_name(name).as_deref(),
                    Some(Value::Bool(true))
                )
            };
            let text = |name: &str| match criu.get_field_by_name(name).as_deref() {
                Some(Value::String(s)) if criu.has_field_by_name(name) => format!("Some({s:?})"),
                _ => "None".to_owned(),
            };
            rows.push((
                field.full_name().to_owned(),
                format!(
                    "FieldDisplay {{ hex: {}, ipadd: {}, flags: {}, dev: {}, odev: {}, dict: {}, conv: {} }}",
                    flag("hex"),
                    flag("ipadd"),
                    text("flags"),
                    flag("dev"),
                    flag("odev"),
                    text("dict"),
                    text("conv"),
                ),
            ));
        }
    }
    rows.sort();

    let mut code = String::from(
        "/// Display options of every field that has one, sorted by full field name.\n",
    );
    code.push_str("pub static FIELD_DISPLAY: &[(&str, FieldDisplay)] = &[\n");
    for (name, value) in rows {
        writeln!(code, "    ({name:?}, {value}),")?;
    }
    code.push_str("];\n");
    std::fs::write(out, code)?;
    Ok(())
}
