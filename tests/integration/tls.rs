//! TLS to tenant databases against a real TLS-only PostgreSQL (Debian's postgresql-15 with
//! `hostnossl ... reject`): the CLI and the daemon connect as libpq would for each `sslmode`,
//! refuse what they must with a message a person can act on, send client certificates, take
//! the libpq environment variables, and send cancel requests over TLS.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use fleetmig::grpc::proto::{self, migration_event::Event, tenant_event::Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon_harness as dh;
use crate::harness;
use crate::tls_services::{self, APP_PASSWORD, CERT_PASSWORD, TlsPostgres};

const LIBPQ_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
    "PGREQUIREAUTH",
    "PGCHANNELBINDING",
    "PGSSLNEGOTIATION",
];

/// An app without pgvector (Debian's PostgreSQL has none): a table, an index built
/// concurrently (non-transactional), and a revision that records whether its own session is
/// encrypted.
fn tls_app() -> (tempfile::TempDir, std::path::PathBuf) {
    harness::scratch_app(
        "tlsapp",
        "",
        &[
            (
                "t1.sql",
                "-- revision: t1\n-- down_revision:\n-- +upgrade\nCREATE TABLE notes (id bigint PRIMARY KEY, body text);\n-- +downgrade\nDROP TABLE notes;\n",
            ),
            (
                "t2.sql",
                "-- revision: t2\n-- down_revision: t1\n-- transaction: none\n-- +upgrade\nCREATE INDEX CONCURRENTLY IF NOT EXISTS notes_body ON notes (body);\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS notes_body;\n",
            ),
            (
                "t3.sql",
                "-- revision: t3\n-- down_revision: t2\n-- +upgrade\nCREATE TABLE seen_tls AS SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n-- +downgrade\nDROP TABLE seen_tls;\n",
            ),
        ],
    )
}

/// The CLI with exactly these variables of libpq's (and DATABASE_URL) set.
fn cli(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetmig"));
    cmd.current_dir(dir).args(args).env_remove("DATABASE_URL");
    for v in LIBPQ_VARS {
        cmd.env_remove(v);
    }
    // No ~/.postgresql or ~/.pgpass of the machine's user.
    cmd.env("HOME", dir);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn url(pg: &TlsPostgres, host: &str, db: &str, extra: &str) -> String {
    format!(
        "postgresql://app:{APP_PASSWORD}@{host}:{}/{db}?{extra}",
        pg.port
    )
}

#[tokio::test]
async fn the_cli_reaches_a_tls_only_server_as_libpq_does() {
    let Some(pg) = tls_services::tls_postgres() else {
        return;
    };
    let (tmp, root) = tls_app();
    let dir = tmp.path();
    let migrations = root.display().to_string();
    let ca = pg.pki.ca.display().to_string();
    let up = |vars: &[(&str, &str)]| {
        cli(
            dir,
            vars,
            &["--migrations-dir", &migrations, "upgrade", "head"],
        )
    };

    // verify-full with the right CA and the name in the server's certificate: migrated, and
    // the migration's own session was encrypted.
    let db = pg.database("full", "app");
    let full = url(
        pg,
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let out = up(&[("DATABASE_URL", &full)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pg.psql_in(&db, "SELECT ssl FROM seen_tls"), "t");
    assert_eq!(
        pg.psql_in(&db, "SELECT version_num FROM alembic_version"),
        "t3"
    );

    // disable: the server's own rejection, with what to change.
    let out = up(&[(
        "DATABASE_URL",
        &url(pg, "localhost", &db, "sslmode=disable"),
    )]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no encryption"), "{}", text(&out));
    assert!(text(&out).contains("use sslmode=require"), "{}", text(&out));

    // A CA that did not sign the server's certificate: untrusted.
    let foreign = pg.pki.foreign_ca.display().to_string();
    let out = up(&[(
        "DATABASE_URL",
        &url(
            pg,
            "localhost",
            &db,
            &format!("sslmode=verify-full&sslrootcert={foreign}"),
        ),
    )]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not trusted"), "{}", text(&out));

    // 127.0.0.1 is not in the certificate: refused under verify-full, fine under verify-ca.
    let out = up(&[(
        "DATABASE_URL",
        &url(
            pg,
            "127.0.0.1",
            &db,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    )]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("host name mismatch"), "{}", text(&out));
    let out = up(&[(
        "DATABASE_URL",
        &url(
            pg,
            "127.0.0.1",
            &db,
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
    )]);
    assert!(out.status.success(), "{}", text(&out));

    // prefer really tries TLS first (the server would have rejected plaintext anyway, and
    // the revision saw its session encrypted).
    let db2 = pg.database("prefer", "app");
    let out = up(&[(
        "DATABASE_URL",
        &url(pg, "localhost", &db2, "sslmode=prefer"),
    )]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pg.psql_in(&db2, "SELECT ssl FROM seen_tls"), "t");

    // The libpq environment, no DATABASE_URL at all; require_auth holds (the server uses SCRAM).
    let db3 = pg.database("env", "app");
    let port = pg.port.to_string();
    let env_vars = [
        ("PGHOST", "localhost"),
        ("PGPORT", port.as_str()),
        ("PGDATABASE", db3.as_str()),
        ("PGUSER", "app"),
        ("PGPASSWORD", APP_PASSWORD),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca.as_str()),
        ("PGREQUIREAUTH", "scram-sha-256"),
    ];
    let out = up(&env_vars);
    assert!(out.status.success(), "{}", text(&out));
    // ... and a key=value DATABASE_URL wins over the variables it names.
    let kv = format!("host=localhost dbname={db3} sslmode=verify-ca");
    let mut vars = env_vars.to_vec();
    vars.push(("DATABASE_URL", &kv));
    vars.push(("PGDATABASE", "no_such_database"));
    let out = cli(dir, &vars, &["--migrations-dir", &migrations, "current"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("t3"), "{}", text(&out));
    // A password required to be sent only by SCRAM is never sent in cleartext: here the
    // server asks for SCRAM, so require_auth=password refuses it before anything is sent.
    let out = cli(
        dir,
        &[(
            "DATABASE_URL",
            &url(
                pg,
                "localhost",
                &db3,
                &format!("sslmode=verify-full&sslrootcert={ca}&require_auth=password"),
            ),
        )],
        &["--migrations-dir", &migrations, "current"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("asked for scram-sha-256 authentication"),
        "{}",
        text(&out)
    );
    // A bad value names the keyword and where it came from.
    let out = cli(
        dir,
        &[("DATABASE_URL", &full), ("PGSSLMODE", "bogus")],
        &["--migrations-dir", &migrations, "current"],
    );
    assert!(
        out.status.success(),
        "the URL's sslmode wins: {}",
        text(&out)
    );
    let out = cli(
        dir,
        &[
            ("DATABASE_URL", &url(pg, "localhost", &db3, "")),
            ("PGSSLMODE", "verify_full"),
        ],
        &["--migrations-dir", &migrations, "current"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("sslmode (from PGSSLMODE)"),
        "{}",
        text(&out)
    );
    // Never the password in a message.
    assert!(!text(&out).contains(APP_PASSWORD));

    // A role whose pg_hba line wants a client certificate: refused without one, with what
    // to set; accepted with the right one, refused with one from another CA.
    let db4 = pg.database("cert", "certuser");
    let cert_url = |extra: &str| {
        format!(
            "postgresql://certuser:{CERT_PASSWORD}@localhost:{}/{db4}?sslmode=verify-full&sslrootcert={ca}{extra}",
            pg.port
        )
    };
    let out = up(&[("DATABASE_URL", &cert_url(""))]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("set sslcert and sslkey"),
        "{}",
        text(&out)
    );
    let c = &pg.pki.client;
    let out = up(&[(
        "DATABASE_URL",
        &cert_url(&format!(
            "&sslcert={}&sslkey={}",
            c.cert.display(),
            c.key.display()
        )),
    )]);
    assert!(out.status.success(), "{}", text(&out));
    let f = &pg.pki.foreign_client;
    let out = up(&[(
        "DATABASE_URL",
        &cert_url(&format!(
            "&sslcert={}&sslkey={}",
            f.cert.display(),
            f.key.display()
        )),
    )]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("refused the client certificate"),
        "{}",
        text(&out)
    );
}

/// Bytes from the client, as a proxy in front of the server saw them.
async fn recording_proxy(target: u16) -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", target))
                    .await
                    .unwrap();
                let mut first = vec![0u8; 8];
                if inbound.read_exact(&mut first).await.is_err() {
                    return;
                }
                record.lock().unwrap().push(first.clone());
                let _ = outbound.write_all(&first).await;
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (port, seen)
}

/// A cancel request reaches the server over TLS, as libpq sends it: the first bytes of the
/// cancel connection are an SSLRequest, never the cancel key in the clear.
#[tokio::test]
async fn cancel_requests_go_over_tls() {
    let Some(pg) = tls_services::tls_postgres() else {
        return;
    };
    let db = pg.database("cancel", "app");
    let (port, seen) = recording_proxy(pg.port).await;
    let target = fleetmig::pg::Target::new(
        &fleetmig::pg::ConnInfo::parse(&format!(
            "host=localhost port={port} dbname={db} user=app password={APP_PASSWORD} sslmode=verify-full sslrootcert={}",
            pg.pki.ca.display()
        ))
        .unwrap(),
        &fleetmig::pg::Defaults::none(),
    )
    .unwrap();
    let connected = target.connect().await.unwrap();
    assert!(connected.tls, "the session is encrypted");
    let (client, canceller) = connected.spawn(|_| {});
    let sleeping = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    canceller.cancel().await.unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), sleeping)
        .await
        .expect("the statement was cancelled well before 30 s")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "the session and the cancel request");
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    for first in seen.iter() {
        assert_eq!(
            first, &SSL_REQUEST,
            "each connection starts with an SSLRequest"
        );
    }
}

/// The daemon: a tenant registered with verify-full, a client certificate and a password
/// file is migrated; its password and its private key appear in no response, log or etcd.
#[tokio::test]
async fn the_daemon_migrates_a_tls_tenant_and_keeps_its_secrets() {
    let (Some(pg), Some(etcd)) = (tls_services::tls_postgres(), harness::etcd()) else {
        return;
    };
    let db = pg.database("daemon", "certuser");
    let secrets = tempfile::tempdir().unwrap();
    let pw_file = secrets.path().join("certuser.pw");
    std::fs::write(&pw_file, format!("{CERT_PASSWORD}\n")).unwrap();
    let key_file = secrets.path().join("client.key");
    std::fs::copy(&pg.pki.client.key, &key_file).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let key_pem = std::fs::read_to_string(&key_file).unwrap();
    let key_body: String = key_pem.lines().nth(1).unwrap().to_string();
    let (_tmp, root) = tls_app();
    let prefix = etcd.prefix("tlsdaemon");
    let dirs = format!("[\"{}\"]", secrets.path().display());
    let mut daemon = dh::Process::start(
        &etcd.endpoint,
        &prefix,
        &root,
        &[("FLEETMIG_SECRETS__PASSWORD_DIRS", dirs.as_str())],
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tenants = proto::tenants_client::TenantsClient::new(channel.clone());
    let mut m = proto::migrations_client::MigrationsClient::new(channel);
    let connection = proto::Connection {
        host: "localhost".into(),
        port: u32::from(pg.port),
        dbname: db.clone(),
        user: "certuser".into(),
        sslmode: "verify-full".into(),
        sslrootcert: pg.pki.ca.display().to_string(),
        sslcert: pg.pki.client.cert.display().to_string(),
        sslkey: key_file.display().to_string(),
        require_auth: "scram-sha-256".into(),
        password: Some(proto::PasswordRef {
            source: Some(proto::password_ref::Source::File(
                pw_file.display().to_string(),
            )),
        }),
        ..Default::default()
    };
    let mut seen = format!(
        "{:?}",
        tenants
            .register(proto::RegisterTenantRequest {
                tenant: Some(proto::Tenant {
                    id: "tls-1".into(),
                    app: "tlsapp".into(),
                    connection: Some(connection.clone()),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
    );
    // A second tenant whose CA is wrong fails with the reason, naming itself.
    let wrong = proto::Connection {
        sslrootcert: pg.pki.foreign_ca.display().to_string(),
        ..connection
    };
    tenants
        .register(proto::RegisterTenantRequest {
            tenant: Some(proto::Tenant {
                id: "tls-wrong-ca".into(),
                app: "tlsapp".into(),
                connection: Some(wrong),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let events = dh::collect(
        m.upgrade(dh::all("tlsapp", "", 0))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    seen += &format!("{events:?}");
    let s = dh::summary(&events);
    assert_eq!((s.done, s.failed), (1, 1), "{events:?}");
    let failure = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::Tenant(t)) if t.tenant_id == "tls-wrong-ca" => match &t.kind {
                Some(Kind::Failed(f)) => Some(f.message.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("the wrong CA tenant failed");
    assert!(failure.contains("not trusted"), "{failure}");
    assert_eq!(pg.psql_in(&db, "SELECT ssl FROM seen_tls"), "t");
    seen += &format!(
        "{:?}",
        tenants
            .get(proto::GetTenantRequest { id: "tls-1".into() })
            .await
            .unwrap()
    );
    let mut etcd_client = etcd.client().await;
    let dump = etcd_client
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    for kv in dump.kvs() {
        seen += &String::from_utf8_lossy(kv.value());
    }
    assert!(daemon.terminate().success());
    let logs = daemon.logs();
    assert!(
        seen.contains("client.key"),
        "the key is referenced by its path"
    );
    for secret in [CERT_PASSWORD, key_body.as_str()] {
        assert!(
            !seen.contains(secret),
            "a secret leaked into a response or etcd"
        );
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
}

/// `pools.insecure_connections = "refuse"` (the production default): a tenant that could
/// connect without TLS, or hand its password to an unverified server, is not registered.
#[tokio::test]
async fn insecure_tenant_connections_are_refused_by_policy() {
    let Some(etcd) = harness::etcd() else {
        return;
    };
    let mut config = dh::config(
        &etcd.endpoint,
        &etcd.prefix("insecure"),
        &harness::repo_migrations(),
    );
    config.pools.insecure_connections =
        Some(fleetmig::registry::pools::InsecureConnections::Refuse);
    let daemon = dh::start(config).await;
    let mut tenants = daemon.tenants().await;
    let register = |id: &str, c: proto::Connection| proto::RegisterTenantRequest {
        tenant: Some(proto::Tenant {
            id: id.into(),
            app: "aletheia".into(),
            connection: Some(proto::Connection {
                host: "db.internal".into(),
                dbname: "t".into(),
                user: "migrator".into(),
                ..c
            }),
            ..Default::default()
        }),
    };
    let password = Some(proto::PasswordRef {
        source: Some(proto::password_ref::Source::Env("TENANT_PW".into())),
    });
    for (id, c, why) in [
        (
            "plain",
            proto::Connection::default(),
            "may connect without TLS",
        ),
        (
            "unverified",
            proto::Connection {
                sslmode: "require".into(),
                password: password.clone(),
                ..Default::default()
            },
            "could go to it in cleartext",
        ),
    ] {
        let e = tenants.register(register(id, c)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().starts_with("tenant.connection.sslmode") && e.message().contains(why),
            "{}",
            e.message()
        );
    }
    for (id, c) in [
        (
            "verified",
            proto::Connection {
                sslmode: "verify-full".into(),
                sslrootcert: "system".into(),
                password: password.clone(),
                ..Default::default()
            },
        ),
        (
            "scram-only",
            proto::Connection {
                sslmode: "require".into(),
                require_auth: "scram-sha-256".into(),
                password,
                ..Default::default()
            },
        ),
    ] {
        tenants.register(register(id, c)).await.unwrap();
    }
    daemon.shutdown().await.unwrap();
}
