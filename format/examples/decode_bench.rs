//! Throughput of the reader on the real fixtures. Run with
//! `cargo run --release -p cryo-format --example decode_bench [-- ITERATIONS]`.
//!
//! Measures, over every non-pages image of every fixture set (opened once, read many times):
//! framing alone, framing + required-field checks, and typed prost decoding of the task
//! images and of every entry (the work `benches/crit_anchor.py` times for pycriu, the anchor);
//! then pagemap parsing and a zero-copy walk of all dumped memory of a 16 MiB process.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cryo_format::schema::{CoreEntry, FileEntry, MmEntry};
use cryo_format::{ImageFile, ImageSet, Source};

const SETS: &[&str] = &[
    "counter",
    "threads4",
    "pipe-tree",
    "python3",
    "series-t0",
    "series-t1",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/criu-images")
}

fn report(what: &str, iterations: u32, start: Instant, entries: u64, bytes: u64) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what:<44} {:>9.2} µs/pass  {:>7.1} M entries/s  {:>8.1} MB/s",
        secs * 1e6 / f64::from(iterations),
        entries as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6,
    );
}

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);

    let mut images = Vec::new();
    for set in SETS {
        let dir = fixtures().join(set);
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixture set")
            .map(|e| e.unwrap().path())
            .filter(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("pages-")
            })
            .collect();
        paths.sort();
        for p in paths {
            images.push(ImageFile::open(&p).expect("fixture opens"));
        }
    }
    let total_bytes: u64 = images.iter().map(|i| i.bytes().len() as u64).sum();
    let total_entries: u64 = images.iter().map(|i| i.entries().count() as u64).sum();
    println!(
        "{} images, {total_entries} entries, {total_bytes} bytes; {iterations} passes",
        images.len()
    );

    let start = Instant::now();
    for _ in 0..iterations {
        for image in &images {
            for entry in image.entries() {
                black_box(entry.expect("frames"));
            }
        }
    }
    report(
        "frame all entries",
        iterations,
        start,
        total_entries * u64::from(iterations),
        total_bytes * u64::from(iterations),
    );

    let start = Instant::now();
    let mut fields = 0u64;
    for _ in 0..iterations {
        for image in &images {
            for entry in image.entries() {
                fields += cryo_format::wire::fields(entry.expect("frames").payload).count() as u64;
            }
        }
    }
    report(
        "scan top-level fields",
        iterations,
        start,
        fields,
        total_bytes * u64::from(iterations),
    );

    let start = Instant::now();
    for _ in 0..iterations {
        for image in &images {
            for entry in image.entries() {
                image.check(&entry.expect("frames")).expect("valid");
            }
        }
    }
    report(
        "frame + check required fields",
        iterations,
        start,
        total_entries * u64::from(iterations),
        total_bytes * u64::from(iterations),
    );

    let typed: Vec<_> = images
        .iter()
        .filter(|i| matches!(i.magic().name, "CORE" | "MM" | "FILES"))
        .collect();
    let typed_entries: u64 = typed.iter().map(|i| i.entries().count() as u64).sum();
    let typed_bytes: u64 = typed.iter().map(|i| i.bytes().len() as u64).sum();
    let start = Instant::now();
    for _ in 0..iterations {
        for image in &typed {
            match image.magic().name {
                "CORE" => drop(black_box(image.decode_one::<CoreEntry>().expect("core"))),
                "MM" => drop(black_box(image.decode_one::<MmEntry>().expect("mm"))),
                _ => drop(black_box(image.decode_all::<FileEntry>().expect("files"))),
            }
        }
    }
    report(
        "typed decode core/mm/files (prost + check)",
        iterations,
        start,
        typed_entries * u64::from(iterations),
        typed_bytes * u64::from(iterations),
    );

    // The same work as format/benches/crit_anchor.py does with pycriu: every entry of every
    // image decoded into its message type.
    let start = Instant::now();
    for _ in 0..iterations {
        for image in &images {
            for entry in image.entries() {
                decode_typed(image, &entry.expect("frames"));
            }
        }
    }
    report(
        "typed decode of every entry (prost + check)",
        iterations,
        start,
        total_entries * u64::from(iterations),
        total_bytes * u64::from(iterations),
    );

    let set = ImageSet::open(fixtures().join("series-t1")).expect("set");
    let pid = set.root().expect("root").pid;
    let rounds = (iterations / 10).max(10);
    let start = Instant::now();
    let mut dumped = 0u64;
    for _ in 0..rounds {
        let view = set.memory(pid).expect("view");
        for seg in view.resolved_runs().expect("resolves") {
            if let Source::Data { bytes, .. } = seg.source {
                // Touch one word per page: the walk itself must not copy.
                dumped += bytes.len() as u64;
                black_box(bytes.chunks(4096).map(|p| p[0]).fold(0u8, |a, b| a ^ b));
            }
        }
    }
    let pages = dumped / 4096;
    report(
        "open memory view + walk all pages (series-t1)",
        rounds,
        start,
        pages,
        dumped,
    );
}

fn decode_typed(image: &ImageFile, entry: &cryo_format::RawEntry<'_>) {
    let name = entry.message.unwrap_or("");
    cryo_format::with_message_type!(
        name,
        T => {
            black_box(image.decode::<T>(entry).expect("decodes"));
        },
        else panic!("no struct for {:?}", entry.message)
    )
}
