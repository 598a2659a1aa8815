//! The report folder: a manifest of the runs, and the page drawn from their JSON and `.hgrm`
//! files (SVG charts by plotters, inlined in one HTML file that opens anywhere).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use simd_json::prelude::*;

/// What was run, in order: written after every run, so a sweep cut short still renders.
pub struct Manifest {
    pub title: String,
    pub param: String,
    pub machine: String,
    pub date: String,
    pub runs: Vec<RunEntry>,
}

pub struct RunEntry {
    pub value: String,
    /// File stem of the run's files in the folder.
    pub stem: String,
    /// loadgen's exit status was success (no loss, no failed connection).
    pub loadgen_ok: bool,
    pub server_command: String,
    pub loadgen_command: String,
}

impl Manifest {
    pub fn to_tsv(&self) -> String {
        let mut s = format!(
            "#title\t{}\n#param\t{}\n#machine\t{}\n#date\t{}\n",
            self.title, self.param, self.machine, self.date
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "{}\t{}\t{}\t{}\t{}",
                r.value, r.stem, r.loadgen_ok, r.server_command, r.loadgen_command
            );
        }
        s
    }

    pub fn from_tsv(text: &str) -> anyhow::Result<Manifest> {
        let mut m = Manifest {
            title: String::new(),
            param: String::new(),
            machine: String::new(),
            date: String::new(),
            runs: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            if let Some(head) = line.strip_prefix('#') {
                let (k, v) = head.split_once('\t').unwrap_or((head, ""));
                let slot = match k {
                    "title" => &mut m.title,
                    "param" => &mut m.param,
                    "machine" => &mut m.machine,
                    "date" => &mut m.date,
                    _ => continue,
                };
                *slot = v.to_string();
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let [value, stem, ok, server, loadgen] = f[..] else {
                anyhow::bail!(
                    "manifest.tsv line {}: expected 5 tab-separated fields",
                    n + 1
                );
            };
            m.runs.push(RunEntry {
                value: value.into(),
                stem: stem.into(),
                loadgen_ok: ok == "true",
                server_command: server.into(),
                loadgen_command: loadgen.into(),
            });
        }
        Ok(m)
    }
}

/// CPU model, cores, memory and kernel of this machine, one line.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// Today's date (UTC), YYYY-MM-DD.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One run's figures, from its JSON.
struct Row {
    value: String,
    ok: bool,
    delivered_per_sec: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    client_cpu: f64,
    server_cpu: Option<f64>,
    lost: u64,
    gaps: u64,
    saturated: bool,
    /// (percentile 0..1, latency µs) from the `.hgrm`.
    curve: Vec<(f64, f64)>,
}

fn read_row(dir: &Path, r: &RunEntry) -> anyhow::Result<Row> {
    let path = dir.join(format!("{}.json", r.stem));
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let v = loadgen::schema::RunJson::from_json(&text)
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
    let hgrm = std::fs::read_to_string(dir.join(format!("{}.hgrm", r.stem))).unwrap_or_default();
    Ok(Row {
        value: r.value.clone(),
        ok: r.loadgen_ok,
        delivered_per_sec: v.delivered_per_sec,
        p50: v.latency_us.p50 as f64,
        p99: v.latency_us.p99 as f64,
        p999: v.latency_us.p999 as f64,
        max: v.latency_us.max as f64,
        client_cpu: v.client_cpu_pct,
        server_cpu: v.server_cpu_pct,
        lost: v.lost,
        gaps: v.gaps,
        saturated: v.loadgen_saturated,
        curve: parse_hgrm(&hgrm),
    })
}

/// (percentile 0..1, value) pairs of HdrHistogram's percentile text.
fn parse_hgrm(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let value: f64 = it.next()?.parse().ok()?;
            let p: f64 = it.next()?.parse().ok()?;
            Some((p, value))
        })
        .collect()
}

/// Writes `index.html`, the SVG charts and `summary.md` for the folder; returns the page.
pub fn render(dir: &Path) -> anyhow::Result<PathBuf> {
    let m = Manifest::from_tsv(
        &std::fs::read_to_string(dir.join("manifest.tsv"))
            .with_context(|| format!("reading {}/manifest.tsv", dir.display()))?,
    )?;
    let rows: Vec<Row> = m
        .runs
        .iter()
        .filter_map(|r| read_row(dir, r).ok())
        .collect();
    if rows.is_empty() {
        anyhow::bail!("no run in {} has results", dir.display());
    }
    let spectrum = percentile_chart(&m, &rows)?;
    let by_value = by_value_chart(&m, &rows)?;
    std::fs::write(dir.join("percentiles.svg"), &spectrum)?;
    std::fs::write(dir.join("by-value.svg"), &by_value)?;
    std::fs::write(dir.join("summary.md"), markdown(&m, &rows))?;
    let page = dir.join("index.html");
    std::fs::write(&page, html(&m, &rows, &spectrum, &by_value))?;
    Ok(page)
}

fn ms(us: f64) -> String {
    if us >= 100_000.0 {
        format!("{:.0}", us / 1000.0)
    } else {
        format!("{:.2}", us / 1000.0)
    }
}

fn flags(r: &Row) -> String {
    let mut f = Vec::new();
    if !r.ok {
        f.push("loadgen reported loss or failed connections".to_string());
    }
    if r.lost > 0 {
        f.push(format!("{} lost", r.lost));
    }
    if r.gaps > 0 {
        f.push(format!("{} dropped (announced)", r.gaps));
    }
    if r.saturated {
        f.push("loadgen saturated: figures bound the server from below".into());
    }
    f.join("; ")
}

fn markdown(m: &Manifest, rows: &[Row]) -> String {
    let mut s = format!(
        "| {} | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms | loadgen CPU % | server CPU % | notes |\n|---|---|---|---|---|---|---|---|---|\n",
        m.param
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} | {:.0} | {} | {} |",
            r.value,
            r.delivered_per_sec,
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            ms(r.max),
            r.client_cpu,
            r.server_cpu.map_or("n/a".into(), |v| format!("{v:.0}")),
            flags(r)
        );
    }
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(m: &Manifest, rows: &[Row], spectrum: &str, by_value: &str) -> String {
    let mut table = String::new();
    for r in rows {
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.value),
            r.delivered_per_sec,
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            ms(r.max),
            r.client_cpu,
            r.server_cpu.map_or("n/a".into(), |v| format!("{v:.0}")),
            escape(&flags(r))
        );
    }
    let mut commands = String::new();
    for r in &m.runs {
        let _ = write!(
            commands,
            "<li><b>{} = {}</b><br><code>{}</code><br><code>{}</code></li>",
            escape(&m.param),
            escape(&r.value),
            escape(&r.server_command),
            escape(&r.loadgen_command)
        );
    }
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1000px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #f0f0f0; }} td:last-child {{ text-align: left; }}
code {{ font-size: 85%; word-break: break-all; }}
.meta {{ color: #666; }}
</style></head><body>
<h1>{title}</h1>
<p class="meta">{date} &middot; {machine}</p>
<p>Latency is measured from each message's intended send time (open loop, no coordinated
omission), on healthy connections. CPU is % of one core over the publishing time.</p>
<table><tr><th>{param}</th><th>delivered/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>loadgen CPU %</th><th>server CPU %</th><th>notes</th></tr>
{table}</table>
<h2>Latency by percentile</h2>
{spectrum}
<h2>Throughput and latency by {param}</h2>
{by_value}
<h2>Commands</h2><ul>{commands}</ul>
</body></html>
"#,
        title = escape(&m.title),
        date = escape(&m.date),
        machine = escape(&m.machine),
        param = escape(&m.param),
    )
}

/// The x coordinate of a percentile: log10(1 / (1 - p)), so 90% is 1, 99% is 2, 99.9% is 3.
fn nines(p: f64) -> f64 {
    (1.0 / (1.0 - p.min(0.99999))).log10()
}

fn percentile_chart(m: &Manifest, rows: &[Row]) -> anyhow::Result<String> {
    let ymax = rows
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.1))
        .fold(1.0f64, f64::max)
        / 1000.0;
    let ymin = rows
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.1))
        .fold(f64::MAX, f64::min)
        .max(1.0)
        / 1000.0;
    // No curve at all (empty .hgrm files): a plain 0.001-1 ms range rather than an inverted one.
    let ymin = ymin.min(ymax / 10.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..5f64, (ymin * 0.8..ymax * 1.25).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms, log scale)")
            .x_labels(6)
            .x_label_formatter(&|x| match x.round() as i64 {
                0 => "0%".into(),
                1 => "90%".into(),
                2 => "99%".into(),
                3 => "99.9%".into(),
                4 => "99.99%".into(),
                _ => "99.999%".into(),
            })
            .y_label_formatter(&|y| format!("{y}"))
            .draw()?;
        for (i, r) in rows.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = r
                .curve
                .iter()
                .filter(|(p, _)| *p <= 0.99999)
                .map(|&(p, v)| (nines(p), (v / 1000.0).max(ymin * 0.8)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("{} = {}", m.param, r.value))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// One run per x position, labelled with its parameter value.
type ByValue<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A panel with the runs along x (labelled with the parameter's values) and 0..`ymax` up.
fn by_value_panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    x_desc: &str,
    labels: &[String],
    ymax: f64,
    y_label: &dyn Fn(&f64) -> String,
) -> anyhow::Result<ByValue<'a, 'b>> {
    let n = labels.len();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax * 1.15)?;
    let x_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_labels(n.max(2))
        .x_label_formatter(&x_label)
        .y_label_formatter(y_label)
        .draw()?;
    Ok(chart)
}

/// A named series of (run, value) points and its colour.
type Series<'s> = (&'s str, Vec<(f64, f64)>, RGBColor);

/// Draws each named series as a line with a dot per run, and the legend.
fn by_value_lines<'a, 'b: 'a>(
    chart: &mut ByValue<'a, 'b>,
    series: Vec<Series<'_>>,
) -> anyhow::Result<()> {
    for (name, pts, color) in series {
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn by_value_chart(m: &Manifest, rows: &[Row]) -> anyhow::Result<String> {
    let labels: Vec<String> = rows.iter().map(|r| r.value.clone()).collect();
    let tmax = rows.iter().map(|r| r.delivered_per_sec).fold(1.0, f64::max);
    let lmax = rows.iter().map(|r| r.p999).fold(1.0, f64::max) / 1000.0;
    let cmax = rows
        .iter()
        .map(|r| r.client_cpu.max(r.server_cpu.unwrap_or(0.0)))
        .fold(100.0, f64::max);
    let at = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .enumerate()
            .filter_map(|(i, r)| f(r).map(|v| (i as f64, v)))
            .collect()
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 3));
        let x_desc = m.param.as_str();
        let mut t = by_value_panel(
            &panels[0],
            "delivered msgs/s",
            x_desc,
            &labels,
            tmax,
            &|y| format!("{:.0}k", y / 1000.0),
        )?;
        t.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [(i as f64 - 0.3, 0.0), (i as f64 + 0.3, r.delivered_per_sec)],
                Palette99::pick(i).filled(),
            )
        }))?;
        let mut l = by_value_panel(&panels[1], "latency (ms)", x_desc, &labels, lmax, &|y| {
            format!("{y}")
        })?;
        by_value_lines(
            &mut l,
            vec![
                ("p50", at(&|r| Some(r.p50 / 1000.0)), BLUE),
                ("p99", at(&|r| Some(r.p99 / 1000.0)), RED),
                ("p99.9", at(&|r| Some(r.p999 / 1000.0)), BLACK),
            ],
        )?;
        let mut c = by_value_panel(
            &panels[2],
            "CPU (% of one core)",
            x_desc,
            &labels,
            cmax,
            &|y| format!("{y:.0}"),
        )?;
        by_value_lines(
            &mut c,
            vec![
                ("server", at(&|r| r.server_cpu), RED),
                ("loadgen", at(&|r| Some(r.client_cpu)), BLUE),
            ],
        )?;
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips() {
        let m = Manifest {
            title: "t".into(),
            param: "shard.batch_window_us".into(),
            machine: "m".into(),
            date: "2026-11-23".into(),
            runs: vec![RunEntry {
                value: "250".into(),
                stem: "run-00-250".into(),
                loadgen_ok: true,
                server_command: "corecast serve".into(),
                loadgen_command: "loadgen fanout".into(),
            }],
        };
        let back = Manifest::from_tsv(&m.to_tsv()).unwrap();
        assert_eq!(back.param, m.param);
        assert_eq!(back.runs.len(), 1);
        assert_eq!(back.runs[0].stem, "run-00-250");
        assert!(back.runs[0].loadgen_ok);
        assert!(Manifest::from_tsv("a\tb\n").is_err());
    }

    #[test]
    fn renders_a_folder_of_runs() {
        let dir = std::env::temp_dir().join(format!("sweep-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Manifest {
            title: "test sweep".into(),
            param: "shard.batch_window_us".into(),
            machine: machine(),
            date: today(),
            runs: Vec::new(),
        };
        for (i, v) in ["0", "1000"].iter().enumerate() {
            let stem = format!("run-0{i}-{v}");
            std::fs::write(
                dir.join(format!("{stem}.json")),
                format!(
                    r#"{{"delivered_per_sec":{},"lost":0,"gaps":0,"client_cpu_pct":50.0,"server_cpu_pct":90.0,"loadgen_saturated":false,"latency_us":{{"p50":{},"p99":2000,"p999":3000,"max":4000}}}}"#,
                    100_000 * (i + 1),
                    500 * (i + 1)
                ),
            )
            .unwrap();
            std::fs::write(
                dir.join(format!("{stem}.hgrm")),
                "       Value     Percentile TotalCount 1/(1-Percentile)\n\n     100.000 0.000000000000          1           1.00\n     500.000 0.500000000000        50           2.00\n    2000.000 0.990000000000        99         100.00\n    4000.000 1.000000000000       100            inf\n",
            )
            .unwrap();
            m.runs.push(RunEntry {
                value: v.to_string(),
                stem,
                loadgen_ok: true,
                server_command: "corecast serve".into(),
                loadgen_command: "loadgen fanout".into(),
            });
        }
        std::fs::write(dir.join("manifest.tsv"), m.to_tsv()).unwrap();
        let page = render(&dir).unwrap();
        let html = std::fs::read_to_string(page).unwrap();
        assert!(html.contains("<svg"), "charts are inlined");
        assert!(html.contains("<td>200000</td>"), "table has the second run");
        let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(
            md.contains("| 1000 | 200000 | 1.00 | 2.00 | 3.00 | 4.00 |"),
            "{md}"
        );
        assert_eq!(
            parse_hgrm("   2000.000 0.990000000000  99  100.00\n"),
            vec![(0.99, 2000.0)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
