#![no_main]
//! `cargo fuzz run campaign` — see `chronicle_app::fuzzing::campaign`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chronicle_app::fuzzing::campaign(data));
