#![no_main]
//! `cargo fuzz run campaign` — see `chronicle_server::fuzzing::campaign`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chronicle_server::fuzzing::campaign(data));
