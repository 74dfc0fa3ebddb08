//! Addresses: one parser for every form a user may write, shared by the
//! library, the CLI and the tests.
//!
//! | form | meaning |
//! |---|---|
//! | `ws+unix:///run/app.sock` | Unix socket at a path, request path `/` |
//! | `ws+unix:///run/app.sock:/chat?room=1` | socket path, then `:` and the HTTP request path and query (Node `ws` convention) |
//! | `unix:/run/app.sock`, `unix:///run/app.sock` | Unix socket path |
//! | `/run/app.sock`, `./app.sock`, `../app.sock` | a bare path is a Unix socket path |
//! | `@name`, `ws+unix://@name` | Linux abstract-namespace socket (no file) |
//! | `ws://127.0.0.1:9001/path`, `tcp:127.0.0.1:9001`, `127.0.0.1:9001` | TCP |
//!
//! [`Address`] implements [`FromStr`] and [`Display`]; displaying an address
//! and parsing the text again gives the same value. In the `ws+unix://`
//! form, `%`, `:`, `?`, `#` and white space inside the socket path are
//! percent-encoded so that the path and the request part can always be told
//! apart.

use std::fmt::{self, Display, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::Error;

/// The longest socket path Linux accepts: `sun_path` holds 108 bytes, one of
/// which is the terminating NUL.
pub const MAX_UNIX_PATH_LEN: usize = 107;

/// Where a socket lives: a file path, an abstract name, or a TCP host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix socket file at this path (absolute or relative to the working directory).
    Path(PathBuf),
    /// A Linux abstract-namespace socket: no file, no file permissions.
    Abstract(String),
    /// A TCP host (name or IP literal, without brackets) and port.
    Tcp {
        /// Host name or IP literal (an IPv6 literal is stored without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
}

/// A WebSocket endpoint plus the HTTP request target (path and query) to ask for.
///
/// ```
/// use unixws::{Address, Endpoint};
/// let addr: Address = "ws+unix:///run/app.sock:/chat?room=1".parse()?;
/// assert_eq!(addr.endpoint(), &Endpoint::Path("/run/app.sock".into()));
/// assert_eq!(addr.resource(), "/chat?room=1");
/// assert_eq!(addr.to_string(), "ws+unix:///run/app.sock:/chat?room=1");
/// # Ok::<(), unixws::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    endpoint: Endpoint,
    resource: String,
}

impl Address {
    /// An address from its parts; `resource` is the request path and query
    /// (for example `/chat?room=1`) and must start with `/`.
    pub fn new(endpoint: Endpoint, resource: impl Into<String>) -> Result<Self, Error> {
        let resource = resource.into();
        let input = resource.clone();
        validate_endpoint(&endpoint, &input)?;
        let resource = validate_resource(&resource, &input)?;
        Ok(Self { endpoint, resource })
    }

    /// A Unix socket file address with request path `/`.
    pub fn unix(path: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::new(Endpoint::Path(path.into()), "/")
    }

    /// Where the socket lives.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The HTTP request target: path and optional query, always starting with `/`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The same endpoint with another request target.
    pub fn with_resource(&self, resource: &str) -> Result<Self, Error> {
        Self::new(self.endpoint.clone(), resource)
    }

    /// The socket file path, if this is a path-based Unix socket.
    pub fn unix_path(&self) -> Option<&Path> {
        match &self.endpoint {
            Endpoint::Path(p) => Some(p),
            _ => None,
        }
    }

    /// True for Unix sockets (path or abstract), false for TCP.
    pub fn is_unix(&self) -> bool {
        !matches!(self.endpoint, Endpoint::Tcp { .. })
    }

    /// The `Host` header a client sends by default: `localhost` over a Unix
    /// socket, `host:port` over TCP.
    pub fn default_host_header(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp { host, port } => format!("{}:{port}", bracket_host(host)),
            _ => "localhost".to_string(),
        }
    }

    /// A `ws://` URL for the handshake request line (`ws://localhost/chat` over UDS).
    pub fn request_url(&self, host: &str) -> String {
        format!("ws://{host}{}", self.resource)
    }

    /// A short human name of the endpoint alone, for messages: the path,
    /// `@name` or `host:port`.
    pub fn endpoint_display(&self) -> String {
        match &self.endpoint {
            Endpoint::Path(p) => p.display().to_string(),
            Endpoint::Abstract(name) => format!("@{name}"),
            Endpoint::Tcp { host, port } => format!("{}:{port}", bracket_host(host)),
        }
    }
}

/// Anything that names an [`Address`]: an `Address`, or text to parse.
pub trait ToAddress {
    /// The address, or a parse error naming the input.
    fn to_address(self) -> Result<Address, Error>;
}

impl ToAddress for Address {
    fn to_address(self) -> Result<Address, Error> {
        Ok(self)
    }
}

impl ToAddress for &Address {
    fn to_address(self) -> Result<Address, Error> {
        Ok(self.clone())
    }
}

impl ToAddress for &str {
    fn to_address(self) -> Result<Address, Error> {
        self.parse()
    }
}

impl ToAddress for String {
    fn to_address(self) -> Result<Address, Error> {
        self.parse()
    }
}

impl ToAddress for &String {
    fn to_address(self) -> Result<Address, Error> {
        self.parse()
    }
}

/// A path is always a Unix socket file, never parsed as a URL.
impl ToAddress for &Path {
    fn to_address(self) -> Result<Address, Error> {
        Address::unix(self)
    }
}

/// A path is always a Unix socket file, never parsed as a URL.
impl ToAddress for PathBuf {
    fn to_address(self) -> Result<Address, Error> {
        Address::unix(self)
    }
}

/// A path is always a Unix socket file, never parsed as a URL.
impl ToAddress for &PathBuf {
    fn to_address(self) -> Result<Address, Error> {
        Address::unix(self.as_path())
    }
}

fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                write!(f, "ws://{}:{port}{}", bracket_host(host), self.resource)
            }
            Endpoint::Path(path) => {
                f.write_str("ws+unix://")?;
                let text = path.to_string_lossy();
                // A leading `@` would read back as an abstract name.
                let rest = match text.strip_prefix('@') {
                    Some(rest) => {
                        f.write_str("%40")?;
                        rest
                    }
                    None => &text,
                };
                write_escaped(f, rest)?;
                self.fmt_resource_suffix(f)
            }
            Endpoint::Abstract(name) => {
                f.write_str("ws+unix://@")?;
                write_escaped(f, name)?;
                self.fmt_resource_suffix(f)
            }
        }
    }
}

/// Percent-encodes what would end or confuse the socket part of a
/// `ws+unix://` URL: `%`, `:`, `?`, `#`, white space and control characters.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if matches!(c, '%' | ':' | '?' | '#') || c.is_whitespace() || c.is_control() {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                write!(f, "%{b:02X}")?;
            }
        } else {
            f.write_char(c)?;
        }
    }
    Ok(())
}

impl Address {
    fn fmt_resource_suffix(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resource == "/" {
            Ok(())
        } else {
            write!(f, ":{}", self.resource)
        }
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        parse(input)
    }
}

fn bad(input: &str, problem: impl Into<String>) -> Error {
    Error::Address {
        input: input.to_string(),
        problem: problem.into(),
    }
}

fn parse(input: &str) -> Result<Address, Error> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(bad(
            input,
            "the address is empty; write a socket path like ./app.sock or a URL like ws+unix:///run/app.sock",
        ));
    }
    if let Some(rest) = strip_prefix_ci(trimmed, "ws+unix://") {
        return parse_ws_unix(input, rest);
    }
    if strip_prefix_ci(trimmed, "wss+unix://").is_some() {
        return Err(bad(
            input,
            "TLS over a Unix socket is not supported (the socket never leaves this machine); use ws+unix:// and protect the socket with its file mode or an access policy",
        ));
    }
    if let Some(rest) = strip_prefix_ci(trimmed, "ws://") {
        return parse_ws_tcp(input, rest);
    }
    if strip_prefix_ci(trimmed, "wss://").is_some() {
        return Err(bad(
            input,
            "wss:// (TLS) is not supported by unixws; use ws:// and terminate TLS in front of it (for example with nginx)",
        ));
    }
    if let Some(rest) = strip_prefix_ci(trimmed, "unix:") {
        // `unix:///p` and `unix:/p` both name the path `/p`.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        return unix_address(input, path, "/");
    }
    if let Some(rest) = strip_prefix_ci(trimmed, "tcp:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (endpoint, resource) = parse_host_port(input, rest, None)?;
        return Address::new(endpoint, resource).map_err(|e| rename_input(e, input));
    }
    if let Some(scheme_end) = trimmed.find("://") {
        let scheme = &trimmed[..scheme_end];
        return Err(bad(
            input,
            format!("unknown scheme `{scheme}`; use ws+unix:// for a Unix socket or ws:// for TCP"),
        ));
    }
    if let Some(name) = trimmed.strip_prefix('@') {
        return abstract_address(input, name, "/");
    }
    if trimmed.starts_with('/') || trimmed.starts_with("./") || trimmed.starts_with("../") {
        return unix_address(input, trimmed, "/");
    }
    if looks_like_host_port(trimmed) {
        let (endpoint, resource) = parse_host_port(input, trimmed, None)?;
        return Address::new(endpoint, resource).map_err(|e| rename_input(e, input));
    }
    Err(bad(
        input,
        format!(
            "cannot tell whether this is a socket path or a TCP address; write ./{trimmed} for a socket file in this directory, or host:port for TCP"
        ),
    ))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn rename_input(err: Error, input: &str) -> Error {
    match err {
        Error::Address { problem, .. } => bad(input, problem),
        other => other,
    }
}

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// `rest` is what follows `ws+unix://`: a socket path (or `@name`), then
/// optionally `:` and the request target, or `?query` for the root path.
fn parse_ws_unix(input: &str, rest: &str) -> Result<Address, Error> {
    let (raw_path, resource) = match rest.find(':') {
        Some(i) => (&rest[..i], rest[i + 1..].to_string()),
        None => match rest.find('?') {
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        },
    };
    if raw_path.contains('#') {
        return Err(bad(
            input,
            "a URL fragment (#) has no meaning in a WebSocket address; remove it or percent-encode it as %23",
        ));
    }
    let resource = if resource.starts_with('?') {
        format!("/{resource}")
    } else {
        resource
    };
    // A literal `@` starts an abstract name; an escaped one (`%40`) is
    // part of a file name.
    match raw_path.strip_prefix('@') {
        Some(name) => abstract_address(input, &percent_decode(input, name)?, &resource),
        None => unix_address(input, &percent_decode(input, raw_path)?, &resource),
    }
}

fn percent_decode(input: &str, s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => {
                    return Err(bad(
                        input,
                        "a `%` in the socket path must start a percent-escape like %3A; write %25 for a literal %",
                    ))
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        bad(
            input,
            "the percent-escapes in the socket path do not decode to UTF-8",
        )
    })
}

fn unix_address(input: &str, path: &str, resource: &str) -> Result<Address, Error> {
    Address::new(Endpoint::Path(PathBuf::from(path)), resource).map_err(|e| rename_input(e, input))
}

fn abstract_address(input: &str, name: &str, resource: &str) -> Result<Address, Error> {
    Address::new(Endpoint::Abstract(name.to_string()), resource).map_err(|e| rename_input(e, input))
}

fn parse_ws_tcp(input: &str, rest: &str) -> Result<Address, Error> {
    let (endpoint, resource) = parse_host_port(input, rest, Some(80))?;
    Address::new(endpoint, resource).map_err(|e| rename_input(e, input))
}

/// Parses `host:port` then an optional `/path?query`; `default_port` is used when the port is
/// absent (only the `ws://` form has one).
fn parse_host_port(
    input: &str,
    rest: &str,
    default_port: Option<u16>,
) -> Result<(Endpoint, String), Error> {
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, resource) = rest.split_at(split);
    let resource = match resource {
        "" => "/".to_string(),
        r if r.starts_with('?') => format!("/{r}"),
        r => r.to_string(),
    };
    if authority.contains('@') {
        return Err(bad(input, "user credentials in the URL are not supported; send them as a header with -H 'Authorization: ...'"));
    }
    let (host, port_text) = if let Some(after) = authority.strip_prefix('[') {
        let end = after.find(']').ok_or_else(|| {
            bad(
                input,
                "an IPv6 address must be closed with `]`, as in [::1]:9001",
            )
        })?;
        let host = &after[..end];
        let tail = &after[end + 1..];
        match tail.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if tail.is_empty() => (host, None),
            None => return Err(bad(input, "expected `:port` after the IPv6 address")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad(
            input,
            "the host is empty; write for example 127.0.0.1:9001",
        ));
    }
    if host.contains(':') && !authority.starts_with('[') {
        return Err(bad(
            input,
            "an IPv6 address needs brackets, as in [::1]:9001",
        ));
    }
    let port = match (port_text, default_port) {
        (Some(p), _) => parse_port(input, p)?,
        (None, Some(d)) => d,
        (None, None) => {
            return Err(bad(
                input,
                "the port is missing; write host:port, for example 127.0.0.1:9001",
            ))
        }
    };
    Ok((
        Endpoint::Tcp {
            host: host.to_string(),
            port,
        },
        resource,
    ))
}

fn parse_port(input: &str, text: &str) -> Result<u16, Error> {
    match text.parse::<u16>() {
        Ok(p) => Ok(p),
        Err(_) => Err(bad(
            input,
            format!(
                "bad port `{text}`: a port is a number from 1 to 65535 (0 lets a server pick one)"
            ),
        )),
    }
}

fn validate_endpoint(endpoint: &Endpoint, input: &str) -> Result<(), Error> {
    match endpoint {
        Endpoint::Path(path) => {
            let len = path.as_os_str().len();
            if len == 0 {
                return Err(bad(
                    input,
                    "the socket path is empty; write a path such as /run/app.sock",
                ));
            }
            if path.as_os_str().as_encoded_bytes().contains(&0) {
                return Err(bad(input, "the socket path contains a NUL byte"));
            }
            if len > MAX_UNIX_PATH_LEN {
                return Err(bad(
                    input,
                    format!(
                        "the socket path is {len} bytes long, over the {MAX_UNIX_PATH_LEN}-byte limit of Unix sockets (sun_path); use a shorter path, such as one in /run or /tmp, or a relative path from a nearer working directory"
                    ),
                ));
            }
        }
        Endpoint::Abstract(name) => {
            if name.is_empty() {
                return Err(bad(input, "the abstract socket name after `@` is empty"));
            }
            if name.len() > MAX_UNIX_PATH_LEN {
                return Err(bad(
                    input,
                    format!(
                        "the abstract socket name is {} bytes long, over the {MAX_UNIX_PATH_LEN}-byte limit; use a shorter name",
                        name.len()
                    ),
                ));
            }
        }
        Endpoint::Tcp { host, .. } => {
            if host.is_empty() {
                return Err(bad(input, "the host is empty"));
            }
            if host
                .chars()
                .any(|c| c.is_whitespace() || "/?#@[]".contains(c))
            {
                return Err(bad(input, format!("`{host}` is not a valid host name")));
            }
        }
    }
    Ok(())
}

fn validate_resource(resource: &str, input: &str) -> Result<String, Error> {
    if !resource.starts_with('/') {
        return Err(bad(
            input,
            format!("the request path `{resource}` must start with `/`, as in ws+unix:///run/app.sock:/chat"),
        ));
    }
    if resource.contains('#') {
        return Err(bad(
            input,
            "a URL fragment (#) has no meaning in a WebSocket request; remove it",
        ));
    }
    if resource
        .parse::<tungstenite::http::uri::PathAndQuery>()
        .is_err()
        || resource
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            input,
            format!("the request path `{resource}` has characters that are not allowed in a URL; percent-encode them"),
        ));
    }
    Ok(resource.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Address {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match s.parse::<Address>() {
            Ok(a) => panic!("{s} parsed as {a:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_form_in_the_design_table_parses() {
        let root = Address::unix("/run/app.sock").unwrap();
        assert_eq!(p("ws+unix:///run/app.sock"), root);
        assert_eq!(p("unix:/run/app.sock"), root);
        assert_eq!(p("unix:///run/app.sock"), root);
        assert_eq!(p("/run/app.sock"), root);
        let chat = p("ws+unix:///run/app.sock:/chat?room=1");
        assert_eq!(chat.unix_path(), Some(Path::new("/run/app.sock")));
        assert_eq!(chat.resource(), "/chat?room=1");
        assert_eq!(p("./app.sock").unix_path(), Some(Path::new("./app.sock")));
        assert_eq!(
            p("ws+unix://./demo.sock").unix_path(),
            Some(Path::new("./demo.sock"))
        );
        assert_eq!(p("@name").endpoint(), &Endpoint::Abstract("name".into()));
        assert_eq!(p("ws+unix://@name:/x").resource(), "/x");
        let tcp = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 9001,
        };
        assert_eq!(p("ws://127.0.0.1:9001/path").endpoint(), &tcp);
        assert_eq!(p("ws://127.0.0.1:9001/path").resource(), "/path");
        assert_eq!(p("tcp:127.0.0.1:9001").endpoint(), &tcp);
        assert_eq!(p("127.0.0.1:9001").endpoint(), &tcp);
        assert_eq!(p("localhost:80").endpoint_display(), "localhost:80");
        assert_eq!(p("ws://[::1]:9001/").endpoint_display(), "[::1]:9001");
        assert_eq!(p("ws://localhost/").endpoint_display(), "localhost:80");
    }

    #[test]
    fn query_without_request_path_goes_to_root() {
        assert_eq!(p("ws+unix:///a.sock?x=1").resource(), "/?x=1");
        assert_eq!(p("ws+unix:///a.sock:?x=1").resource(), "/?x=1");
        assert_eq!(p("ws://h:1?x=1").resource(), "/?x=1");
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(
            p("unix:/run/app.sock").to_string(),
            "ws+unix:///run/app.sock"
        );
        assert_eq!(p("@name").to_string(), "ws+unix://@name");
        assert_eq!(p("127.0.0.1:9001").to_string(), "ws://127.0.0.1:9001/");
        // Found by the address fuzzer: a file path that starts with `@`.
        let at = p("unix:@run/app.sock");
        assert_eq!(at.unix_path(), Some(Path::new("@run/app.sock")));
        assert_eq!(at.to_string(), "ws+unix://%40run/app.sock");
        assert_eq!(p(&at.to_string()), at);
        let odd = Address::unix("/tmp/a:b?c%d#e.sock").unwrap();
        assert_eq!(odd.to_string(), "ws+unix:///tmp/a%3Ab%3Fc%25d%23e.sock");
        assert_eq!(p(&odd.to_string()), odd);
    }

    #[test]
    fn errors_name_the_input_and_the_problem() {
        let long = format!("/tmp/{}.sock", "x".repeat(120));
        let e = err(&long);
        assert!(
            e.contains(&long) && e.contains("107-byte") && e.contains("130 bytes"),
            "{e}"
        );
        assert!(err("").contains("empty"));
        assert!(err("unix:").contains("socket path is empty"));
        assert!(err("ws://h:99999/").contains("bad port `99999`"));
        assert!(err("tcp:h:x").contains("bad port `x`"));
        assert!(err("tcp:h").contains("port is missing"));
        assert!(err("wss+unix:///a.sock").contains("TLS over a Unix socket"));
        assert!(err("wss://h:1/").contains("wss://"));
        assert!(err("http://h:1/").contains("unknown scheme `http`"));
        assert!(err("app.sock").contains("./app.sock"));
        assert!(err("@").contains("abstract"));
        assert!(err("ws+unix:///a.sock:chat").contains("must start with `/`"));
        assert!(err("ws+unix:///a%zz.sock").contains("percent-escape"));
        assert!(err("ws://::1:80/").contains("brackets"));
    }
}
