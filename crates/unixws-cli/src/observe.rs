//! What `serve` and `proxy` tell operators: `--metrics ADDR`, a Prometheus
//! endpoint (OpenMetrics text, from `prometheus-client`) on an address of
//! its own, and `--health-path PATH`, a plain `GET` answered with 200 and
//! JSON on the server's own socket (the library's
//! `ServerBuilder::health_path`).
//!
//! The endpoint has its own address so that the WebSocket socket's policy
//! and the scraper's reach stay separate: a Prometheus on TCP need not be
//! let onto the Unix socket, and a Unix metrics socket gets its own mode.
//! It reads at most 8 KiB of request within 5 s, answers `GET /metrics`
//! (404 for other paths, 405 for other methods) and closes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use unixws::{BindOptions, Endpoint, ServerBuilder, ServerStats, SocketFileGuard, ToAddress};

use crate::error::CliResult;
use unixws_bench::units::parse_mode;

/// The flags `serve` and `proxy` share.
#[derive(Debug, clap::Args)]
pub struct Observe {
    /// Serve Prometheus metrics at http://ADDR/metrics: host:port, or a
    /// socket path (curl --unix-socket PATH http://localhost/metrics).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,

    /// Mode of a --metrics socket file, in octal (default 600: this user only).
    #[arg(long, value_parser = parse_mode, value_name = "OCTAL", requires = "metrics")]
    metrics_mode: Option<u32>,

    /// Answer a plain GET of PATH on the server's socket with 200 and JSON
    /// (open, accepted and upgraded connections), e.g. /healthz.
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
}

/// The metrics endpoint while it runs; dropping it removes its socket file.
#[derive(Debug)]
pub struct MetricsEndpoint {
    _file: Option<SocketFileGuard>,
}

impl Observe {
    /// The server with the health path, if one was asked for.
    pub fn apply(&self, builder: ServerBuilder) -> ServerBuilder {
        match &self.health_path {
            Some(path) => builder.health_path(path),
            None => builder,
        }
    }

    /// Binds the metrics endpoint (if asked for) and serves `stats` there
    /// from a task of its own.
    pub fn start(&self, stats: Arc<ServerStats>) -> CliResult<Option<MetricsEndpoint>> {
        let Some(addr) = &self.metrics else {
            return Ok(None);
        };
        let address = addr
            .as_str()
            .to_address()
            .map_err(|e| format!("--metrics: {e}"))?;
        let registry = Arc::new(registry(stats));
        let (listener, file) = if let Endpoint::Tcp { host, port } = address.endpoint() {
            let std = std::net::TcpListener::bind((host.as_str(), *port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("--metrics: cannot listen on {host}:{port}: {e}"))?;
            eprintln!("unixws: metrics at http://{host}:{port}/metrics");
            (Listener::Tcp(std), None)
        } else {
            let options = BindOptions::new().mode(self.metrics_mode.unwrap_or(0o600));
            let (listener, file) = unixws::Listener::bind(&address, &options)
                .and_then(unixws::Listener::into_tokio_unix)
                .map_err(|e| format!("--metrics: {e}"))?;
            eprintln!(
                "unixws: metrics at {} (GET /metrics)",
                address.endpoint_display()
            );
            (Listener::Unix(listener), Some(file))
        };
        tokio::spawn(listener.serve(registry));
        Ok(Some(MetricsEndpoint { _file: file }))
    }
}

/// Where the metrics are served.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Answers each connection in a task of its own; an accept error (no
    /// descriptors left) pauses the loop instead of spinning it.
    async fn serve(self, registry: Arc<Registry>) {
        loop {
            let accepted = match &self {
                Listener::Tcp(l) => l
                    .accept()
                    .await
                    .map(|(s, _)| drop(tokio::spawn(answer(s, registry.clone())))),
                Listener::Unix(l) => l
                    .accept()
                    .await
                    .map(|(s, _)| drop(tokio::spawn(answer(s, registry.clone())))),
            };
            if accepted.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn registry(stats: Arc<ServerStats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatsCollector(stats)));
    registry
}

/// Reads one request and answers it (see the module doc).
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut socket: S, registry: Arc<Registry>) {
    let mut head = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (
                    "500 Internal Server Error",
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "the metrics are at /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET /metrics\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// `ServerStats` as Prometheus metrics, read at each scrape.
#[derive(Debug)]
struct StatsCollector(Arc<ServerStats>);

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn counters(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, u64)],
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(*n).encode(metric.encode_family(&[(label, value.as_str())])?)?;
    }
    Ok(())
}

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = self.0.snapshot();
        let e = &mut enc;
        counter(
            e,
            "unixws_connections_accepted",
            "Connections accepted from the socket.",
            s.accepted,
        )?;
        counter(
            e,
            "unixws_connections_upgraded",
            "Connections that completed the WebSocket upgrade.",
            s.upgraded,
        )?;
        let malformed = s.bad_handshakes - s.handshake_timeouts - s.headers_too_large;
        counters(
            e,
            "unixws_connections_refused",
            "Connections refused before the upgrade, by cause: policy (403), busy (503), handshake_timeout, header_too_large (431), bad_request (400, 426).",
            "cause",
            &[
                ("policy".into(), s.rejected_by_policy),
                ("busy".into(), s.refused_busy),
                ("handshake_timeout".into(), s.handshake_timeouts),
                ("header_too_large".into(), s.headers_too_large),
                ("bad_request".into(), malformed),
            ],
        )?;
        ConstGauge::new(i64::try_from(s.open).unwrap_or(i64::MAX)).encode(e.encode_descriptor(
            "unixws_connections_open",
            "Connections open now (past the upgrade).",
            None,
            MetricType::Gauge,
        )?)?;
        let both = |a, b| [("in".to_string(), a), ("out".to_string(), b)];
        counters(
            e,
            "unixws_messages",
            "Data messages, by direction.",
            "direction",
            &both(s.messages_in, s.messages_out),
        )?;
        counters(
            e,
            "unixws_bytes",
            "Bytes on the sockets after the upgrade, by direction.",
            "direction",
            &both(s.bytes_in, s.bytes_out),
        )?;
        let closes: Vec<(String, u64)> = self
            .0
            .closes_by_code()
            .into_iter()
            .map(|(code, n)| (code.to_string(), n))
            .collect();
        counters(
            e,
            "unixws_closes",
            "Connections closed, by the code of the first close frame either side sent (1006: none).",
            "code",
            &closes,
        )?;
        counters(
            e,
            "unixws_connections_dropped",
            "Connections the server closed for cause: keepalive (no pong), slow_consumer (1013), protocol_error (1002, 1007, 1009).",
            "cause",
            &[
                ("keepalive".into(), s.keepalive_timeouts),
                ("slow_consumer".into(), s.slow_consumers),
                ("protocol_error".into(), s.protocol_errors),
            ],
        )?;
        let latency = self.0.handshake_latency();
        let mut buckets = Vec::with_capacity(latency.buckets.len() + 1);
        let mut below = 0;
        for (bound, cumulative) in &latency.buckets {
            buckets.push((*bound, cumulative - below));
            below = *cumulative;
        }
        buckets.push((f64::MAX, latency.count - below));
        e.encode_descriptor(
            "unixws_handshake_duration_seconds",
            "Time from accept to the upgrade's 101.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            latency.sum.as_secs_f64(),
            latency.count,
            &buckets,
            None,
        )
    }
}
