//! `delete -f FILE...` and `delete KIND NAME...`.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use calico_schema::validate::check_delete;
use calico_schema::{Kind, Resource};
use calico_store::{Changes, Step};

use crate::args::parse_kind;
use crate::cli::{DeleteArgs, GlobalOpts};
use crate::conn::{store_error, Ctx};
use crate::input::load_sources;
use crate::output::sync_owner;
use crate::Lines;

type Item = (Kind, String, Option<String>);

fn items(args: &DeleteArgs) -> Result<Vec<Item>> {
    let mut out: Vec<Item> = if !args.files.is_empty() {
        load_sources(&args.files)?
            .into_iter()
            .map(|l| {
                let r = l.resource;
                let rv = r.metadata().resource_version.clone().filter(|v| !v.is_empty());
                (r.kind(), r.name().to_string(), rv)
            })
            .collect()
    } else {
        let Some(kind) = &args.kind else {
            bail!("give -f FILE or KIND NAME...");
        };
        let kind = parse_kind(kind)?;
        if args.names.is_empty() {
            bail!(
                "name the {kind} resources to delete: delete {} NAME...",
                kind.as_str().to_ascii_lowercase()
            );
        }
        args.names.iter().map(|n| (kind, n.clone(), None)).collect()
    };
    let mut seen = HashSet::new();
    out.retain(|(k, n, _)| seen.insert((*k, n.clone())));
    Ok(out)
}

pub async fn run(g: &GlobalOpts, args: &DeleteArgs) -> Result<()> {
    let items = items(args)?;
    let ctx = Ctx::connect(g).await?;
    let done = ctx
        .store
        .transact("deleting", async || -> Result<Step<()>> {
            let listing = ctx.call("list", ctx.store.list(None)).await?;
            let stored: HashMap<(Kind, &str), &Resource> =
                listing.resources.iter().map(|r| ((r.kind(), r.name()), r)).collect();
            let mut problems = Vec::new();
            let mut present = Vec::new();
            for it in &items {
                match stored.get(&(it.0, it.1.as_str())) {
                    Some(r) => {
                        if !args.force {
                            if let Some(file) = sync_owner(r) {
                                problems.push(format!(
                                    "{} is owned by a sync directory (file {file}); change it there, or use --force",
                                    r.id()
                                ));
                            }
                        }
                        present.push(it.clone());
                    }
                    None if args.ignore_not_found => {}
                    None => problems.push(format!("{}/{} not found", it.0, it.1)),
                }
            }
            let gone: HashSet<(Kind, &str)> = present.iter().map(|(k, n, _)| (*k, n.as_str())).collect();
            let remaining: Vec<Resource> = listing
                .resources
                .iter()
                .filter(|r| !gone.contains(&(r.kind(), r.name())))
                .cloned()
                .collect();
            if !args.force {
                for (kind, name, _) in &present {
                    let users = check_delete(*kind, name, &remaining);
                    if !users.is_empty() {
                        problems.push(format!(
                            "{kind}/{name} is still used by {}; delete or change those first, or use --force",
                            users.join(", ")
                        ));
                    }
                }
            }
            if !problems.is_empty() {
                return Err(Lines(problems).into());
            }
            if present.is_empty() {
                return Ok(Step::Done(()));
            }
            let changes = Changes::delete(present, Some(listing.revision)).dry_run(args.dry_run);
            Ok(Step::Commit(changes, ()))
        })
        .await
        .map_err(|e| store_error(&ctx.cfg, e))??;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for o in done.outcomes {
        println!("{} deleted{suffix}", o.id);
    }
    Ok(())
}
