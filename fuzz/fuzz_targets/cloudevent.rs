#![no_main]
//! `cargo fuzz run cloudevent` — see `chronicle_server::fuzzing::cloudevent`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chronicle_server::fuzzing::cloudevent(data));
