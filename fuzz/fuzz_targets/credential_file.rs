//! Fuzzes the credential file parser with arbitrary text.
//!
//! Beyond "never panics": every error names the file and a line that
//! exists, a line in error adds no user, and every user parsed can be
//! looked up by its name case-blind.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use submitd_auth::Users;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count();
    let (users, errors) = Users::parse(Path::new("/etc/submitd/users"), &text);
    for error in &errors {
        assert!(error.line >= 1 && error.line <= lines.max(1), "{error}");
        assert!(
            error.to_string().starts_with("/etc/submitd/users:"),
            "{error}"
        );
    }
    assert!(users.len() + errors.len() <= lines);
    for user in users.iter() {
        assert!(
            users.get(&user.name.to_ascii_uppercase()).is_some(),
            "{}",
            user.name
        );
    }
});
