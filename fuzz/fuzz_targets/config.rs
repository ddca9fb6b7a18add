//! The site config parser and validator: any bytes give a config or a list of problems, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ =
            sitegate::config::Config::parse(text, std::path::Path::new("/etc/sitegate"), &|p| {
                p == "dse-gencomm" || p == "coolmaster-va"
            });
    }
});
