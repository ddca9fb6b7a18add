//! Device profile TOML: any text gives a validated profile or a list of problems, never a panic.
//! A profile that parses must answer lookups for each of its points consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sitegate::modbus::profile::Profile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Profile::parse(text) {
        for point in &p.points {
            let _ = point.width();
            let _ = point.end();
            let _ = point.writable();
        }
    }
});
