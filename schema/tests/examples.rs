//! Every file in examples/ loads, validates as a set, and points editors at the schema.

use std::path::Path;

use calico_schema::validate::Existing;

fn examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn examples_validate_as_one_set() {
    let loaded = calico_schema::load_path(&examples_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.len() >= 10, "only {} documents", loaded.len());
    calico_schema::check_loaded_set(
        &loaded,
        &Existing {
            resources: &[],
            complete: true,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// yaml-language-server reads a modeline per document, so every document of a
/// multi-document file carries one; otherwise an editor checks only the first.
#[test]
fn every_example_document_carries_the_schema_modeline() {
    const MODELINE: &str = "# yaml-language-server: $schema=../schema/calico-v1.schema.json";
    assert!(examples_dir().join("../schema/calico-v1.schema.json").exists());
    for f in calico_schema::load::yaml_files(&examples_dir()).unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some(MODELINE),
            "{} lacks the modeline",
            f.display()
        );
        for (i, l) in lines.iter().enumerate() {
            if l.trim() == "---" {
                assert_eq!(
                    lines.get(i + 1).copied(),
                    Some(MODELINE),
                    "{}:{}: the document after this separator lacks the modeline",
                    f.display(),
                    i + 2
                );
            }
        }
    }
}
