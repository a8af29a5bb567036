//! The `message_line` target: its body, with the invariants it checks, is
//! `mandrill::fuzzing::message_line`, which the torture suite's quick slice also runs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandrill::fuzzing::message_line(data));
