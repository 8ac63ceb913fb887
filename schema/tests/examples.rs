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

#[test]
fn examples_carry_the_schema_modeline() {
    for f in calico_schema::load::yaml_files(&examples_dir()).unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "# yaml-language-server: $schema=../schema/calico-v1.schema.json",
            "{} lacks the modeline",
            f.display()
        );
        assert!(examples_dir().join("../schema/calico-v1.schema.json").exists());
    }
}
