//! Which revisions a command touches, and in which order, ported from Alembic's
//! `RevisionMap` (alembic/script/revision.py): `_parse_upgrade_target`,
//! `_parse_downgrade_target`, `_collect_upgrade_revisions`, `_collect_downgrade_revisions`
//! and `_topological_sort`. `plan.rs` turns the result into steps with version rows.

use std::collections::BTreeSet;

use crate::revision::graph::{Graph, Node};
use crate::revision::plan::PlanError;
use crate::revision::resolve::{At, ResolveError, relative};

/// A side of a range: a symbol the user typed, or the database's rows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side<'a> {
    Symbol(&'a str),
    Rows(&'a [Node]),
}

/// Where a relative upgrade starts from (`start_revs[0]` in Alembic).
#[derive(Debug, Clone, Copy)]
enum Start<'a> {
    Nowhere,
    Symbol(&'a str),
    Node(Node),
}

fn revision_error(m: impl Into<String>) -> PlanError {
    PlanError::Resolve(ResolveError::Revision(m.into()))
}

fn didnt_produce(rel: i64) -> PlanError {
    revision_error(format!(
        "Relative revision {rel:+} didn't produce {} migrations",
        rel.unsigned_abs()
    ))
}

impl Graph {
    fn start_at(&self, start: Start<'_>) -> Result<Option<At>, ResolveError> {
        Ok(match start {
            Start::Nowhere => None,
            Start::Node(n) => Some(At::Rev(n)),
            Start::Symbol(s) => self.get_revision(s)?.map(At::Rev),
        })
    }

    /// `get_revisions` of a range side.
    fn side_revisions(&self, side: Side<'_>) -> Result<Vec<Option<At>>, ResolveError> {
        match side {
            Side::Symbol(s) => self.get_revisions(s),
            Side::Rows(rows) => Ok(rows.iter().map(|&n| Some(At::Rev(n))).collect()),
        }
    }

    /// `_parse_upgrade_target`: the revisions `target` names, relative to `current`.
    pub(crate) fn parse_upgrade_target(
        &self,
        current: Side<'_>,
        target: Side<'_>,
        assert_relative_length: bool,
    ) -> Result<Vec<Option<At>>, PlanError> {
        let text = match target {
            Side::Symbol(s) => s,
            Side::Rows(_) => return Ok(self.side_revisions(target)?),
        };
        // A full fleetmig id may hold '-' (Alembic's never do): it is never a relative step.
        let Some((label, symbol, rel)) = relative(text).filter(|_| self.node(text).is_none())
        else {
            return Ok(self.get_revisions(text)?);
        };
        if rel > 0 {
            if let Some(symbol) = symbol {
                return Ok(vec![self.walk(
                    self.get_revision(symbol)?.map(At::Rev),
                    rel,
                    label,
                    assert_relative_length,
                )?]);
            }
            let current_tup: Vec<Start> = match current {
                Side::Symbol(s) => vec![Start::Symbol(s)],
                Side::Rows([]) => vec![Start::Nowhere],
                Side::Rows(rows) => rows.iter().map(|&n| Start::Node(n)).collect(),
            };
            let mut start = current_tup.clone();
            if let Some(label) = label {
                let current_nodes: Vec<Node> = self
                    .side_revisions(current)?
                    .into_iter()
                    .flatten()
                    .filter_map(At::rev)
                    .collect();
                let on_branch = self.filter_for_lineage(&current_nodes, label, false)?;
                start = on_branch.iter().map(|&n| Start::Node(n)).collect();
                if start.is_empty() {
                    // The branch is not at a current head: start from its tips below them.
                    let below: Vec<Node> = self
                        .ancestors(current_nodes.iter().copied())
                        .into_iter()
                        .collect();
                    let active = self.filter_for_lineage(&below, label, false)?;
                    let downs: BTreeSet<Node> = active
                        .iter()
                        .flat_map(|&r| self.normalized_down(r).iter().copied())
                        .collect();
                    start = active
                        .iter()
                        .copied()
                        .filter(|r| !downs.contains(r))
                        .map(Start::Node)
                        .collect();
                    if start.is_empty() {
                        start = vec![Start::Nowhere];
                    }
                }
            }
            if start.len() > 1 {
                return Err(revision_error(
                    "Ambiguous upgrade from multiple current revisions",
                ));
            }
            let walked = self.walk(self.start_at(start[0])?, rel, label, assert_relative_length)?;
            return match walked {
                None => Err(didnt_produce(rel)),
                some => Ok(vec![some]),
            };
        }
        let Some(symbol) = symbol else {
            return Err(didnt_produce(rel));
        };
        let start = match label {
            None => self.get_revision(symbol)?,
            Some(l) => self.get_revision(&format!("{l}@{symbol}"))?,
        };
        Ok(vec![self.walk(
            start.map(At::Rev),
            rel,
            None,
            assert_relative_length,
        )?])
    }

    /// `_parse_downgrade_target`: the branch label and the revision (None: base) to go
    /// down to from `current`.
    pub(crate) fn parse_downgrade_target(
        &self,
        current: &[Node],
        target: &str,
        assert_relative_length: bool,
    ) -> Result<(Option<String>, Option<At>), PlanError> {
        let rel_match = relative(target).filter(|_| self.node(target).is_none());
        if let Some((label, symbol, rel)) = rel_match {
            if rel >= 0 {
                let Some(symbol) = symbol else {
                    return Err(didnt_produce(rel));
                };
                let start = self.get_revision(symbol)?.map(At::Rev);
                return match self.walk(start, rel, label, assert_relative_length)? {
                    None => Err(revision_error("Walked too far")),
                    Some(at) => Ok((label.map(str::to_string), Some(at))),
                };
            }
            let relative_revision = symbol.is_none();
            let mut label = label.map(str::to_string);
            let symbol: String = match symbol {
                Some(s) => s.to_string(),
                None => match &label {
                    Some(l) => {
                        let mut on_branch: Vec<Node> =
                            self.filter_for_lineage(current, l, false)?;
                        if on_branch.is_empty() {
                            let all = self.all_current(current);
                            on_branch = self.filter_for_lineage(&all, l, false)?;
                        }
                        let [one] = on_branch.as_slice() else {
                            return Err(PlanError::Resolve(ResolveError::NoRevision(
                                target.to_string(),
                            )));
                        };
                        self.id(*one).to_string()
                    }
                    None => {
                        let Some(&first) = current.first() else {
                            return Err(didnt_produce(rel));
                        };
                        // Alembic warns and walks from the first row the table returns;
                        // that order is the table's, so fleetmig refuses instead.
                        if current.iter().any(|&c| c != first) {
                            return Err(PlanError::AmbiguousFromHeads {
                                target: target.to_string(),
                                rows: current.iter().map(|&c| self.id(c).to_string()).collect(),
                            });
                        }
                        let s = self.id(first).to_string();
                        label = Some(s.clone());
                        s
                    }
                },
            };
            let start = match &label {
                None => self.get_revision(&symbol)?,
                Some(l) => self.get_revision(&format!("{l}@{symbol}"))?,
            };
            return match self.walk(start.map(At::Rev), rel, None, assert_relative_length)? {
                None if relative_revision => Err(didnt_produce(rel)),
                None => Err(revision_error("Walked too far")),
                Some(at) => Ok((label, Some(at))),
            };
        }
        let (label, symbol) = match target.rsplit_once('@') {
            Some((l, s)) => ((!l.is_empty()).then(|| l.to_string()), s),
            None => (None, target),
        };
        Ok((label, self.get_revision(symbol)?.map(At::Rev)))
    }

    /// `_collect_upgrade_revisions`: the revisions to apply (unordered) and the targets.
    pub(crate) fn collect_upgrade(
        &self,
        upper: Side<'_>,
        lower: Side<'_>,
        inclusive: bool,
        implicit_base: bool,
        assert_relative_length: bool,
    ) -> Result<(BTreeSet<Node>, Vec<Node>), PlanError> {
        let what = |s: Side<'_>| match s {
            Side::Symbol(s) => s.to_string(),
            Side::Rows(r) => r.iter().map(|&n| self.id(n)).collect::<Vec<_>>().join(","),
        };
        let mut targets: Vec<Node> = self
            .parse_upgrade_target(lower, upper, assert_relative_length)?
            .into_iter()
            .map(|t| match t {
                Some(At::Rev(n)) => Ok(n),
                _ => Err(PlanError::Resolve(ResolveError::NoRevision(what(upper)))),
            })
            .collect::<Result<_, _>>()?;
        if let Side::Symbol(l) = lower
            && let Some((branch, _)) = l.split_once('@')
        {
            let mut branch = branch.to_string();
            if let Some(b) = self.get_revision(&branch)?
                && self.id(b) == branch
            {
                // A revision used as a label: its branch's label instead.
                let labels = self.branch_labels(b);
                let [only] = labels.iter().collect::<Vec<_>>()[..] else {
                    return Err(PlanError::Resolve(ResolveError::NoRevision(l.to_string())));
                };
                branch = only.clone();
            }
            targets.retain(|&t| self.branch_labels(t).contains(&branch));
        }
        let mut required = self.ancestors_checked(&targets)?;
        required.extend(targets.iter().copied());
        let mut lower = lower;
        let mut current = self.side_revisions(lower)?;
        let mut lower_text = what(lower);
        if !implicit_base
            && current
                .iter()
                .any(|c| c.is_some_and(|c| !c.rev().is_some_and(|n| required.contains(&n))))
        {
            return Err(PlanError::NotAncestor {
                start: lower_text,
                end: what(upper),
            });
        }
        let owned;
        if current.first().is_some_and(|c| c.is_none()) {
            // A relative lower bound (`-1:`): resolved against the upper side.
            let upper_rows: Vec<Node> = self
                .side_revisions(upper)?
                .into_iter()
                .flatten()
                .filter_map(At::rev)
                .collect();
            let (_, rev) =
                self.parse_downgrade_target(&upper_rows, &lower_text, assert_relative_length)?;
            match rev {
                None => return Err(PlanError::Resolve(ResolveError::NoRevision(lower_text))),
                Some(At::Base) => {
                    current = vec![];
                    owned = vec![];
                    lower = Side::Rows(&owned);
                }
                Some(At::Rev(n)) => {
                    current = vec![Some(At::Rev(n))];
                    owned = vec![n];
                    lower = Side::Rows(&owned);
                    lower_text = self.id(n).to_string();
                }
            }
        }
        let current: Vec<Node> = current
            .into_iter()
            .map(|c| match c {
                Some(At::Rev(n)) => Ok(n),
                _ => Err(PlanError::Resolve(ResolveError::NoRevision(
                    lower_text.clone(),
                ))),
            })
            .collect::<Result<_, _>>()?;
        let mut current_set = self.ancestors_checked(&current)?;
        current_set.extend(current.iter().copied());
        let mut needs: BTreeSet<Node> = required.difference(&current_set).copied().collect();
        if inclusive {
            for r in self.side_revisions(lower)?.into_iter().flatten() {
                match r {
                    At::Rev(n) => {
                        needs.insert(n);
                    }
                    At::Base => {
                        return Err(PlanError::Resolve(ResolveError::NoRevision(lower_text)));
                    }
                }
            }
        }
        if !current.is_empty() && !implicit_base {
            let above = self.versioned_descendants_checked(&current)?;
            needs.retain(|n| above.contains(n));
        }
        Ok((needs, targets))
    }

    /// `_collect_downgrade_revisions`: the revisions to unapply (unordered).
    pub(crate) fn collect_downgrade(
        &self,
        rows: &[Node],
        target: &str,
        assert_relative_length: bool,
    ) -> Result<BTreeSet<Node>, PlanError> {
        let (label, to) = self.parse_downgrade_target(rows, target, assert_relative_length)?;
        let to = to.and_then(At::rev);
        // Alembic lists base revisions from a map that holds each labelled one twice.
        let (mut roots, root_count): (Vec<Node>, usize) = match to {
            None => {
                let bases = self.bases();
                let doubled = bases
                    .iter()
                    .map(|&b| 1 + self.revision(b).branch_labels.len())
                    .sum();
                (bases, doubled)
            }
            Some(t) => (self.children(t).to_vec(), self.children(t).len()),
        };
        if let Some(label) = &label
            && root_count > 1
        {
            let line = self.versioned_ancestors([self.resolve_branch(label)?]);
            roots.retain(|r| line.contains(r));
            if roots.is_empty() {
                return Err(revision_error(
                    "Not a valid downgrade target from current heads",
                ));
            }
        }
        let active = self.ancestors(rows.iter().copied());
        let drop: BTreeSet<Node> = self
            .descendants(roots)
            .intersection(&active)
            .copied()
            .collect();
        if let Some(t) = to
            && drop.is_empty()
            && !rows.contains(&t)
        {
            return Err(PlanError::NotValidTarget {
                direction: crate::model::Direction::Downgrade,
                target: target.to_string(),
            });
        }
        Ok(drop)
    }

    /// `_topological_sort`: `revisions` from the `heads` down, one branch at a time; a
    /// revision another pending branch still needs waits for that branch.
    pub(crate) fn topological_sort(
        &self,
        revisions: &BTreeSet<Node>,
        heads: &[Node],
    ) -> Result<Vec<Node>, PlanError> {
        let mut todo = revisions.clone();
        let mut current: Vec<Node> = heads
            .iter()
            .copied()
            .filter(|h| todo.contains(h))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut ancestors: Vec<BTreeSet<Node>> =
            current.iter().map(|&h| self.ancestors([h])).collect();
        let mut out = Vec::with_capacity(todo.len());
        let mut idx = 0usize;
        let mut budget = (self.len() + 2).pow(2) * 4;
        while !current.is_empty() {
            budget = budget
                .checked_sub(1)
                .ok_or_else(|| revision_error("could not order the revisions"))?;
            let candidate = current[idx];
            if let Some(j) =
                (0..ancestors.len()).find(|&j| j != idx && ancestors[j].contains(&candidate))
            {
                idx = j;
                continue;
            }
            if todo.remove(&candidate) {
                out.push(candidate);
            }
            let add: Vec<Node> = self
                .normalized_down(candidate)
                .iter()
                .copied()
                .filter(|r| todo.contains(r) && !current.contains(r))
                .collect();
            match add.split_first() {
                None => {
                    current.remove(idx);
                    ancestors.remove(idx);
                    idx = idx.saturating_sub(1);
                }
                Some((&first, rest)) => {
                    current[idx] = first;
                    if self.normalized_depends_on(candidate).is_empty()
                        && self.parents(candidate).len() == 1
                    {
                        ancestors[idx].remove(&candidate);
                    } else {
                        ancestors[idx] = self.ancestors([first]);
                        current.extend(rest.iter().copied());
                        ancestors.extend(rest.iter().map(|&r| self.ancestors([r])));
                    }
                }
            }
        }
        if !todo.is_empty() {
            return Err(revision_error("could not order the revisions"));
        }
        Ok(out)
    }
}
