//! Fuzzes the config file parser with arbitrary text (and TOML-shaped
//! seeds). Beyond "never panics": an error always names the file, and a
//! config that is accepted has at least one listener, absolute paths and
//! a delivery concurrency in range.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use submitd_config::Settings;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Settings::parse(Path::new("/etc/submitd/submitd.toml"), &text) {
        Err(e) => {
            let text = e.to_string();
            assert!(text.starts_with("/etc/submitd/submitd.toml"), "{text}");
            assert_eq!(e.file, Path::new("/etc/submitd/submitd.toml"));
        }
        Ok(s) => {
            assert!(!s.listen.is_empty());
            assert!(s.queue.directory.is_absolute() && s.auth.users.is_absolute());
            assert!(s
                .tls
                .certificates
                .iter()
                .all(|c| c.certificate.is_absolute() && c.key.is_absolute()));
            assert!(s.relay.connections >= 1 && s.relay.connections <= 100);
        }
    }
});
