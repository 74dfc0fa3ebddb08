//! The CLI's error: a library error, or a problem with what was typed.
//!
//! The library phrases its advice in API terms (`Limits::max_message_size`,
//! `BindOptions::mode`, "a RetryPolicy"), since a Rust caller has no flags.
//! A CLI user has only flags, so [`CliError`] prints a library error with
//! each API name replaced by the flag that sets it ([`FLAGS`]), and adds
//! the `unixws serve --allow-uid` command when an access policy refused us.

use std::fmt;

/// Every way a subcommand can fail; `main` prints it as one line.
#[derive(Debug)]
pub enum CliError {
    /// The library failed; printed in flag terms.
    Lib(unixws::Error),
    /// Input the library never saw (a flag's value, stdin, stdout, a
    /// runtime), phrased for the command line already.
    Usage(String),
}

/// A subcommand's result.
pub type CliResult<T = ()> = Result<T, CliError>;

/// API names the library prints, and the flags that set them. Longer names
/// come first, so that a name is never replaced inside a longer one.
pub const FLAGS: [(&str, &str); 16] = [
    ("BindOptions::mode/owner/group", "--mode/--owner/--group"),
    ("BindOptions::mode", "--mode"),
    ("BindOptions::owner", "--owner"),
    ("BindOptions::group", "--group"),
    ("an AccessPolicy", "--allow-uid/--allow-gid"),
    ("ServerBuilder::policy", "--allow-uid/--allow-gid"),
    ("ServerBuilder::trust_proxy_uid", "--trust-proxy-uid"),
    ("a RetryPolicy", "--retry N"),
    ("Limits::max_message_size", "--max-message"),
    ("Limits::connect_timeout", "--timeout"),
    ("Limits::handshake_timeout", "--timeout"),
    ("Limits::max_header_bytes", "the header size limit"),
    ("Limits::write_timeout", "the write timeout"),
    ("ClientBuilder::read_timeout", "the read timeout"),
    ("ClientBuilder::host", "--host"),
    ("ClientBuilder::header", "--header"),
];

/// `message` with every API name of [`FLAGS`] replaced by its flag.
pub fn in_flag_terms(message: &str) -> String {
    FLAGS.iter().fold(message.to_string(), |text, (api, flag)| {
        text.replace(api, flag)
    })
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) => f.write_str(message),
            CliError::Lib(e) => {
                f.write_str(&in_flag_terms(&e.to_string()))?;
                if let unixws::Error::HandshakeRejected {
                    refused_uid: Some(uid),
                    ..
                } = e
                {
                    write!(f, " (unixws serve --allow-uid {uid})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CliError {}

impl From<unixws::Error> for CliError {
    fn from(e: unixws::Error) -> Self {
        CliError::Lib(e)
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Usage(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        CliError::Usage(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names_become_flags() {
        let e = CliError::Lib(unixws::Error::MessageTooLarge { size: 9, max: 4 });
        let text = e.to_string();
        assert!(text.contains("raise --max-message"), "{text}");
        assert!(!text.contains("Limits::"), "{text}");
        assert_eq!(
            in_flag_terms("BindOptions::mode/owner/group: x; use an AccessPolicy"),
            "--mode/--owner/--group: x; use --allow-uid/--allow-gid"
        );
    }

    #[test]
    fn every_api_name_is_replaced_whole() {
        for (api, flag) in FLAGS {
            let text = in_flag_terms(&format!("raise {api} now"));
            assert_eq!(text, format!("raise {flag} now"), "{api}");
        }
    }

    #[test]
    fn a_policy_refusal_names_the_serve_flag() {
        let e = CliError::Lib(unixws::Error::HandshakeRejected {
            addr: "/run/a.sock".into(),
            status: 403,
            body: "uid 7 is not allowed".into(),
            refused_uid: Some(7),
        });
        assert!(
            e.to_string().ends_with("(unixws serve --allow-uid 7)"),
            "{e}"
        );
    }
}
