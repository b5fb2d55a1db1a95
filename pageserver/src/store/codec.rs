//! How one page is encoded in a segment record.
//!
//! | codec | value | data |
//! |---|---|---|
//! | `Raw` | 0 | the 4096 bytes |
//! | `Zstd` | 1 | one zstd frame of the page |
//! | `Arith` | 2 | 16 bytes: `first` u64, `step` u64 — word i is `first + i * step` (wrapping) |
//!
//! `Arith` generalises the zero-page flag to every page whose 64-bit words form one arithmetic
//! run: constant fills, counters, arrays of indices, evenly spaced pointers, and the
//! `0xC0DE…|i` pattern of cryo's own workload. Such pages are among the slowest inputs for an
//! LZ compressor (zstd level 1 manages about 150 MB/s on them and still needs ~240 bytes per
//! page, because it finds a short match every 8 bytes), while recognising them costs one pass
//! over the words. Other pages go to zstd; a page that does not shrink is stored raw.

use std::cell::RefCell;

use super::StoreError;
use super::segment::RECORD_HEADER_LEN;
use crate::protocol::PAGE_SIZE;

/// How a page record's data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    Arith = 2,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Arith),
            _ => None,
        }
    }
}

/// Whether a page is all zero bytes.
pub fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

fn words(page: &[u8]) -> impl Iterator<Item = u64> + '_ {
    page.chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
}

/// `(first, step)` if the page's words are one arithmetic run.
fn arithmetic_run(page: &[u8]) -> Option<(u64, u64)> {
    let mut w = words(page);
    let first = w.next()?;
    let second = w.next()?;
    let step = second.wrapping_sub(first);
    let mut expect = second;
    for word in w {
        expect = expect.wrapping_add(step);
        if word != expect {
            return None;
        }
    }
    Some((first, step))
}

fn fill_arithmetic(page: &mut [u8], first: u64, step: u64) {
    let mut v = first;
    for o in page.chunks_exact_mut(8) {
        o.copy_from_slice(&v.to_le_bytes());
        v = v.wrapping_add(step);
    }
}

struct Scratch {
    level: i32,
    compressor: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Encodes one page with this thread's reused zstd context. `None` means: store it raw.
pub fn encode_page(level: i32, page: &[u8]) -> Result<Option<(Codec, Vec<u8>)>, StoreError> {
    if let Some((first, step)) = arithmetic_run(page) {
        let mut data = first.to_le_bytes().to_vec();
        data.extend_from_slice(&step.to_le_bytes());
        return Ok(Some((Codec::Arith, data)));
    }
    SCRATCH.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.level != level) {
            *slot = Some(Scratch {
                level,
                compressor: zstd::bulk::Compressor::new(level).map_err(StoreError::Zstd)?,
                out: vec![0u8; PAGE_SIZE],
            });
        }
        let s = slot.as_mut().expect("set above");
        s.out.resize(PAGE_SIZE, 0);
        match s.compressor.compress_to_buffer(page, &mut s.out[..]) {
            Ok(n) if n + RECORD_HEADER_LEN < PAGE_SIZE => {
                Ok(Some((Codec::Zstd, s.out[..n].to_vec())))
            }
            // Did not fit or did not pay: keep it raw.
            _ => Ok(None),
        }
    })
}

/// Decodes a record's data into one page; `Err` carries a reason for the caller's context.
pub fn decode_page(
    codec: Codec,
    data: &[u8],
    page: &mut [u8],
    dec: &mut zstd::bulk::Decompressor<'static>,
) -> Result<(), String> {
    match codec {
        Codec::Raw if data.len() == PAGE_SIZE => page.copy_from_slice(data),
        Codec::Raw => return Err(format!("raw record of {} bytes", data.len())),
        Codec::Zstd => {
            let n = dec
                .decompress_to_buffer(data, page)
                .map_err(|e| e.to_string())?;
            if n != PAGE_SIZE {
                return Err(format!("decompressed to {n} bytes"));
            }
        }
        Codec::Arith if data.len() == 16 => {
            let first = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
            let step = u64::from_le_bytes(data[8..].try_into().expect("8 bytes"));
            fill_arithmetic(page, first, step);
        }
        Codec::Arith => return Err(format!("arith record of {} bytes", data.len())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(page: &[u8]) -> Option<Codec> {
        let mut dec = zstd::bulk::Decompressor::new().unwrap();
        let mut back = vec![0u8; PAGE_SIZE];
        match encode_page(1, page).unwrap() {
            None => None,
            Some((codec, data)) => {
                decode_page(codec, &data, &mut back, &mut dec).unwrap();
                assert_eq!(back, page);
                Some(codec)
            }
        }
    }

    #[test]
    fn counter_pages_are_stored_as_arithmetic_runs_and_round_trip() {
        let page: Vec<u8> = (0..512u64)
            .flat_map(|i| (0xC0DE_0000_0000_0000 | (1000 + i)).to_le_bytes())
            .collect();
        assert_eq!(round_trip(&page), Some(Codec::Arith));
        let constant = vec![0xffu8; PAGE_SIZE];
        assert_eq!(round_trip(&constant), Some(Codec::Arith));
        // One word off the run: not arithmetic any more, but still compressible.
        let mut almost = page.clone();
        almost[2000] ^= 1;
        assert_eq!(round_trip(&almost), Some(Codec::Zstd));
    }

    #[test]
    fn text_pages_use_plain_zstd_and_random_pages_stay_raw() {
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .copied()
            .cycle()
            .take(PAGE_SIZE)
            .collect();
        assert_eq!(round_trip(&text), Some(Codec::Zstd));
        let mut x = 7u64;
        let random: Vec<u8> = (0..512)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        assert_eq!(round_trip(&random), None);
    }

    #[test]
    fn zero_detection_sees_a_single_set_byte() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
    }
}
