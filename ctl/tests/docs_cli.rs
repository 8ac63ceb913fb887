//! docs/cli.md documents what `--help` offers: every command and subcommand has a
//! heading that names it, and every long option of every command is mentioned.

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
