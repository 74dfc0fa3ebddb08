//! `unixws bench` on tiny settings: the JSON has its schema and every
//! server, transport and client produced figures. Timings are not checked
//! (shared machines are noisy); that they exist and are positive is.

use std::process::Command;

#[test]
fn bench_quick_writes_json_and_svg_with_figures_for_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let svg = dir.path().join("out.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_unixws"))
        .args([
            "bench",
            "--quick",
            "--duration",
            "60ms",
            "--servers",
            "raw,unixws,node,python",
            "--sizes",
            "4KiB,64KiB",
            "--connections",
            "1,10",
            "--matrix",
            "--json",
        ])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .env("UNIXWS_INTEROP_DIR", unixws_testkit::interop_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in ["latency", "throughput", "fan-in", "load_test matrix"] {
        assert!(
            stdout.contains(section),
            "no {section} section in:\n{stdout}"
        );
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let machine = &report["machine"];
    assert!(machine["cores"].as_u64().unwrap() >= 1);
    assert!(machine["kernel"].is_string() && machine["unixws"].is_string());
    let rows = report["results"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for row in rows {
        for field in ["msgs_per_s", "mb_per_s", "p50_us", "p99_us", "p999_us"] {
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing in {row}"));
            assert!(v > 0.0, "{field} is {v} in {row}");
        }
        for field in [
            "server",
            "transport",
            "client",
            "section",
            "workload",
            "label",
        ] {
            assert!(row[field].is_string(), "{field} missing in {row}");
        }
        assert!(row["connections"].as_u64().unwrap() >= 1);
        assert!(row["runs_msgs_per_s"].as_array().unwrap().len() == 1);
        seen.insert((
            row["server"].as_str().unwrap().to_string(),
            row["transport"].as_str().unwrap().to_string(),
            row["client"].as_str().unwrap().to_string(),
        ));
    }
    for want in [
        ("raw echo", "UDS", "load"),
        ("raw echo", "TCP", "load"),
        ("unixws", "UDS", "load"),
        ("unixws", "TCP", "load"),
        ("unixws", "UDS", "unixws blocking"),
        ("unixws", "TCP", "unixws tokio"),
        ("node ws", "UDS", "load"),
        ("python websockets", "UDS", "load"),
    ] {
        let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
        assert!(seen.contains(&want), "no rows for {want:?}; have {seen:?}");
    }
    // Each load-client row of a WebSocket server over UDS has its ratios.
    let unixws_uds = rows
        .iter()
        .find(|r| r["server"] == "unixws" && r["transport"] == "UDS" && r["client"] == "load")
        .unwrap();
    assert!(unixws_uds["ratio_to_raw_uds"].as_f64().unwrap() > 0.0);
    assert!(unixws_uds["ratio_to_tcp"].as_f64().unwrap() > 0.0);

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    for label in [
        "MB/s echoed",
        "message size",
        "percentile",
        "unixws UDS",
        "raw echo TCP",
    ] {
        assert!(svg.contains(label), "the SVG lacks `{label}`");
    }
}

#[test]
fn bench_rejects_unknown_servers_and_transports_with_one_line() {
    for (flag, value, needle) in [
        ("--servers", "nginx", "unknown server `nginx`"),
        ("--transports", "udp", "unknown transport `udp`"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_unixws"))
            .args(["bench", "--quick", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(needle), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
