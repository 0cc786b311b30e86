//! Which `alembic_version` rows exist after each step, exactly as Alembic's `HeadMaintainer`
//! (alembic/runtime/migration.py) keeps them: a revision step inserts a new branch, updates
//! its down revision's row, merges or unmerges rows, or deletes a branch; a stamp step does the
//! same from the rows it moves. Where Alembic would fail (an assertion, a missing row), this
//! refuses, so a plan is checked whole before any SQL runs. Pure: no database.

use std::collections::BTreeSet;

use crate::revision::graph::{Graph, Node};

/// A version-table change Alembic could not make.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("the version table cannot record this step: {0}")]
pub struct RowsError(pub String);

/// The version table's rows while a plan is simulated.
pub(crate) struct Rows<'g> {
    g: &'g Graph,
    pub heads: BTreeSet<Node>,
}

impl<'g> Rows<'g> {
    pub fn new(g: &'g Graph, rows: impl IntoIterator<Item = Node>) -> Rows<'g> {
        Rows {
            g,
            heads: rows.into_iter().collect(),
        }
    }

    fn insert(&mut self, v: Node) -> Result<(), RowsError> {
        if !self.heads.insert(v) {
            return Err(RowsError(format!("row {} is already there", self.g.id(v))));
        }
        Ok(())
    }

    fn delete(&mut self, v: Node) -> Result<(), RowsError> {
        if !self.heads.remove(&v) {
            return Err(RowsError(format!(
                "expected to delete the row {}, which is not there",
                self.g.id(v)
            )));
        }
        Ok(())
    }

    fn update(&mut self, from: Node, to: Node) -> Result<(), RowsError> {
        if self.heads.contains(&to) {
            return Err(RowsError(format!(
                "expected to update {} to {}, which is already a row",
                self.g.id(from),
                self.g.id(to)
            )));
        }
        self.delete(from)?;
        self.heads.insert(to);
        Ok(())
    }

    /// The ancestors (with dependencies) of the rows other than `except`.
    fn ancestors_of_others(&self, except: &[Node]) -> BTreeSet<Node> {
        self.g
            .ancestors(self.heads.iter().copied().filter(|h| !except.contains(h)))
    }

    /// `RevisionStep` applied to the rows (`update_to_step`).
    pub fn revision_step(&mut self, rev: Node, upgrade: bool) -> Result<(), RowsError> {
        let g = self.g;
        let downrevs = g.normalized_down(rev).to_vec();
        if upgrade {
            let present: Vec<Node> = downrevs
                .iter()
                .copied()
                .filter(|d| self.heads.contains(d))
                .collect();
            if downrevs.is_empty() || present.is_empty() {
                // A base, or none of its down revisions is a row: a new branch.
                return self.insert(rev);
            }
            if downrevs.len() > 1 && present.len() > 1 {
                // A merge: all but one of its down revisions' rows go, the last becomes it.
                let from: Vec<Node> = if self.heads.iter().any(|h| !downrevs.contains(h)) {
                    let others = self.ancestors_of_others(&downrevs);
                    downrevs
                        .iter()
                        .copied()
                        .filter(|d| !others.contains(d))
                        .collect()
                } else {
                    downrevs.clone()
                };
                let Some((&last, rest)) = from.split_last() else {
                    return Err(RowsError(format!(
                        "merge {} has no down revision left to update",
                        g.id(rev)
                    )));
                };
                for &d in rest {
                    self.delete(d)?;
                }
                return self.update(last, rev);
            }
            let down = match downrevs.as_slice() {
                [one] => *one,
                _ => match present.as_slice() {
                    [one] => *one,
                    _ => {
                        return Err(RowsError(
                            "Can't do an UPDATE because downrevision is ambiguous".into(),
                        ));
                    }
                },
            };
            return self.update(down, rev);
        }
        // Downgrade.
        if self.heads.contains(&rev) {
            if downrevs.is_empty() {
                return self.delete(rev);
            }
            let to = self.unmerge_to(rev, &downrevs);
            if to.is_empty() {
                // What it leads to stays reachable from another row: the branch goes.
                return self.delete(rev);
            }
            if downrevs.len() > 1 {
                let (&last, rest) = to.split_last().expect("not empty");
                for &r in rest {
                    self.insert(r)?;
                }
                return self.update(rev, last);
            }
        }
        let down = match downrevs.as_slice() {
            [one] => *one,
            _ => {
                let present: Vec<Node> = downrevs
                    .iter()
                    .copied()
                    .filter(|d| self.heads.contains(d))
                    .collect();
                match present.as_slice() {
                    [one] => *one,
                    _ => {
                        return Err(RowsError(format!(
                            "Can't do an UPDATE because downrevision is ambiguous (downgrading {})",
                            g.id(rev)
                        )));
                    }
                }
            }
        };
        self.update(rev, down)
    }

    /// `_unmerge_to_revisions`: the down revisions a downgrade of `rev` must leave as rows.
    fn unmerge_to(&self, rev: Node, downrevs: &[Node]) -> Vec<Node> {
        let g = self.g;
        let covered: BTreeSet<Node> = if self.heads.iter().any(|&h| h != rev) {
            self.ancestors_of_others(&[rev])
        } else {
            downrevs
                .iter()
                .flat_map(|&t| g.ancestors([t]).into_iter().filter(move |&a| a != t))
                .collect()
        };
        downrevs
            .iter()
            .copied()
            .filter(|d| !covered.contains(d))
            .collect()
    }

    /// `StampStep` applied to the rows.
    pub fn stamp_step(&mut self, step: &StampStep) -> Result<(), RowsError> {
        let StampStep {
            from,
            to,
            upgrade,
            branch_move,
        } = step;
        if !upgrade && *branch_move {
            let [one] = from.as_slice() else {
                return Err(RowsError("a branch delete moves one row".into()));
            };
            return self.delete(*one);
        }
        let to_missing = to.iter().any(|t| !self.heads.contains(t));
        let from_missing = from.iter().any(|f| !self.heads.contains(f));
        if *upgrade && (*branch_move || from_missing) && to_missing {
            let [one] = to.as_slice() else {
                return Err(RowsError("a new branch inserts one row".into()));
            };
            return self.insert(*one);
        }
        if from.len() > 1 {
            let (&last, rest) = from.split_last().expect("several");
            for &f in rest {
                self.delete(f)?;
            }
            let &[t] = to.as_slice() else {
                return Err(RowsError("a stamp moves rows to one revision".into()));
            };
            return self.update(last, t);
        }
        match (from.as_slice(), to.as_slice()) {
            ([f], [t]) => self.update(*f, *t),
            _ => Err(RowsError(
                "this stamp moves no single row to a single revision".into(),
            )),
        }
    }
}

/// One step of Alembic's `_stamp_revs`: move the rows `from` to `to` (empty: base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StampStep {
    pub from: Vec<Node>,
    pub to: Vec<Node>,
    pub upgrade: bool,
    pub branch_move: bool,
}
