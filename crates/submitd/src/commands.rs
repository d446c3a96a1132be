//! The commands that run and exit: `check`, `hash-password`, `user`,
//! `queue`, `import-postfix` and `sendmail`. Each reads what it needs,
//! does one thing, and says what it did or what is wrong.

use std::process::ExitCode;

use submitd_config::Settings;
use submitd_relay::{queue, QueueId, Spool};
use zeroize::Zeroizing;

use crate::cli::{Cli, Command, OAuth2Command, QueueCommand, UserCommand};
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

/// The longest password taken from standard input.
const MAX_PASSWORD: usize = 4096;

/// A new password: from the terminal without echo, or (`stdin`) the first
/// line of standard input, which must not be a terminal (it would echo).
fn new_password(stdin: bool) -> Result<Zeroizing<String>, String> {
    use std::io::{BufRead, IsTerminal, Read};
    if !stdin {
        return submitd_auth::edit::read_password_no_echo("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"));
    }
    if std::io::stdin().is_terminal() {
        return Err("--password-stdin: standard input is a terminal, where the password would echo; \
                    pipe it in (printf '%s\\n' \"$PASSWORD\" | submitd …), or leave out --password-stdin to be asked without echo"
            .into());
    }
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .take(MAX_PASSWORD as u64 + 2)
        .read_line(&mut line)
        .map_err(|e| format!("--password-stdin: cannot read standard input: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(
            "--password-stdin: the first line of standard input is empty; give the password on it"
                .into(),
        );
    }
    if password.len() > MAX_PASSWORD {
        return Err(format!(
            "--password-stdin: the password is longer than {MAX_PASSWORD} octets"
        ));
    }
    Ok(Zeroizing::new(password.to_owned()))
}

pub(crate) fn hash_password(stdin: bool) -> Result<(), String> {
    let password = new_password(stdin)?;
    let hash = submitd_auth::hash_password(password.as_bytes()).map_err(|e| e.to_string())?;
    println!("{hash}");
    Ok(())
}

pub(crate) fn user_command(settings: &Settings, command: &UserCommand) -> Result<(), String> {
    use submitd_auth::edit;
    let path = &settings.auth.users;
    match command {
        UserCommand::Add {
            name,
            send_as,
            password_stdin,
        } => {
            let password = new_password(*password_stdin)?;
            edit::add_user(path, name, password.as_bytes(), send_as).map_err(|e| e.to_string())
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let password = new_password(*password_stdin)?;
            edit::set_password(path, name, password.as_bytes()).map_err(|e| e.to_string())
        }
        UserCommand::Del { name } => edit::remove_user(path, name).map_err(|e| e.to_string()),
        UserCommand::List { json } => {
            let users = edit::list_users(path).map_err(|e| e.to_string())?;
            if *json {
                let list: Vec<serde_json::Value> = users
                    .iter()
                    .map(|user| {
                        serde_json::json!({
                            "name": user.name,
                            "password": user.has_password,
                            "send_as": user.send_as.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
                            "app_passwords": user.app_passwords,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
                return Ok(());
            }
            for user in users {
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
            ..
        } => edit::revoke_app_password(path, name, label).map_err(|e| e.to_string()),
        UserCommand::AppPassword {
            name,
            label,
            revoke: false,
            quiet,
        } => {
            let password = edit::add_app_password(path, name, label).map_err(|e| e.to_string())?;
            if *quiet {
                println!("{}", password.as_str());
            } else {
                println!(
                    "app password for {name} on {label:?} (shown once; the device logs in as {name} with it):\n{}",
                    password.as_str()
                );
            }
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

/// The OAuth2 upstreams of `route` (`default`, or a sender route's name or
/// one of its senders), each once.
fn oauth2_endpoints<'a>(
    settings: &'a Settings,
    route: Option<&str>,
) -> Vec<&'a submitd_config::OAuth2Settings> {
    use submitd_config::{RouteSettings, UpstreamAuthSettings};
    let mut found: Vec<&submitd_config::OAuth2Settings> = Vec::new();
    let mut add = |u: &'a submitd_config::UpstreamSettings| {
        if let UpstreamAuthSettings::XOAuth2 { oauth2, .. } = &u.auth {
            if !found.iter().any(|f| f.endpoint == oauth2.endpoint) {
                found.push(oauth2);
            }
        }
    };
    if route.is_none_or(|r| r == "default") {
        if let RouteSettings::Upstreams(list) = &settings.relay.route {
            list.iter().for_each(&mut add);
        }
    }
    for r in &settings.relay.sender_routes {
        let named = route.is_none_or(|want| {
            r.name == want || r.senders.iter().any(|s| s.eq_ignore_ascii_case(want))
        });
        if named {
            add(&r.upstream);
        }
    }
    found
}

pub(crate) fn oauth2_command(settings: &Settings, command: &OAuth2Command) -> Result<(), String> {
    use std::io::Write as _;
    use submitd_oauth2::{device, Grant, Http};
    match command {
        OAuth2Command::Authorize { route, browser } => {
            let endpoints: Vec<_> = oauth2_endpoints(settings, Some(route))
                .into_iter()
                .filter(|o| matches!(o.endpoint.grant, Grant::RefreshToken { .. }))
                .collect();
            if endpoints.is_empty() {
                return Err(format!(
                    "{}: no upstream of route {route:?} has an oauth2 table with grant = \"refresh_token\" (routes: \"default\" and each [[relay.sender_upstream]]'s name or sender)",
                    settings.path.display()
                ));
            }
            for oauth2 in endpoints {
                let endpoint = &oauth2.endpoint;
                let http = Http::new(oauth2.ca_file.as_deref(), oauth2.timeout)
                    .map_err(|e| format!("route {route}: {e}"))?;
                let mut out = std::io::stdout();
                if *browser {
                    let authorization =
                        submitd_oauth2::code::start(endpoint).map_err(|e| e.to_string())?;
                    let _ = writeln!(
                        out,
                        "To authorize route {route} ({}): open this address in a browser and sign in as the mailbox this route sends as:\n{}",
                        endpoint.client_id, authorization.url
                    );
                    let _ = writeln!(
                        out,
                        "If the browser is on another machine, it then fails to load {}?code=...: paste that whole address here and press Enter.",
                        authorization.redirect_uri
                    );
                    let _ = out.flush();
                    authorization
                        .finish(endpoint, &http, std::io::BufReader::new(std::io::stdin()))
                        .map_err(|e| e.to_string())?;
                } else {
                    let authorization =
                        device::start(endpoint, &http).map_err(|e| e.to_string())?;
                    let _ = writeln!(
                        out,
                        "To authorize route {route} ({}): open {} and enter the code {}",
                        endpoint.client_id, authorization.verification_uri, authorization.user_code
                    );
                    if let Some(complete) = &authorization.verification_uri_complete {
                        let _ = writeln!(out, "(or open {complete})");
                    }
                    let _ = writeln!(
                        out,
                        "Sign in there as the mailbox this route sends as. Waiting up to {} minutes...",
                        authorization.expires_in.as_secs().div_ceil(60)
                    );
                    let _ = out.flush();
                    device::finish(endpoint, &http, &authorization, &mut std::thread::sleep)
                        .map_err(|e| e.to_string())?;
                }
                if let Grant::RefreshToken { file } = &endpoint.grant {
                    let _ = writeln!(
                        out,
                        "Authorized. The refresh token is in {}; the running daemon uses it from its next delivery (no restart needed).",
                        file.display()
                    );
                }
            }
            Ok(())
        }
        OAuth2Command::Token => {
            let endpoints = oauth2_endpoints(settings, None);
            if endpoints.is_empty() {
                return Err(format!(
                    "{}: no upstream uses auth = \"xoauth2\"",
                    settings.path.display()
                ));
            }
            let mut failed = 0;
            for oauth2 in endpoints {
                let endpoint = &oauth2.endpoint;
                let got = Http::new(oauth2.ca_file.as_deref(), oauth2.timeout)
                    .map_err(|e| e.to_string())
                    .and_then(|http| endpoint.fetch(&http).map_err(|e| e.to_string()));
                match got {
                    Ok(token) => println!(
                        "route {}: access token fetched, good for {}s",
                        endpoint.route,
                        token.lifetime.as_secs()
                    ),
                    Err(e) => {
                        failed += 1;
                        println!("error: {e}");
                    }
                }
            }
            match failed {
                0 => Ok(()),
                n => Err(format!("{n} token request(s) failed")),
            }
        }
    }
}
