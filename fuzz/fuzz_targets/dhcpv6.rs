#![no_main]
//! libFuzzer entry for [`podwire_fuzz::dhcpv6`].

libfuzzer_sys::fuzz_target!(init: podwire_fuzz::init(), |data: &[u8]| podwire_fuzz::timed(data, podwire_fuzz::dhcpv6));
