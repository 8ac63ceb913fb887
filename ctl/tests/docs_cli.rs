//! docs/cli.md documents what `--help` offers: every command and subcommand has a
//! heading that names it, and every long option of every command is mentioned. Each
//! command's help is also kept as a snapshot (ctl/tests/help/), so a change to it is
//! seen in review, and shows connection options only where the command uses them.

use std::process::Command;

fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_calicoctl"))
        .args(path)
        .arg("--help")
        .output()
        .expect("run calicoctl --help");
    assert!(
        out.status.success(),
        "{path:?} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names listed under "Commands:" in a help text (leaving out `help`).
fn subcommands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            if let Some(name) = line.split_whitespace().next() {
                if name != "help" {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

/// Every option in a help text: its `--long` form and its `-s` short form, if any.
fn options(text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (short, rest) = match l.strip_prefix('-').and_then(|r| r.split_once(", ")) {
                Some((s, rest)) if !s.starts_with('-') => (Some(format!("-{s}")), rest),
                _ => (None, l),
            };
            let opt = rest.strip_prefix("--")?;
            let name: String = opt.chars().take_while(|c| c.is_alphanumeric() || *c == '-').collect();
            (!name.is_empty() && name != "help" && name != "version").then(|| (format!("--{name}"), short))
        })
        .collect()
}

#[test]
fn cli_md_covers_every_command_and_option() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md")).expect("docs/cli.md");
    let headings: Vec<&str> = doc.lines().filter(|l| l.starts_with('#')).collect();
    let mut missing = Vec::new();
    let mut stack: Vec<Vec<String>> = subcommands(&help(&[])).into_iter().map(|c| vec![c]).collect();
    let mut seen = 0;
    while let Some(path) = stack.pop() {
        seen += 1;
        let text = help(&path);
        let name = path.join(" ");
        // A command has a heading of its own; a subcommand (`ipam check`) at least a
        // usage line in its parent's section.
        let documented = if path.len() == 1 {
            headings.iter().any(|h| h.split([' ', ',', '`']).any(|w| w == name))
        } else {
            doc.contains(&format!("calicoctl {name}"))
        };
        if !documented {
            missing.push(format!("`{name}` has no heading or usage line"));
        }
        for (long, short) in options(&text) {
            let by_short = short.is_some_and(|s| doc.contains(&format!("{s} ")));
            if !doc.contains(&long) && !by_short {
                missing.push(format!("`{name}` option {long} is not in docs/cli.md"));
            }
        }
        for sub in subcommands(&text) {
            let mut p = path.clone();
            p.push(sub);
            stack.push(p);
        }
    }
    assert!(seen > 25, "only {seen} commands found in --help");
    assert!(
        missing.is_empty(),
        "docs/cli.md is behind --help:\n{}",
        missing.join("\n")
    );
}

/// Every command path, `["node", "stop"]` style, in a stable order.
fn all_commands() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<String>> = subcommands(&help(&[])).into_iter().map(|c| vec![c]).collect();
    while let Some(path) = stack.pop() {
        for sub in subcommands(&help(&path)) {
            let mut p = path.clone();
            p.push(sub);
            stack.push(p);
        }
        out.push(path);
    }
    out.sort();
    out
}

#[test]
fn help_matches_its_snapshots() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/help");
    let update = std::env::var_os("UPDATE_HELP").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut stale = Vec::new();
    let mut paths = vec![vec![]];
    paths.extend(all_commands());
    for path in paths {
        let name = if path.is_empty() {
            "calicoctl".to_string()
        } else {
            format!("calicoctl-{}", path.join("-"))
        };
        let file = dir.join(format!("{name}.txt"));
        let text = help(&path);
        if update {
            std::fs::write(&file, &text).unwrap();
        } else if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "help differs from its snapshot for {stale:?}: review, then UPDATE_HELP=1 cargo test -p calicoctl --test docs_cli"
    );
}

#[test]
fn connection_options_show_only_where_used() {
    for path in all_commands() {
        let text = help(&path);
        let top = path[0].as_str();
        let offline = ["validate", "schema", "completion", "man"].contains(&top);
        assert_eq!(text.contains("--etcd "), !offline, "{path:?}:\n{text}");
        let docker = ["addtogroup", "removefromgroup", "node", "master", "explain", "reach"].contains(&top);
        assert_eq!(text.contains("--docker-host"), docker, "{path:?}:\n{text}");
    }
    // Hidden is not refused: the options are global and accepted anywhere.
    let out = Command::new(env!("CARGO_BIN_EXE_calicoctl"))
        .args(["validate", "--etcd", "127.0.0.1:1", "--docker-host", "unix:///x", "-f"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
