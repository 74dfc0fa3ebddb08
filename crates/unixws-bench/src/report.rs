//! The bench's output: a table on stdout, JSON with every figure and the
//! machine, and SVG plots.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::load::Measured;
use super::target::{Locations, ServerKind, Transport};
use super::{Client, Key, Results, Workload};

/// `1048576` → `1 MiB`.
pub fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// One row's figures: the median repetition by messages per second, with
/// the latency of all repetitions together.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: Key,
    pub server: String,
    pub transport: Transport,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub vs_raw_uds: Option<f64>,
    pub vs_tcp: Option<f64>,
    pub runs: Vec<f64>,
}

pub struct Report {
    pub rows: Vec<Row>,
    duration: Duration,
    repeat: usize,
}

fn rate(m: &Measured) -> f64 {
    m.messages as f64 / m.elapsed.as_secs_f64().max(1e-9)
}

impl Report {
    pub fn new(
        results: &Results,
        servers: &[ServerKind],
        transports: &[Transport],
        duration: Duration,
        repeat: usize,
    ) -> Self {
        let mut rows = Vec::new();
        for (key, runs) in results {
            let mut by_rate: Vec<&Measured> = runs.iter().collect();
            by_rate.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
            let median = by_rate[by_rate.len() / 2];
            let mut latency = super::load::new_histogram();
            for m in runs {
                let _ = latency.add(&m.latency);
            }
            let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
            let secs = median.elapsed.as_secs_f64().max(1e-9);
            rows.push(Row {
                key: *key,
                server: servers[key.server.0].name(),
                transport: transports[key.transport.0],
                msgs_per_s: rate(median),
                mb_per_s: median.bytes as f64 / secs / 1e6,
                p50_us: us(0.5),
                p99_us: us(0.99),
                p999_us: us(0.999),
                vs_raw_uds: None,
                vs_tcp: None,
                runs: runs.iter().map(rate).collect(),
            });
        }
        let raw = servers.iter().position(|s| *s == ServerKind::Raw);
        let uds = transports.iter().position(|t| *t == Transport::Uds);
        let tcp = transports.iter().position(|t| *t == Transport::Tcp);
        let find = |rows: &[Row],
                    server: Option<usize>,
                    transport: Option<usize>,
                    client: Client,
                    workload: Workload| {
            rows.iter()
                .find(|r| {
                    Some(r.key.server.0) == server
                        && Some(r.key.transport.0) == transport
                        && r.key.client == client
                        && r.key.workload == workload
                })
                .map(|r| r.msgs_per_s)
        };
        let ratios: Vec<(Option<f64>, Option<f64>)> = rows
            .iter()
            .map(|r| {
                // The raw echo measured by the same client (the unixws
                // clients have no raw row: theirs is the load client's).
                let raw_client = match r.key.client {
                    Client::Blocking | Client::Async => Client::Load,
                    other => other,
                };
                let base_raw = find(&rows, raw, uds, raw_client, r.key.workload);
                let base_tcp = find(
                    &rows,
                    Some(r.key.server.0),
                    tcp,
                    r.key.client,
                    r.key.workload,
                );
                (
                    base_raw.map(|b| r.msgs_per_s / b),
                    base_tcp.map(|b| r.msgs_per_s / b),
                )
            })
            .collect();
        for (row, (vs_raw, vs_tcp)) in rows.iter_mut().zip(ratios) {
            row.vs_raw_uds = vs_raw;
            row.vs_tcp = vs_tcp;
        }
        // Sections first, then servers in order.
        rows.sort_by_key(|r| {
            (
                section_order(r.key.workload),
                r.key.workload,
                r.key.client,
                r.key.server,
                r.key.transport,
            )
        });
        Self {
            rows,
            duration,
            repeat,
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "unixws bench: {} per measurement{}; ratios compare messages per second",
            humantime(self.duration),
            if self.repeat > 1 {
                format!(", median of {} runs", self.repeat)
            } else {
                String::new()
            }
        );
        let mut section = "";
        for r in &self.rows {
            if r.key.workload.section() != section {
                section = r.key.workload.section();
                let _ = writeln!(
                    out,
                    "\n{section}\n{:<20} {:<4} {:<16} {:<22} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6}",
                    "server", "via", "client", "workload", "msgs/s", "MB/s", "p50 µs", "p99 µs", "p99.9 µs", "×rawUDS", "×TCP"
                );
            }
            let ratio = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "{:<20} {:<4} {:<16} {:<22} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>6}",
                r.server,
                r.transport.name(),
                r.key.client.name(),
                r.key.workload.label(),
                r.msgs_per_s,
                r.mb_per_s,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                ratio(r.vs_raw_uds),
                ratio(r.vs_tcp),
            );
        }
        out
    }

    pub fn json(&self, peers: bool, at: &Locations) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let (kind, conns, size) = match r.key.workload {
                    Workload::PingPong { conns, size } => ("ping-pong", conns, size),
                    Workload::Stream { size } => ("stream", 1, size),
                    Workload::Matrix { conns, size } => ("load_test", conns, size),
                };
                serde_json::json!({
                    "server": r.server,
                    "transport": r.transport.name(),
                    "client": r.key.client.name(),
                    "section": r.key.workload.section(),
                    "workload": kind,
                    "label": r.key.workload.label(),
                    "connections": conns,
                    "message_bytes": size,
                    "msgs_per_s": r.msgs_per_s,
                    "mb_per_s": r.mb_per_s,
                    "p50_us": r.p50_us,
                    "p99_us": r.p99_us,
                    "p999_us": r.p999_us,
                    "ratio_to_raw_uds": r.vs_raw_uds,
                    "ratio_to_tcp": r.vs_tcp,
                    "runs_msgs_per_s": r.runs,
                })
            })
            .collect();
        serde_json::json!({
            "machine": machine(peers, at),
            "settings": {
                "duration_s": self.duration.as_secs_f64(),
                "repeat": self.repeat,
            },
            "results": rows,
        })
    }

    /// Two plots: MB/s by message size (the load client's rows), and the
    /// 64-byte ping-pong's latency percentiles, one line per server and
    /// transport.
    pub fn svg(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        let fail = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
        let root = SVGBackend::new(path, (1000, 1100)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let (top, bottom) = root.split_vertically(560);

        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        let mut latency: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for r in self.rows.iter().filter(|r| r.key.client == Client::Load) {
            let name = format!("{} {}", r.server, r.transport.name());
            match r.key.workload {
                Workload::Stream { size } | Workload::PingPong { conns: 1, size } => {
                    let entry = match series.iter_mut().find(|(n, _)| *n == name) {
                        Some(e) => e,
                        None => {
                            series.push((name.clone(), Vec::new()));
                            series.last_mut().expect("just pushed")
                        }
                    };
                    entry.1.push((size as f64, r.mb_per_s.max(0.01)));
                    if matches!(r.key.workload, Workload::PingPong { .. }) {
                        latency.push((
                            name,
                            vec![(1.0, r.p50_us), (2.0, r.p99_us), (3.0, r.p999_us)],
                        ));
                    }
                }
                _ => {}
            }
        }
        for (_, points) in &mut series {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let max_mb = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.1))
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&top)
            .caption(
                "Echo throughput by message size (one connection)",
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (32f64..2.0 * 1048576f64).log_scale(),
                (0.01f64..max_mb * 2.0).log_scale(),
            )
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("message size (bytes; 64 B is ping-pong, larger sizes stream)")
            .y_desc("MB/s echoed")
            .x_label_formatter(&|v| size(*v as usize))
            .draw()
            .map_err(|e| fail(&e))?;
        draw_lines(&mut chart, &series).map_err(|e| fail(&e))?;

        let max_us = latency
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.1))
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&bottom)
            .caption(
                "64-byte ping-pong latency percentiles (one connection)",
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5f64..3.5f64, (1f64..max_us * 2.0).log_scale())
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("round trip (µs)")
            .x_labels(3)
            .x_label_formatter(&|v| match v.round() as i64 {
                1 => "p50".into(),
                2 => "p99".into(),
                3 => "p99.9".into(),
                _ => String::new(),
            })
            .draw()
            .map_err(|e| fail(&e))?;
        draw_lines(&mut chart, &latency).map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
        Ok(())
    }
}

/// One line per named series, with a legend in the upper left.
fn draw_lines<'a, DB, X, Y>(
    chart: &mut plotters::chart::ChartContext<
        'a,
        DB,
        plotters::coord::cartesian::Cartesian2d<X, Y>,
    >,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: plotters::prelude::DrawingBackend + 'a,
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    use plotters::prelude::*;
    for (i, (name, points)) in series.iter().enumerate() {
        chart
            .draw_series(
                LineSeries::new(points.clone(), Palette99::pick(i).stroke_width(2)).point_size(4),
            )?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    Palette99::pick(i).stroke_width(2),
                )
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
}

fn section_order(w: Workload) -> u8 {
    match w.section() {
        "latency" => 0,
        "throughput" => 1,
        "fan-in" => 2,
        _ => 3,
    }
}

fn humantime(d: Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn first_line(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(prefix)
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
    })
}

fn command_output(cmd: &mut std::process::Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The machine and the versions in this run.
fn machine(peers: bool, at: &Locations) -> serde_json::Value {
    let mut m = serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": first_line("/proc/cpuinfo", "model name"),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "memory": first_line("/proc/meminfo", "MemTotal"),
        "unixws": env!("CARGO_PKG_VERSION"),
        "tungstenite": env!("UNIXWS_BENCH_TUNGSTENITE"),
    });
    if peers {
        m["python_websockets"] = command_output(
            std::process::Command::new(at.interop.join("venv/bin/python"))
                .args(["-c", "import websockets; print(websockets.__version__)"]),
        )
        .into();
        m["node"] = command_output(std::process::Command::new("node").arg("--version")).into();
        m["node_ws"] =
            std::fs::read_to_string(at.interop.join("node/node_modules/ws/package.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["version"].as_str().map(String::from))
                .into();
    }
    m
}
