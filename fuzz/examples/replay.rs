//! Stable-toolchain driver for the fuzz targets: replays the real fixtures and files given on
//! the command line, then mutates them (bit flips, interesting values, truncation, splicing)
//! for a bounded time. No coverage feedback — `cargo fuzz run` is the real fuzzer; this is the
//! smoke test that runs anywhere and reproduces artifacts.
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --example replay -- \
//!     [--seconds 60] [--target image|chain|both] [--write-seeds DIR] [FILE|DIR]...
//! ```

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cryo_format::pagemap::{PE_LAZY, PE_PARENT};
use cryo_format::{PagemapId, PagesWriter};
use cryo_format_fuzz::{chain, encode_chain, image};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, donor: &[u8]) {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0x08, 0x10, 0x12];
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => input.truncate(rng.below(len)),
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            4 if len > 4 => {
                // A u32 length prefix gone wild.
                let i = rng.below(len - 3);
                let v = [0u32, 1, 0x7fff_ffff, u32::MAX, len as u32][rng.below(5)];
                input[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            5 if !donor.is_empty() => {
                let from = rng.below(donor.len());
                let n = rng.below(donor.len() - from).min(256);
                let at = rng.below(len + 1);
                input.splice(at..at, donor[from..from + n].iter().copied());
            }
            _ if len > 1 => {
                let a = rng.below(len);
                let b = rng.below(len);
                let (lo, hi) = (a.min(b), a.max(b));
                let chunk = input[lo..hi].to_vec();
                input.splice(hi..hi, chunk);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(1 << 16);
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/criu-images")
}

fn collect(path: &Path, out: &mut Vec<Vec<u8>>) {
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            collect(&p, out);
        }
    } else if let Ok(bytes) = fs::read(path)
        && bytes.len() <= 1 << 16
    {
        out.push(bytes);
    }
}

fn image_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for set in ["counter", "threads4", "pipe-tree", "python3", "series-t0"] {
        collect(&fixtures().join(set), &mut seeds);
    }
    seeds
}

/// Hand-made parent chains in the `chain` input encoding.
fn chain_seeds() -> Vec<Vec<u8>> {
    let root = tempfile::tempdir().expect("temp dir");
    let page = |tag: u8| vec![tag; 4096];
    let l1 = root.path().join("l1");
    let l0 = root.path().join("l0");
    fs::create_dir_all(&l1).unwrap();
    fs::create_dir_all(&l0).unwrap();

    let mut w = PagesWriter::create(&l1, PagemapId::Pid(1), 1).unwrap();
    w.add_pages(0x10000, &[page(1), page(2)].concat(), false)
        .unwrap();
    w.add_pages(0x20000, &page(3), true).unwrap();
    w.finish().unwrap();
    let mut w = PagesWriter::create(&l0, PagemapId::Pid(1), 2).unwrap();
    w.add_hole(0x10000, 1, PE_PARENT).unwrap();
    w.add_pages(0x11000, &page(4), false).unwrap();
    w.add_hole(0x20000, 1, PE_PARENT).unwrap();
    w.add_hole(0x30000, 2, PE_LAZY).unwrap();
    w.finish().unwrap();

    let read = |p: PathBuf| fs::read(p).unwrap();
    let (pm0, pg0) = (read(l0.join("pagemap-1.img")), read(l0.join("pages-2.img")));
    let (pm1, pg1) = (read(l1.join("pagemap-1.img")), read(l1.join("pages-1.img")));
    let mut seeds = vec![
        encode_chain(0, &[&pm1, &pg1]),
        encode_chain(1, &[&pm0, &pg0, &pm1, &pg1]),
        encode_chain(3, &[&pm0, &pg0, &pm0, &pg0]),
        encode_chain(2, &[&pm0, &pg0, &pm0, &pg0, &pm1, &pg1]),
    ];
    // The same without headers, for mode bit 2 (the target prepends one).
    seeds.push(encode_chain(5, &[&pm0[8..], &pg0, &pm1[8..], &pg1]));
    seeds
}

/// A fuzz target body.
type Target = fn(&[u8]);

fn run_guarded(target: Target, input: &[u8]) -> bool {
    panic::catch_unwind(|| target(input)).is_ok()
}

fn save_crash(name: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/replay");
    fs::create_dir_all(&dir).expect("artifacts dir");
    let path = dir.join(format!("{name}-{:016x}", fxhash(input)));
    fs::write(&path, input).expect("write artifact");
    path
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn main() -> ExitCode {
    let mut seconds = 60u64;
    let mut targets = vec!["image", "chain"];
    let mut write_seeds = None;
    let mut extra = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(60),
            "--target" => match args.next().as_deref() {
                Some("image") => targets = vec!["image"],
                Some("chain") => targets = vec!["chain"],
                _ => targets = vec!["image", "chain"],
            },
            "--write-seeds" => write_seeds = args.next().map(PathBuf::from),
            other => extra.push(PathBuf::from(other)),
        }
    }

    let mut image_inputs = image_seeds();
    let mut chain_inputs = chain_seeds();
    for path in &extra {
        let mut found = Vec::new();
        collect(path, &mut found);
        image_inputs.extend(found.iter().cloned());
        chain_inputs.extend(found);
    }
    if let Some(dir) = write_seeds {
        for (name, inputs) in [("image", &image_inputs), ("chain", &chain_inputs)] {
            let d = dir.join(name);
            fs::create_dir_all(&d).expect("seed dir");
            for input in inputs.iter() {
                fs::write(d.join(format!("{:016x}", fxhash(input))), input).expect("write seed");
            }
        }
        println!(
            "wrote {} image and {} chain seeds",
            image_inputs.len(),
            chain_inputs.len()
        );
        return ExitCode::SUCCESS;
    }

    panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let per_target = Duration::from_secs(seconds) / targets.len() as u32;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for name in targets {
        let (target, seeds): (Target, &Vec<Vec<u8>>) = match name {
            "image" => (image, &image_inputs),
            _ => (chain, &chain_inputs),
        };
        for seed in seeds {
            if !run_guarded(target, seed) {
                eprintln!(
                    "{name}: seed crashed, saved to {}",
                    save_crash(name, seed).display()
                );
                return ExitCode::FAILURE;
            }
        }
        let start = Instant::now();
        let mut execs = 0u64;
        while start.elapsed() < per_target {
            let mut input = seeds[rng.below(seeds.len())].clone();
            let donor = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, &mut input, donor);
            execs += 1;
            if !run_guarded(target, &input) {
                eprintln!(
                    "{name}: crash after {execs} runs, saved to {}",
                    save_crash(name, &input).display()
                );
                return ExitCode::FAILURE;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name}: {} seeds, {execs} mutated runs in {secs:.1} s ({:.0}/s), no crash",
            seeds.len(),
            execs as f64 / secs
        );
    }
    ExitCode::SUCCESS
}
