#![no_main]
//! `cargo fuzz run import_line` — see `chronicle_app::fuzzing::import_line`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chronicle_app::fuzzing::import_line(data));
