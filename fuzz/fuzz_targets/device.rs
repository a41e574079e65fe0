#![no_main]
//! libFuzzer entry for [`podwire_fuzz::device`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| podwire_fuzz::timed(data, podwire_fuzz::device));
