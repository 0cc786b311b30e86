//! The process's open-file limit (RLIMIT_NOFILE): raised from its soft to its hard value at
//! start, since every connection, client or server, costs a descriptor, and the budget the
//! connection caps must fit in.

use std::io;

/// The open-file limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

fn get() -> io::Result<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Raise the soft limit to the hard one (no privilege needed for that).
pub fn raise() -> io::Result<NoFile> {
    let r = get()?;
    let before = r.rlim_cur as u64;
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let now = get()?;
    Ok(NoFile {
        before,
        soft: now.rlim_cur as u64,
        hard: now.rlim_max as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let n = raise().unwrap();
        assert_eq!(n.soft, n.hard);
        assert!(n.before <= n.soft);
    }
}
