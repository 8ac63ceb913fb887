//! `calicoctl render --node NAME [--what nft|routes|bird] [-o text|json] [-f FILE...]`:
//! prints exactly what that node's agent would program — the nftables table, the routes
//! it owns and bird.conf — from etcd (resources, IPAM addresses and the node's blocks)
//! or, with `-f`, offline from files (Containers then need explicit `ips`; the node's
//! blocks come from `--block`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, Result};
use calico_render::{render_bird, render_nft, render_routes, NodeView, RTPROT_CALICO, TABLE_NAME};
use calico_schema::Resource;
use calico_store::ipam::Ipam;
use clap::{Args, ValueEnum};
use ipnet::IpNet;

use crate::cli::GlobalOpts;
use crate::conn::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// The `table inet calico` (text: nft's own syntax, as `nft list table` shows it;
    /// json: the batch for `nft -j -f`)
    Nft,
    /// The routes the node owns (protocol 80)
    Routes,
    /// bird.conf
    Bird,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderFormat {
    /// The artefacts as the node uses them (one section each when all are shown)
    Text,
    /// One JSON document
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// The node whose view is rendered
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// Only this artefact [default: all three]
    #[arg(long, value_enum)]
    pub what: Option<What>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: RenderFormat,
    /// Render offline from these files or directories instead of etcd; repeatable
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// With -f: an IPAM block of the node (e.g. 10.65.0.0/26); repeatable
    #[arg(long = "block", value_name = "CIDR", requires = "files")]
    pub blocks: Vec<IpNet>,
}

/// Runs the command: gathers the inputs (files or etcd) and prints the rendering.
pub async fn run(g: &GlobalOpts, args: &RenderArgs) -> Result<()> {
    let (resources, addrs, blocks) = if args.files.is_empty() {
        from_etcd(g, &args.node).await?
    } else {
        let loaded = crate::input::load_sources(&args.files)?;
        let resources: Vec<Resource> = loaded.into_iter().map(|l| l.resource).collect();
        (resources, BTreeMap::new(), args.blocks.clone())
    };
    let out = render_output(
        &args.node,
        &resources,
        &addrs,
        &blocks,
        args.what,
        args.output == RenderFormat::Json,
    )
    .map_err(|e| anyhow!(e))?;
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// Everything a node's agent reads: all resources, every Container's IPAM addresses
/// (by its handle), and the node's affine blocks.
async fn from_etcd(g: &GlobalOpts, node: &str) -> Result<(Vec<Resource>, BTreeMap<String, Vec<IpAddr>>, Vec<IpNet>)> {
    let ctx = Ctx::connect(g).await?;
    let (resources, addrs) = crate::desired::from_etcd(&ctx).await?;
    let ipam = Ipam::new(ctx.store.client(), ctx.cfg.timeout);
    let blocks = ipam.node_blocks(node).await.map_err(|e| anyhow!("IPAM: {e}"))?;
    Ok((resources, addrs, blocks))
}

/// Renders `node`'s artefacts from `resources`. `addrs` gives Containers' addresses by
/// name (a Container missing from it uses its explicit `spec.ips`); `blocks` are the
/// node's IPAM blocks. `what` picks one artefact (None: all); `json` selects JSON output.
///
/// Text, one artefact: exactly the artefact (`--what nft` is the table in nft's own
/// syntax, what `nft list table inet calico` shows once the agent loaded it, and pipes
/// into `nft -f -`; `--what bird` is a bird.conf), routes in `ip route` syntax. Text,
/// all: the three as `#`-headed sections, warnings first. JSON: the artefact as JSON
/// (the nft batch for `nft -j -f -`, bird.conf as a string), or for all an object
/// `{node, warnings, nft, routes, bird}`.
pub fn render_output(
    node: &str,
    resources: &[Resource],
    addrs: &BTreeMap<String, Vec<IpAddr>>,
    blocks: &[IpNet],
    what: Option<What>,
    json: bool,
) -> Result<String, String> {
    let view = NodeView::build(node, resources, addrs, blocks);
    if !view.nodes.iter().any(|n| n.metadata.name == node) && view.endpoints.is_empty() {
        // Nothing at all refers to this node: almost certainly a typo.
        return Err(format!(
            "node '{node}' is not known: no Node resource and no Container on it"
        ));
    }
    let to_json = |v: serde_json::Value| serde_json::to_string_pretty(&v).map_err(|e| e.to_string());
    let nft = || serde_json::to_value(render_nft(&view).to_batch()).map_err(|e| e.to_string());
    let nft_text = || render_nft(&view).to_text().map_err(|e| e.to_string());
    let routes = render_routes(&view);
    let routes_text = || routes.iter().map(|r| format!("{r}\n")).collect::<String>();
    match (what, json) {
        (Some(What::Nft), false) => nft_text(),
        (Some(What::Nft), true) => to_json(nft()?),
        (Some(What::Routes), false) => Ok(routes_text()),
        (Some(What::Routes), true) => to_json(serde_json::to_value(&routes).map_err(|e| e.to_string())?),
        (Some(What::Bird), false) => render_bird(&view).map_err(|e| e.to_string()),
        (Some(What::Bird), true) => to_json(serde_json::Value::String(
            render_bird(&view).map_err(|e| e.to_string())?,
        )),
        (None, true) => {
            let bird = match render_bird(&view) {
                Ok(b) => serde_json::Value::String(b),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            to_json(serde_json::json!({
                "node": node,
                "warnings": view.warnings,
                "nft": nft()?,
                "routes": routes,
                "bird": bird,
            }))
        }
        (None, false) => {
            let mut out = String::new();
            for w in &view.warnings {
                out.push_str(&format!("# warning: {w}\n"));
            }
            if !view.warnings.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!(
                "# ---- nftables: table inet {TABLE_NAME} (as `nft list table` shows it; `calicoctl render --what nft` gives it alone)\n"
            ));
            out.push_str(&nft_text()?);
            out.push_str(&format!("\n# ---- routes (protocol {RTPROT_CALICO})\n"));
            out.push_str(&routes_text());
            out.push_str("\n# ---- bird.conf\n");
            match render_bird(&view) {
                Ok(b) => out.push_str(&b),
                Err(e) => out.push_str(&format!("# not rendered: {e}\n")),
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_schema::{object, ContainerSpec, Kind, NodeSpec};

    fn cluster() -> Vec<Resource> {
        vec![
            Resource::Node(object(
                Kind::Node,
                "host1",
                NodeSpec {
                    ipv4: Some("172.17.8.101/24".parse().unwrap()),
                    ..Default::default()
                },
            )),
            Resource::Container(object(
                Kind::Container,
                "w1",
                ContainerSpec {
                    node: "host1".into(),
                    netns: Some("/var/run/netns/w1".into()),
                    ips: Some(vec!["10.65.0.1".parse().unwrap()]),
                    ..Default::default()
                },
            )),
        ]
    }

    #[test]
    fn one_artefact_is_bare() {
        let rs = cluster();
        let blocks = ["10.65.0.0/26".parse().unwrap()];
        let nft = render_output("host1", &rs, &BTreeMap::new(), &blocks, Some(What::Nft), false).unwrap();
        assert!(nft.starts_with("table inet calico {\n"), "{nft}");
        assert!(nft.contains("\tchain forward {\n"), "{nft}");
        let json = render_output("host1", &rs, &BTreeMap::new(), &blocks, Some(What::Nft), true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["nftables"].is_array());
        let routes = render_output("host1", &rs, &BTreeMap::new(), &blocks, Some(What::Routes), false).unwrap();
        assert!(routes.contains("blackhole 10.65.0.0/26 proto 80"), "{routes}");
        let bird = render_output("host1", &rs, &BTreeMap::new(), &blocks, Some(What::Bird), false).unwrap();
        assert!(bird.contains("router id 172.17.8.101;"));
    }

    #[test]
    fn all_as_json() {
        let out = render_output("host1", &cluster(), &BTreeMap::new(), &[], None, true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["node"], "host1");
        assert!(v["routes"].is_array() && v["bird"].is_string());
    }

    #[test]
    fn unknown_node_is_an_error() {
        assert!(render_output("nope", &cluster(), &BTreeMap::new(), &[], None, false).is_err());
    }
}
