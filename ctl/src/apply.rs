//! `apply`, `create`, `replace`, `diff` and `validate`: files in, one guarded etcd
//! transaction out (or a report of what it would do).

use std::collections::HashMap;

use anyhow::{bail, Result};
use calico_schema::validate::{dependencies, At, Existing, Issue};
use calico_schema::{check_loaded_set, Kind, Loaded, Resource, OWNER_ANNOTATION, SOURCE_ANNOTATION};
use calico_store::{Change, Changes, Listing, Step, StoreError, WriteMode};

use crate::checks::check_against;
use crate::cli::{DiffArgs, FileArgs, GlobalOpts, WriteArgs};
use crate::conn::{store_error, Ctx};
use crate::input::{load_sources, InputErrors};
use crate::output;
use crate::textdiff;

fn change_word(change: &Change, mode: WriteMode) -> &'static str {
    match (change, mode) {
        (Change::Created, _) => "created",
        (Change::Updated, WriteMode::Replace) => "replaced",
        (Change::Updated, _) => "configured",
        (Change::Unchanged, _) => "unchanged",
        (Change::Deleted, _) => "deleted",
    }
}

/// A conflict on one resource (a stale resourceVersion, a create or replace that lost a
/// race) is reported at that resource's place in its file.
fn locate_conflict(loaded: &[Loaded], e: anyhow::Error) -> anyhow::Error {
    let Some(StoreError::Conflict { id, .. }) = e.downcast_ref::<StoreError>() else {
        return e;
    };
    let Some(l) = loaded.iter().find(|l| l.resource.id() == *id) else {
        return e;
    };
    let path = if l.resource.metadata().resource_version.is_some() {
        "metadata.resourceVersion"
    } else {
        "metadata.name"
    };
    InputErrors(vec![l.diagnostic(&Issue {
        path: path.into(),
        at: At::Value,
        message: e.to_string(),
    })])
    .into()
}

/// Imperative writes refuse to change what a sync directory owns (API.md section 2),
/// naming the owning file, at the resource's place in the input. Writing it back
/// exactly as stored changes nothing and is not refused, so a backup round trip
/// (`get all -o yaml | apply -f -`) works on a synced cluster.
fn check_sync_owned(loaded: &[Loaded], listing: &Listing) -> Result<(), InputErrors> {
    let stored: HashMap<(Kind, &str), &Resource> =
        listing.resources.iter().map(|r| ((r.kind(), r.name()), r)).collect();
    let diags: Vec<_> = loaded
        .iter()
        .filter_map(|l| {
            let r = stored.get(&(l.resource.kind(), l.resource.name()))?;
            if r.without_version() == l.resource.without_version() {
                return None;
            }
            let file = crate::output::sync_owner(r)?;
            Some(l.diagnostic(&Issue {
                path: "metadata.name".into(),
                at: At::Value,
                message: format!(
                    "{} is owned by a sync directory (file {file}); change it there, or use --force",
                    r.id()
                ),
            }))
        })
        .collect();
    if diags.is_empty() {
        Ok(())
    } else {
        Err(InputErrors(diags))
    }
}

/// `--force` overrides the refusal, not the ownership: a sync-owned resource keeps its
/// `calico/owner` and `calico/source` annotations (unless the input sets them), so the
/// sync still manages it and reverts the change as drift on its next pass.
fn keep_sync_ownership(resources: &[Resource], listing: &Listing) -> Vec<Resource> {
    let stored: HashMap<(Kind, &str), &Resource> =
        listing.resources.iter().map(|r| ((r.kind(), r.name()), r)).collect();
    resources
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let name = r.name().to_string();
            if let Some(s) = stored
                .get(&(r.kind(), name.as_str()))
                .filter(|s| crate::output::sync_owner(s).is_some())
            {
                let ann = &mut r.metadata_mut().annotations;
                if !ann.contains_key(OWNER_ANNOTATION) {
                    for key in [OWNER_ANNOTATION, SOURCE_ANNOTATION] {
                        if let Some(v) = s.metadata().annotations.get(key) {
                            ann.insert(key.to_string(), v.clone());
                        }
                    }
                }
            }
            r
        })
        .collect()
}

/// apply / create / replace.
pub async fn write(g: &GlobalOpts, args: &WriteArgs, mode: WriteMode) -> Result<()> {
    let loaded = load_sources(&args.files.files)?;
    let resources: Vec<Resource> = loaded.iter().map(|l| l.resource.clone()).collect();
    // Only what the checks read, guarded by its mod revisions: an apply of one
    // resource costs the same whatever else is stored.
    let deps = dependencies(&resources);
    let ctx = Ctx::connect(g).await?;
    let done = ctx
        .store
        .transact("applying", async || -> Result<Step<Vec<Resource>>> {
            let read = ctx
                .store
                .read_scope(deps.keys.iter().cloned(), deps.kinds.iter().copied());
            let (listing, scope) = ctx.call("read", read).await?;
            check_against(&loaded, &listing, mode)?;
            let resources = if args.force {
                keep_sync_ownership(&resources, &listing)
            } else {
                check_sync_owned(&loaded, &listing)?;
                resources.clone()
            };
            let changes = Changes::write(resources.clone(), mode, Some(listing.revision))
                .scoped(scope)
                .dry_run(args.dry_run);
            Ok(Step::Commit(changes, resources))
        })
        .await
        .map_err(|e| locate_conflict(&loaded, store_error(&ctx.cfg, e)))??;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let changed = done.outcomes.iter().any(|o| !matches!(o.change, Change::Unchanged));
    for o in &done.outcomes {
        println!("{} {}{suffix}", o.id, change_word(&o.change, mode));
    }
    if args.dry_run && changed {
        print_reach_impact(&ctx, &done.value).await?;
    }
    if args.wait && changed {
        let revision = done.outcomes.iter().map(|o| o.revision).max().unwrap_or(0);
        let timeout = std::time::Duration::try_from_secs_f64(args.wait_timeout)
            .map_err(|_| anyhow::anyhow!("--wait-timeout must be a number of seconds"))?;
        crate::wait::enforced(&ctx, revision, timeout).await?;
    }
    Ok(())
}

/// `validate`: everything that can be checked without etcd.
pub fn validate(args: &FileArgs) -> Result<()> {
    let loaded = load_sources(&args.files)?;
    check_loaded_set(
        &loaded,
        &Existing {
            resources: &[],
            complete: false,
        },
    )
    .map_err(InputErrors::from)?;
    for l in &loaded {
        println!("{} valid ({})", l.resource.id(), l.file);
    }
    Ok(())
}

/// `diff`: what apply would change, under apply's rules: what apply refuses (a change
/// to a sync-owned resource without --force) diff refuses with the same error, and with
/// --force it shows what `apply --force` would write. Returns whether anything would
/// change.
pub async fn diff(g: &GlobalOpts, args: &DiffArgs) -> Result<bool> {
    let loaded = load_sources(&args.files.files)?;
    let deps = dependencies(loaded.iter().map(|l| &l.resource));
    let ctx = Ctx::connect(g).await?;
    let read = ctx.store.read_scope(deps.keys, deps.kinds);
    let (listing, _) = ctx.call("read", read).await?;
    check_against(&loaded, &listing, WriteMode::Apply)?;
    let resources: Vec<Resource> = loaded.iter().map(|l| l.resource.clone()).collect();
    let resources = if args.force {
        keep_sync_ownership(&resources, &listing)
    } else {
        check_sync_owned(&loaded, &listing)?;
        resources
    };
    let stored: HashMap<(Kind, &str), &Resource> =
        listing.resources.iter().map(|r| ((r.kind(), r.name()), r)).collect();
    let mut changed = false;
    for (l, new) in loaded.iter().zip(&resources) {
        let new = new.without_version();
        let id = new.id();
        let (old_name, old_text) = match stored.get(&(new.kind(), new.name())) {
            Some(old) => {
                let old_rv = old.metadata().resource_version.clone().unwrap_or_default();
                let old = old.without_version();
                if old == new {
                    continue;
                }
                (
                    format!("{id} (stored, resourceVersion {old_rv})"),
                    output::to_yaml(&old)?,
                )
            }
            None => (format!("{id} (not stored)"), String::new()),
        };
        let new_name = format!("{id} ({})", l.file);
        let d = textdiff::unified(&old_name, &new_name, &old_text, &output::to_yaml(&new)?);
        if d.is_empty() {
            // Equal YAML but different values cannot happen with these types; be safe.
            bail!("{id}: differs from the stored version in a way YAML does not show");
        }
        changed = true;
        print!("{d}");
    }
    if changed {
        print_reach_impact(&ctx, &resources).await?;
    }
    Ok(changed)
}

/// What a change does to who can reach whom: the pairs of Containers (stored before and
/// after) and probes (ICMP echo, and the ports the rules name) whose verdict it turns
/// around, each with the rule that decides it afterwards. Reads the whole desired state:
/// unlike the apply's own checks, which read only what the change depends on, the
/// impact can reach any pair.
async fn print_reach_impact(ctx: &Ctx, incoming: &[Resource]) -> Result<()> {
    use calico_render::explain::World;
    use calico_render::reach::{impact, probes_named};
    let (stored, addrs) = crate::desired::from_etcd(ctx).await?;
    let stored = stored.as_slice();
    let mut after: Vec<Resource> = stored
        .iter()
        .filter(|r| !incoming.iter().any(|n| n.kind() == r.kind() && n.name() == r.name()))
        .cloned()
        .collect();
    after.extend(incoming.iter().cloned());
    let probes = probes_named(&[stored, &after]);
    let changes = impact(&World::new(stored, &addrs), &World::new(&after, &addrs), &probes);
    if !changes.is_empty() {
        println!("reachability:");
        for c in changes {
            println!("  {c}");
        }
    }
    Ok(())
}
