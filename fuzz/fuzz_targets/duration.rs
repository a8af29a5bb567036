//! The `duration` target: its body, with the invariants it checks, is
//! `mandrill::fuzzing::duration`, which the torture suite's quick slice also runs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandrill::fuzzing::duration(data));
