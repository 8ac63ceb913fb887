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
    /// The same picture as PNG (redirect it to a file), text in the system's fonts
    Png,
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
    /// Also send each probe for real, from the network namespace of every source on
    /// the --node(s), and report each cell where the packet's fate differs from the
    /// policy's verdict (exit 1 when any does); needs root
    #[arg(long)]
    pub probe: bool,
    /// With --probe: the nodes whose Containers run here; repeatable [default: this
    /// host's name]
    #[arg(long = "node", value_name = "NAME", requires = "probe")]
    pub nodes: Vec<String>,
}

/// Runs the command; false when a probe disagreed with the policy.
pub async fn run(g: &GlobalOpts, args: &ReachArgs) -> Result<bool> {
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
        ReachFormat::Png => write_png(&svg(&m, &bands))?,
    }
    if !args.probe {
        return Ok(true);
    }
    let report = probe(g, args, &resources, &world, &m).await?;
    // The matrix may be on stdout for a pipe (svg, json); the comparison goes to stderr
    // then, so the picture stays whole.
    if args.output == ReachFormat::Text {
        print!("{}", report.text);
    } else {
        eprint!("{}", report.text);
    }
    Ok(report.disagreements == 0)
}

struct ProbeReport {
    text: String,
    disagreements: usize,
}

/// Sends every probe of the matrix from the sources on this host, and compares.
async fn probe(
    g: &GlobalOpts,
    args: &ReachArgs,
    resources: &[Resource],
    world: &World<'_>,
    m: &Matrix,
) -> Result<ProbeReport> {
    let nodes: Vec<String> = if args.nodes.is_empty() {
        vec![crate::hostcmd::hostname()?]
    } else {
        args.nodes.clone()
    };
    let mut out = String::new();
    let mut pairs = Vec::new();
    for (i, src) in m.names.iter().enumerate() {
        let Some(c) = container(resources, src) else { continue };
        if !nodes.contains(&c.spec.node) {
            continue;
        }
        let netns = match netns_of(g, c).await {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(out, "not probed from {src}: {e:#}");
                continue;
            }
        };
        for (j, dst) in m.names.iter().enumerate() {
            let Some(ip) = peer_ip(world, src, dst) else { continue };
            if i != j {
                pairs.push(crate::probe::Pair {
                    src: i,
                    dst: j,
                    netns: netns.clone(),
                    ip,
                });
            }
        }
    }
    let fates = tokio::task::spawn_blocking({
        let pairs_probes = (std::mem::take(&mut pairs), m.probes.clone());
        move || {
            let (pairs, probes) = pairs_probes;
            let fates = crate::probe::run(&pairs, &probes);
            (pairs, fates)
        }
    })
    .await
    .map_err(|e| anyhow!("probing: {e}"))?;
    let (pairs, fates) = fates;
    let (mut probed, mut disagreements, mut skipped) = (0, 0, 0);
    for (pair, fates) in pairs.iter().zip(fates) {
        let Some(Some(says)) = m.cells[pair.src].get(pair.dst) else {
            continue;
        };
        for ((probe, says), fate) in m.probes.iter().zip(says).zip(fates) {
            match fate {
                Ok(Some(delivered)) => {
                    probed += 1;
                    if delivered != *says {
                        disagreements += 1;
                        let _ = writeln!(
                            out,
                            "DISAGREES {} -> {} {probe}: the policy {} it, the packet was {}",
                            m.names[pair.src],
                            m.names[pair.dst],
                            if *says { "allows" } else { "drops" },
                            if delivered { "delivered" } else { "dropped" }
                        );
                    }
                }
                Ok(None) => skipped += 1,
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "not probed {} -> {} {probe}: {e}",
                        m.names[pair.src], m.names[pair.dst]
                    );
                }
            }
        }
    }
    let verdict = if disagreements == 0 {
        "all agree with the policy".to_string()
    } else {
        format!("{disagreements} disagree with the policy")
    };
    let skipped = if skipped > 0 {
        format!(" ({skipped} not probed: only TCP and ICMP can be)")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "probed {probed} cells from {}{skipped}: {verdict}",
        nodes.join(", ")
    );
    Ok(ProbeReport {
        text: out,
        disagreements,
    })
}

fn container<'a>(resources: &'a [Resource], name: &str) -> Option<&'a calico_schema::Container> {
    resources.iter().find_map(|r| match r {
        Resource::Container(c) if c.metadata.name == name => Some(c),
        _ => None,
    })
}

/// The destination address a probe from `src` goes to: IPv4 when both have it.
fn peer_ip(world: &World<'_>, src: &str, dst: &str) -> Option<std::net::IpAddr> {
    let (s, d) = (world.addresses(src)?, world.addresses(dst)?);
    let v4 = s.iter().any(std::net::IpAddr::is_ipv4) && d.iter().any(std::net::IpAddr::is_ipv4);
    d.iter().find(|a| a.is_ipv4() == v4).copied()
}

/// Where a Container's network namespace is: its `netns`, or its Docker container's
/// (by the process dockerd reports).
async fn netns_of(g: &GlobalOpts, c: &calico_schema::Container) -> Result<std::path::PathBuf> {
    if let Some(p) = &c.spec.netns {
        return Ok(p.into());
    }
    let Some(id) = &c.spec.container else {
        bail!("it has neither netns nor container");
    };
    let host = g
        .docker_host
        .clone()
        .unwrap_or_else(|| calico_schema::DEFAULT_DOCKER_HOST.to_string());
    let path = calico_schema::docker_socket(&host)?.to_string_lossy().into_owned();
    let docker = bollard::Docker::connect_with_unix(&path, 10, bollard::API_DEFAULT_VERSION)
        .map_err(|e| anyhow!("Docker at {host}: {e}"))?
        .negotiate_version()
        .await
        .map_err(|e| anyhow!("Docker at {host}: {e}"))?;
    let info = docker
        .inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .map_err(|e| anyhow!("Docker container {id}: {e}"))?;
    match info.state.and_then(|s| s.pid).filter(|p| *p > 0) {
        Some(pid) => Ok(format!("/proc/{pid}/ns/net").into()),
        None => bail!("Docker container {id} is not running"),
    }
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

/// Rasterizes the SVG (resvg) and writes the PNG to stdout, never to a terminal.
fn write_png(svg: &str) -> Result<()> {
    use resvg::{tiny_skia, usvg};
    use std::io::{IsTerminal, Write};
    if std::io::stdout().is_terminal() {
        bail!("a PNG is binary: redirect it to a file (calicoctl reach -o png > reach.png)");
    }
    let mut opt = usvg::Options::default();
    let fonts = opt.fontdb_mut();
    fonts.load_system_fonts();
    // fontdb's generic sans-serif is Arial, seldom on Linux; use one that is there.
    let family = fonts
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .find(|n| ["DejaVu Sans", "Liberation Sans", "Noto Sans"].contains(&n.as_str()));
    if let Some(family) = family {
        fonts.set_sans_serif_family(family);
    }
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| anyhow!("drawing the matrix: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow!("a {}x{} picture is too large", size.width(), size.height()))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let png = pixmap.encode_png().map_err(|e| anyhow!("encoding the PNG: {e}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&png)?;
    out.flush()?;
    Ok(())
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
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{}" font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif" font-size="11">"#,
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
            // The tooltip: the verdict of each probe and what decides it.
            let mut title = format!("{} -> {}: {label}", m.names[i], m.names[j]);
            if let (Some(verdicts), Some(why)) = (cell, m.why[i].get(j)) {
                for ((p, ok), by) in m.probes.iter().zip(verdicts).zip(why) {
                    let word = if *ok { "allowed" } else { "dropped" };
                    let _ = write!(title, "\n{p}: {word} by {by}");
                }
            }
            let _ = writeln!(
                s,
                r##"<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{fill}" stroke="#999"><title>{}</title></rect>"##,
                escape(&title)
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
