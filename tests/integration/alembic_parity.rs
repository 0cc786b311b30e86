//! The differential suite of issue 27: small graphs written both as an Alembic project and as
//! a fleetmig app (same ids, same SQL); every command and target form run by the Alembic CLI
//! (`$FLEETMIG_ALEMBIC -c alembic.ini ...`, 1.16.5 from `make setup`) on one fresh database
//! and by the fleetmig CLI on another; compared after each step on the `alembic_version` rows,
//! the tables, whether each tool refused, and what `heads`/`current`/`history` print (by
//! meaning: revisions, markers, labels, and history's order).
//!
//! Deliberate differences (README.md, "Alembic compatibility", gives each one's reason), and
//! where they show here:
//! - a bare `downgrade -N` from several rows: Alembic walks from whichever row the table returns
//!   first; fleetmig refuses (`FleetmigRefuses` steps; the property test too);
//! - a failing run: Alembic rolls the whole run back, fleetmig keeps the revisions before the
//!   failure (the steps here never fail on SQL, so both agree);
//! - authoring refusals write nothing (`defect_7_authoring_guards` counts fleetmig's files), and
//!   `merge` of fewer than two heads is refused;
//! - `current` with a row the graph does not know: both refuse, fleetmig prints the rows first
//!   (`unknown_rows_are_refused_by_both`);
//! - refusals exit 2 or 3 in fleetmig, 1 in Alembic (asserted on every refused step);
//! - ids with `-` or `.`, ties broken by id rather than file name, offline downgrades from
//!   several heads, fleetmig's own verbose lines: not reachable with the Alembic-valid graphs,
//!   default file names and plain output used here.

use std::path::{Path, PathBuf};

use crate::alembic_project::{
    self as ap, Rev, Sql, State, alembic, alembic_bin, fleetmig, rev, sa_url, state_of,
};
use crate::harness;

/// `a` (base) and `x` (base, depends_on a).
fn dep_only() -> Vec<Rev> {
    vec![rev("a", &[], &[], &[]), rev("x", &[], &[], &["a"])]
}

/// `a -> b`, and `x` (base, depends_on a).
fn dep_branch() -> Vec<Rev> {
    vec![
        rev("a", &[], &[], &[]),
        rev("b", &["a"], &[], &[]),
        rev("x", &[], &[], &["a"]),
    ]
}

/// `a -> b`, `a -> c`.
fn fork() -> Vec<Rev> {
    vec![
        rev("a", &[], &[], &[]),
        rev("b", &["a"], &[], &[]),
        rev("c", &["a"], &[], &[]),
    ]
}

/// `a -> b`, and `x` (an unrelated base).
fn two_bases() -> Vec<Rev> {
    vec![
        rev("a", &[], &[], &[]),
        rev("b", &["a"], &[], &[]),
        rev("x", &[], &[], &[]),
    ]
}

/// The graph: a labelled trunk, a labelled branch that merges back, and a second
/// labelled base whose line depends on a trunk revision.
fn big() -> Vec<Rev> {
    vec![
        rev("trk1", &[], &["trunk"], &[]),
        rev("trk2", &["trk1"], &[], &[]),
        rev("trk3", &["trk2"], &[], &[]),
        rev("fea1", &["trk2"], &["feat"], &[]),
        rev("fea2", &["fea1"], &[], &[]),
        rev("mrg1", &["trk3", "fea2"], &[], &[]),
        rev("oth1", &[], &["other"], &["trk2"]),
        rev("oth2", &["oth1"], &[], &[]),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Run by both; same refusal, same rows and tables afterwards.
    Run(&'static str),
    /// Also compare what both print (as a set of lines).
    Show(&'static str),
    /// Also compare what both print, in order (`history`).
    ShowInOrder(&'static str),
    /// A deliberate difference: fleetmig refuses (exit 2) where Alembic goes on; Alembic's
    /// side is not run, so both databases stay comparable.
    FleetmigRefuses(&'static str, &'static str),
    /// Both databases get this version row by hand (a row the graph does not know).
    ForeignRow(&'static str),
    /// fleetmig alone: exits 3 and prints this (what it shows where Alembic only errs).
    FleetmigShows(&'static str, &'static str),
    /// `upgrade FROM:TO --sql` from both, each output run by psql on a fresh database.
    Offline(&'static str),
}

struct Pair {
    bin: PathBuf,
    dir: tempfile::TempDir,
    alembic_url: String,
    alembic_sa: String,
    fleetmig_url: String,
    log: Vec<String>,
}

impl Pair {
    async fn new(name: &str, graph: &[Rev]) -> Option<Pair> {
        let pg = harness::postgres()?;
        let bin = alembic_bin()?;
        let dir = tempfile::tempdir().unwrap();
        ap::write_alembic(&dir.path().join("alembic"), graph, Sql::Plain);
        ap::write_fleetmig(&dir.path().join("migrations"), graph, Sql::Plain);
        let (alembic_url, a_db) = pg.database(&format!("par_a_{name}")).await;
        let (fleetmig_url, _) = pg.database(&format!("par_f_{name}")).await;
        Some(Pair {
            bin,
            alembic_sa: sa_url(&a_db),
            alembic_url,
            fleetmig_url,
            dir,
            log: vec![],
        })
    }

    fn project(&self) -> PathBuf {
        self.dir.path().join("alembic")
    }

    fn migrations(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }

    fn both(&self, cmd: &str) -> (std::process::Output, std::process::Output) {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let a = alembic(&self.bin, &self.project(), &self.alembic_sa, &args);
        let f = fleetmig(&self.migrations(), Some(&self.fleetmig_url), &args);
        (a, f)
    }

    async fn states(&self) -> (State, State) {
        (
            state_of(&self.alembic_url).await,
            state_of(&self.fleetmig_url).await,
        )
    }

    async fn step(&mut self, step: Step) {
        match step {
            Step::Run(cmd) | Step::Show(cmd) | Step::ShowInOrder(cmd) => {
                let (a, f) = self.both(cmd);
                let context = format!(
                    "{cmd}\n--- alembic {}\n--- fleetmig {}\n--- steps so far: {:?}",
                    ap::text(&a),
                    ap::text(&f),
                    self.log
                );
                assert_eq!(
                    a.status.success(),
                    f.status.success(),
                    "one tool refused, the other did not: {context}"
                );
                if !f.status.success() {
                    assert!(
                        matches!(f.status.code(), Some(2 | 3)),
                        "fleetmig refuses with exit 2 or 3: {context}"
                    );
                }
                let (sa, sf) = self.states().await;
                assert_eq!(sa, sf, "different state after: {context}");
                if a.status.success() && !matches!(step, Step::Run(_)) {
                    let (mut la, mut lf) = (
                        ap::lines(&String::from_utf8_lossy(&a.stdout)),
                        ap::lines(&String::from_utf8_lossy(&f.stdout)),
                    );
                    if matches!(step, Step::Show(_)) {
                        la.sort();
                        lf.sort();
                    }
                    assert_eq!(la, lf, "different output: {context}");
                }
                self.log.push(format!(
                    "{cmd}: {}",
                    if f.status.success() { "ok" } else { "refused" }
                ));
            }
            Step::FleetmigRefuses(cmd, why) => {
                let args: Vec<&str> = cmd.split_whitespace().collect();
                let f = fleetmig(&self.migrations(), Some(&self.fleetmig_url), &args);
                assert_eq!(f.status.code(), Some(2), "{why}: {}", ap::text(&f));
                let (sa, sf) = self.states().await;
                assert_eq!(sa, sf);
                self.log.push(format!("{cmd}: fleetmig refuses ({why})"));
            }
            Step::ForeignRow(row) => {
                for url in [&self.alembic_url, &self.fleetmig_url] {
                    fleetmig::pg::connect_str(url)
                        .await
                        .unwrap()
                        .execute(
                            "INSERT INTO alembic_version (version_num) VALUES ($1)",
                            &[&row],
                        )
                        .await
                        .unwrap();
                }
                self.log.push(format!("row {row} inserted"));
            }
            Step::FleetmigShows(cmd, shown) => {
                let args: Vec<&str> = cmd.split_whitespace().collect();
                let f = fleetmig(&self.migrations(), Some(&self.fleetmig_url), &args);
                assert_eq!(f.status.code(), Some(3), "{}", ap::text(&f));
                assert!(
                    String::from_utf8_lossy(&f.stdout).contains(shown),
                    "{}",
                    ap::text(&f)
                );
                self.log.push(format!("{cmd}: fleetmig shows {shown:?}"));
            }
            Step::Offline(range) => self.offline(range).await,
        }
    }

    /// Offline SQL from both tools, each run by psql on a fresh database: same end state.
    async fn offline(&mut self, range: &str) {
        let pg = harness::postgres().unwrap();
        let a = alembic(
            &self.bin,
            &self.project(),
            &self.alembic_sa,
            &["upgrade", range, "--sql"],
        );
        let f = fleetmig(&self.migrations(), None, &["upgrade", range, "--sql"]);
        assert!(
            a.status.success() && f.status.success(),
            "{}\n{}",
            ap::text(&a),
            ap::text(&f)
        );
        let mut states = vec![];
        for (who, out) in [("alembic", &a.stdout), ("fleetmig", &f.stdout)] {
            let (url, _) = pg.database(&format!("par_offline_{who}")).await;
            let file = self.dir.path().join(format!("{who}.sql"));
            std::fs::write(&file, out).unwrap();
            let (ok, err) = pg.psql_file(&url, &file);
            assert!(ok, "{who}'s offline SQL fails: {err}");
            states.push(state_of(&url).await);
        }
        assert_eq!(states[0], states[1], "offline {range}");
        self.log.push(format!("offline {range}"));
    }
}

/// Run `steps` on a fresh pair of databases for `graph`.
async fn parity(name: &str, graph: Vec<Rev>, steps: &[Step]) -> Option<Vec<String>> {
    let mut pair = Pair::new(name, &graph).await?;
    for &s in steps {
        pair.step(s).await;
    }
    eprintln!("{name}: {:#?}", pair.log);
    Some(pair.log)
}

use Step::*;

#[tokio::test]
async fn defect_1_a_dependency_is_no_row_of_its_own() {
    parity(
        "dep1",
        dep_only(),
        &[
            Run("upgrade x"),
            Show("current"),
            Show("heads"),
            Show("heads --resolve-dependencies"),
            ShowInOrder("history"),
            Run("upgrade heads"),
            Run("upgrade head"),
            Run("stamp base"),
            Run("stamp x"),
            Run("stamp heads"),
            Run("downgrade -1"),
            Offline("base:x"),
            Offline("base:heads"),
        ],
    )
    .await;
}

#[tokio::test]
async fn defect_2_downgrade_keeps_what_only_depends_on_its_target() {
    parity(
        "dep2",
        dep_branch(),
        &[
            Run("upgrade heads"),
            Run("downgrade a"),
            Show("current"),
            Run("upgrade heads"),
            Run("downgrade base"),
            Run("upgrade x"),
            Run("upgrade b"),
            Run("downgrade x-1"),
            Show("current"),
        ],
    )
    .await;
}

#[tokio::test]
async fn defect_3_stamp_moves_only_its_own_lineage() {
    parity(
        "stamp",
        fork(),
        &[
            Run("upgrade b"),
            Run("stamp c"),
            Show("current"),
            Run("upgrade heads"),
            Run("stamp a"),
            Run("stamp heads"),
            Run("stamp base"),
            Run("stamp b c"),
            Run("stamp --purge a"),
            Run("downgrade base"),
        ],
    )
    .await;
}

#[tokio::test]
async fn defect_4_history_ranges() {
    parity(
        "hist_fork",
        fork(),
        &[
            ShowInOrder("history -r b:"),
            ShowInOrder("history -r b:c"),
            ShowInOrder("history -r :b"),
            ShowInOrder("history -r a:heads"),
            ShowInOrder("history -r base:c"),
            ShowInOrder("history -r b"),
        ],
    )
    .await;
    parity(
        "hist_big",
        big(),
        &[
            ShowInOrder("history"),
            ShowInOrder("history -r trk2:heads"),
            ShowInOrder("history -r :other@head"),
            ShowInOrder("history -r :feat@head"),
            ShowInOrder("history -r fea1:mrg1"),
            ShowInOrder("history -r trunk@base:trk3"),
            ShowInOrder("history -r :trk1+2"),
            ShowInOrder("history -r :trk1+1"),
            ShowInOrder("history -r trk1+1:"),
            ShowInOrder("history -r oth1:trk3"),
            Run("upgrade trk3"),
            ShowInOrder("history -r current:heads"),
            ShowInOrder("history -r :current"),
            ShowInOrder("history -i"),
        ],
    )
    .await;
}

#[tokio::test]
async fn defect_5_relative_upgrades_walk_from_the_current_rows() {
    parity(
        "rel_one",
        two_bases(),
        &[
            Run("upgrade +1"),
            Run("upgrade a"),
            Run("upgrade +1"),
            Run("upgrade +1"),
            Run("upgrade x"),
            Run("downgrade b-1"),
        ],
    )
    .await;
    parity(
        "rel_two",
        two_bases(),
        &[
            Run("upgrade b"),
            Run("upgrade x"),
            Run("upgrade +1"),
            FleetmigRefuses(
                "downgrade -1",
                "a bare -1 from two rows: Alembic walks from the table's first row",
            ),
            Run("downgrade x@-1"),
            Run("downgrade b@-1"),
            Show("current"),
        ],
    )
    .await;
}

#[tokio::test]
async fn target_forms_on_a_branchy_graph() {
    parity(
        "forms",
        big(),
        &[
            Run("upgrade head"),
            Run("upgrade trk"),
            Run("upgrade zzzz"),
            Run("upgrade trk1+2"),
            Run("upgrade trk1+1"),
            Run("upgrade other@+1"),
            Show("current"),
            Run("upgrade feat@head"),
            Run("upgrade mrg"),
            Show("current"),
            Run("downgrade mrg1-1"),
            FleetmigRefuses(
                "downgrade -1",
                "a bare -1 from two rows: Alembic walks from the table's first row",
            ),
            Run("downgrade other@-1"),
            Run("upgrade heads"),
            Run("downgrade other@base"),
            Run("downgrade trunk@base"),
            Run("upgrade heads"),
            Run("downgrade trk2"),
            Show("current"),
            Run("downgrade feat@-1"),
            Run("upgrade feat@+1"),
            Run("upgrade other@oth2"),
            Run("downgrade other@trk1"),
            Run("stamp other@head"),
            Run("stamp trunk@head"),
            Run("stamp feat@base"),
            Run("stamp other@-1"),
            Run("stamp mrg1"),
            Show("heads"),
            Run("downgrade head"),
            Run("downgrade heads"),
            Run("downgrade +1"),
            Run("stamp base"),
            Run("upgrade -1"),
            Run("upgrade base"),
        ],
    )
    .await;
}

#[tokio::test]
async fn unknown_rows_are_refused_by_both() {
    parity(
        "unknown",
        fork(),
        &[
            Run("upgrade b"),
            ForeignRow("zzzz"),
            Run("current"),
            FleetmigShows("current", "zzzz (unknown to app app)"),
            Run("upgrade heads"),
            Run("downgrade base"),
            Run("stamp --purge c"),
            Show("current"),
        ],
    )
    .await;
}

/// Authoring guards: run `cmd` by both in copies of the same project; same refusal, and
/// the same number of new revision files (fleetmig writes nothing when it refuses).
#[tokio::test]
async fn defect_7_authoring_guards() {
    let Some(bin) = alembic_bin() else { return };
    let graph = vec![
        rev("aaaa", &[], &["lab"], &[]),
        rev("bbbb", &["aaaa"], &[], &[]),
        rev("cccc", &["aaaa"], &[], &[]),
    ];
    let count = |dir: &Path, ext: &str| {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == ext))
            .count()
    };
    // (command, refused by Alembic, refused by fleetmig)
    let cases: &[(&str, bool, bool)] = &[
        ("revision -m new --rev-id nnnn --head aaaa", true, true),
        (
            "revision -m new --rev-id nnnn --head aaaa --splice",
            false,
            false,
        ),
        ("revision -m new --rev-id nnnn --head bbbb", false, false),
        ("revision -m new --rev-id nnnn --head lab@head", true, true),
        ("revision -m new --rev-id nnnn", true, true),
        (
            "revision -m new --rev-id nnnn --head base --branch-label lab",
            true,
            true,
        ),
        (
            "revision -m new --rev-id nnnn --head base --branch-label fresh",
            false,
            false,
        ),
        (
            "revision -m new --rev-id nnnn --head bbbb --depends-on cccc",
            false,
            false,
        ),
        (
            "revision -m new --rev-id nnnn --head bbbb --depends-on lab",
            false,
            false,
        ),
        ("merge -m join --rev-id nnnn aaaa bbbb", true, true),
        ("merge -m join --rev-id nnnn bbbb cccc", false, false),
        ("merge -m join --rev-id nnnn heads", false, false),
        // Deliberate: a "merge" of one head is an ordinary revision in Alembic.
        ("merge -m join --rev-id nnnn bbbb", false, true),
    ];
    for &(cmd, alembic_refuses, refused) in cases {
        let dir = tempfile::tempdir().unwrap();
        ap::write_alembic(&dir.path().join("alembic"), &graph, Sql::Plain);
        ap::write_fleetmig(&dir.path().join("migrations"), &graph, Sql::Plain);
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let a = alembic(
            &bin,
            &dir.path().join("alembic"),
            "postgresql://unused",
            &args,
        );
        let f = fleetmig(&dir.path().join("migrations"), None, &args);
        let ctx = format!(
            "{cmd}\n--- alembic {}\n--- fleetmig {}",
            ap::text(&a),
            ap::text(&f)
        );
        assert_eq!(a.status.success(), !alembic_refuses, "alembic: {ctx}");
        assert_eq!(f.status.success(), !refused, "fleetmig: {ctx}");
        let written = count(&dir.path().join("migrations/app"), "sql") - graph.len();
        assert_eq!(written, usize::from(!refused), "fleetmig files: {ctx}");
        if !refused {
            // Same parents and dependencies for the new revision.
            let text = std::fs::read_to_string(
                std::fs::read_dir(dir.path().join("migrations/app"))
                    .unwrap()
                    .flatten()
                    .find(|e| e.file_name().to_string_lossy().starts_with("nnnn"))
                    .unwrap()
                    .path(),
            )
            .unwrap();
            let py = std::fs::read_dir(dir.path().join("alembic/mig/versions"))
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("nnnn"))
                .unwrap()
                .path();
            let parsed =
                fleetmig::revision::alembic_py::parse(&py, &std::fs::read_to_string(&py).unwrap())
                    .unwrap();
            let header = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("-- {key}:")))
                    .map(|v| {
                        v.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            };
            let mut down = header("down_revision");
            let mut alembic_down = parsed.down_revision.clone();
            down.sort();
            alembic_down.sort();
            assert_eq!(down, alembic_down, "{ctx}");
            assert_eq!(header("depends_on"), parsed.depends_on, "{ctx}");
            assert_eq!(header("branch_labels"), parsed.branch_labels, "{ctx}");
        }
    }
}

/// The deliberate differences are listed where users look for them.
#[test]
fn the_readme_lists_the_deliberate_differences() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for needle in [
        "## Alembic compatibility",
        "1.16.5",
        "bare `downgrade -N` from several rows",
        "one transaction",
        "refusals write nothing",
        "`current` with a row the graph does not know",
        "import-alembic --versions",
    ] {
        assert!(readme.contains(needle), "README.md lacks {needle:?}");
    }
}
