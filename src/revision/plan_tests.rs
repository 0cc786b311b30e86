//! Graph and planning tests: Alembic's semantics on small graphs (each of issue 27's defects
//! has its case here), and property tests on random DAGs.

use std::collections::BTreeSet;
use std::path::Path;

use proptest::prelude::*;

use super::Revision;
use super::graph::{Graph, GraphError};
use super::plan::{self, PlanError, Target};
use super::resolve::ResolveError;

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

fn ids(g: &Graph, nodes: impl IntoIterator<Item = usize>) -> Vec<String> {
    nodes.into_iter().map(|n| g.id(n).to_string()).collect()
}

fn n(g: &Graph, id: &str) -> usize {
    g.node(id).unwrap()
}

fn rows(g: &Graph, r: &[&str]) -> Vec<usize> {
    r.iter().map(|id| n(g, id)).collect()
}

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

/// Upgrade from `from`: (applied ids in order, rows after).
fn up(g: &Graph, from: &[&str], target: &str) -> Result<(Vec<String>, Vec<String>), PlanError> {
    let p = plan::upgrade(g, &rows(g, from), &t(target))?;
    Ok((ids(g, p.nodes()), ids(g, p.rows_after)))
}

fn down(g: &Graph, from: &[&str], target: &str) -> Result<(Vec<String>, Vec<String>), PlanError> {
    let p = plan::downgrade(g, &rows(g, from), &t(target))?;
    Ok((ids(g, p.nodes()), ids(g, p.rows_after)))
}

fn stamp(g: &Graph, from: &[&str], targets: &[&str]) -> Result<Vec<String>, PlanError> {
    let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    Ok(ids(g, plan::stamp(g, &rows(g, from), &targets)?))
}

fn history(g: &Graph, range: &str) -> Result<Vec<String>, PlanError> {
    Ok(ids(g, plan::history(g, Some(range), None)?))
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

/// `a -> b` and `x` (a base) that depends on `a`.
fn dependency() -> Graph {
    Graph::new(vec![
        rev("a", &[], ""),
        rev("b", &["a"], ""),
        rev("x", &[], "-- depends_on: a\n"),
    ])
    .unwrap()
}

#[test]
fn linear_upgrade_and_downgrade() {
    let g = graph(&[("0001", &[]), ("0002", &["0001"]), ("0003", &["0002"])]);
    assert_eq!(
        up(&g, &[], "head").unwrap(),
        (
            vec!["0001".into(), "0002".into(), "0003".into()],
            vec!["0003".into()]
        )
    );
    assert_eq!(up(&g, &[], "+2").unwrap().0, ["0001", "0002"]);
    assert_eq!(up(&g, &[], "0002").unwrap().1, ["0002"]);
    // Alembic matches prefixes only against ids longer than three characters: all match here.
    assert!(matches!(
        up(&g, &[], "000"),
        Err(PlanError::Resolve(ResolveError::Ambiguous { .. }))
    ));
    assert_eq!(down(&g, &["0003"], "-1").unwrap().0, ["0003"]);
    assert_eq!(down(&g, &["0003"], "0001").unwrap().0, ["0003", "0002"]);
    assert_eq!(
        down(&g, &["0003"], "base").unwrap(),
        (vec!["0003".into(), "0002".into(), "0001".into()], vec![])
    );
    let too_far = down(&g, &["0003"], "-4").unwrap_err();
    assert_eq!(
        too_far.to_string(),
        "Relative revision -4 didn't produce 4 migrations"
    );
    assert!(up(&g, &["0003"], "+1").is_err());
    assert!(up(&g, &["0003"], "head").unwrap().0.is_empty());
    // `upgrade base` and `upgrade 0001` at 0003 do nothing, as in Alembic.
    assert!(up(&g, &["0003"], "base").unwrap().0.is_empty());
    assert!(up(&g, &["0003"], "0001").unwrap().0.is_empty());
    // REV+N and REV-N walk from the named revision.
    assert_eq!(up(&g, &[], "0001+1").unwrap().1, ["0002"]);
    assert_eq!(down(&g, &["0003"], "0003-2").unwrap().1, ["0001"]);
    assert!(up(&g, &[], "-1").is_err() && down(&g, &["0003"], "+1").is_err());
}

#[test]
fn prefixes_labels_and_ambiguity() {
    let g = Graph::new(vec![
        rev("ae10", &[], "-- branch_labels: core\n"),
        rev("ae20", &["ae10"], ""),
        rev("b1", &["ae10"], ""),
    ])
    .unwrap();
    assert_eq!(g.get_revision("ae1").unwrap(), g.node("ae10"));
    assert_eq!(g.get_revision("core").unwrap(), g.node("ae10"));
    assert!(matches!(
        g.get_revision("ae"),
        Err(ResolveError::Ambiguous { .. })
    ));
    // "b" is too short to match "b1" (Alembic's four-character rule).
    assert!(matches!(
        g.get_revision("b"),
        Err(ResolveError::NotFound { short: true, .. })
    ));
    // Two heads: `head` refuses with the merge hint, `heads` applies both.
    let err = up(&g, &[], "head").unwrap_err();
    assert!(
        err.to_string().contains("Multiple head revisions") && err.to_string().contains("merge"),
        "{err}"
    );
    assert_eq!(up(&g, &[], "heads").unwrap().1, ["ae20", "b1"]);
    assert!(matches!(
        up(&g, &[], "core@head"),
        Err(PlanError::Resolve(ResolveError::MultipleHeads { .. }))
    ));
}

#[test]
fn merges_and_their_rows() {
    let g = diamond();
    assert_eq!(
        up(&g, &[], "head").unwrap(),
        (
            vec!["a".into(), "b".into(), "d".into(), "c".into(), "m".into()],
            vec!["m".into()]
        )
    );
    assert_eq!(up(&g, &[], "c").unwrap().1, ["c"]);
    assert_eq!(up(&g, &["c"], "d").unwrap().1, ["c", "d"]);
    // From the merge, -1 is Alembic's "Ambiguous walk"; naming a parent unmerges.
    assert_eq!(
        down(&g, &["m"], "-1").unwrap_err().to_string(),
        "Ambiguous walk"
    );
    assert_eq!(
        down(&g, &["m"], "c").unwrap(),
        (vec!["m".into()], vec!["c".into(), "d".into()])
    );
    // From two rows, a bare -1 is refused (Alembic would pick the table's first row).
    assert!(matches!(
        down(&g, &["c", "d"], "-1"),
        Err(PlanError::AmbiguousFromHeads { .. })
    ));
    assert_eq!(down(&g, &["m"], "b").unwrap().1, ["b"]);
    // +1 at the branch point is ambiguous
    assert_eq!(
        up(&g, &["b"], "+1").unwrap_err().to_string(),
        "Ambiguous walk"
    );
}

#[test]
fn defect_1_a_dependency_is_no_row_of_its_own() {
    let g = Graph::new(vec![rev("a", &[], ""), rev("x", &[], "-- depends_on: a\n")]).unwrap();
    assert_eq!(
        up(&g, &[], "x").unwrap(),
        (vec!["a".into(), "x".into()], vec!["x".into()])
    );
    assert_eq!(stamp(&g, &[], &["x"]).unwrap(), ["x"]);
    // A table holding both (as fleetmig used to write it) is refused, with the repair.
    let e = up(&g, &["a", "x"], "heads").unwrap_err();
    assert!(matches!(e, PlanError::OverlappingRows { .. }), "{e}");
    assert!(e.to_string().contains("stamp --purge x"), "{e}");
}

#[test]
fn defect_2_downgrade_keeps_what_only_depends_on_the_target() {
    let g = dependency();
    assert_eq!(up(&g, &[], "heads").unwrap().1, ["b", "x"]);
    assert_eq!(
        down(&g, &["b", "x"], "a").unwrap(),
        (vec!["b".into()], vec!["x".into()])
    );
    // To base, the dependant goes first.
    assert_eq!(down(&g, &["b", "x"], "base").unwrap().0, ["b", "x", "a"]);
}

#[test]
fn defect_3_stamp_moves_only_the_rows_of_its_lineage() {
    let g = graph(&[("a", &[]), ("b", &["a"]), ("c", &["a"])]);
    assert_eq!(stamp(&g, &["b"], &["c"]).unwrap(), ["b", "c"]);
    assert!(up(&g, &["b", "c"], "heads").unwrap().0.is_empty());
    assert_eq!(stamp(&g, &["b", "c"], &["a"]).unwrap(), ["a"]);
    assert_eq!(
        stamp(&g, &["b", "c"], &["base"]).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(stamp(&g, &["a"], &["heads"]).unwrap(), ["b", "c"]);
    assert_eq!(stamp(&g, &[], &["b", "c"]).unwrap(), ["b", "c"]);
}

#[test]
fn defect_4_history_ranges_stay_on_their_line() {
    let g = graph(&[("a", &[]), ("b", &["a"]), ("c", &["a"])]);
    assert_eq!(history(&g, "b:").unwrap(), ["b"]);
    assert!(matches!(
        history(&g, "b:c"),
        Err(PlanError::NotAncestor { .. })
    ));
    assert_eq!(history(&g, ":b").unwrap(), ["b", "a"]);
    assert_eq!(history(&g, "a:heads").unwrap().len(), 3);
    let labelled = Graph::new(vec![
        rev("a", &[], ""),
        rev("b", &["a"], ""),
        rev("x", &[], "-- branch_labels: other\n"),
        rev("y", &["x"], ""),
    ])
    .unwrap();
    assert_eq!(history(&labelled, ":other@head").unwrap(), ["y", "x"]);
    assert!(matches!(
        history(&labelled, "a:b:c"),
        Err(PlanError::BadRange(_))
    ));
}

#[test]
fn defect_5_relative_upgrades_walk_from_the_current_rows() {
    let g = graph(&[("a", &[]), ("b", &["a"]), ("x", &[])]);
    assert_eq!(
        up(&g, &["a"], "+1").unwrap(),
        (vec!["b".into()], vec!["b".into()])
    );
    // From two rows, +1 is refused; from none, the walk starts at the bases (two here).
    assert!(up(&g, &["b", "x"], "+1").is_err());
    assert_eq!(up(&g, &[], "+1").unwrap_err().to_string(), "Ambiguous walk");
}

#[test]
fn branch_label_forms() {
    let g = Graph::new(vec![
        rev("a", &[], ""),
        rev("b", &["a"], ""),
        rev("x", &[], "-- branch_labels: other\n-- depends_on: b\n"),
        rev("y", &["x"], ""),
    ])
    .unwrap();
    // x depends on b, so its row replaces b's.
    assert_eq!(up(&g, &[], "other@head").unwrap().1, ["y"]);
    assert_eq!(up(&g, &["b"], "other@+1").unwrap().1, ["x"]);
    assert_eq!(down(&g, &["y"], "other@-1").unwrap().1, ["x"]);
    assert_eq!(down(&g, &["y"], "other@base").unwrap().1, ["b"]);
    assert_eq!(up(&g, &["x"], "other@y").unwrap().1, ["y"]);
    assert!(matches!(
        g.get_revision("other@b"),
        Err(ResolveError::NotInBranch { .. })
    ));
    // Alembic's stamp resolves `-1` itself when filtering the rows: refused, as there.
    assert!(stamp(&g, &["y"], &["other@-1"]).is_err());
    assert!(matches!(
        up(&g, &[], "nope@head"),
        Err(PlanError::Resolve(ResolveError::NotFound { .. }))
    ));
    assert!(matches!(
        down(&g, &["y"], "nope@-1"),
        Err(PlanError::Resolve(ResolveError::NotFound { .. }))
    ));
    // The label covers its descendants; `heads` and `current` as Alembic prints them.
    assert!(g.branch_labels(n(&g, "y")).contains("other"));
    assert_eq!(ids(&g, g.heads()), ["b", "y"]);
    assert_eq!(ids(&g, plan::current(&g, &rows(&g, &["y"]))), ["b", "y"]);
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
    // depends_on may name a label, as in Alembic.
    let g = Graph::new(vec![
        rev("a", &[], "-- branch_labels: core\n"),
        rev("x", &[], "-- depends_on: core\n"),
    ])
    .unwrap();
    assert_eq!(ids(&g, g.depends_on(n(&g, "x")).to_vec()), ["a"]);
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
    assert!(matches!(
        down(&g, &["b"], "base"),
        Err(PlanError::Irreversible { .. })
    ));
}

#[test]
fn unknown_database_rows_are_reported() {
    let g = diamond();
    let e = plan::rows_from_db(&g, &["nope".parse().unwrap()]).unwrap_err();
    assert!(
        e.to_string()
            .contains("Can't locate revision identified by 'nope'")
    );
}

#[test]
fn relative_syntax_is_alembics_regex() {
    use super::resolve::relative;
    assert_eq!(relative("+2"), Some((None, None, 2)));
    assert_eq!(relative("-1"), Some((None, None, -1)));
    assert_eq!(relative("ae10+1"), Some((None, Some("ae10"), 1)));
    assert_eq!(relative("lab@-2"), Some((Some("lab"), None, -2)));
    assert_eq!(relative("lab@ae1+3"), Some((Some("lab"), Some("ae1"), 3)));
    assert_eq!(relative("a-1x"), Some((None, Some("a"), -1)));
    assert_eq!(relative("heads"), None);
    assert_eq!(relative("lab@head"), None);
}

/// A random DAG of the shapes Alembic handles: node i's parents are drawn from 0..i with
/// none an ancestor of another, and maybe one dependency on a revision on another line (not
/// an ancestor or descendant of a parent). Alembic's own version-table bookkeeping fails on
/// merges of a revision with its ancestor and on dependencies that shortcut a parent (the
/// differential tests check fleetmig refuses those too). Ids are zero-padded: id order is
/// index order.
fn arb_graph() -> impl Strategy<Value = Graph> {
    (1usize..20).prop_flat_map(|n| {
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
                proptest::option::weighted(0.3, any::<prop::sample::Index>()),
            ),
            n,
        )
        .prop_map(move |picks| {
            let mut revs: Vec<Revision> = Vec::new();
            for (i, (p, d)) in picks.iter().enumerate() {
                let so_far = Graph::new(revs.clone()).unwrap();
                let mut parents: BTreeSet<usize> = if i == 0 {
                    BTreeSet::new()
                } else {
                    p.iter().map(|ix| ix.index(i)).collect()
                };
                let chosen = parents.clone();
                parents.retain(|&x| {
                    !chosen
                        .iter()
                        .any(|&o| o != x && so_far.ancestors([o]).contains(&x))
                });
                let dep = d.filter(|_| i > 0).map(|ix| ix.index(i)).filter(|&x| {
                    !so_far.ancestors(parents.iter().copied()).contains(&x)
                        && !so_far.descendants(parents.iter().copied()).contains(&x)
                });
                let parents: Vec<String> = parents.iter().map(|x| format!("r{x:03}")).collect();
                let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                let extra = dep
                    .map(|x| format!("-- depends_on: r{x:03}\n"))
                    .unwrap_or_default();
                revs.push(rev(&format!("r{i:03}"), &parents, &extra));
            }
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

/// No row requires another: what Alembic keeps.
fn rows_are_heads(g: &Graph, rows: &BTreeSet<usize>) -> bool {
    rows.iter().all(|&r| {
        !rows
            .iter()
            .any(|&o| o != r && g.ancestors([o]).contains(&r))
    })
}

proptest! {
    #[test]
    fn upgrade_plans_respect_requirements(g in arb_graph(), pick in any::<prop::sample::Index>(), start in any::<prop::sample::Index>()) {
        let from = g.id(start.index(g.len())).to_string();
        let start_rows = plan::upgrade(&g, &[], &t(&from)).unwrap().rows_after;
        let start_rows: Vec<usize> = start_rows.into_iter().collect();
        let applied = plan::applied(&g, &start_rows);
        let target = g.id(pick.index(g.len())).to_string();
        let p = plan::upgrade(&g, &start_rows, &t(&target)).unwrap();
        let order = p.nodes();
        prop_assert!(respects_requirements(&g, &applied, &order));
        prop_assert!(order.iter().all(|n| !applied.contains(n)));
        let mut after = applied.clone();
        after.extend(order.iter().copied());
        prop_assert!(after.is_superset(&g.ancestors([g.node(&target).unwrap()])));
        // The rows name exactly the applied set, and none requires another.
        let rows: Vec<usize> = p.rows_after.iter().copied().collect();
        prop_assert_eq!(plan::applied(&g, &rows), after);
        prop_assert!(rows_are_heads(&g, &p.rows_after));
    }

    #[test]
    fn downgrade_to_base_undoes_upgrade_to_heads(g in arb_graph()) {
        let up = plan::upgrade(&g, &[], &Target::heads()).unwrap();
        prop_assert_eq!(up.steps.len(), g.len());
        prop_assert!(respects_requirements(&g, &BTreeSet::new(), &up.nodes()));
        let rows: Vec<usize> = up.rows_after.iter().copied().collect();
        prop_assert_eq!(ids(&g, rows.clone()), ids(&g, g.real_heads()));
        let down = plan::downgrade(&g, &rows, &t("base")).unwrap();
        prop_assert!(down.rows_after.is_empty());
        let mut order = down.nodes();
        order.reverse();
        prop_assert!(respects_requirements(&g, &BTreeSet::new(), &order));
    }

    #[test]
    fn downgrades_never_strand_a_dependant(g in arb_graph(), pick in any::<prop::sample::Index>()) {
        let all = plan::upgrade(&g, &[], &Target::heads()).unwrap().rows_after;
        let rows: Vec<usize> = all.into_iter().collect();
        let target = pick.index(g.len());
        let gone = g.descendants(g.children(target).iter().copied());
        let p = match plan::downgrade(&g, &rows, &t(g.id(target))) {
            // Alembic's "nothing to drop": no child, and the target is no row (only depended on).
            Err(PlanError::NotValidTarget { .. }) => {
                prop_assert!(gone.is_empty() && !rows.contains(&target));
                return Ok(());
            }
            other => other.unwrap(),
        };
        let mut applied: BTreeSet<usize> = (0..g.len()).collect();
        for s in &p.steps {
            prop_assert!(!applied.iter().any(|&a| a != s.node && g.requires(a).contains(&s.node)));
            applied.remove(&s.node);
            // Each step's rows stand for exactly what is still applied.
            let r: Vec<usize> = s.rows_after.iter().copied().collect();
            prop_assert_eq!(plan::applied(&g, &r), applied.clone());
        }
        // The target stays, and so does everything not built on its children.
        prop_assert!(applied.contains(&target));
        prop_assert_eq!(applied, (0..g.len()).filter(|x| !gone.contains(x)).collect::<BTreeSet<_>>());
    }

    #[test]
    fn relative_steps_walk_a_linear_history(n in 1usize..15, k in 0usize..15) {
        let revs: Vec<Revision> = (0..n).map(|i| {
            let p = if i == 0 { vec![] } else { vec![format!("r{:03}", i - 1)] };
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            rev(&format!("r{i:03}"), &p, "")
        }).collect();
        let g = Graph::new(revs).unwrap();
        let up = plan::upgrade(&g, &[], &Target::revision(&format!("+{k}")));
        if k == 0 {
            prop_assert!(up.is_err(), "+0 is no migration in Alembic");
        } else if k <= n {
            let up = up.unwrap();
            prop_assert_eq!(up.nodes(), (0..k).collect::<Vec<_>>());
            let rows: Vec<usize> = up.rows_after.into_iter().collect();
            let down = plan::downgrade(&g, &rows, &Target::revision(&format!("-{k}"))).unwrap();
            prop_assert_eq!(down.nodes(), (0..k).rev().collect::<Vec<_>>());
        } else {
            prop_assert!(up.is_err());
        }
    }
}
