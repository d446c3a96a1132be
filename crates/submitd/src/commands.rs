//! The commands that run and exit: `check`, `hash-password`, `user`,
//! `queue`, `import-postfix` and `sendmail`. Each reads what it needs,
//! does one thing, and says what it did or what is wrong.

use std::process::ExitCode;

use submitd_config::Settings;
use submitd_relay::{queue, QueueId, Spool};

use crate::cli::{Cli, Command, QueueCommand, UserCommand};
use crate::{check as check_module, import, sendmail as local_send};

pub(crate) fn sendmail(cli: &Cli) -> ExitCode {
    let Command::Sendmail {
        from_headers,
        sender,
        ignore_dots,
        options,
        recipients,
        ..
    } = &cli.command
    else {
        return ExitCode::from(64);
    };
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("submitd sendmail: {e} (the config must be readable by whoever sends: chmod 644 it)");
            return ExitCode::from(75);
        }
    };
    let Some(local) = &settings.local else {
        eprintln!(
            "submitd sendmail: {}: no [local] socket; add [local] socket = \"/run/submitd/submit.sock\" and restart submitd",
            settings.path.display()
        );
        return ExitCode::from(75);
    };
    let request = local_send::Request {
        from_headers: *from_headers,
        sender: sender.clone(),
        ignore_dots: *ignore_dots || options.iter().any(|o| o == "i"),
        recipients: recipients.clone(),
    };
    let result = local_send::read_stdin().and_then(|input| {
        local_send::send(
            &request,
            &input,
            &local.socket,
            &local.domain,
            &local_send::caller(),
        )
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("submitd sendmail: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

pub(crate) fn import_postfix(
    postfix_dir: &std::path::Path,
    out: &std::path::Path,
    force: bool,
) -> Result<(), String> {
    let imported = import::import(postfix_dir)?;
    import::write(&imported, out, force)?;
    println!("carried over:");
    for (postfix, submitd) in &imported.carried {
        println!("  {postfix} -> {submitd}");
    }
    println!("not carried over:");
    for (postfix, why) in &imported.not_carried {
        println!("  {postfix}: {why}");
    }
    println!(
        "written: {}/submitd.toml, users{}; next: submitd check --connect --config {}/submitd.toml",
        out.display(),
        if imported.passwords.is_empty() {
            ""
        } else {
            " and upstream password files (0600)"
        },
        out.display()
    );
    Ok(())
}

pub(crate) fn hash_password() -> Result<(), String> {
    let password = submitd_auth::edit::read_password_no_echo("Password: ")
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let hash = submitd_auth::hash_password(password.as_bytes()).map_err(|e| e.to_string())?;
    println!("{hash}");
    Ok(())
}

pub(crate) fn user_command(settings: &Settings, command: &UserCommand) -> Result<(), String> {
    use submitd_auth::edit;
    let path = &settings.auth.users;
    let read = || {
        edit::read_password_no_echo("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"))
    };
    match command {
        UserCommand::Add { name, send_as } => {
            edit::add_user(path, name, read()?.as_bytes(), send_as).map_err(|e| e.to_string())
        }
        UserCommand::Passwd { name } => {
            edit::set_password(path, name, read()?.as_bytes()).map_err(|e| e.to_string())
        }
        UserCommand::Del { name } => edit::remove_user(path, name).map_err(|e| e.to_string()),
        UserCommand::List => {
            for user in edit::list_users(path).map_err(|e| e.to_string())? {
                println!(
                    "{}\tpassword={}\tsend-as={}\tapp-passwords={}",
                    user.name,
                    if user.has_password { "set" } else { "none" },
                    user.send_as,
                    user.app_passwords.join(",")
                );
            }
            Ok(())
        }
        UserCommand::AppPassword {
            name,
            label,
            revoke: true,
        } => edit::revoke_app_password(path, name, label).map_err(|e| e.to_string()),
        UserCommand::AppPassword {
            name,
            label,
            revoke: false,
        } => {
            let password = edit::add_app_password(path, name, label).map_err(|e| e.to_string())?;
            println!("{}", password.as_str());
            Ok(())
        }
    }
}

fn queue_id(text: &str) -> Result<QueueId, String> {
    QueueId::parse(text)
        .ok_or_else(|| format!("{text:?} is not a queue id (hex, as `queue list` shows)"))
}

pub(crate) fn queue_command(settings: &Settings, command: &QueueCommand) -> Result<(), String> {
    // Beside a running server: no lock, no recovery.
    let spool = Spool::attach(&settings.queue.directory).map_err(|e| e.to_string())?;
    match command {
        QueueCommand::List => {
            let entries = queue::list(&spool).map_err(|e| e.to_string())?;
            for e in &entries {
                let sender = e.envelope.mail_from.address();
                println!(
                    "{}\t{} octets\tattempts={}\tfrom=<{sender}>\trecipients={}",
                    e.id,
                    e.size,
                    e.state.attempts,
                    e.envelope.recipients.len()
                );
            }
            let f = queue::figures(&entries);
            println!(
                "{} messages ({} deferred), recipients: {} pending, {} delivered, {} failed; {} octets",
                f.messages, f.deferred, f.pending, f.delivered, f.failed, f.octets
            );
            Ok(())
        }
        QueueCommand::Show { id } => {
            let entry = queue::show(&spool, &queue_id(id)?).map_err(|e| e.to_string())?;
            println!(
                "id: {}\nuser: {}\nmail-from: {}\nsize: {}",
                entry.id,
                entry.envelope.user.as_deref().unwrap_or("-"),
                entry.envelope.mail_from,
                entry.size
            );
            for (rcpt, state) in entry
                .envelope
                .recipients
                .iter()
                .zip(&entry.state.recipients)
            {
                println!("rcpt: {rcpt}\t{state:?}");
            }
            println!(
                "attempts: {}\nnext-try: {}",
                entry.state.attempts, entry.state.next_try
            );
            Ok(())
        }
        QueueCommand::Flush { id } => {
            let id = id.as_deref().map(queue_id).transpose()?;
            let n = queue::flush(&spool, id.as_ref()).map_err(|e| e.to_string())?;
            println!("{n} message(s) due now; a running server picks them up within a minute");
            Ok(())
        }
        QueueCommand::Delete { id } => {
            queue::delete(&spool, &queue_id(id)?).map_err(|e| e.to_string())
        }
    }
}

pub(crate) fn check(settings: &Settings, connect: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let found = runtime.block_on(check_module::run(settings, connect));
    found.print();
    match found.problems() {
        0 => Ok(()),
        n => Err(format!("{}: {n} problem(s) found", settings.path.display())),
    }
}
