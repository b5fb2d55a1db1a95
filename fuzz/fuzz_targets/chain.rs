#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cryo_format_fuzz::chain(data));
