//! libpq's password file (`~/.pgpass`, `PGPASSFILE`, the `passfile` keyword):
//! `host:port:database:user:password` lines, `*` matching anything, `\` escaping.

use std::path::Path;

use super::socket::Addr;

/// The password for a connection to `addr`, if the file has a matching line. As libpq, a
/// file others can read is ignored (with a warning), and `localhost` matches a Unix socket.
pub fn lookup_for(file: &Path, addr: &Addr, db: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).ok()?;
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(file = %file.display(), "password file has group or world access; permissions should be u=rw (0600) or less: ignored");
        return None;
    }
    let host = match addr {
        Addr::Tcp { host, .. } => host.as_str(),
        Addr::Unix { .. } => "localhost",
    };
    lookup(file, host, addr.port(), db, user)
}

/// The first line of `file` matching `host:port:db:user`.
pub fn lookup(file: &Path, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let port = port.to_string();
    for line in text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
    {
        let mut fields = Vec::with_capacity(5);
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() == 5
            && [host, port.as_str(), db, user]
                .iter()
                .zip(&fields)
                .all(|(want, f)| f == "*" || f == want)
        {
            return Some(fields.pop().unwrap());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_follows_libpq_rules() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            "# comment\ndb1:5432:other:app:nope\ndb1:*:t42:app:s3cr\\:et\n*:*:*:*:fallback\n",
        )
        .unwrap();
        assert_eq!(
            lookup(f.path(), "db1", 5433, "t42", "app").as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            lookup(f.path(), "db2", 5432, "x", "y").as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn a_readable_passfile_is_ignored_and_localhost_matches_sockets() {
        use std::os::unix::fs::PermissionsExt;
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "localhost:5432:*:*:pw\n").unwrap();
        let sock = Addr::Unix {
            dir: "/tmp".into(),
            port: 5432,
        };
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup_for(f.path(), &sock, "d", "u").as_deref(), Some("pw"));
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup_for(f.path(), &sock, "d", "u"), None);
    }
}
