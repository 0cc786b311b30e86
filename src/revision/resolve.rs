//! What users type, resolved to revisions exactly as Alembic's `RevisionMap` resolves it
//! (alembic/script/revision.py): `head`, `heads`, `base`, full ids, branch labels, partial
//! ids, `label@head`, `label@heads`, `label@base`, `label@REV`, `label@-N`, and the relative
//! walks (`_walk`) behind `+N`, `-N`, `REV+N`, `REV-N`. Pure: no database, no planning.

use std::collections::BTreeSet;

use crate::revision::graph::{Graph, Node};

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ResolveError {
    #[error("Can't locate revision identified by '{id}'{}", if *.short { " (please ensure at least four characters are present for partial revision identifier matches)" } else { "" })]
    NotFound { id: String, short: bool },
    #[error("Can't locate revision identified by '{0}': no such branch")]
    NoSuchBranch(String),
    #[error("Can't locate revision identified by '{prefix}': several revisions start with it ({})", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error("Revision {id} is not a member of branch '{label}'")]
    NotInBranch { id: String, label: String },
    #[error(
        "Multiple head revisions are present for given argument '{argument}' ({}); please specify a specific target revision, '<branchname>@{argument}' to narrow to a specific head, or 'heads' for all heads; or join them with `fleetmig merge -m \"merge heads\" heads`",
        heads.join(", ")
    )]
    MultipleHeads {
        heads: Vec<String>,
        argument: String,
    },
    #[error("Requested revision {id} overlaps with other requested revisions {}", others.join(", "))]
    Overlap { id: String, others: Vec<String> },
    /// One of Alembic's `RevisionError`s, with its message ("Ambiguous walk", "Walked too far",
    /// "Relative revision -2 didn't produce 2 migrations", ...).
    #[error("{0}")]
    Revision(String),
    /// Where Alembic fails an assertion: the symbol leads nowhere usable (past base, past a
    /// head, or to `base` where a revision is needed).
    #[error(
        "'{0}' does not lead to a revision from here (a relative step went past base or a head)"
    )]
    NoRevision(String),
}

/// Where a relative walk can stand: on a revision, or below every base (`"base"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Rev(Node),
    Base,
}

impl At {
    pub fn rev(self) -> Option<Node> {
        match self {
            At::Rev(n) => Some(n),
            At::Base => None,
        }
    }
}

/// Python's `int()` on a string: optional sign, decimal digits (underscores between them).
pub(crate) fn python_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let v: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Alembic's `_relative_destination` regex, `(?:(.+?)@)?(\w+)?((?:\+|-)\d+)`, applied with
/// `re.match` (anchored at the start only): `(label, symbol, signed count)`.
pub fn relative(s: &str) -> Option<(Option<&str>, Option<&str>, i64)> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let sym_rel = |t: &str| -> Option<(Option<usize>, usize, usize)> {
        let word: usize = t
            .chars()
            .take_while(|&c| is_word(c))
            .map(char::len_utf8)
            .sum();
        let mut ends: Vec<usize> = t[..word]
            .char_indices()
            .map(|(i, c)| i + c.len_utf8())
            .collect();
        ends.reverse();
        for end in ends.into_iter().map(Some).chain([None]) {
            let at = end.unwrap_or(0);
            let rest = &t[at..];
            if rest.starts_with(['+', '-']) {
                let digits = rest[1..].bytes().take_while(u8::is_ascii_digit).count();
                if digits > 0 {
                    return Some((end, at, 1 + digits));
                }
            }
        }
        None
    };
    let label_ends = s
        .char_indices()
        .filter(|&(i, c)| c == '@' && i >= 1)
        .map(|(i, _)| Some(i));
    for label_end in label_ends.chain([None]) {
        let start = label_end.map_or(0, |i| i + 1);
        let t = &s[start..];
        if let Some((sym_end, at, len)) = sym_rel(t) {
            let n: i64 = t[at..at + len].parse().ok()?;
            return Some((label_end.map(|i| &s[..i]), sym_end.map(|e| &t[..e]), n));
        }
    }
    None
}

fn ids(g: &Graph, nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(|&n| g.id(n).to_string()).collect()
}

impl Graph {
    /// A map key of Alembic's revision map: a full id or a declared branch label.
    fn key(&self, s: &str) -> Option<Node> {
        self.node(s).or_else(|| self.label(s))
    }

    /// `_resolve_revision_number`: the ids a symbol names, and its branch label.
    /// `None` stands for Python's `None` (base).
    pub(crate) fn resolve_number(
        &self,
        id: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), ResolveError> {
        let (label, id) = match id.and_then(|s| s.split_once('@')) {
            Some((l, rest)) => ((!l.is_empty()).then(|| l.to_string()), Some(rest)),
            None => (None, id),
        };
        match id {
            Some("heads") => match &label {
                Some(l) => {
                    let heads = self.filter_for_lineage(&self.heads(), l, false)?;
                    Ok((ids(self, &heads), label))
                }
                None => Ok((ids(self, &self.real_heads()), None)),
            },
            Some("head") => Ok((
                self.current_head(label.as_deref())?
                    .map(|h| self.id(h).to_string())
                    .into_iter()
                    .collect(),
                label,
            )),
            Some("base") | None => Ok((vec![], label)),
            Some(other) => Ok((vec![other.to_string()], label)),
        }
    }

    /// `get_current_head`: the one versioned head (of a branch), or MultipleHeads.
    pub fn current_head(&self, label: Option<&str>) -> Result<Option<Node>, ResolveError> {
        let mut heads = self.heads();
        if let Some(l) = label {
            heads = self.filter_for_lineage(&heads, l, false)?;
        }
        match heads.as_slice() {
            [] => Ok(None),
            [h] => Ok(Some(*h)),
            many => Err(ResolveError::MultipleHeads {
                heads: ids(self, many),
                argument: label.map_or("head".into(), |l| format!("{l}@head")),
            }),
        }
    }

    /// `get_revisions` of one symbol: revisions, or walk results for `label@-N` / `-N`
    /// (which may stand at `base`, or nowhere: `None`).
    pub fn get_revisions(&self, id: &str) -> Result<Vec<Option<At>>, ResolveError> {
        let (resolved, label) = self.resolve_number(Some(id))?;
        if let [one] = resolved.as_slice()
            && let Some(n) = python_int(one)
            && n < 0
        {
            let heads: Vec<Node> = self
                .real_heads()
                .into_iter()
                .filter(|&h| {
                    label
                        .as_ref()
                        .is_none_or(|l| self.branch_labels(h).contains(l))
                })
                .collect();
            return heads
                .into_iter()
                .map(|h| self.walk(Some(At::Rev(h)), n, None, true))
                .collect();
        }
        resolved
            .iter()
            .map(|r| {
                self.revision_for_ident(Some(r), label.as_deref())
                    .map(|o| o.map(At::Rev))
            })
            .collect()
    }

    /// `get_revisions` where every result must be a revision (Alembic's `is_revision`).
    pub fn get_nodes(&self, id: &str) -> Result<Vec<Node>, ResolveError> {
        self.get_revisions(id)?
            .into_iter()
            .map(|r| match r {
                Some(At::Rev(n)) => Ok(n),
                _ => Err(ResolveError::NoRevision(id.to_string())),
            })
            .collect()
    }

    /// `get_revision`: one revision (`None` for base), or MultipleHeads.
    pub fn get_revision(&self, id: &str) -> Result<Option<Node>, ResolveError> {
        let (resolved, label) = self.resolve_number(Some(id))?;
        if resolved.len() > 1 {
            return Err(ResolveError::MultipleHeads {
                heads: resolved,
                argument: id.to_string(),
            });
        }
        self.revision_for_ident(resolved.first().map(String::as_str), label.as_deref())
    }

    /// `_resolve_branch`: the revision a branch label (or revision id) names.
    pub(crate) fn resolve_branch(&self, label: &str) -> Result<Node, ResolveError> {
        if let Some(n) = self.key(label) {
            return Ok(n);
        }
        match self.revision_for_ident(Some(label), None) {
            Ok(Some(n)) => Ok(n),
            _ => Err(ResolveError::NoSuchBranch(label.to_string())),
        }
    }

    /// `_revision_for_ident`: an exact id or label, else a unique prefix of an id or label
    /// longer than three characters; `check_branch` must share lineage with the result.
    pub(crate) fn revision_for_ident(
        &self,
        id: Option<&str>,
        check_branch: Option<&str>,
    ) -> Result<Option<Node>, ResolveError> {
        let branch = check_branch.map(|b| self.resolve_branch(b)).transpose()?;
        let Some(id) = id else { return Ok(None) };
        let rev = match self.key(id) {
            Some(n) => n,
            None => {
                let mut keys: Vec<(String, Node)> = self
                    .revisions()
                    .map(|(n, r)| (r.id.to_string(), n))
                    .chain(self.labels().map(|(l, n)| (l.to_string(), n)))
                    .filter(|(k, _)| k.chars().count() > 3 && k.starts_with(id))
                    .collect();
                if let Some(b) = branch {
                    keys.retain(|&(_, n)| self.shares_lineage(n, &[b], false));
                }
                match keys.as_slice() {
                    [] => {
                        return Err(ResolveError::NotFound {
                            id: id.to_string(),
                            short: id.chars().count() < 4,
                        });
                    }
                    [(_, n)] => *n,
                    many => {
                        return Err(ResolveError::Ambiguous {
                            prefix: id.to_string(),
                            candidates: many.iter().take(3).map(|(k, _)| k.clone()).collect(),
                        });
                    }
                }
            }
        };
        if let (Some(b), Some(label)) = (branch, check_branch)
            && !self.shares_lineage(rev, &[b], false)
        {
            return Err(ResolveError::NotInBranch {
                id: self.id(rev).to_string(),
                label: label.to_string(),
            });
        }
        Ok(Some(rev))
    }

    /// `filter_for_lineage`: the targets on the same line of descent as `check_against`
    /// (a symbol: label, revision, `heads`, `label@head`...).
    pub fn filter_for_lineage(
        &self,
        targets: &[Node],
        check_against: &str,
        include_dependencies: bool,
    ) -> Result<Vec<Node>, ResolveError> {
        let (resolved, label) = self.resolve_number(Some(check_against))?;
        let shares: Vec<String> = label.into_iter().chain(resolved).collect();
        // Alembic resolves what to compare with per target: no target, nothing resolved.
        if shares.is_empty() || targets.is_empty() {
            return Ok(targets.to_vec());
        }
        let against = shares
            .iter()
            .map(|s| self.revision_for_ident(Some(s), None))
            .collect::<Result<Vec<_>, _>>()?;
        let against: Vec<Node> = against.into_iter().flatten().collect();
        Ok(targets
            .iter()
            .copied()
            .filter(|&t| self.shares_lineage(t, &against, include_dependencies))
            .collect())
    }

    /// `_shares_lineage`: is one of `against` an ancestor or descendant of `target` (or it)?
    pub(crate) fn shares_lineage(&self, target: Node, against: &[Node], deps: bool) -> bool {
        let line: BTreeSet<Node> = if deps {
            let mut s = self.descendants([target]);
            s.extend(self.ancestors([target]));
            s
        } else {
            let mut s = self.versioned_descendants([target]);
            s.extend(self.versioned_ancestors([target]));
            s
        };
        against.iter().any(|a| line.contains(a))
    }

    /// `_walk`: `steps` up (by down_revision children, from the bases when standing nowhere)
    /// or down (by down_revision, from the heads when standing nowhere, to `base` below a
    /// base). `None` when it runs out and `no_overwalk`; "Ambiguous walk" at a fork.
    pub fn walk(
        &self,
        start: Option<At>,
        steps: i64,
        branch_label: Option<&str>,
        no_overwalk: bool,
    ) -> Result<Option<At>, ResolveError> {
        let mut at = start;
        for _ in 0..steps.unsigned_abs() {
            let next: Vec<At> = if steps > 0 {
                let up = match at {
                    None => self.bases(),
                    Some(At::Rev(n)) => self.children(n).to_vec(),
                    Some(At::Base) => return Err(ResolveError::NoRevision("base".into())),
                };
                let up = match branch_label {
                    Some(l) => self.filter_for_lineage(&up, l, false)?,
                    None => up,
                };
                up.into_iter().map(At::Rev).collect()
            } else {
                let down = match at {
                    Some(At::Base) => vec![],
                    None => self.heads().into_iter().map(At::Rev).collect(),
                    Some(At::Rev(n)) => self.parents(n).iter().map(|&p| At::Rev(p)).collect(),
                };
                match (at, down.is_empty()) {
                    (Some(At::Base), _) | (_, false) => down,
                    (_, true) => vec![At::Base],
                }
            };
            match next.as_slice() {
                [] => return Ok(if no_overwalk { None } else { at }),
                [one] => at = Some(*one),
                _ => return Err(ResolveError::Revision("Ambiguous walk".into())),
            }
        }
        Ok(at)
    }

    /// `_get_all_current`: the rows and what they require, reduced to the revisions with no
    /// applied down_revision child: what `current` lists.
    pub fn all_current(&self, rows: &[Node]) -> Vec<Node> {
        let top = self.ancestors(rows.iter().copied());
        top.iter()
            .copied()
            .filter(|&r| {
                !self
                    .versioned_descendants([r])
                    .iter()
                    .any(|d| *d != r && top.contains(d))
            })
            .collect()
    }

    /// `_iterate_related_revisions(check=True)` over normalized down revisions: the targets'
    /// ancestors, refusing a target that another target's walk reaches ("overlaps").
    pub(crate) fn ancestors_checked(
        &self,
        targets: &[Node],
    ) -> Result<BTreeSet<Node>, ResolveError> {
        self.related_checked(targets, |n| self.normalized_down(n))
    }

    /// The same over down_revision children: the targets' versioned descendants.
    pub(crate) fn versioned_descendants_checked(
        &self,
        targets: &[Node],
    ) -> Result<BTreeSet<Node>, ResolveError> {
        self.related_checked(targets, |n| self.children(n))
    }

    fn related_checked<'a>(
        &'a self,
        targets: &[Node],
        next: impl Fn(Node) -> &'a [Node],
    ) -> Result<BTreeSet<Node>, ResolveError> {
        let mut seen = BTreeSet::new();
        for &target in targets {
            let mut per_target = BTreeSet::new();
            let mut todo = vec![target];
            while let Some(rev) = todo.pop() {
                per_target.insert(rev);
                if !seen.insert(rev) {
                    continue;
                }
                todo.extend(next(rev).iter().copied());
            }
            let others: Vec<String> = per_target
                .iter()
                .filter(|&&o| o != target && targets.contains(&o))
                .map(|&o| self.id(o).to_string())
                .collect();
            if !others.is_empty() {
                return Err(ResolveError::Overlap {
                    id: self.id(target).to_string(),
                    others,
                });
            }
        }
        Ok(seen)
    }
}
