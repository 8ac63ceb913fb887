//! `calicoctl reach [SELECTOR]`: who can reach whom among the selected Containers, from
//! the desired state, as a table, JSON or an SVG picture (groups as bands, each cell
//! colored by verdict and labeled with what passes).

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Result};
use calico_render::explain::World;
use calico_render::reach::{matrix, probes_named, Matrix, Probe};
use calico_schema::{Protocol, Resource, Selector};
use clap::{Args, ValueEnum};

use crate::cli::GlobalOpts;
use crate::conn::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReachFormat {
    /// A table: a row per source, a column per destination
    Text,
    /// The matrix as JSON
    Json,
    /// An SVG picture: groups as bands, cells colored by verdict
    Svg,
}

#[derive(Debug, Clone, Args)]
pub struct ReachArgs {
    /// Which Containers (a selector over their labels, `group` and `node`) [default: all()]
    #[arg(value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Probe this destination port (with --proto); repeatable [default: ICMP echo and
    /// every port the rules name]
    #[arg(long = "port", value_name = "N")]
    pub ports: Vec<u16>,
    /// The protocol of --port
    #[arg(long, default_value = "TCP", value_parser = |s: &str| s.parse::<Protocol>())]
    pub proto: Protocol,
    /// From these files or directories instead of etcd; repeatable
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: ReachFormat,
}

pub async fn run(g: &GlobalOpts, args: &ReachArgs) -> Result<()> {
    let (resources, addrs) = if args.files.is_empty() {
        crate::desired::from_etcd(&Ctx::connect(g).await?).await?
    } else {
        let loaded = crate::input::load_sources(&args.files)?;
        (loaded.into_iter().map(|l| l.resource).collect(), Default::default())
    };
    let selector =
        Selector::parse(args.selector.as_deref().unwrap_or("all()")).map_err(|e| anyhow!("invalid selector: {e}"))?;
    if !args.ports.is_empty() && !args.proto.has_ports() {
        bail!("--proto {} has no ports", args.proto);
    }
    let world = World::new(&resources, &addrs);
    // Rows and columns grouped by each Container's first group, then by name.
    let mut names: Vec<(String, String)> = world
        .container_names()
        .into_iter()
        .filter(|n| world.labels(n).is_some_and(|l| selector.matches(&l)))
        .map(|n| (first_group(&resources, n), n.to_string()))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no Container matches the selector");
    }
    let probes: Vec<Probe> = if args.ports.is_empty() {
        probes_named(&[&resources])
    } else {
        std::iter::once(Probe::ICMP)
            .chain(args.ports.iter().map(|p| Probe {
                protocol: args.proto,
                port: Some(*p),
            }))
            .collect()
    };
    let bands: Vec<String> = names.iter().map(|(g, _)| g.clone()).collect();
    let names: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
    let m = matrix(&world, &names, &probes);
    match args.output {
        ReachFormat::Text => print!("{}", text(&m, &bands)),
        ReachFormat::Json => println!("{}", serde_json::to_string_pretty(&m)?),
        ReachFormat::Svg => print!("{}", svg(&m, &bands)),
    }
    Ok(())
}

fn first_group(resources: &[Resource], name: &str) -> String {
    resources
        .iter()
        .find_map(|r| match r {
            Resource::Container(c) if c.metadata.name == name => {
                Some(c.spec.groups.first().cloned().unwrap_or_default())
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// A cell's words: `all`, `none`, the probes that pass, `-` on the diagonal, `?` when
/// the two share no IP version.
fn cell_label(m: &Matrix, cell: &Option<Vec<bool>>, diagonal: bool) -> String {
    match cell {
        _ if diagonal => "-".into(),
        None => "?".into(),
        Some(v) if v.iter().all(|a| *a) => "all".into(),
        Some(v) if !v.iter().any(|a| *a) => "none".into(),
        Some(v) => m
            .probes
            .iter()
            .zip(v)
            .filter(|(_, a)| **a)
            .map(|(p, _)| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn text(m: &Matrix, bands: &[String]) -> String {
    let mut out = String::new();
    let probes: Vec<String> = m.probes.iter().map(Probe::to_string).collect();
    let _ = writeln!(out, "probes: {} (all: every probe passes)", probes.join(", "));
    let rows: Vec<Vec<String>> = m
        .cells
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = vec![
                m.names[i].clone(),
                if bands[i].is_empty() {
                    "-".into()
                } else {
                    bands[i].clone()
                },
            ];
            r.extend(row.iter().enumerate().map(|(j, c)| cell_label(m, c, i == j)));
            r
        })
        .collect();
    let mut header = vec!["FROM \\ TO".to_string(), "GROUP".to_string()];
    header.extend(m.names.iter().cloned());
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The matrix as an SVG: a band per group along both axes, cells green (all probes
/// pass), red (none), amber (some; labeled with those) or grey (no common IP version).
fn svg(m: &Matrix, bands: &[String]) -> String {
    const CELL: usize = 90;
    const LABEL: usize = 120;
    const BAND: usize = 22;
    let n = m.names.len();
    let origin = LABEL + BAND;
    let size = origin + n * CELL + 10;
    let legend_y = size + 10;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{}" font-family="sans-serif" font-size="11">"#,
        legend_y + 40
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // Group bands: consecutive rows with the same first group.
    let mut start = 0;
    for i in 1..=n {
        if i == n || bands[i] != bands[start] {
            let name = if bands[start].is_empty() {
                "(no group)".to_string()
            } else {
                bands[start].clone()
            };
            let (from, len) = (origin + start * CELL, (i - start) * CELL);
            let shade = if start % 2 == 0 { "#dde7f3" } else { "#eef3f9" };
            let _ = writeln!(
                s,
                r#"<rect x="{from}" y="{LABEL}" width="{len}" height="{BAND}" fill="{shade}"/><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                from + len / 2,
                LABEL + 15,
                escape(&name)
            );
            let _ = writeln!(
                s,
                r#"<rect x="{LABEL}" y="{from}" width="{BAND}" height="{len}" fill="{shade}"/><text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
                LABEL + 15,
                from + len / 2,
                LABEL + 15,
                from + len / 2,
                escape(&name)
            );
            start = i;
        }
    }
    for (i, name) in m.names.iter().enumerate() {
        let at = origin + i * CELL + CELL / 2;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{at}" text-anchor="end">{}</text>"#,
            LABEL - 6,
            escape(name)
        );
        let _ = writeln!(
            s,
            r#"<text x="{at}" y="{}" text-anchor="start" transform="rotate(-45 {at} {})">{}</text>"#,
            LABEL - 6,
            LABEL - 6,
            escape(name)
        );
    }
    for (i, row) in m.cells.iter().enumerate() {
        for (j, cell) in row.iter().enumerate() {
            let label = cell_label(m, cell, i == j);
            let fill = match label.as_str() {
                "-" => "#ffffff",
                "?" => "#dddddd",
                "all" => "#7cc87c",
                "none" => "#e88080",
                _ => "#f5c46b",
            };
            let (x, y) = (origin + j * CELL, origin + i * CELL);
            let _ = writeln!(
                s,
                r##"<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{fill}" stroke="#999"><title>{} -> {}: {}</title></rect>"##,
                escape(&m.names[i]),
                escape(&m.names[j]),
                escape(&label)
            );
            // Long lists wrap, a probe a line.
            for (k, part) in label.split(',').enumerate().take(5) {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                    x + CELL / 2,
                    y + 20 + k * 14,
                    escape(part)
                );
            }
        }
    }
    let probes: Vec<String> = m.probes.iter().map(Probe::to_string).collect();
    let _ = writeln!(
        s,
        r#"<text x="10" y="{legend_y}">rows: from, columns: to; probes: {}</text>"#,
        escape(&probes.join(", "))
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}">green: all pass, red: none, amber: those listed, grey: no common IP version</text>"#,
        legend_y + 16
    );
    s.push_str("</svg>\n");
    s
}
