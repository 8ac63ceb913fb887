//! Property: what `calicoctl diff` prints as opened and closed (reach::impact) is exactly
//! the difference of the reach matrices before and after the change, on random groups,
//! policies and memberships (render/tests/common's generator).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use calico_render::explain::World;
use calico_render::reach::{impact, matrix, probes_named};
use common::*;

#[test]
fn impact_is_the_difference_of_the_matrices() {
    let seeds: u64 = std::env::var("IMPACT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let (mut changes, mut cells) = (0, 0);
    for seed in 1..=seeds {
        let before = gen_scenario(seed);
        let after = gen_scenario(seed.wrapping_mul(7).wrapping_add(3));
        let probes = probes_named(&[&before, &after]);
        let (b, a) = (
            World::new(&before, &BTreeMap::new()),
            World::new(&after, &BTreeMap::new()),
        );
        let names: Vec<String> = b.container_names().iter().map(ToString::to_string).collect();
        let (mb, ma) = (matrix(&b, &names, &probes), matrix(&a, &names, &probes));
        let mut want = BTreeSet::new();
        for (i, src) in names.iter().enumerate() {
            for (j, dst) in names.iter().enumerate() {
                let (Some(old), Some(new)) = (&mb.cells[i][j], &ma.cells[i][j]) else {
                    continue;
                };
                for (k, p) in probes.iter().enumerate() {
                    cells += 1;
                    if old[k] != new[k] {
                        want.insert((src.clone(), dst.clone(), p.to_string(), new[k], ma.why[i][j][k].clone()));
                    }
                }
            }
        }
        let got: BTreeSet<_> = impact(&b, &a, &probes)
            .into_iter()
            .map(|c| (c.source, c.destination, c.probe.to_string(), c.opens, c.by))
            .collect();
        assert_eq!(got, want, "seed {seed}");
        changes += got.len();
    }
    eprintln!("{seeds} random changes: {changes} of {cells} (pair, probe) verdicts turned around, all reported");
    assert!(
        changes > seeds as usize,
        "the generator barely changes anything ({changes} changes)"
    );
}
