//! Backend bytes -> reply frames (see `checks::reply`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// Each target uses one of the checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::reply(data));
