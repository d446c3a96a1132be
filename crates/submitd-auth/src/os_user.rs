//! Who a local uid is: the one place submitd reads the system's user
//! database, for the local socket (its peer's uid names the sender) and
//! for `submitd sendmail` and `submitd check` (who runs them). Read
//! without unsafe code: `/etc/passwd` for names, `/proc/self` for the
//! process's own uid.

use std::os::unix::fs::MetadataExt;

/// The login name of `uid`, from /etc/passwd; `None` for a uid it does
/// not name.
pub fn name_of(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// The uid of the login `name`, from /etc/passwd; `None` when there is
/// no such user.
pub fn uid_of(name: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        fields.next()?.parse::<u32>().ok()
    })
}

/// The uid this process runs as: the owner of `/proc/self` is the
/// process's effective uid.
pub fn effective_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The login name of whoever runs this process.
pub fn current_name() -> Option<String> {
    effective_uid().and_then(name_of)
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_uid_0_and_unknown_uids_have_no_name() {
        assert_eq!(super::name_of(0).as_deref(), Some("root"));
        assert_eq!(super::name_of(4_000_000_000), None);
        assert_eq!(super::uid_of("root"), Some(0));
        assert_eq!(super::uid_of("no-such-user-here"), None);
        assert_eq!(super::uid_of(""), None);
        let me = super::effective_uid().unwrap();
        assert_eq!(super::current_name(), super::name_of(me));
    }
}
