//! First run of the demo config (`demo = true`): a self-signed certificate
//! and a user with a random password, created only if missing and printed
//! once. A production config (`demo = false`) never creates secrets.

use std::os::unix::fs::PermissionsExt;

use submitd_config::Settings;

/// Creates what the demo needs; returns lines to show the person.
pub(crate) fn prepare(settings: &Settings) -> Result<Vec<String>, String> {
    let mut said = Vec::new();
    let Some(pair) = settings.tls.certificates.first() else {
        return Err("demo: no [tls] certificate configured".into());
    };
    let (certificate, key) = (&pair.certificate, &pair.key);
    if !certificate.exists() || !key.exists() {
        let mut names = vec![settings.hostname.clone(), "localhost".to_owned()];
        names.dedup();
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| format!("demo certificate: {e}"))?;
        for path in [certificate, key] {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
        std::fs::write(certificate, certified.cert.pem())
            .map_err(|e| format!("{}: {e}", certificate.display()))?;
        std::fs::write(key, certified.signing_key.serialize_pem())
            .map_err(|e| format!("{}: {e}", key.display()))?;
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", key.display()))?;
        said.push(format!(
            "demo: created a self-signed certificate {}",
            certificate.display()
        ));
    }
    if !settings.auth.users.exists() {
        let (_, password) =
            submitd_auth::password::generate_app_password().map_err(|e| e.to_string())?;
        submitd_auth::edit::add_user(
            &settings.auth.users,
            "demo",
            password.as_bytes(),
            &["demo@example.org".to_owned()],
        )
        .map_err(|e| e.to_string())?;
        said.push(format!(
            "demo: created user \"demo\" with password \"{}\" (may send as demo@example.org), in {}",
            password.as_str(),
            settings.auth.users.display()
        ));
        if let Some(implicit) = settings
            .listen
            .iter()
            .find(|l| l.transport == submitd_smtp::Transport::ImplicitTls)
        {
            said.push(format!(
                "demo: send a test message: swaks --server {} --tls-on-connect --auth-user demo --auth-password '{}' \
                 --from demo@example.org --to you@example.net  (it lands in the Maildir)",
                implicit.address,
                password.as_str()
            ));
        }
    }
    Ok(said)
}
