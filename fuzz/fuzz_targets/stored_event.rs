#![no_main]
//! `cargo fuzz run stored_event` — see `chronicle_app::fuzzing::stored_event`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chronicle_app::fuzzing::stored_event(data));
