//! `submitd client-config`: what mail clients need to find this server by
//! themselves, written from the config's hostname and listeners.
//!
//! * Thunderbird's autoconfig file (`mail/config-v1.1.xml`, outgoing
//!   servers only), which Thunderbird and K-9 Mail fetch from
//!   `https://autoconfig.DOMAIN/mail/config-v1.1.xml`;
//! * the DNS SRV records of RFC 6186, `_submissions._tcp` (implicit TLS)
//!   before `_submission._tcp` (STARTTLS) as RFC 8314 §5.1 asks;
//! * an Apple configuration profile (`.mobileconfig`) for Mail on iOS and
//!   macOS. Apple's mail payload needs an incoming server too: it names
//!   `--imap-host` (default: this hostname) on port 993 with TLS.

use std::fmt::Write as _;

use submitd_config::Settings;
use submitd_smtp::Transport;

/// What to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// Thunderbird's autoconfig XML.
    Autoconfig,
    /// DNS SRV records (zone-file lines).
    Srv,
    /// An Apple configuration profile.
    Apple,
}

/// The submission ports clients should use: (implicit TLS, STARTTLS).
fn ports(settings: &Settings) -> (Option<u16>, Option<u16>) {
    let port = |transport| {
        settings
            .listen
            .iter()
            .find(|l| l.transport == transport)
            .map(|l| l.address.port())
    };
    (port(Transport::ImplicitTls), port(Transport::StartTls))
}

/// `text` safe inside XML character data and attribute values.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The mail domain: `given`, else the hostname without its first label.
pub(crate) fn mail_domain(settings: &Settings, given: Option<&str>) -> Result<String, String> {
    let domain = match given {
        Some(domain) => domain.to_owned(),
        None => match settings.hostname.split_once('.') {
            Some((_, rest)) if rest.contains('.') => rest.to_owned(),
            _ => settings.hostname.clone(),
        },
    };
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(format!(
            "{domain:?} is not a domain name; give the mail domain with --domain example.org"
        ));
    }
    Ok(domain.to_ascii_lowercase())
}

/// Thunderbird's autoconfig file.
pub(crate) fn autoconfig(settings: &Settings, domain: &str) -> String {
    let (implicit, starttls) = ports(settings);
    let host = xml(&settings.hostname);
    let domain = xml(domain);
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!-- Serve as https://autoconfig.{domain}/mail/config-v1.1.xml (or\n     \
         https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml).\n     \
         Outgoing servers only: add the incoming (IMAP) server of your setup. -->\n\
         <clientConfig version=\"1.1\">\n  \
         <emailProvider id=\"{domain}\">\n    \
         <domain>{domain}</domain>\n    \
         <displayName>{domain}</displayName>\n    \
         <displayShortName>{domain}</displayShortName>\n"
    );
    for (port, socket) in [(implicit, "SSL"), (starttls, "STARTTLS")] {
        if let Some(port) = port {
            let _ = write!(
                out,
                "    <outgoingServer type=\"smtp\">\n      \
                 <hostname>{host}</hostname>\n      \
                 <port>{port}</port>\n      \
                 <socketType>{socket}</socketType>\n      \
                 <authentication>password-cleartext</authentication>\n      \
                 <username>%EMAILLOCALPART%</username>\n    \
                 </outgoingServer>\n"
            );
        }
    }
    out.push_str("  </emailProvider>\n</clientConfig>\n");
    out
}

/// RFC 6186 SRV records for a zone file: implicit TLS first (priority 0),
/// STARTTLS after (priority 10).
pub(crate) fn srv(settings: &Settings, domain: &str) -> String {
    let (implicit, starttls) = ports(settings);
    let mut out =
        format!("; RFC 6186 / RFC 8314 submission records for {domain} (zone-file lines)\n");
    for (service, priority, port) in [("_submissions", 0, implicit), ("_submission", 10, starttls)]
    {
        if let Some(port) = port {
            let _ = writeln!(
                out,
                "{service}._tcp.{domain}. 3600 IN SRV {priority} 1 {port} {}.",
                settings.hostname
            );
        }
    }
    out
}

/// A random version 4 UUID, upper-case as Apple writes them.
fn uuid() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Without OS randomness: the time and the pid keep it unique enough
        // for a payload id (not a secret).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (now ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An Apple configuration profile with one mail payload.
pub(crate) fn apple(settings: &Settings, domain: &str, imap_host: &str) -> String {
    let (implicit, starttls) = ports(settings);
    // Apple's payload has one outgoing server: implicit TLS if there is a
    // listener for it, else STARTTLS (Mail's "Use SSL" means TLS either way).
    let port = implicit.or(starttls).unwrap_or(465);
    let (host, domain, imap) = (xml(&settings.hostname), xml(domain), xml(imap_host));
    let reverse: Vec<&str> = domain.split('.').rev().collect();
    let identifier = format!("{}.submitd", reverse.join("."));
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Mail on iOS and macOS: open this .mobileconfig on the device. The
     person is asked for their address, login and passwords at install. -->
<plist version="1.0">
<dict>
  <key>PayloadContent</key>
  <array>
    <dict>
      <key>PayloadType</key><string>com.apple.mail.managed</string>
      <key>PayloadVersion</key><integer>1</integer>
      <key>PayloadIdentifier</key><string>{identifier}.mail</string>
      <key>PayloadUUID</key><string>{mail_uuid}</string>
      <key>PayloadDisplayName</key><string>Mail at {domain}</string>
      <key>EmailAccountDescription</key><string>{domain}</string>
      <key>EmailAccountType</key><string>EmailTypeIMAP</string>
      <key>IncomingMailServerHostName</key><string>{imap}</string>
      <key>IncomingMailServerPortNumber</key><integer>993</integer>
      <key>IncomingMailServerUseSSL</key><true/>
      <key>IncomingMailServerAuthentication</key><string>EmailAuthPassword</string>
      <key>OutgoingMailServerHostName</key><string>{host}</string>
      <key>OutgoingMailServerPortNumber</key><integer>{port}</integer>
      <key>OutgoingMailServerUseSSL</key><true/>
      <key>OutgoingMailServerAuthentication</key><string>EmailAuthPassword</string>
      <key>OutgoingPasswordSameAsIncomingPassword</key><true/>
    </dict>
  </array>
  <key>PayloadType</key><string>Configuration</string>
  <key>PayloadVersion</key><integer>1</integer>
  <key>PayloadIdentifier</key><string>{identifier}</string>
  <key>PayloadUUID</key><string>{profile_uuid}</string>
  <key>PayloadDisplayName</key><string>Mail at {domain}</string>
  <key>PayloadDescription</key><string>Sending through {host} (submitd)</string>
</dict>
</plist>
"#,
        mail_uuid = uuid(),
        profile_uuid = uuid(),
    )
}

/// Prints what `only` asks for (all three, headed, if nothing).
pub(crate) fn print(
    settings: &Settings,
    domain: Option<&str>,
    imap_host: Option<&str>,
    only: Option<Kind>,
) -> Result<(), String> {
    let domain = mail_domain(settings, domain)?;
    let imap = imap_host.unwrap_or(&settings.hostname);
    let text = |kind| match kind {
        Kind::Autoconfig => autoconfig(settings, &domain),
        Kind::Srv => srv(settings, &domain),
        Kind::Apple => apple(settings, &domain, imap),
    };
    match only {
        Some(kind) => print!("{}", text(kind)),
        None => {
            for (kind, title) in [
                (Kind::Autoconfig, format!("mail/config-v1.1.xml: serve at https://autoconfig.{domain}/mail/config-v1.1.xml (--only autoconfig)")),
                (Kind::Srv, format!("DNS: add to the zone of {domain} (--only srv)")),
                (Kind::Apple, "submitd.mobileconfig: for Mail on iOS and macOS (--only apple)".to_owned()),
            ] {
                println!("==> {title}");
                println!("{}", text(kind));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let (a, b) = (uuid(), uuid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "A" | "B"));
    }

    #[test]
    fn xml_escapes_everything_that_matters() {
        assert_eq!(xml("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
