//! The lint gate on revision files: a corpus of bad revisions (one per rule the apps can
//! hit) all flagged, the example apps clean, ignores and their checks.

use std::path::Path;

use super::*;

fn app(files: &[(&str, &str)], manifest: &str) -> (tempfile::TempDir, App) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(crate::revision::MANIFEST), manifest).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let app = App::load(tmp.path(), "a").unwrap();
    (tmp, app)
}

#[test]
fn the_example_apps_lint_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut unclean = Vec::new();
    for name in App::list(&root) {
        let app = App::load(&root, &name).unwrap();
        let lint = lint_at_load(&app).unwrap();
        for f in lint.findings() {
            eprintln!(
                "{name}: {} {} {:?} {}",
                f.location(),
                f.rule,
                f.ignored,
                f.message
            );
        }
        // Clean: no error and no warning left; what is ignored says why.
        unclean.extend(
            lint.findings()
                .filter(|f| f.ignored.is_none())
                .map(|f| format!("{} {}", f.location(), f.rule)),
        );
    }
    assert!(unclean.is_empty(), "{unclean:#?}");
}

/// The corpus's case revisions: (revision id, the rule its message expects).
fn corpus() -> (App, Vec<(String, String)>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lint_corpus");
    let app = App::load(&root, "corpus").unwrap();
    let cases = app
        .graph
        .revisions()
        .filter_map(|(_, r)| {
            let rule = r.message.strip_prefix("expect ")?;
            Some((r.id.to_string(), rule.to_string()))
        })
        .collect();
    (app, cases)
}

#[test]
fn every_bad_revision_of_the_corpus_is_flagged_with_its_rule() {
    let (app, cases) = corpus();
    assert!(cases.len() >= 15, "{cases:?}");
    let lint = lint_at_load(&app).unwrap();
    let mut missed = Vec::new();
    for (id, rule) in &cases {
        let r = lint.revision(id).unwrap();
        let hit = r.findings(Direction::Upgrade).find(|f| f.rule == *rule);
        match hit {
            Some(f) => {
                assert!(f.blocks(), "{id}: {rule} must be an error: {f:?}");
                assert_eq!(r.verdict(Direction::Upgrade), Verdict::Errors);
                // Located in the upgrade section, at the statement.
                let rev = app.graph.revision(app.graph.node(id).unwrap());
                assert!(
                    f.line >= rev.upgrade.first_line && f.line <= f.end_line,
                    "{id}: {f:?}"
                );
                assert!(f.file.ends_with(".sql") && f.column >= 1, "{f:?}");
                assert!(!f.statement.is_empty() && f.docs.is_some(), "{f:?}");
            }
            None => missed.push(format!(
                "{id}: {rule} not among {:?}",
                r.findings.iter().map(|f| &f.rule).collect::<Vec<_>>()
            )),
        }
    }
    assert!(
        missed.is_empty(),
        "flagged {} of {}: {missed:#?}",
        cases.len() - missed.len(),
        cases.len()
    );
    // The base revision (tables created in their own transaction) is clean.
    assert_eq!(
        lint.revision("0000").unwrap().verdict(Direction::Upgrade),
        Verdict::Clean
    );
}

#[test]
fn locations_point_at_the_statement_in_the_file() {
    let (app, _) = corpus();
    let lint = lint_at_load(&app).unwrap();
    let f = lint
        .revision("c03")
        .unwrap()
        .findings(Direction::Upgrade)
        .find(|f| f.rule == "adding-foreign-key-constraint")
        .unwrap();
    // `ADD CONSTRAINT fk_orders_account FOREIGN KEY ...` on the statement's second line.
    assert_eq!((f.line, f.column), (7, 9), "{f:?}");
    assert!(
        f.location()
            .ends_with("c03_adding-foreign-key-constraint.sql:7:9")
    );
    assert!(f.help.as_deref().unwrap().contains("NOT VALID"), "{f:?}");
}

const BASE: &str = "-- revision: r1\n-- down_revision:\n-- +upgrade\nCREATE TABLE t (x bigint);\n-- +downgrade\nDROP TABLE t;\n";

fn index_revision(header: &str) -> String {
    format!(
        "-- revision: r2\n-- down_revision: r1\n{header}-- +upgrade\nCREATE INDEX i ON t (x);\n-- +downgrade\nALTER TABLE t DROP COLUMN x;\n"
    )
}

fn lint_of(header: &str, manifest: &str) -> RevisionLint {
    let (_tmp, a) = app(
        &[("r1.sql", BASE), ("r2.sql", &index_revision(header))],
        manifest,
    );
    let lint = lint_at_load(&a).unwrap();
    lint.revision("r2").unwrap().clone()
}

fn rules(r: &RevisionLint) -> Vec<(&str, bool)> {
    r.findings
        .iter()
        .map(|f| (f.rule.as_str(), f.blocks()))
        .collect()
}

#[test]
fn an_ignore_with_a_reason_lets_the_revision_pass() {
    let r = lint_of("", "");
    assert_eq!(r.verdict(Direction::Upgrade), Verdict::Errors);
    let r = lint_of(
        "-- lint-ignore: require-concurrent-index-creation -- t holds ten rows\n",
        "",
    );
    assert_eq!(
        r.verdict(Direction::Upgrade),
        Verdict::Ignored,
        "{:?}",
        rules(&r)
    );
    let f = &r.findings[0];
    assert_eq!(f.ignored.as_deref(), Some("t holds ten rows"));
    assert!(!f.blocks());
}

#[test]
fn an_ignore_without_a_reason_ignores_nothing_and_is_an_error() {
    let r = lint_of("-- lint-ignore: require-concurrent-index-creation\n", "");
    assert_eq!(
        rules(&r),
        vec![
            ("lint-ignore-without-reason", true),
            ("require-concurrent-index-creation", true)
        ]
    );
    assert_eq!(r.findings[0].line, 3);
    let r = lint_of(
        "-- lint-ignore: require-concurent-index-creation -- typo\n",
        "",
    );
    assert_eq!(
        rules(&r),
        vec![
            ("lint-ignore-unknown-rule", true),
            ("require-concurrent-index-creation", true)
        ]
    );
    // An ignore nobody needs is reported (a warning).
    let r = lint_of(
        "-- lint-ignore: require-concurrent-index-creation, renaming-table -- t is tiny\n",
        "",
    );
    assert_eq!(
        rules(&r),
        vec![
            ("unused-lint-ignore", false),
            ("require-concurrent-index-creation", false)
        ]
    );
}

#[test]
fn ignores_elsewhere_are_refused() {
    let (_tmp, a) = app(
        &[
            ("r1.sql", BASE),
            (
                "r2.sql",
                "-- revision: r2\n-- down_revision: r1\n-- +upgrade\n-- lint-ignore: require-concurrent-index-creation -- here?\n-- squawk-ignore require-concurrent-index-creation\nCREATE INDEX i ON t (x);\n-- +downgrade\n",
            ),
        ],
        "",
    );
    let lint = lint_at_load(&a).unwrap();
    let r = lint.revision("r2").unwrap();
    let misplaced: Vec<usize> = r
        .findings
        .iter()
        .filter(|f| f.rule == own::MISPLACED_IGNORE)
        .map(|f| f.line)
        .collect();
    assert_eq!(misplaced, vec![4, 5]);
    assert_eq!(r.verdict(Direction::Upgrade), Verdict::Errors);
}

#[test]
fn the_app_config_excludes_and_downgrades() {
    let r = lint_of(
        "",
        "[lint]\nwarning = [\"require-concurrent-index-creation\"]\n",
    );
    assert_eq!(r.verdict(Direction::Upgrade), Verdict::Warnings);
    let r = lint_of(
        "",
        "[lint]\nexclude = [\"require-concurrent-index-creation\"]\n",
    );
    assert_eq!(r.verdict(Direction::Upgrade), Verdict::Clean);
    let (_tmp, a) = app(&[("r1.sql", BASE)], "[lint]\nexclude = [\"nope\"]\n");
    let e = lint_at_load(&a).unwrap_err().to_string();
    assert!(
        e.contains("fleetmig.toml: [lint] exclude: unknown rule \"nope\""),
        "{e}"
    );
}

#[test]
fn transaction_mode_decides_what_concurrently_means() {
    // Non-transactional: CONCURRENTLY is right, and it must be idempotent.
    let none = "-- revision: r2\n-- down_revision: r1\n-- transaction: none\n-- +upgrade\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x);\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS i;\n";
    let (_tmp, a) = app(&[("r1.sql", BASE), ("r2.sql", none)], "");
    let lint = lint_at_load(&a).unwrap();
    assert_eq!(
        lint.revision("r2").unwrap().verdict(Direction::Upgrade),
        Verdict::Clean,
        "{:?}",
        lint.revision("r2").unwrap().findings
    );
    assert!(!lint.revision("r2").unwrap().in_transaction);
    // Transactional: the same statement cannot run at all.
    let (_tmp, a) = app(
        &[
            ("r1.sql", BASE),
            ("r2.sql", &none.replace("-- transaction: none\n", "")),
        ],
        "",
    );
    let lint = lint_at_load(&a).unwrap();
    let r = lint.revision("r2").unwrap();
    assert!(
        r.findings
            .iter()
            .any(|f| f.rule == "ban-concurrent-index-creation-in-transaction" && f.blocks()),
        "{:?}",
        r.findings
    );
}

#[test]
fn the_gate_covers_what_a_target_can_bring() {
    use crate::revision::plan::Target;
    let (_tmp, a) = app(&[("r1.sql", BASE), ("r2.sql", &index_revision(""))], "");
    let lint = lint_at_load(&a).unwrap();
    // Up to r1 only: clean; to head: r2's finding refuses it, naming revision, rule and line.
    let v = gate::check(&lint, &a.graph, Direction::Upgrade, &Target::revision("r1")).unwrap();
    assert_eq!(v.len(), 1);
    let e = gate::check(
        &lint,
        &a.graph,
        Direction::Upgrade,
        &"head".parse::<Target>().unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("revision r2 (upgrade)"), "{e}");
    assert!(
        e.contains("r2.sql:4:1: require-concurrent-index-creation"),
        "{e}"
    );
    assert!(e.contains("-- lint-ignore: RULE -- why"), "{e}");
    // Downgrading to r1 undoes r2, whose downgrade drops a column: not reported there.
    let v = gate::check(
        &lint,
        &a.graph,
        Direction::Downgrade,
        &Target::revision("r1"),
    )
    .unwrap();
    assert_eq!(v[0].revision, "r2");
    assert_eq!(v[0].verdict, Verdict::Clean);
}

#[test]
fn a_run_lints_only_what_it_may_apply_and_only_its_direction() {
    use crate::revision::plan::Target;
    // r2's upgrade is clean; its downgrade builds an index without CONCURRENTLY (an error).
    let r2 = |header: &str| {
        format!(
            "-- revision: r2\n-- down_revision: r1\n{header}-- +upgrade\nCREATE TABLE u (x bigint);\n-- +downgrade\nDROP TABLE u;\nCREATE INDEX i ON t (x);\n"
        )
    };
    let head: Target = "head".parse().unwrap();
    let (_tmp, a) = app(&[("r1.sql", BASE), ("r2.sql", &r2(""))], "");
    let values = load_values(&a).unwrap();
    let up = lint_for_run(&a, &values, Direction::Upgrade, &head).unwrap();
    assert!(up.revision("r2").unwrap().findings.is_empty(), "{up:?}");
    gate::check(&up, &a.graph, Direction::Upgrade, &head).unwrap();
    // Up to r1: r2 is not linted at all.
    let to_r1 = lint_for_run(&a, &values, Direction::Upgrade, &Target::revision("r1")).unwrap();
    assert!(to_r1.revision("r1").is_some() && to_r1.revision("r2").is_none());
    // Down to base: r2's downgrade refuses it, as the whole app's lint would.
    let down_to = Target::revision("base");
    let down = lint_for_run(&a, &values, Direction::Downgrade, &down_to).unwrap();
    let e = gate::check(&down, &a.graph, Direction::Downgrade, &down_to).unwrap_err();
    assert!(
        e.to_string()
            .contains("r2.sql:7:1: require-concurrent-index-creation"),
        "{e}"
    );
    let whole = lint_app(&a, &values).unwrap();
    assert!(gate::check(&whole, &a.graph, Direction::Downgrade, &down_to).is_err());
    // An ignore only the downgrade uses, with unused ignores raised to errors: both directions
    // are linted, so the upgrade is not refused for an "unused" ignore.
    let ignore =
        "-- lint-ignore: require-concurrent-index-creation -- downgrade only: t is small\n";
    let (_tmp, a) = app(
        &[("r1.sql", BASE), ("r2.sql", &r2(ignore))],
        "[lint]\nerror = [\"unused-lint-ignore\"]\n",
    );
    let up = lint_for_run(&a, &values, Direction::Upgrade, &head).unwrap();
    gate::check(&up, &a.graph, Direction::Upgrade, &head).unwrap();
    // And an ignore nothing uses still refuses it then.
    let unused = "-- lint-ignore: ban-drop-column -- nothing here drops a column\n";
    let (_tmp, a) = app(
        &[
            ("r1.sql", BASE),
            ("r2.sql", &r2(&format!("{ignore}{unused}"))),
        ],
        "[lint]\nerror = [\"unused-lint-ignore\"]\n",
    );
    let up = lint_for_run(&a, &values, Direction::Upgrade, &head).unwrap();
    let e = gate::check(&up, &a.graph, Direction::Upgrade, &head).unwrap_err();
    assert!(e.to_string().contains("unused-lint-ignore"), "{e}");
}
