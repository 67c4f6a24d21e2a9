#![no_main]
//! `cargo fuzz run segment` — see `chronicle_app::fuzzing::segment`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chronicle_app::fuzzing::segment(data));
