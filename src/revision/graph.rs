//! The revision DAG of one app: validation (duplicates, unknown parents, cycles, label
//! clashes), heads and bases, ancestry, topological order and target resolution.
//!
//! Nodes are indices into the revisions sorted by id, so every order is deterministic.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::model::RevisionId;
use crate::revision::file::Revision;

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("Can't locate revision identified by '{0}'")]
    NotFound(String),
    #[error("revision prefix '{prefix}' is ambiguous: {}", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error(
        "Multiple head revisions are present ({}); please specify a specific target revision, '<branchname>@head' to narrow to a specific head, or 'heads' for all heads; or join them with `fleetmig merge -m \"merge heads\" heads`",
        heads.join(", ")
    )]
    MultipleHeads { heads: Vec<String> },
}

/// A validated revision graph.
#[derive(Debug)]
pub struct Graph {
    revs: Vec<Revision>,
    by_id: HashMap<RevisionId, Node>,
    parents: Vec<Vec<Node>>,
    /// parents + depends_on: everything that must be applied first.
    requires: Vec<Vec<Node>>,
    children: Vec<Vec<Node>>,
    required_by: Vec<Vec<Node>>,
    labels: HashMap<String, Node>,
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
        let lookup = |r: &Revision,
                      ids: &[RevisionId],
                      field: &'static str|
         -> Result<Vec<Node>, GraphError> {
            ids.iter()
                .map(|p| {
                    by_id
                        .get(p)
                        .copied()
                        .ok_or_else(|| GraphError::UnknownParent {
                            missing: p.clone(),
                            path: r.path.clone(),
                            field,
                        })
                })
                .collect()
        };
        let n = revs.len();
        let (mut parents, mut requires) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut children, mut required_by) = (vec![vec![]; n], vec![vec![]; n]);
        for (i, r) in revs.iter().enumerate() {
            let p = lookup(r, &r.parents, "down_revision")?;
            let mut req = p.clone();
            for d in lookup(r, &r.depends_on, "depends_on")? {
                if !req.contains(&d) {
                    req.push(d);
                }
            }
            for &x in &p {
                children[x].push(i);
            }
            for &x in &req {
                required_by[x].push(i);
            }
            parents.push(p);
            requires.push(req);
        }
        let mut labels = HashMap::new();
        for (i, r) in revs.iter().enumerate() {
            for label in &r.branch_labels {
                if by_id.contains_key(label.as_str()) {
                    return Err(GraphError::LabelIsRevision {
                        label: label.clone(),
                        path: r.path.clone(),
                    });
                }
                if let Some(&prev) = labels.get(label) {
                    let prev: &Revision = &revs[prev];
                    return Err(GraphError::LabelClash {
                        label: label.clone(),
                        first: prev.path.clone(),
                        second: r.path.clone(),
                    });
                }
                labels.insert(label.clone(), i);
            }
        }
        let g = Graph {
            revs,
            by_id,
            parents,
            requires,
            children,
            required_by,
            labels,
        };
        g.check_acyclic()?;
        Ok(g)
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

    pub fn revisions(&self) -> impl Iterator<Item = (Node, &Revision)> {
        self.revs.iter().enumerate()
    }

    pub fn node(&self, id: &str) -> Option<Node> {
        self.by_id.get(id).copied()
    }

    pub fn parents(&self, n: Node) -> &[Node] {
        &self.parents[n]
    }

    pub fn requires(&self, n: Node) -> &[Node] {
        &self.requires[n]
    }

    pub fn children(&self, n: Node) -> &[Node] {
        &self.children[n]
    }

    /// Revisions that no other revision names as its down_revision.
    pub fn heads(&self) -> Vec<Node> {
        (0..self.revs.len())
            .filter(|&n| self.children[n].is_empty())
            .collect()
    }

    pub fn bases(&self) -> Vec<Node> {
        (0..self.revs.len())
            .filter(|&n| self.parents[n].is_empty())
            .collect()
    }

    /// The single head, or the Alembic "multiple heads" error.
    pub fn single_head(&self) -> Result<Option<Node>, ResolveError> {
        match self.heads().as_slice() {
            [] => Ok(None),
            [h] => Ok(Some(*h)),
            many => Err(ResolveError::MultipleHeads {
                heads: many.iter().map(|&h| self.revs[h].id.to_string()).collect(),
            }),
        }
    }

    /// A revision by full id, branch label or unique id prefix.
    pub fn resolve(&self, s: &str) -> Result<Node, ResolveError> {
        if let Some(n) = self.node(s) {
            return Ok(n);
        }
        if let Some(&n) = self.labels.get(s) {
            return Ok(n);
        }
        let matches: Vec<Node> = (0..self.revs.len())
            .filter(|&n| self.revs[n].id.as_str().starts_with(s))
            .collect();
        match matches.as_slice() {
            [one] if !s.is_empty() => Ok(*one),
            [] | [_] => Err(ResolveError::NotFound(s.to_string())),
            many => Err(ResolveError::Ambiguous {
                prefix: s.to_string(),
                candidates: many.iter().map(|&n| self.revs[n].id.to_string()).collect(),
            }),
        }
    }

    /// The head of the branch that `s` (a label or revision) is on: `label@head`.
    pub fn branch_head(&self, s: &str) -> Result<Node, ResolveError> {
        let start = self.resolve(s)?;
        let reachable = self.closure([start], |n| &self.children[n]);
        let heads: Vec<Node> = reachable
            .into_iter()
            .filter(|&n| self.children[n].is_empty())
            .collect();
        match heads.as_slice() {
            [h] => Ok(*h),
            many => Err(ResolveError::MultipleHeads {
                heads: many.iter().map(|&h| self.revs[h].id.to_string()).collect(),
            }),
        }
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

    /// `node` and everything that requires it, transitively.
    pub fn descendants(&self, node: Node) -> BTreeSet<Node> {
        self.closure([node], |n| &self.required_by[n])
    }

    /// The rows `alembic_version` holds for an applied set: applied revisions none of whose
    /// down_revision children are applied.
    pub fn version_rows(&self, applied: &BTreeSet<Node>) -> BTreeSet<Node> {
        applied
            .iter()
            .copied()
            .filter(|&n| !self.children[n].iter().any(|c| applied.contains(c)))
            .collect()
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
