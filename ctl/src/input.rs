//! Reading the documents named by `-f FILE|DIR|-`.

use std::io::Read;
use std::path::Path;

use calico_schema::{Diagnostic, Diagnostics, Loaded};

/// The name standard input goes by in messages.
pub const STDIN_NAME: &str = "<stdin>";

/// Problems found in the input, one line each: `file:line:col: field: message`.
#[derive(Debug)]
pub struct InputErrors(pub Vec<Diagnostic>);

impl std::fmt::Display for InputErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if d.line == 0 {
                // Not about a place in the file (it could not be read at all).
                write!(f, "{}: {}", d.file, d.message)?;
            } else {
                write!(f, "{d}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for InputErrors {}

impl From<Diagnostics> for InputErrors {
    fn from(d: Diagnostics) -> Self {
        InputErrors(d.0)
    }
}

fn whole_file(file: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        line: 0,
        col: 0,
        path: String::new(),
        message,
    }
}

/// Every YAML file under the directory `src`, read as `sync --dir` reads one (see
/// `confined`): a symlink that leads out of the directory is refused, naming where it
/// points, and nothing is loaded; a symlink to a file or directory inside it is fine.
/// Files are named `src/relative/path` in messages.
fn load_dir(src: &str) -> Result<Vec<Loaded>, Diagnostics> {
    let what = format!("the directory {src}");
    let read = crate::confined::read_yaml_files(Path::new(src), &what)
        .map_err(|e| Diagnostics(vec![whole_file(src, format!("cannot read: {e}"))]))?;
    let name = |rel: &str| {
        if rel == "." {
            src.to_string()
        } else {
            Path::new(src).join(rel).display().to_string()
        }
    };
    let mut diags: Vec<Diagnostic> = read
        .refused
        .iter()
        .map(|(rel, why)| whole_file(&name(rel), why.clone()))
        .collect();
    let mut out = Vec::new();
    for (rel, bytes) in &read.files {
        let file = name(rel);
        match std::str::from_utf8(bytes) {
            Ok(text) => match calico_schema::load_str(&file, text) {
                Ok(mut l) => out.append(&mut l),
                Err(mut d) => diags.append(&mut d.0),
            },
            Err(e) => diags.push(whole_file(&file, format!("cannot read: not UTF-8 text: {e}"))),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(Diagnostics(diags))
    }
}

/// Loads every document of every source, reporting all problems of all of them.
pub fn load_sources(sources: &[String]) -> Result<Vec<Loaded>, InputErrors> {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    let mut stdin_used = false;
    for src in sources {
        let result = if src == "-" {
            if stdin_used {
                diags.push(whole_file(STDIN_NAME, "`-f -` given more than once".into()));
                continue;
            }
            stdin_used = true;
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => calico_schema::load_str(STDIN_NAME, &text),
                Err(e) => Err(Diagnostics(vec![whole_file(STDIN_NAME, format!("cannot read: {e}"))])),
            }
        } else if Path::new(src).is_dir() {
            load_dir(src)
        } else {
            // A file named on the command line is read wherever it leads: the user
            // chose it, link or not.
            calico_schema::load_path(Path::new(src))
        };
        match result {
            Ok(mut l) => {
                if l.is_empty() && Path::new(src).is_dir() {
                    diags.push(whole_file(src, "no *.yaml or *.yml documents in this directory".into()));
                }
                out.append(&mut l);
            }
            Err(d) => diags.extend(d.0),
        }
    }
    if !diags.is_empty() {
        return Err(InputErrors(diags));
    }
    if out.is_empty() {
        return Err(InputErrors(vec![whole_file(
            &sources.join(","),
            "no resources found (the input has no documents)".into(),
        )]));
    }
    Ok(out)
}
