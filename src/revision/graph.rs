//! The revision DAG of one app, built the way Alembic's `RevisionMap` builds it
//! (alembic/script/revision.py): validation (duplicates, unknown parents, cycles, label
//! clashes), versioned and "real" heads and bases, resolved and normalized `depends_on`,
//! branch labels propagated along their branch, and ancestry with or without dependencies.
//! Resolving symbols lives in `resolve.rs`, planning in `plan.rs`.
//!
//! Nodes are indices into the revisions sorted by id. Alembic orders its map by file name;
//! fleetmig's order is the id order, which is what Alembic's default `<id>_<slug>.py` names give.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::model::RevisionId;
use crate::revision::file::Revision;

pub use crate::revision::resolve::ResolveError;

pub type Node = usize;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{}: duplicate revision id '{id}' (also in {})", second.display(), first.display())]
    Duplicate {
        id: RevisionId,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{}: Can't locate revision identified by '{missing}' (named in its {field})", path.display())]
    UnknownParent {
        missing: RevisionId,
        path: PathBuf,
        field: &'static str,
    },
    #[error("{}: revision '{id}' is part of a cycle: {}", path.display(), chain.join(" -> "))]
    Cycle {
        id: RevisionId,
        path: PathBuf,
        chain: Vec<String>,
    },
    #[error("{}: branch label '{label}' is already used by {}", second.display(), first.display())]
    LabelClash {
        label: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{}: branch label '{label}' is also a revision id", path.display())]
    LabelIsRevision { label: String, path: PathBuf },
}

/// A validated revision graph.
#[derive(Debug)]
pub struct Graph {
    revs: Vec<Revision>,
    by_id: HashMap<RevisionId, Node>,
    /// Each declared branch label and the revision that declares it.
    labels: HashMap<String, Node>,
    /// `down_revision` (Alembic's `_versioned_down_revisions`), in declared order.
    parents: Vec<Vec<Node>>,
    /// `depends_on` resolved to revisions (labels allowed), in declared order.
    deps: Vec<Vec<Node>>,
    /// `depends_on` minus what a versioned ancestor already depends on
    /// (`_normalized_resolved_dependencies`).
    norm_deps: Vec<Vec<Node>>,
    /// parents + depends_on: everything that must be applied first (`_all_down_revisions`).
    requires: Vec<Vec<Node>>,
    /// parents + normalized depends_on (`_normalized_down_revisions`).
    norm_down: Vec<Vec<Node>>,
    /// Revisions naming this one as down_revision (`nextrev`).
    children: Vec<Vec<Node>>,
    /// Revisions naming this one as down_revision or in depends_on (`_all_nextrev`).
    required_by: Vec<Vec<Node>>,
    /// Branch labels as Alembic propagates them: a label also covers its revision's
    /// descendants and, up to a branch point, its ancestors.
    branch_labels: Vec<BTreeSet<String>>,
    heads: Vec<Node>,
    real_heads: Vec<Node>,
    bases: Vec<Node>,
}

fn dedupe(nodes: impl IntoIterator<Item = Node>) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    for n in nodes {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

impl Graph {
    pub fn new(mut revs: Vec<Revision>) -> Result<Graph, GraphError> {
        revs.sort_by(|a, b| a.id.cmp(&b.id));
        let mut by_id = HashMap::with_capacity(revs.len());
        for (i, r) in revs.iter().enumerate() {
            if let Some(&prev) = by_id.get(&r.id) {
                let prev: &Revision = &revs[prev];
                return Err(GraphError::Duplicate {
                    id: r.id.clone(),
                    first: prev.path.clone(),
                    second: r.path.clone(),
                });
            }
            by_id.insert(r.id.clone(), i);
        }
        let labels = Self::declared_labels(&revs, &by_id)?;
        let n = revs.len();
        let (mut parents, mut deps) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for r in &revs {
            let unknown = |missing: &RevisionId, field| GraphError::UnknownParent {
                missing: missing.clone(),
                path: r.path.clone(),
                field,
            };
            let p = r
                .parents
                .iter()
                .map(|p| {
                    by_id
                        .get(p)
                        .copied()
                        .ok_or_else(|| unknown(p, "down_revision"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // Like Alembic, depends_on may name a revision or a branch label.
            let d = r
                .depends_on
                .iter()
                .map(|d| {
                    by_id
                        .get(d)
                        .or_else(|| labels.get(d.as_str()))
                        .copied()
                        .ok_or_else(|| unknown(d, "depends_on"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            parents.push(dedupe(p));
            deps.push(dedupe(d));
        }
        let requires: Vec<Vec<Node>> = (0..n)
            .map(|i| dedupe(parents[i].iter().chain(&deps[i]).copied()))
            .collect();
        let (mut children, mut required_by) = (vec![vec![]; n], vec![vec![]; n]);
        for i in 0..n {
            for &p in &parents[i] {
                children[p].push(i);
            }
            for &r in &requires[i] {
                required_by[r].push(i);
            }
        }
        let mut g = Graph {
            revs,
            by_id,
            labels,
            parents,
            deps,
            norm_deps: vec![],
            requires,
            norm_down: vec![],
            children,
            required_by,
            branch_labels: vec![],
            heads: vec![],
            real_heads: vec![],
            bases: vec![],
        };
        g.check_acyclic()?;
        g.norm_deps = (0..n).map(|i| g.normalized_deps(i)).collect();
        g.norm_down = (0..n)
            .map(|i| dedupe(g.parents[i].iter().chain(&g.norm_deps[i]).copied()))
            .collect();
        g.heads = (0..n).filter(|&i| g.children[i].is_empty()).collect();
        g.real_heads = (0..n).filter(|&i| g.required_by[i].is_empty()).collect();
        g.bases = (0..n).filter(|&i| g.parents[i].is_empty()).collect();
        g.branch_labels = g.propagate_labels();
        Ok(g)
    }

    fn declared_labels(
        revs: &[Revision],
        by_id: &HashMap<RevisionId, Node>,
    ) -> Result<HashMap<String, Node>, GraphError> {
        let mut labels: HashMap<String, Node> = HashMap::new();
        for (i, r) in revs.iter().enumerate() {
            for label in &r.branch_labels {
                if by_id.contains_key(label.as_str()) {
                    return Err(GraphError::LabelIsRevision {
                        label: label.clone(),
                        path: r.path.clone(),
                    });
                }
                if let Some(&prev) = labels.get(label) {
                    return Err(GraphError::LabelClash {
                        label: label.clone(),
                        first: revs[prev].path.clone(),
                        second: r.path.clone(),
                    });
                }
                labels.insert(label.clone(), i);
            }
        }
        Ok(labels)
    }

    /// `_normalize_depends_on`: a dependency that a versioned ancestor also declares is
    /// reached through that ancestor, so it is no immediate down revision of this one.
    fn normalized_deps(&self, n: Node) -> Vec<Node> {
        if self.deps[n].is_empty() {
            return vec![];
        }
        let inherited: BTreeSet<Node> = self
            .versioned_ancestors([n])
            .into_iter()
            .filter(|&a| a != n)
            .flat_map(|a| self.deps[a].iter().copied())
            .collect();
        self.deps[n]
            .iter()
            .copied()
            .filter(|d| !inherited.contains(d))
            .collect()
    }

    /// `_add_branches`: a label covers its revision's descendants (by down_revision); when
    /// those form one line, it also covers the revision's ancestors down to the first branch
    /// point (counting dependants) or merge point. Alembic walks down from the last descendant
    /// it visited; with a fork among the descendants that walk stops at the fork, at or above
    /// the labelled revision, and adds nothing new.
    fn propagate_labels(&self) -> Vec<BTreeSet<String>> {
        let mut out: Vec<BTreeSet<String>> = self
            .revs
            .iter()
            .map(|r| r.branch_labels.iter().cloned().collect())
            .collect();
        for (l, rev) in self.revs.iter().enumerate() {
            if rev.branch_labels.is_empty() {
                continue;
            }
            for d in self.versioned_descendants([l]) {
                out[d].extend(rev.branch_labels.iter().cloned());
            }
            let mut tip = l;
            while let [only] = self.children[tip].as_slice() {
                tip = *only;
            }
            if !self.children[tip].is_empty() {
                continue;
            }
            let mut at = Some(tip);
            while let Some(p) = at {
                if self.required_by[p].len() > 1 || self.parents[p].len() > 1 {
                    break;
                }
                out[p].extend(rev.branch_labels.iter().cloned());
                at = self.parents[p].first().copied();
            }
        }
        out
    }

    fn check_acyclic(&self) -> Result<(), GraphError> {
        // Iterative DFS with colours; on a back edge, report the cycle's chain.
        let n = self.revs.len();
        let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut stack: Vec<(Node, usize)> = vec![(start, 0)];
            colour[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if let Some(&req) = self.requires[node].get(*next) {
                    *next += 1;
                    match colour[req] {
                        0 => {
                            colour[req] = 1;
                            stack.push((req, 0));
                        }
                        1 => {
                            let pos = stack.iter().position(|(x, _)| *x == req).unwrap_or(0);
                            let mut chain: Vec<String> = stack[pos..]
                                .iter()
                                .map(|(x, _)| self.revs[*x].id.to_string())
                                .collect();
                            chain.push(self.revs[req].id.to_string());
                            return Err(GraphError::Cycle {
                                id: self.revs[req].id.clone(),
                                path: self.revs[req].path.clone(),
                                chain,
                            });
                        }
                        _ => {}
                    }
                } else {
                    colour[node] = 2;
                    stack.pop();
                }
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.revs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    pub fn revision(&self, n: Node) -> &Revision {
        &self.revs[n]
    }

    pub fn id(&self, n: Node) -> &str {
        self.revs[n].id.as_str()
    }

    pub fn revisions(&self) -> impl Iterator<Item = (Node, &Revision)> {
        self.revs.iter().enumerate()
    }

    /// A revision by its full id only.
    pub fn node(&self, id: &str) -> Option<Node> {
        self.by_id.get(id).copied()
    }

    /// The revision that declares branch label `label`.
    pub fn label(&self, label: &str) -> Option<Node> {
        self.labels.get(label).copied()
    }

    /// Every declared branch label, with its revision.
    pub fn labels(&self) -> impl Iterator<Item = (&str, Node)> {
        self.labels.iter().map(|(l, &n)| (l.as_str(), n))
    }

    pub fn parents(&self, n: Node) -> &[Node] {
        &self.parents[n]
    }

    /// depends_on, resolved.
    pub fn depends_on(&self, n: Node) -> &[Node] {
        &self.deps[n]
    }

    /// Parents and depends_on.
    pub fn requires(&self, n: Node) -> &[Node] {
        &self.requires[n]
    }

    /// Parents and the depends_on no versioned ancestor already declares.
    pub fn normalized_down(&self, n: Node) -> &[Node] {
        &self.norm_down[n]
    }

    pub fn normalized_depends_on(&self, n: Node) -> &[Node] {
        &self.norm_deps[n]
    }

    pub fn children(&self, n: Node) -> &[Node] {
        &self.children[n]
    }

    /// Children and dependants.
    pub fn required_by(&self, n: Node) -> &[Node] {
        &self.required_by[n]
    }

    /// The labels that cover `n` (declared on it or propagated to it).
    pub fn branch_labels(&self, n: Node) -> &BTreeSet<String> {
        &self.branch_labels[n]
    }

    /// Revisions no other revision names as its down_revision: what `heads` lists (a revision
    /// something only depends on is an "effective head").
    pub fn heads(&self) -> Vec<Node> {
        self.heads.clone()
    }

    /// Heads that nothing depends on either: what the target `heads` means.
    pub fn real_heads(&self) -> Vec<Node> {
        self.real_heads.clone()
    }

    /// Revisions without a down_revision (they may still depend on others).
    pub fn bases(&self) -> Vec<Node> {
        self.bases.clone()
    }

    pub fn is_head(&self, n: Node) -> bool {
        self.children[n].is_empty()
    }

    pub fn is_real_head(&self, n: Node) -> bool {
        self.required_by[n].is_empty()
    }

    pub fn is_branch_point(&self, n: Node) -> bool {
        self.children[n].len() > 1
    }

    pub fn is_merge_point(&self, n: Node) -> bool {
        self.parents[n].len() > 1
    }

    fn closure<'a>(
        &'a self,
        start: impl IntoIterator<Item = Node>,
        next: impl Fn(Node) -> &'a [Node],
    ) -> BTreeSet<Node> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<Node> = start.into_iter().collect();
        while let Some(n) = todo.pop() {
            if seen.insert(n) {
                todo.extend(next(n).iter().copied());
            }
        }
        seen
    }

    /// `nodes` and everything they require (parents and depends_on), transitively.
    pub fn ancestors(&self, nodes: impl IntoIterator<Item = Node>) -> BTreeSet<Node> {
        self.closure(nodes, |n| &self.requires[n])
    }

    /// `nodes` and their down_revisions, transitively (dependencies not followed).
    pub fn versioned_ancestors(&self, nodes: impl IntoIterator<Item = Node>) -> BTreeSet<Node> {
        self.closure(nodes, |n| &self.parents[n])
    }

    /// `nodes` and everything that requires them, transitively.
    pub fn descendants(&self, nodes: impl IntoIterator<Item = Node>) -> BTreeSet<Node> {
        self.closure(nodes, |n| &self.required_by[n])
    }

    /// `nodes` and the revisions naming them as down_revision, transitively.
    pub fn versioned_descendants(&self, nodes: impl IntoIterator<Item = Node>) -> BTreeSet<Node> {
        self.closure(nodes, |n| &self.children[n])
    }

    /// `subset` in an order where everything comes after what it requires (Kahn's algorithm,
    /// ties broken by revision id).
    pub fn topo_order(&self, subset: &BTreeSet<Node>) -> Vec<Node> {
        let mut indegree: HashMap<Node, usize> = subset
            .iter()
            .map(|&n| {
                (
                    n,
                    self.requires[n]
                        .iter()
                        .filter(|r| subset.contains(r))
                        .count(),
                )
            })
            .collect();
        let mut ready: BTreeSet<Node> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::with_capacity(subset.len());
        while let Some(n) = ready.pop_first() {
            out.push(n);
            for &m in &self.required_by[n] {
                if let Some(d) = indegree.get_mut(&m) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(m);
                    }
                }
            }
        }
        out
    }
}
