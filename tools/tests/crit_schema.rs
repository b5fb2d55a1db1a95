//! cryo's schema against the compiled descriptors shipped with Debian's python crit 3.17
//! (`pycriu/images/*_pb2.py`): every field crit knows must have the same name, number,
//! type, label, packing and display options in cryo's `.proto` files, except the few
//! listed differences (renames by newer CRIU, architectures cryo does not describe).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use cryo_format::schema::{field_display, full_descriptor_pool};
use prost_reflect::{Cardinality, Kind};

const PYCRIU: &str = "/usr/lib/python3/dist-packages/pycriu/images";
const PYTHON: &str = "/usr/bin/python3";

/// Prints one line per field: message, number, name, type, label, packed, options (hex),
/// explicit default (`-` for none).
const DUMP: &str = r#"
import sys, glob, os, importlib
d = sys.argv[1]
sys.path.insert(0, d)
from google.protobuf import descriptor_pb2
seen = set()
def walk(m, proto):
    if m.full_name in seen:
        return
    seen.add(m.full_name)
    defaults = {f.number: f.default_value for f in proto.field if f.HasField('default_value')}
    for f in m.fields:
        o = f.GetOptions()
        packed = o.packed if o.HasField('packed') else False
        default = defaults.get(f.number, '-').replace(' ', '_') or '-'
        print(m.full_name, f.number, f.name, f.type, f.label, int(packed), o.SerializeToString().hex(), default)
    nested = {n.name: n for n in proto.nested_type}
    for n in m.nested_types:
        walk(n, nested[n.name])
for path in sorted(glob.glob(d + '/*_pb2.py')):
    mod = importlib.import_module(os.path.basename(path)[:-3])
    fdp = descriptor_pb2.FileDescriptorProto()
    mod.DESCRIPTOR.CopyToProto(fdp)
    protos = {m.name: m for m in fdp.message_type}
    for m in mod.DESCRIPTOR.message_types_by_name.values():
        walk(m, protos[m.name])
"#;

/// Fields of crit 3.17 that cryo describes differently on purpose.
fn known_difference(message: &str, number: u32) -> bool {
    match message {
        // CRIU 4.2 renamed field 2 to compat_nr_pages (nr_pages is now field 5).
        "pagemap_entry" => number == 2,
        // Only x86-64 register sets are described.
        "core_entry" => matches!(number, 6 | 8..=13),
        "cpuinfo_entry" => matches!(number, 2 | 3),
        _ => false,
    }
}

/// Messages of crit 3.17 that cryo does not describe.
fn not_described(message: &str) -> bool {
    message.starts_with("img_streamer_")
        || message.starts_with("thread_info_")
        || message.starts_with("user_")
        || message.starts_with("cpuinfo_ppc64")
        || message.starts_with("cpuinfo_s390")
        || message == "timespec"
}

/// protobuf's FieldDescriptorProto.Type numbering of a prost-reflect kind.
fn type_number(kind: &Kind) -> u32 {
    match kind {
        Kind::Double => 1,
        Kind::Float => 2,
        Kind::Int64 => 3,
        Kind::Uint64 => 4,
        Kind::Int32 => 5,
        Kind::Fixed64 => 6,
        Kind::Fixed32 => 7,
        Kind::Bool => 8,
        Kind::String => 9,
        Kind::Message(_) => 11,
        Kind::Bytes => 12,
        Kind::Uint32 => 13,
        Kind::Enum(_) => 14,
        Kind::Sfixed32 => 15,
        Kind::Sfixed64 => 16,
        Kind::Sint32 => 17,
        Kind::Sint64 => 18,
    }
}

#[test]
fn schema_matches_python_crit_on_every_field_crit_knows() {
    if !Path::new(PYCRIU).is_dir() || !Path::new(PYTHON).exists() {
        eprintln!("skipped: Debian's python crit ({PYCRIU}) is not installed");
        return;
    }
    let out = Command::new(PYTHON)
        .args(["-c", DUMP, PYCRIU])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();

    let pool = full_descriptor_pool();
    let ext = pool.get_extension_by_name("criu.criu").unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut by_message: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split(' ').collect();
        let [message, number, name, ty, label, packed, options, default] = cols[..] else {
            panic!("bad line {line:?}");
        };
        let number: u32 = number.parse().unwrap();
        *by_message.entry(message).or_default() += 1;
        if not_described(message) || known_difference(message, number) {
            continue;
        }
        let Some(desc) = pool.get_message_by_name(&format!("criu.{message}")) else {
            problems.push(format!("message {message} missing"));
            continue;
        };
        let Some(field) = desc.get_field(number) else {
            problems.push(format!("{message}.{name} (#{number}) missing"));
            continue;
        };
        let label_number = match field.cardinality() {
            Cardinality::Optional => 1,
            Cardinality::Required => 2,
            Cardinality::Repeated => 3,
        };
        let ours = format!(
            "{} {} {} {}",
            field.name(),
            type_number(&field.kind()),
            label_number,
            u8::from(field.is_packed())
        );
        let theirs = format!("{name} {ty} {label} {packed}");
        if ours != theirs {
            problems.push(format!("{message} #{number}: crit {theirs}, cryo {ours}"));
        }

        // Display options: crit's serialized FieldOptions carry only the (criu) extension
        // (and packed); compare which of them are set.
        let crit_has_display = options.contains("d23f");
        let ours_has_display = field.options().has_extension(&ext);
        if crit_has_display != ours_has_display {
            problems.push(format!(
                "{message}.{name}: display option crit={crit_has_display} cryo={ours_has_display}"
            ));
        }
        let our_options: String = prost::Message::encode_to_vec(&field.options())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if our_options != options {
            problems.push(format!(
                "{message}.{name}: options crit={options} cryo={our_options}"
            ));
        }
        let our_default = field
            .field_descriptor_proto()
            .default_value()
            .replace(' ', "_");
        let our_default = if our_default.is_empty() {
            "-".to_owned()
        } else {
            our_default
        };
        if our_default != default {
            problems.push(format!(
                "{message}.{name}: default crit={default} cryo={our_default}"
            ));
        }
        if crit_has_display != field_display(field.full_name()).is_some() {
            problems.push(format!("{message}.{name}: static display table disagrees"));
        }
        checked += 1;
    }
    assert!(
        problems.is_empty(),
        "schema differences:\n{}",
        problems.join("\n")
    );
    assert!(checked > 600, "only {checked} fields compared");
}
