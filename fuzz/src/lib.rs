//! The bodies of cryo-format's fuzz targets, shared by the libFuzzer binaries
//! (`fuzz_targets/`) and the stable-toolchain replay driver (`examples/replay`).
//!
//! Both targets treat their input as an untrusted image and require only that nothing panics
//! and that the invariants a caller relies on hold: framing that succeeds re-assembles to the
//! input byte for byte, and a memory lookup covers exactly the range asked for.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use cryo_format::magic::{IMG_COMMON_MAGIC, well_known};
use cryo_format::{ImageFile, MemoryView, Pagemap, PagemapId, Source};

/// Decodes `data` as an image: framing, required-field checks, typed decoding, pagemap
/// parsing.
pub fn image(data: &[u8]) {
    let Ok(image) = ImageFile::from_bytes("fuzz.img", data.to_vec()) else {
        return;
    };
    let header = data.len() - image.body().len();
    let mut rebuilt = data[..header].to_vec();
    let mut framed = true;
    for entry in image.entries() {
        let Ok(entry) = entry else {
            framed = false;
            break;
        };
        let _ = image.check(&entry);
        decode_typed(&image, &entry);
        rebuilt.extend_from_slice(&(entry.payload.len() as u32).to_le_bytes());
        rebuilt.extend_from_slice(entry.payload);
        rebuilt.extend_from_slice(entry.extra.unwrap_or_default());
    }
    if framed {
        assert_eq!(rebuilt, data, "framing lost or invented bytes");
    }
    if image.magic().value == well_known::pagemap().value
        && let Ok(pagemap) = Pagemap::parse(&image)
    {
        let runs = pagemap.runs();
        assert!(runs.windows(2).all(|w| w[0].end() <= w[1].vaddr));
        for run in runs.iter().take(16) {
            assert!(pagemap.find(run.vaddr).is_some());
        }
    }
}

fn decode_typed(image: &ImageFile, entry: &cryo_format::RawEntry<'_>) {
    let name = entry.message.unwrap_or("");
    cryo_format::with_message_type!(name, T => { let _ = image.decode::<T>(entry); }, else {})
}

/// Layout of a `chain` input: byte 0 picks the directory shape, then up to six sections,
/// each a u16 little-endian length and that many bytes: pagemap and pages image of layer 0,
/// then of layer 1, then of layer 2.
pub const CHAIN_LAYERS: usize = 3;

/// Builds a parent chain in a temp dir from `data` and reads it through `MemoryView`.
pub fn chain(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut sections: Vec<&[u8]> = Vec::new();
    while sections.len() < 2 * CHAIN_LAYERS && rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        sections.push(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }

    // Prefer tmpfs: the target creates and removes a directory tree per input.
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    let Ok(root) = root else {
        return;
    };
    let layers = match mode % 4 {
        0 => 1,
        1 => 2,
        _ => 3,
    };
    let with_header = mode & 4 != 0;
    for i in 0..layers {
        let dir = root.path().join(format!("l{i}"));
        fs::create_dir(&dir).expect("temp dir is writable");
        let pagemap = sections.get(2 * i).copied().unwrap_or_default();
        let pages = sections.get(2 * i + 1).copied().unwrap_or_default();
        write_layer(&dir, pagemap, pages, with_header);
        let parent = match (mode % 4, i) {
            (3, 1) => Some("../l0".to_owned()), // l0 -> l1 -> l0: a cycle
            (_, i) if i + 1 < layers => Some(format!("../l{}", i + 1)),
            _ => None,
        };
        if let Some(p) = parent {
            symlink(p, dir.join("parent")).expect("symlink in temp dir");
        }
    }

    let Ok(view) = MemoryView::open(root.path().join("l0"), PagemapId::Pid(1)) else {
        return;
    };
    let _ = view.resolved_runs();
    let runs: Vec<_> = view.pagemap().runs().iter().take(32).copied().collect();
    for run in runs {
        let _ = view.page(run.vaddr);
        let len = run.len_bytes().min(1 << 20);
        if let Ok(segs) = view.segments(run.vaddr, len) {
            assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), len);
            for s in segs {
                if let Source::Data { bytes, .. } = s.source {
                    assert_eq!(bytes.len() as u64, s.len);
                }
            }
        }
        let _ = view.read_u64(run.vaddr.wrapping_add(4092));
    }
}

fn write_layer(dir: &Path, pagemap: &[u8], pages: &[u8], with_header: bool) {
    let mut bytes = Vec::with_capacity(pagemap.len() + 8);
    if with_header {
        bytes.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&well_known::pagemap().value.to_le_bytes());
    }
    bytes.extend_from_slice(pagemap);
    let path = dir.join("pagemap-1.img");
    fs::write(&path, &bytes).expect("temp dir is writable");
    let pages_id = Pagemap::open(&path).map(|p| p.pages_id()).unwrap_or(1);
    fs::write(dir.join(format!("pages-{pages_id}.img")), pages).expect("temp dir is writable");
}

/// Encodes a `chain` input (the inverse of its parsing), for seeding corpora.
pub fn encode_chain(mode: u8, sections: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![mode];
    for s in sections {
        let s = &s[..s.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s);
    }
    out
}
