//! The seed's security-group commands, on top of Group and Container resources:
//! `addgroup`, `removegroup`, `showgroups`, `addtogroup`, `removefromgroup`.
//!
//! Membership lives in each Container's `spec.groups`; the membership commands change
//! it with a compare-and-swap read-modify-write (retried by the store), so concurrent
//! calls on one Container all land.

use anyhow::{bail, Result};
use calico_schema::validate::{check_delete, is_valid_name};
use calico_schema::{object, Container, Group, GroupSpec, Kind, Resource};
use calico_store::{Change, StoreError, WriteMode};

use crate::apply::{is_stale, stale_give_up, MAX_ATTEMPTS};
use crate::cli::GlobalOpts;
use crate::conn::Ctx;
use crate::output::{self, sync_owner};
use crate::resolve::Resolver;

fn check_group_name(g: &str) -> Result<()> {
    if !is_valid_name(g) {
        bail!("'{g}' is not a valid group name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)");
    }
    Ok(())
}

/// A Group with the seed's default rules: accept from its own members, send anywhere.
pub fn default_group(name: &str) -> Resource {
    Resource::Group(object(Kind::Group, name, GroupSpec::default()))
}

fn containers(rs: &[Resource]) -> Vec<Container> {
    rs.iter()
        .filter_map(|r| match r {
            Resource::Container(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn is_conflict(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Conflict { .. }))
}

pub async fn addgroup(g: &GlobalOpts, group: &str) -> Result<()> {
    check_group_name(group)?;
    let ctx = Ctx::connect(g).await?;
    let want = default_group(group);
    for _ in 0..MAX_ATTEMPTS {
        if let Some(have) = ctx.call("get", ctx.store.get(Kind::Group, group)).await? {
            if have.without_version() == want {
                println!("Group {group} already exists");
                return Ok(());
            }
            bail!(
                "Group '{group}' already exists with other rules, labels or annotations; see `calicoctl get group {group} -o yaml`"
            );
        }
        match ctx
            .call(
                "write",
                ctx.store
                    .write(std::slice::from_ref(&want), WriteMode::Create, None, false),
            )
            .await
        {
            Ok(_) => {
                println!("Created group {group}");
                return Ok(());
            }
            // Created by someone else in between: look again.
            Err(e) if is_conflict(&e) || is_stale(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(stale_give_up("creating the group"))
}

/// Removes a Group. Refused while Containers are in it, unless `force`, which first
/// takes the group out of each of them (as the seed did, where membership lived in the
/// group), then deletes it.
pub async fn removegroup(g: &GlobalOpts, group: &str, force: bool) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    for _ in 0..MAX_ATTEMPTS {
        let listing = ctx.call("list", ctx.store.list(None)).await?;
        let Some(stored) = listing
            .resources
            .iter()
            .find(|r| r.kind() == Kind::Group && r.name() == group)
        else {
            bail!("Group '{group}' does not exist");
        };
        if let (false, Some(file)) = (force, sync_owner(stored)) {
            bail!("Group/{group} is owned by a sync directory (file {file}); change it there, or use --force");
        }
        let users = check_delete(Kind::Group, group, &listing.resources);
        if !users.is_empty() {
            if !force {
                bail!(
                    "Group '{group}' still has members: {}; take them out with removefromgroup, or use --force",
                    users.join(", ")
                );
            }
            for c in containers(&listing.resources) {
                if c.spec.groups.iter().any(|x| x == group) {
                    remove_member(&ctx, &c.metadata.name, group).await?;
                    println!("Removed {} from group {group}", c.metadata.name);
                }
            }
            // Re-list: someone may have added a member meanwhile.
            continue;
        }
        match ctx
            .call(
                "delete",
                ctx.store
                    .delete(&[(Kind::Group, group.to_string(), None)], Some(listing.revision), false),
            )
            .await
        {
            Ok(_) => {
                println!("Removed group {group}");
                return Ok(());
            }
            Err(e) if is_stale(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(stale_give_up("removing the group"))
}

pub async fn showgroups(g: &GlobalOpts, detailed: bool) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let listing = ctx.call("list", ctx.store.list(None)).await?;
    let mut groups: Vec<&Group> = listing
        .resources
        .iter()
        .filter_map(|r| match r {
            Resource::Group(g) => Some(g),
            _ => None,
        })
        .collect();
    groups.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let all = containers(&listing.resources);
    let members = |g: &str| -> Vec<String> {
        let mut m: Vec<String> = all
            .iter()
            .filter(|c| c.spec.groups.iter().any(|x| x == g))
            .map(|c| c.metadata.name.clone())
            .collect();
        m.sort();
        m
    };
    if groups.is_empty() {
        eprintln!("No groups.");
        return Ok(());
    }
    if detailed {
        for (i, grp) in groups.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", output::group_detail(grp, &members(&grp.metadata.name)));
        }
    } else {
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|grp| vec![grp.metadata.name.clone(), members(&grp.metadata.name).len().to_string()])
            .collect();
        print!("{}", output::table(&["NAME", "MEMBERS"], &rows));
    }
    Ok(())
}

/// Resolves CONTAINER and checks that GROUP exists and sync does not own the Container.
async fn target(
    ctx: &Ctx,
    docker_host: Option<&str>,
    query: &str,
    group: &str,
    force: bool,
    need_group: bool,
) -> Result<String> {
    check_group_name(group)?;
    let listing = ctx.call("list", ctx.store.list(None)).await?;
    if need_group
        && !listing
            .resources
            .iter()
            .any(|r| r.kind() == Kind::Group && r.name() == group)
    {
        bail!("Group '{group}' does not exist (create it with `calicoctl addgroup {group}`)");
    }
    let all = containers(&listing.resources);
    let docker = crate::docker_lookup::BollardLookup::new(docker_host);
    let name = Resolver::new()
        .with_docker(Box::new(docker))
        .resolve(query, &all)
        .await?;
    if !force {
        if let Some(file) = all
            .iter()
            .find(|c| c.metadata.name == name)
            .and_then(|c| sync_owner(&Resource::Container(c.clone())))
        {
            bail!("Container/{name} is owned by a sync directory (file {file}); change it there, or use --force");
        }
    }
    Ok(name)
}

fn not_a_container(r: &Resource) -> String {
    format!("{} is not a Container", r.id())
}

pub async fn addtogroup(g: &GlobalOpts, query: &str, group: &str, force: bool) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let name = target(&ctx, g.docker_host.as_deref(), query, group, force, true).await?;
    let grp = group.to_string();
    let outcome = ctx
        .call(
            "update",
            ctx.store.update(Kind::Container, &name, move |r| match r {
                Resource::Container(c) => {
                    if c.spec.groups.contains(&grp) {
                        Ok(false)
                    } else {
                        c.spec.groups.push(grp.clone());
                        Ok(true)
                    }
                }
                other => Err(not_a_container(other)),
            }),
        )
        .await?;
    match outcome.change {
        Change::Unchanged => println!("{name} is already in group {group}"),
        _ => println!("Added {name} to group {group}"),
    }
    Ok(())
}

/// Takes `group` out of Container `name`; false when it was not in it.
async fn remove_member(ctx: &Ctx, name: &str, group: &str) -> Result<bool> {
    let grp = group.to_string();
    let outcome = ctx
        .call(
            "update",
            ctx.store.update(Kind::Container, name, move |r| match r {
                Resource::Container(c) => {
                    let before = c.spec.groups.len();
                    c.spec.groups.retain(|x| *x != grp);
                    Ok(c.spec.groups.len() != before)
                }
                other => Err(not_a_container(other)),
            }),
        )
        .await?;
    Ok(!matches!(outcome.change, Change::Unchanged))
}

pub async fn removefromgroup(g: &GlobalOpts, query: &str, group: &str, force: bool) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let name = target(&ctx, g.docker_host.as_deref(), query, group, force, false).await?;
    if remove_member(&ctx, &name, group).await? {
        println!("Removed {name} from group {group}");
        Ok(())
    } else {
        bail!("{name} is not in group {group}")
    }
}
