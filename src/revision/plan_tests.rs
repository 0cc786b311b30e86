//! Graph and planning tests, including property tests on random DAGs.

use std::collections::BTreeSet;
use std::path::Path;

use proptest::prelude::*;

use super::Revision;
use super::graph::{Graph, GraphError, ResolveError};
use super::plan::{self, PlanError, Target};

fn rev(id: &str, parents: &[&str], extra: &str) -> Revision {
    let text = format!(
        "-- revision: {id}\n-- down_revision: {}\n{extra}-- +upgrade\nSELECT 1;\n-- +downgrade\nSELECT 1;\n",
        parents.join(", ")
    );
    Revision::parse(Path::new(&format!("m/{id}.sql")), &text).unwrap()
}

fn graph(edges: &[(&str, &[&str])]) -> Graph {
    Graph::new(edges.iter().map(|(id, p)| rev(id, p, "")).collect()).unwrap()
}

fn ids(g: &Graph, nodes: &[usize]) -> Vec<String> {
    nodes
        .iter()
        .map(|&n| g.revision(n).id.to_string())
        .collect()
}

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

/// a - b - c ; b - d ; (c, d) - m
fn diamond() -> Graph {
    graph(&[
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["b"]),
        ("d", &["b"]),
        ("m", &["c", "d"]),
    ])
}

#[test]
fn linear_upgrade_and_downgrade() {
    let g = graph(&[("0001", &[]), ("0002", &["0001"]), ("0003", &["0002"])]);
    let none = BTreeSet::new();
    assert_eq!(
        ids(&g, &plan::upgrade(&g, &none, &t("head")).unwrap()),
        ["0001", "0002", "0003"]
    );
    assert_eq!(
        ids(&g, &plan::upgrade(&g, &none, &t("+2")).unwrap()),
        ["0001", "0002"]
    );
    assert_eq!(
        ids(&g, &plan::upgrade(&g, &none, &t("0002")).unwrap()),
        ["0001", "0002"]
    );
    assert!(matches!(
        plan::upgrade(&g, &none, &t("000")),
        Err(PlanError::Resolve(ResolveError::Ambiguous { .. }))
    ));
    let all: BTreeSet<usize> = (0..3).collect();
    assert_eq!(
        ids(&g, &plan::downgrade(&g, &all, &t("-1")).unwrap()),
        ["0003"]
    );
    assert_eq!(
        ids(&g, &plan::downgrade(&g, &all, &t("0001")).unwrap()),
        ["0003", "0002"]
    );
    assert_eq!(
        ids(&g, &plan::downgrade(&g, &all, &t("base")).unwrap()),
        ["0003", "0002", "0001"]
    );
    assert!(matches!(
        plan::downgrade(&g, &all, &t("-4")),
        Err(PlanError::RelativeTooFar { available: 3, .. })
    ));
    assert!(matches!(
        plan::upgrade(&g, &all, &t("+1")),
        Err(PlanError::RelativeTooFar { available: 0, .. })
    ));
    assert!(plan::upgrade(&g, &all, &t("head")).unwrap().is_empty());
}

#[test]
fn prefixes_labels_and_ambiguity() {
    let g = Graph::new(vec![
        rev("ae10", &[], "-- branch_labels: core\n"),
        rev("ae20", &["ae10"], ""),
        rev("b1", &["ae10"], ""),
    ])
    .unwrap();
    assert_eq!(g.revision(g.resolve("ae1").unwrap()).id.as_str(), "ae10");
    assert_eq!(g.revision(g.resolve("core").unwrap()).id.as_str(), "ae10");
    assert!(matches!(
        g.resolve("ae"),
        Err(ResolveError::Ambiguous { .. })
    ));
    assert!(matches!(g.resolve("zz"), Err(ResolveError::NotFound(_))));
    // two heads: `head` refuses with the merge hint, `heads` applies both
    let err = plan::upgrade(&g, &BTreeSet::new(), &t("head")).unwrap_err();
    assert!(
        err.to_string().contains("Multiple head revisions") && err.to_string().contains("merge"),
        "{err}"
    );
    assert_eq!(
        plan::upgrade(&g, &BTreeSet::new(), &t("heads"))
            .unwrap()
            .len(),
        3
    );
    assert!(matches!(
        plan::upgrade(&g, &BTreeSet::new(), &t("core@head")),
        Err(PlanError::Resolve(ResolveError::MultipleHeads { .. }))
    ));
}

#[test]
fn merges_and_version_rows() {
    let g = diamond();
    let none = BTreeSet::new();
    let up = plan::upgrade(&g, &none, &t("head")).unwrap();
    assert_eq!(ids(&g, &up), ["a", "b", "c", "d", "m"]);
    // after c only: rows {c}; after c and d: rows {c, d}; after m: rows {m}
    let node = |s: &str| g.node(s).unwrap();
    let applied: BTreeSet<usize> = ["a", "b", "c", "d"].iter().map(|s| node(s)).collect();
    assert_eq!(
        ids(
            &g,
            &g.version_rows(&applied).into_iter().collect::<Vec<_>>()
        ),
        ["c", "d"]
    );
    let all: BTreeSet<usize> = (0..5).collect();
    assert_eq!(
        ids(&g, &g.version_rows(&all).into_iter().collect::<Vec<_>>()),
        ["m"]
    );
    // -1 from the merge leaves two heads; -1 again is ambiguous
    assert_eq!(
        ids(&g, &plan::downgrade(&g, &all, &t("-1")).unwrap()),
        ["m"]
    );
    assert!(matches!(
        plan::downgrade(&g, &all, &t("-2")),
        Err(PlanError::Ambiguous(_))
    ));
    // downgrading to c removes d's branch? no: only descendants of c (m)
    assert_eq!(ids(&g, &plan::downgrade(&g, &all, &t("c")).unwrap()), ["m"]);
    assert_eq!(
        ids(&g, &plan::downgrade(&g, &all, &t("b")).unwrap()),
        ["m", "d", "c"]
    );
    // +1 at the branch point is ambiguous
    let ab: BTreeSet<usize> = [node("a"), node("b")].into();
    assert!(matches!(
        plan::upgrade(&g, &ab, &t("+1")),
        Err(PlanError::Ambiguous(_))
    ));
    assert_eq!(ids(&g, &plan::upgrade(&g, &ab, &t("d")).unwrap()), ["d"]);
}

#[test]
fn depends_on_orders_without_parenting() {
    let g = Graph::new(vec![
        rev("a", &[], ""),
        rev("x", &[], ""),
        rev("b", &["a"], "-- depends_on: x\n"),
    ])
    .unwrap();
    let up = plan::upgrade(&g, &BTreeSet::new(), &t("b")).unwrap();
    assert_eq!(ids(&g, &up), ["a", "x", "b"]);
    // x stays a head of its own branch in the version table
    let all: BTreeSet<usize> = (0..3).collect();
    assert_eq!(
        ids(&g, &g.version_rows(&all).into_iter().collect::<Vec<_>>()),
        ["b", "x"]
    );
    // downgrading x takes b with it
    assert_eq!(
        ids(&g, &plan::downgrade(&g, &all, &t("base")).unwrap()),
        ["b", "x", "a"]
    );
}

#[test]
fn graph_errors_name_the_file() {
    let dup = Graph::new(vec![rev("a", &[], ""), rev("a", &[], "")]).unwrap_err();
    assert!(matches!(dup, GraphError::Duplicate { .. }));
    let unknown = Graph::new(vec![rev("a", &["zz"], "")]).unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "m/a.sql: Can't locate revision identified by 'zz' (named in its down_revision)"
    );
    let cycle = Graph::new(vec![rev("a", &["b"], ""), rev("b", &["a"], "")]).unwrap_err();
    assert!(matches!(cycle, GraphError::Cycle { .. }), "{cycle}");
    let clash = Graph::new(vec![
        rev("a", &[], "-- branch_labels: x\n"),
        rev("b", &[], "-- branch_labels: x\n"),
    ])
    .unwrap_err();
    assert!(matches!(clash, GraphError::LabelClash { .. }));
}

#[test]
fn irreversible_revisions_block_downgrades() {
    let g = Graph::new(vec![
        rev("a", &[], ""),
        Revision::parse(
            Path::new("m/b.sql"),
            "-- revision: b\n-- down_revision: a\n-- irreversible: true\n-- +upgrade\nSELECT 1;\n",
        )
        .unwrap(),
    ])
    .unwrap();
    let all: BTreeSet<usize> = (0..2).collect();
    assert!(matches!(
        plan::downgrade(&g, &all, &t("base")),
        Err(PlanError::Irreversible { .. })
    ));
}

#[test]
fn unknown_database_rows_are_reported() {
    let g = diamond();
    let e = plan::applied_from_rows(&g, &["nope".parse().unwrap()]).unwrap_err();
    assert!(
        e.to_string()
            .contains("Can't locate revision identified by 'nope'")
    );
}

/// A random DAG: node i's parents are drawn from 0..i; ids are zero-padded so id order = index order.
fn arb_graph() -> impl Strategy<Value = Graph> {
    (1usize..24).prop_flat_map(|n| {
        proptest::collection::vec(
            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            n,
        )
        .prop_map(move |picks| {
            let revs = picks
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let parents: BTreeSet<String> = if i == 0 {
                        BTreeSet::new()
                    } else {
                        p.iter().map(|ix| format!("r{:03}", ix.index(i))).collect()
                    };
                    let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                    rev(&format!("r{i:03}"), &parents, "")
                })
                .collect();
            Graph::new(revs).unwrap()
        })
    })
}

fn respects_requirements(g: &Graph, already: &BTreeSet<usize>, order: &[usize]) -> bool {
    let mut seen = already.clone();
    order.iter().all(|&n| {
        let ok = g.requires(n).iter().all(|r| seen.contains(r));
        seen.insert(n);
        ok
    })
}

proptest! {
    #[test]
    fn upgrade_plans_respect_parents(g in arb_graph(), pick in any::<prop::sample::Index>(), start in any::<prop::sample::Index>()) {
        let applied = g.ancestors([start.index(g.len())]);
        let target = g.revision(pick.index(g.len())).id.to_string();
        let order = plan::upgrade(&g, &applied, &Target::Revision(target.clone())).unwrap();
        prop_assert!(respects_requirements(&g, &applied, &order));
        prop_assert!(order.iter().all(|n| !applied.contains(n)));
        let mut after = applied.clone();
        after.extend(order.iter().copied());
        prop_assert!(after.is_superset(&g.ancestors([g.node(&target).unwrap()])));
        // the version rows after the plan name exactly the applied set
        let rows: Vec<_> = g.version_rows(&after).into_iter().map(|n| g.revision(n).id.clone()).collect();
        prop_assert_eq!(plan::applied_from_rows(&g, &rows).unwrap(), after);
    }

    #[test]
    fn downgrade_to_base_is_the_reverse_of_upgrade_to_heads(g in arb_graph()) {
        let up = plan::upgrade(&g, &BTreeSet::new(), &Target::Heads).unwrap();
        prop_assert_eq!(up.len(), g.len());
        prop_assert!(respects_requirements(&g, &BTreeSet::new(), &up));
        let all: BTreeSet<usize> = up.iter().copied().collect();
        let mut down = plan::downgrade(&g, &all, &Target::Base).unwrap();
        down.reverse();
        prop_assert_eq!(down, up);
    }

    #[test]
    fn downgrades_never_strand_a_descendant(g in arb_graph(), pick in any::<prop::sample::Index>()) {
        let all: BTreeSet<usize> = (0..g.len()).collect();
        let target = pick.index(g.len());
        let order = plan::downgrade(&g, &all, &Target::Revision(g.revision(target).id.to_string())).unwrap();
        let mut applied = all.clone();
        for n in order {
            // nothing still applied requires what we remove
            prop_assert!(!applied.iter().any(|&a| a != n && g.requires(a).contains(&n)));
            applied.remove(&n);
        }
        prop_assert_eq!(applied, g.ancestors([target]).union(&all.difference(&g.descendants(target)).copied().collect()).copied().collect::<BTreeSet<_>>());
    }

    #[test]
    fn relative_steps_walk_a_linear_history(n in 1usize..15, k in 0usize..15) {
        let revs: Vec<Revision> = (0..n).map(|i| {
            let p = if i == 0 { vec![] } else { vec![format!("r{:03}", i - 1)] };
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            rev(&format!("r{i:03}"), &p, "")
        }).collect();
        let g = Graph::new(revs).unwrap();
        let up = plan::upgrade(&g, &BTreeSet::new(), &Target::Relative(k as i64));
        if k <= n {
            let up = up.unwrap();
            prop_assert_eq!(up.clone(), (0..k).collect::<Vec<_>>());
            let applied: BTreeSet<usize> = up.into_iter().collect();
            let down = plan::downgrade(&g, &applied, &Target::Relative(-(k as i64))).unwrap();
            prop_assert_eq!(down, (0..k).rev().collect::<Vec<_>>());
        } else {
            let is_too_far = matches!(up, Err(PlanError::RelativeTooFar { .. }));
            prop_assert!(is_too_far);
        }
    }
}
