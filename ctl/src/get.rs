//! `get KIND [NAME...] [-o table|wide|yaml|json]` and `get all`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use calico_schema::{Kind, Resource};

use crate::args::parse_kind;
use crate::cli::{GetArgs, GlobalOpts, OutputFormat};
use crate::conn::Ctx;
use crate::observed::container_status;
use crate::output;
use crate::Lines;

/// Resources in a stable order: referenced kinds first, then by name.
pub fn sort(rs: &mut [Resource]) {
    rs.sort_by(|a, b| (a.kind().rank(), a.name()).cmp(&(b.kind().rank(), b.name())));
}

pub async fn run(g: &GlobalOpts, args: &GetArgs) -> Result<()> {
    let kind = if args.kind.eq_ignore_ascii_case("all") {
        if !args.names.is_empty() {
            bail!("`get all` takes no names; name a kind to get resources by name");
        }
        None
    } else {
        Some(parse_kind(&args.kind)?)
    };
    let ctx = Ctx::connect(g).await?;
    let listing = ctx.call("list", ctx.store.list(kind)).await?;
    for (key, err) in &listing.invalid {
        eprintln!("warning: {key} holds an invalid resource, not shown: {err}");
    }
    let mut rs: Vec<Resource> = listing.resources;
    let mut missing = Vec::new();
    if let Some(k) = kind {
        rs.retain(|r| r.kind() == k);
        if !args.names.is_empty() {
            for n in &args.names {
                if !rs.iter().any(|r| r.name() == n) {
                    missing.push(format!("{k}/{n} not found"));
                }
            }
            rs.retain(|r| args.names.iter().any(|n| n == r.name()));
        }
    }
    sort(&mut rs);

    // What the agents observed: in `-o wide` columns, and as each Container's `status`
    // block in YAML and JSON (apply ignores it, so the output re-applies unchanged).
    let wide = args.output == OutputFormat::Wide;
    let status = if args.output != OutputFormat::Table && rs.iter().any(|r| r.kind() == Kind::Container) {
        container_status(&ctx).await?
    } else {
        BTreeMap::new()
    };
    match args.output {
        OutputFormat::Yaml => print!("{}", output::to_yaml_stream(&rs, &status)?),
        OutputFormat::Json => print!("{}", output::to_json(&rs, args.names.len() == 1, &status)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let mut first = true;
            let mut kinds: Vec<Kind> = Kind::ALL
                .iter()
                .copied()
                .filter(|k| kind.is_none_or(|x| x == *k))
                .collect();
            kinds.sort_by_key(calico_schema::Kind::rank);
            for k in kinds {
                let of_kind: Vec<Resource> = rs.iter().filter(|r| r.kind() == k).cloned().collect();
                if of_kind.is_empty() {
                    continue;
                }
                if !first {
                    println!();
                }
                first = false;
                if kind.is_none() {
                    println!("{}:", k.as_str());
                }
                print!("{}", output::kind_table(&of_kind, wide, &status));
            }
            if rs.is_empty() && missing.is_empty() {
                match kind {
                    Some(k) => eprintln!("No {k} resources found."),
                    None => eprintln!("No resources found."),
                }
            }
        }
    }
    if !missing.is_empty() {
        return Err(Lines(missing).into());
    }
    Ok(())
}
