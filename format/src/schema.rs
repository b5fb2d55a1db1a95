//! Protobuf messages of every image type, generated from `format/proto/`.
//!
//! The `.proto` files are cryo's own, written from the facts of CRIU's image format:
//! same package (`criu`), message names, field numbers, types and labels, so the bytes
//! on disk are CRIU's. Two views of the same schema are exposed:
//!
//! - the prost structs (`InventoryEntry`, `CoreEntry`, ...) for code that knows which
//!   message it reads. prost maps proto2 `required` to a plain field and `optional` to
//!   `Option<T>`, and does not check that required fields were present;
//! - [`descriptor_pool`], the reflective schema with our display options kept, for
//!   tools that walk any message generically (imgtool's crit-compatible JSON).

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

#[allow(clippy::all, missing_docs, non_camel_case_types)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/criu.rs"));
}

pub use generated::*;

/// Encoded `FileDescriptorSet` of all cryo `.proto` files (with their imports).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/criu_descriptors.bin"));

/// Protobuf package of every image message.
pub const PACKAGE: &str = "criu";

/// Number of the `google.protobuf.FieldOptions` extension carrying [`CriuOpts`].
pub const OPTIONS_EXTENSION_NUMBER: u32 = 1018;

/// The reflective schema, decoded once on first use.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET)
            .expect("descriptor set is generated at build time from our own .proto files")
    })
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
    fn display_options_survive_in_the_pool() {
        let pool = descriptor_pool();
        let vma = pool.get_message_by_name("criu.vma_entry").unwrap();
        let ext = pool.get_extension_by_name("criu.criu").unwrap();
        assert_eq!(ext.number(), OPTIONS_EXTENSION_NUMBER);

        let start = vma.get_field_by_name("start").unwrap();
        let opts = start.options();
        let criu = opts.get_extension(&ext);
        let hex = criu.as_message().unwrap().get_field_by_name("hex").unwrap();
        assert_eq!(*hex, Value::Bool(true));

        let prot = vma.get_field_by_name("prot").unwrap();
        let criu = prot.options().get_extension(&ext).into_owned();
        let flags = criu
            .as_message()
            .unwrap()
            .get_field_by_name("flags")
            .unwrap();
        assert_eq!(flags.as_str(), Some("mmap.prot"));
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
