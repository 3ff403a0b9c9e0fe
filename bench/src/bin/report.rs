//! Turns the raw TSV results of one `bench/run.sh` into `RESULTS.md` and
//! `convergence.svg`.
//!
//! ```text
//! report <results-dir> <RESULTS.md> <convergence.svg>
//! ```
//!
//! Reads every `*.tsv` in the directory (`scenario library key run value`),
//! `machine.txt` (written by run.sh) and `analysis.md` next to RESULTS.md
//! (the hand-written commentary, included verbatim).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

const LIBS: [&str; 3] = ["cohort", "instance-chart", "mdns-sd"];
const COLORS: [&str; 3] = ["#1b7837", "#2166ac", "#b2182b"];

/// (scenario, library, key) -> values in run order.
type Table = BTreeMap<(String, String, String), Vec<String>>;

fn load(dir: &Path) -> Table {
    let mut table = Table::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("results dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tsv"))
        .collect();
    files.sort();
    for file in files {
        for line in std::fs::read_to_string(&file).expect("read tsv").lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() == 5 {
                table
                    .entry((f[0].into(), f[1].into(), f[2].into()))
                    .or_default()
                    .push(f[4].into());
            }
        }
    }
    table
}

fn numbers(values: &[String]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().filter_map(|s| s.parse().ok()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Median, min and max of the numeric values, if any.
fn stats(values: &[String]) -> Option<(f64, f64, f64)> {
    let v = numbers(values);
    if v.is_empty() {
        return None;
    }
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// "median [min, max] unit (k runs)", plus what the other runs did.
fn cell(values: Option<&Vec<String>>, unit: &str, failed_word: &str) -> String {
    let Some(values) = values else {
        return "not measured".into();
    };
    let ok = numbers(values).len();
    let failed: Vec<&String> = values
        .iter()
        .filter(|s| s.parse::<f64>().is_err())
        .collect();
    let mut out = match stats(values) {
        Some((m, lo, hi)) if ok > 1 => format!(
            "{} [{}, {}]",
            format!("{} {unit}", fmt_num(m)).trim_end(),
            fmt_num(lo),
            fmt_num(hi)
        ),
        Some((m, _, _)) => format!("{} {unit}", fmt_num(m)).trim_end().to_owned(),
        None => String::new(),
    };
    if !failed.is_empty() {
        let detail: Vec<String> = failed.iter().map(|s| s.replace(':', " ")).collect();
        if !out.is_empty() {
            out.push_str("; ");
        }
        let _ = write!(
            out,
            "{failed_word} in {}/{} runs ({})",
            failed.len(),
            values.len(),
            detail.join(", ")
        );
    } else if ok > 0 {
        let _ = write!(out, " ({ok} runs)");
    }
    out
}

/// Name of the library with the smallest median, if all were measured.
fn best(table: &Table, scenario: &str, key: &str) -> String {
    let mut best: Option<(&str, f64)> = None;
    for lib in LIBS {
        let Some(values) = table.get(&(scenario.into(), lib.into(), key.into())) else {
            return "-".into();
        };
        let all_ok = values.iter().all(|s| s.parse::<f64>().is_ok());
        if let (true, Some((m, _, _))) = (all_ok, stats(values))
            && best.is_none_or(|(_, b)| m < b)
        {
            best = Some((lib, m));
        }
    }
    best.map_or("-".into(), |(l, _)| l.into())
}

fn row(table: &Table, scenario: &str, key: &str, label: &str, unit: &str, failed: &str) -> String {
    let cells: Vec<String> = LIBS
        .iter()
        .map(|lib| {
            cell(
                table.get(&(scenario.into(), (*lib).into(), key.into())),
                unit,
                failed,
            )
        })
        .collect();
    format!(
        "| {label} | {} | {} |\n",
        cells.join(" | "),
        best(table, scenario, key)
    )
}

fn header(first: &str) -> String {
    format!(
        "| {first} | cohort | instance-chart 0.4 | mdns-sd | smallest |\n|---|---|---|---|---|\n"
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(
        args.len(),
        4,
        "usage: report <results-dir> <RESULTS.md> <convergence.svg>"
    );
    let dir = Path::new(&args[1]);
    let md_path = Path::new(&args[2]);
    let svg_path = Path::new(&args[3]);
    let table = load(dir);
    let machine = std::fs::read_to_string(dir.join("machine.txt")).unwrap_or_default();
    let analysis = md_path
        .parent()
        .map(|p| p.join("analysis.md"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();

    let mut md = String::new();
    md.push_str("# cohort vs instance-chart 0.4 vs mdns-sd: side-by-side results\n\n");
    md.push_str(
        "Generated by `bench/run.sh` (tables: `bench/src/bin/report.rs` from the raw \
         results in `bench/results/`). Every cell is median [min, max] over the runs, \
         unless it says otherwise. Lower is better in every row.\n\n",
    );
    md.push_str("## Machine\n\n```text\n");
    md.push_str(machine.trim_end());
    md.push_str("\n```\n\n");

    md.push_str("## Convergence on one host\n\n");
    md.push_str(
        "N real processes started together (one `node` process each, loopback only, \
         inside one private network namespace); time from the last process's start \
         (before any library set-up) until every process knows all N-1 others.\n\n",
    );
    md.push_str(&header("instances"));
    for n in ["2", "10", "50", "100"] {
        md.push_str(&row(&table, "converge", n, n, "ms", "did not converge"));
    }
    md.push_str("\n![convergence time against instance count](convergence.svg)\n\n");

    md.push_str("## Convergence on the simulated LAN\n\n");
    md.push_str(
        "One instance per host, hosts are network namespaces on one bridge \
         (`scripts/lan.sh`), each announcing on its own address; started together \
         through `scripts/lan.sh exec`.\n\n",
    );
    md.push_str(&header("hosts"));
    for n in ["10", "30"] {
        md.push_str(&row(&table, "lan", n, n, "ms", "did not converge"));
    }

    md.push_str(
        "\nDepartures across hosts (10 hosts per library, the three libraries at once on \
         disjoint hosts of one 30-host LAN): host 1's instance leaves gracefully, then \
         every process on host 2 is killed with SIGKILL (`scripts/lan.sh kill`), as a \
         crashed remote machine. Bounds as in the one-host departure table below.\n\n",
    );
    md.push_str(&header("departure"));
    md.push_str(&row(
        &table,
        "lan-depart",
        "graceful",
        "graceful exit",
        "ms",
        "never within 10 s",
    ));
    md.push_str(&row(
        &table,
        "lan-depart",
        "sigkill",
        "SIGKILL of a remote host's process",
        "ms",
        "never within 60 s",
    ));

    md.push_str("\n## Steady state\n\n");
    md.push_str(
        "10 converged instances on one host, each library in its own network namespace \
         (the three run at the same time); after a settling period, counted over a \
         window. Datagrams: the namespace's `/proc/net/snmp` Udp OutDatagrams (+ Udp6); \
         bytes: an nftables `udp counter` on the output hook of the namespace, so they \
         are IP packet lengths (28 bytes of IPv4 + UDP header included); CPU: the sum \
         of `/proc/<pid>/task/*/schedstat` run time; memory: `VmHWM` of each process \
         (median over the 10 processes). Per instance per minute.\n\n",
    );
    md.push_str(&header("per instance"));
    md.push_str(&row(
        &table,
        "steady",
        "datagrams",
        "datagrams sent / min",
        "",
        "-",
    ));
    md.push_str(&row(
        &table,
        "steady",
        "ip_bytes",
        "bytes sent / min",
        "B",
        "-",
    ));
    md.push_str(&row(
        &table,
        "steady",
        "cpu_ms",
        "CPU time / min",
        "ms",
        "-",
    ));
    md.push_str(&row(
        &table,
        "steady",
        "vmhwm_kb",
        "peak memory (VmHWM)",
        "kB",
        "-",
    ));

    md.push_str("\n## Departure\n\n");
    md.push_str(
        "In the same 10-instance groups, after the steady-state window: instance 0 is \
         asked to leave gracefully (a `quit` line on its stdin: cohort says goodbye, \
         mdns-sd unregisters, instance-chart has no goodbye and just exits); then \
         instance 1 is killed with SIGKILL. Time from the request or signal until \
         every remaining instance reported the departure; bound 10 s (graceful) and \
         60 s (SIGKILL). `never N` means only N observers saw it within the bound.\n\n",
    );
    md.push_str(&header("departure"));
    md.push_str(&row(
        &table,
        "depart",
        "graceful",
        "graceful exit",
        "ms",
        "never within 10 s",
    ));
    md.push_str(&row(
        &table,
        "depart",
        "sigkill",
        "SIGKILL",
        "ms",
        "never within 60 s",
    ));

    md.push_str("\n## Resilience to malformed datagrams\n\n");
    md.push_str(
        "3 converged instances; a fixed set of 13 malformed datagrams (empty, 1 byte, \
         random 64 and 1400 bytes, 9000 bytes, text, 18 zero bytes, 20 0xff bytes, \
         cohort's magic with a broken body and with an unknown version, DNS headers \
         claiming 65535 answers, a self-referencing name pointer, a label running \
         past the end) is sent to the library's multicast group and to 127.0.0.1 on \
         its discovery port; 2 s later a newcomer starts. `keeps-working` = no \
         process died, no discovery task ended, the newcomer found all 3 and all 3 \
         found it within 10 s.\n\n",
    );
    md.push_str("| library | outcome per run | discovery afterwards |\n|---|---|---|\n");
    for lib in LIBS {
        let get = |k: &str| {
            table
                .get(&("resilience".into(), lib.into(), k.into()))
                .map_or("not measured".into(), |v| v.join(", "))
        };
        let _ = writeln!(
            md,
            "| {lib} | {} | {} |",
            get("outcome"),
            get("newcomer").replace(',', " ")
        );
    }

    md.push_str("\n## Beyond this machine: cohort's sans-IO core in simulation\n\n");
    md.push_str(
        "`sim --n N` (`bench/src/bin/sim.rs`): N `cohort::protocol::Protocol` instances \
         in an in-memory LAN with virtual time (latency 50-500 us, no loss), started \
         together; steady state measured over virtual minutes 2-5; then one newcomer \
         joins and the next 10 s are counted. A datagram *sent* counts once; a \
         *delivery* counts once per receiving instance.\n\n",
    );
    let sim_rows = sim_table(dir);
    md.push_str(&sim_rows);

    md.push('\n');
    md.push_str(&analysis);
    std::fs::write(md_path, md).expect("write RESULTS.md");
    std::fs::write(svg_path, svg(&table)).expect("write svg");
}

/// The simulation table: one column per N, in the order of the file.
fn sim_table(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("sim.tsv")).unwrap_or_default();
    let mut sizes: Vec<String> = Vec::new();
    let mut rows: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            continue;
        }
        if !sizes.iter().any(|s| s == f[3]) {
            sizes.push(f[3].into());
        }
        match rows.iter_mut().find(|(k, _)| k == f[2]) {
            Some((_, m)) => {
                m.insert(f[3].into(), f[4].into());
            }
            None => rows.push((f[2].into(), BTreeMap::from([(f[3].into(), f[4].into())]))),
        }
    }
    if sizes.is_empty() {
        return "not measured\n".into();
    }
    fn label(k: &str) -> &str {
        match k {
            "converge_ms" => "N started together: all know all (virtual ms)",
            "startup_120s_sent" => "datagrams sent in the first 120 s (all instances)",
            "startup_120s_replies" => "of which unicast replies",
            "startup_120s_deliveries" => "deliveries in the first 120 s",
            "steady_sent_per_inst_min" => "steady: datagrams sent / instance / min",
            "steady_bytes_per_inst_min" => "steady: UDP payload bytes sent / instance / min",
            "steady_deliveries_per_inst_min" => "steady: datagrams received / instance / min",
            "steady_replies_per_min_total" => "steady: unicast replies / min (all)",
            "steady_probes_per_min_total" => "steady: probes / min (all)",
            "join_newcomer_sent" => "join: datagrams the newcomer sent in 10 s",
            "join_unicasts_to_newcomer" => "join: unicast replies to the newcomer",
            "join_sent_total_10s" => "join: datagrams sent by all in the 10 s",
            "join_sent_above_steady_10s" => "join: datagrams above steady traffic",
            "join_deliveries_above_steady_10s" => "join: deliveries above steady traffic",
            "join_all_know_ms" => "join: newcomer and all N know each other (virtual ms)",
            "wall_s" => "simulator wall time (s)",
            "peak_rss_mb" => "simulator peak memory (MB)",
            other => other,
        }
    }
    let mut out = format!(
        "| N | {} |\n|---|{}\n",
        sizes.join(" | "),
        "---|".repeat(sizes.len())
    );
    for (key, by_n) in rows {
        // Steady deliveries in 10 s (N x 5/6 x N) dwarf a join's and jitter
        // by more than it: subtracting them gives noise, not a figure. The
        // raw value stays in sim.tsv.
        if key == "join_deliveries_above_steady_10s" {
            continue;
        }
        let cells: Vec<String> = sizes
            .iter()
            .map(|n| by_n.get(n).cloned().unwrap_or_else(|| "-".into()))
            .collect();
        let _ = writeln!(out, "| {} | {} |", label(&key), cells.join(" | "));
    }
    out
}

fn svg(table: &Table) -> String {
    let sizes = [2.0_f64, 10.0, 50.0, 100.0];
    let (w, h) = (720.0, 460.0);
    let (left, right, top, bottom) = (80.0, 200.0, 40.0, 60.0);
    let (y_lo, y_hi) = (0.1_f64.log10(), 10_000.0_f64.log10());
    let (x_lo, x_hi) = (1.5_f64.log10(), 130.0_f64.log10());
    let px = |n: f64| left + (n.log10() - x_lo) / (x_hi - x_lo) * (w - left - right);
    let py = |ms: f64| {
        let v = ms.max(0.1).log10();
        h - bottom - (v - y_lo) / (y_hi - y_lo) * (h - top - bottom)
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Convergence time against instance count (median, min-max bars)</text>",
        w / 2.0
    );
    for e in -1..=4 {
        let ms = 10f64.powi(e);
        let y = py(ms);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 6.0,
            y + 4.0,
            if ms < 1.0 {
                format!("{ms}")
            } else {
                format!("{ms:.0}")
            }
        );
    }
    for n in [2.0, 10.0, 30.0, 50.0, 100.0] {
        let x = px(n);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{n}</text>",
            h - bottom,
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">instances (log scale)</text>\
         <text transform=\"translate(22 {}) rotate(-90)\" text-anchor=\"middle\">milliseconds (log scale)</text>",
        (left + w - right) / 2.0,
        h - 16.0,
        (top + h - bottom) / 2.0
    );
    let _ = writeln!(
        s,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>",
        w - left - right,
        h - top - bottom
    );
    for (li, lib) in LIBS.iter().enumerate() {
        let color = COLORS[li];
        for (scenario, ns, dash, hollow) in [
            ("converge", &sizes[..], "", false),
            ("lan", &[10.0, 30.0][..], " stroke-dasharray=\"5 4\"", true),
        ] {
            let mut points = Vec::new();
            for &n in ns {
                let key = (scenario.to_string(), (*lib).to_string(), format!("{n}"));
                if let Some((m, lo, hi)) = table.get(&key).and_then(|v| stats(v)) {
                    points.push((px(n), py(m), py(lo), py(hi)));
                }
            }
            if points.len() > 1 {
                let path: Vec<String> = points
                    .iter()
                    .map(|(x, y, _, _)| format!("{x:.1},{y:.1}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>",
                    path.join(" ")
                );
            }
            for (x, y, lo, hi) in points {
                let fill = if hollow { "white" } else { color };
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{lo:.1}\" y2=\"{hi:.1}\" stroke=\"{color}\"/>\
                     <circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{fill}\" stroke=\"{color}\" stroke-width=\"2\"/>"
                );
            }
        }
        let ly = top + 20.0 + li as f64 * 40.0;
        let lx = w - right + 16.0;
        let _ = writeln!(
            s,
            "<circle cx=\"{lx}\" cy=\"{ly}\" r=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{lib}, one host</text>\
             <circle cx=\"{lx}\" cy=\"{}\" r=\"4\" fill=\"white\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{lib}, LAN hosts</text>",
            lx + 10.0,
            ly + 4.0,
            ly + 16.0,
            lx + 10.0,
            ly + 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}
