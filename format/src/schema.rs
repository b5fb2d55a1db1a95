//! Protobuf messages of every image type, generated from `format/proto/`.
//!
//! The `.proto` files are cryo's own, written from the facts of CRIU's image format:
//! same package (`criu`), message names, field numbers, types and labels, so the bytes
//! on disk are CRIU's. Three views of the same schema are exposed:
//!
//! - the prost structs (`InventoryEntry`, `CoreEntry`, ...) for code that knows which
//!   message it reads. prost maps proto2 `required` to a plain field and `optional` to
//!   `Option<T>`, and does not check that required fields were present;
//! - [`descriptor_pool`], the reflective schema for code that walks any message
//!   generically (validation, imgtool's JSON). It is built from a lean descriptor set
//!   without field options, because prost-reflect needs ~10 ms to decode the full one
//!   with custom options and that cost is paid by every short-lived imgtool process;
//! - [`field_display`], crit's display options (`(criu).hex`, `flags`, `dev`, `dict`,
//!   `ipadd`, `conv`, declared in `opts.proto`), extracted at build time into a static
//!   table. [`full_descriptor_pool`] still has them as real options, for reflection.

use std::sync::OnceLock;

use prost::Message as _;
use prost_reflect::DescriptorPool;
use prost_reflect::prost_types::FileDescriptorSet;

#[allow(clippy::all, missing_docs, non_camel_case_types)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/criu.rs"));
}

pub use generated::*;

/// Encoded lean `FileDescriptorSet` of the image schema (no options, no imports of
/// `descriptor.proto`); what [`descriptor_pool`] is built from.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/criu_descriptors.bin"));

/// Encoded complete descriptor pool, `opts.proto` and `descriptor.proto` included, with the
/// custom field options kept.
pub const DESCRIPTOR_SET_FULL: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/criu_descriptors_full.bin"));

/// Protobuf package of every image message.
pub const PACKAGE: &str = "criu";

/// Number of the `google.protobuf.FieldOptions` extension carrying [`CriuOpts`].
pub const OPTIONS_EXTENSION_NUMBER: u32 = 1018;

/// crit's display options of one field (see `proto/opts.proto`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FieldDisplay {
    /// Integer printed as `"0x.."`; on a message field, every integer inside it.
    pub hex: bool,
    /// Repeated u32 holding an IPv4 (1 word) or IPv6 (4 words) address in network order.
    pub ipadd: bool,
    /// Name of the bit-flag table (`"mmap.prot"`, `"rfile.flags"`, ...).
    pub flags: Option<&'static str>,
    /// Device number printed `"major:minor"`.
    pub dev: bool,
    /// With `dev`: userspace (glibc) `dev_t` layout instead of the kernel's.
    pub odev: bool,
    /// Name of the value table (`"gen"`, `"sk"`).
    pub dict: Option<&'static str>,
    /// Custom bytes conversion (`"unix_name"`).
    pub conv: Option<&'static str>,
}

include!(concat!(env!("OUT_DIR"), "/criu_field_options.rs"));

/// The display options of the field with this full name (`"criu.vma_entry.start"`), or
/// `None` when the field has none.
pub fn field_display(full_name: &str) -> Option<&'static FieldDisplay> {
    FIELD_DISPLAY
        .binary_search_by(|(name, _)| (*name).cmp(full_name))
        .ok()
        .map(|i| &FIELD_DISPLAY[i].1)
}

/// The reflective schema (without field options), built once on first use.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let set = FileDescriptorSet::decode(DESCRIPTOR_SET)
            .expect("descriptor set is generated at build time from our own .proto files");
        DescriptorPool::from_file_descriptor_set(set)
            .expect("descriptor set is generated at build time from our own .proto files")
    })
}

/// A descriptor pool holding only the `.proto` file that declares `message` (a full name,
/// `"criu.fs_entry"`) and the files it imports.
///
/// Building the whole schema costs a short-lived process a few milliseconds (most of it
/// first-touch cost of the allocations); a process that reads one image type needs only a
/// file or two of it, which builds in tens of microseconds. `None` if no file declares it.
pub fn descriptor_pool_for(message: &str) -> Option<DescriptorPool> {
    let set = FileDescriptorSet::decode(DESCRIPTOR_SET).ok()?;
    let local = message.strip_prefix(PACKAGE)?.strip_prefix('.')?;
    let top = local.split('.').next()?;
    let home = set
        .file
        .iter()
        .find(|f| f.message_type.iter().any(|m| m.name() == top))?;

    let mut wanted = vec![home.name().to_owned()];
    let mut i = 0;
    while let Some(name) = wanted.get(i).cloned() {
        if let Some(file) = set.file.iter().find(|f| f.name() == name) {
            for dep in &file.dependency {
                if !wanted.contains(dep) {
                    wanted.push(dep.clone());
                }
            }
        }
        i += 1;
    }
    let file = set
        .file
        .into_iter()
        .filter(|f| wanted.iter().any(|w| w == f.name()))
        .collect();
    DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file }).ok()
}

/// The reflective schema with the custom field options, built once on first use (slower
/// to build than [`descriptor_pool`]; prefer [`field_display`] for the options).
pub fn full_descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET_FULL)
            .expect("descriptor set is generated at build time from our own .proto files")
    })
}

/// Runs `$body` with `$t` standing for the prost struct of message `$name` (a full name
/// like `"criu.core_entry"`), or `$other` when cryo has no struct for it here: the one
/// list of name → struct for code that must pick a struct by name (byte-identity tests,
/// the decode benchmark, the fuzz targets).
#[macro_export]
macro_rules! with_message_type {
    ($name:expr, $t:ident => $body:expr, else $other:expr) => {
        $crate::with_message_type!(@arms $name, $t, $body, $other;
            "criu.inventory_entry" => InventoryEntry,
            "criu.pstree_entry" => PstreeEntry,
            "criu.core_entry" => CoreEntry,
            "criu.mm_entry" => MmEntry,
            "criu.task_kobj_ids_entry" => TaskKobjIdsEntry,
            "criu.fs_entry" => FsEntry,
            "criu.file_entry" => FileEntry,
            "criu.fdinfo_entry" => FdinfoEntry,
            "criu.pagemap_head" => PagemapHead,
            "criu.pagemap_entry" => PagemapEntry,
            "criu.pipe_data_entry" => PipeDataEntry,
            "criu.seccomp_entry" => SeccompEntry,
            "criu.timens_entry" => TimensEntry,
            "criu.stats_entry" => StatsEntry,
            "criu.ghost_file_entry" => GhostFileEntry,
            "criu.ghost_chunk_entry" => GhostChunkEntry,
            "criu.tty_info_entry" => TtyInfoEntry,
            "criu.sk_packet_entry" => SkPacketEntry,
            "criu.tcp_stream_entry" => TcpStreamEntry,
        )
    };
    (@arms $name:expr, $t:ident, $body:expr, $other:expr; $($lit:literal => $ty:ident,)*) => {
        match $name {
            $($lit => {
                #[allow(dead_code)]
                type $t = $crate::schema::$ty;
                $body
            })*
            _ => $other,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value};

    #[test]
    fn pool_holds_every_image_message() {
        let pool = descriptor_pool();
        for name in [
            "inventory_entry",
            "pstree_entry",
            "core_entry",
            "mm_entry",
            "pagemap_head",
            "pagemap_entry",
            "file_entry",
            "fdinfo_entry",
            "pipe_data_entry",
            "seccomp_entry",
            "timens_entry",
            "stats_entry",
        ] {
            let full = format!("{PACKAGE}.{name}");
            assert!(pool.get_message_by_name(&full).is_some(), "{full} missing");
        }
    }

    #[test]
    fn a_pool_for_one_message_holds_it_and_its_imports_only() {
        let pool = descriptor_pool_for("criu.core_entry").unwrap();
        let core = pool.get_message_by_name("criu.core_entry").unwrap();
        let creds = core
            .get_field_by_name("thread_core")
            .and_then(|f| f.kind().as_message().cloned())
            .and_then(|tc| tc.get_field_by_name("creds"))
            .unwrap();
        assert_eq!(creds.kind().as_message().unwrap().name(), "creds_entry");
        assert!(pool.get_message_by_name("criu.file_entry").is_none());

        let small = descriptor_pool_for("criu.fs_entry").unwrap();
        assert_eq!(small.all_messages().count(), 1);
        assert!(descriptor_pool_for("criu.no_such_entry").is_none());
        assert!(descriptor_pool_for("other.fs_entry").is_none());
    }

    #[test]
    fn lean_and_full_pools_describe_the_same_fields() {
        let full = full_descriptor_pool();
        let mut compared = 0;
        for message in descriptor_pool().all_messages() {
            let other = full.get_message_by_name(message.full_name()).unwrap();
            for field in message.fields() {
                let twin = other.get_field(field.number()).unwrap();
                assert_eq!(field.full_name(), twin.full_name());
                assert_eq!(field.cardinality(), twin.cardinality());
                assert_eq!(field.is_packed(), twin.is_packed(), "{}", field.full_name());
                assert_eq!(format!("{:?}", field.kind()), format!("{:?}", twin.kind()));
                compared += 1;
            }
        }
        assert!(compared > 500, "only {compared} fields compared");
    }

    #[test]
    fn display_options_survive_in_the_full_pool_and_the_static_table() {
        let pool = full_descriptor_pool();
        let vma = pool.get_message_by_name("criu.vma_entry").unwrap();
        let ext = pool.get_extension_by_name("criu.criu").unwrap();
        assert_eq!(ext.number(), OPTIONS_EXTENSION_NUMBER);

        let start = vma.get_field_by_name("start").unwrap();
        let criu = start.options().get_extension(&ext).into_owned();
        let hex = criu.as_message().unwrap().get_field_by_name("hex").unwrap();
        assert_eq!(*hex, Value::Bool(true));

        assert!(field_display("criu.vma_entry.start").unwrap().hex);
        assert_eq!(
            field_display("criu.vma_entry.prot").unwrap().flags,
            Some("mmap.prot")
        );
        let rdev = field_display("criu.ghost_file_entry.rdev").unwrap();
        assert!(rdev.dev && rdev.odev);
        assert_eq!(field_display("criu.vma_entry.pgoff"), None);
        assert!(FIELD_DISPLAY.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn generated_structs_and_reflection_agree_on_the_wire() {
        let entry = PagemapEntry {
            vaddr: 0x7f00_0000_0000,
            compat_nr_pages: 0,
            flags: Some(4),
            nr_pages: Some(3),
            compressed_size: vec![10, 0, 4096],
            ..Default::default()
        };
        let bytes = entry.encode_to_vec();

        let desc = descriptor_pool()
            .get_message_by_name("criu.pagemap_entry")
            .unwrap();
        let dynamic = DynamicMessage::decode(desc, bytes.as_slice()).unwrap();
        assert_eq!(dynamic.encode_to_vec(), bytes);
        // compressed_size is packed: one tag, one length, three varints.
        let packed_tag = (6 << 3) | 2;
        assert_eq!(bytes.iter().filter(|&&b| b == packed_tag).count(), 1);
    }
}
