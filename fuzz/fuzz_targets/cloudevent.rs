#![no_main]
//! `cargo fuzz run cloudevent` — see `chronicle_app::fuzzing::cloudevent`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chronicle_app::fuzzing::cloudevent(data));
