#![no_main]
//! `cargo fuzz run segment` — see `chronicle_server::fuzzing::segment`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chronicle_server::fuzzing::segment(data));
