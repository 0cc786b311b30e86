//! Security of the control plane against real daemons, etcd and Postgres: the TLS/mTLS
//! matrix, the auth matrix over every RPC, audit records in etcd, etcd over TLS with
//! authentication, and the production profile.

use std::path::Path;
use std::time::{Duration, Instant};

use fleetmig::auth::{AuthConfig, AuthMode, JwtConfig};
use fleetmig::grpc::proto;
use fleetmig::transport::ServerTls;
use jsonwebtoken::{EncodingKey, Header};
use sha2::Digest;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::daemon_harness::{self as dh, InProcess};
use crate::harness;
use crate::pki::{Issued, Pair, Pki};

/// The static token file holds a read-only token ("viewer") and one with no scope ("nobody").
const VIEWER: &str = "viewer-token-0123456789";
const NOBODY: &str = "nobody-token-0123456789";

struct Secured {
    daemon: InProcess,
    issued: Issued,
    signer: EncodingKey,
    prefix: String,
    _pki: Pki,
}

fn token_line(subject: &str, scopes: &str, token: &str) -> String {
    format!(
        "[[token]]\nsubject = \"{subject}\"\nscopes = [{scopes}]\nsha256 = \"{}\"\n",
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    )
}

/// A daemon with TLS, mandatory client certificates, static tokens and JWTs (ES256).
async fn secured(hint: &str, tune: impl FnOnce(&mut fleetmig::config::Config)) -> Option<Secured> {
    let etcd = harness::etcd()?;
    harness::postgres()?;
    let (pki, issued) = Pki::issue();
    let d = pki.dir.path();
    let signing = rcgen::KeyPair::generate().unwrap();
    std::fs::write(d.join("jwt.pem"), signing.public_key_pem()).unwrap();
    std::fs::write(
        d.join("tokens.toml"),
        token_line("viewer", "\"read\"", VIEWER) + &token_line("nobody", "", NOBODY),
    )
    .unwrap();
    let prefix = etcd.prefix(hint);
    let mut c = dh::config(&etcd.endpoint, &prefix, &harness::repo_migrations());
    c.server.plaintext = false;
    c.server.tls = Some(ServerTls {
        cert: issued.server.cert.clone(),
        key: issued.server.key.clone(),
        client_ca: Some(issued.ca.clone()),
    });
    c.auth = AuthConfig {
        mode: AuthMode::Tokens,
        tokens_file: Some(d.join("tokens.toml")),
        jwt: Some(JwtConfig {
            public_key: d.join("jwt.pem"),
            algorithm: "ES256".into(),
            issuer: "https://idp.test/".into(),
            audience: "fleetmig".into(),
            scope_claim: "scope".into(),
        }),
        ..AuthConfig::default()
    };
    tune(&mut c);
    let daemon = dh::start(c).await;
    Some(Secured {
        daemon,
        signer: EncodingKey::from_ec_pem(signing.serialize_pem().as_bytes()).unwrap(),
        issued,
        prefix,
        _pki: pki,
    })
}

impl Secured {
    fn jwt(
        &self,
        subject: &str,
        scope: &str,
        tweak: impl FnOnce(&mut serde_json::Value),
    ) -> String {
        let mut claims = serde_json::json!({
            "sub": subject, "iss": "https://idp.test/", "aud": "fleetmig",
            "exp": chrono::Utc::now().timestamp() + 600, "scope": scope,
        });
        tweak(&mut claims);
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &self.signer,
        )
        .unwrap()
    }

    /// A TLS channel trusting `ca`, presenting `client` (when given).
    async fn channel(&self, ca: &Path, client: Option<&Pair>) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
            .domain_name("localhost");
        if let Some(p) = client {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&p.cert).unwrap(),
                std::fs::read(&p.key).unwrap(),
            ));
        }
        Channel::from_shared(format!("https://{}", self.daemon.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }

    async fn good_channel(&self) -> Channel {
        self.channel(&self.issued.ca, Some(&self.issued.client))
            .await
            .unwrap()
    }
}

fn with_token(
    token: Option<String>,
    request_id: Option<&'static str>,
) -> impl tonic::service::Interceptor + Clone {
    move |mut r: tonic::Request<()>| {
        if let Some(t) = &token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        if let Some(id) = request_id {
            r.metadata_mut().insert("x-request-id", id.parse().unwrap());
        }
        Ok(r)
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Every RPC, with an empty request: authorization is decided before the request is read.
const RPCS: [(&str, fleetmig::auth::Scope); 23] = {
    use fleetmig::auth::Scope::*;
    [
        ("Tenants/Get", Read),
        ("Tenants/List", Read),
        ("Tenants/Register", Write),
        ("Tenants/Update", Write),
        ("Tenants/Deregister", Admin),
        ("Migrations/Current", Read),
        ("Migrations/History", Read),
        ("Migrations/Heads", Read),
        ("Migrations/Plan", Read),
        ("Migrations/Verify", Read),
        ("Migrations/Upgrade", Write),
        ("Migrations/Downgrade", Write),
        ("Migrations/Cancel", Write),
        ("Migrations/Stamp", Admin),
        ("Migrations/Onboard", Admin),
        ("Rollouts/Start", Write),
        ("Rollouts/Get", Read),
        ("Rollouts/List", Read),
        ("Rollouts/Watch", Read),
        ("Rollouts/Pause", Write),
        ("Rollouts/Resume", Write),
        ("Rollouts/Cancel", Write),
        ("Rollouts/RetryFailed", Write),
    ]
};

async fn call(channel: Channel, token: Option<String>, rpc: &str) -> Code {
    use proto::migrations_client::MigrationsClient;
    use proto::tenants_client::TenantsClient;
    let mut t = TenantsClient::with_interceptor(channel.clone(), with_token(token.clone(), None));
    let mut m =
        MigrationsClient::with_interceptor(channel.clone(), with_token(token.clone(), None));
    let mut r =
        proto::rollouts_client::RolloutsClient::with_interceptor(channel, with_token(token, None));
    let id = || proto::RolloutControlRequest::default();
    match rpc {
        "Tenants/Get" => code(t.get(proto::GetTenantRequest::default()).await),
        "Tenants/List" => code(t.list(proto::ListTenantsRequest::default()).await),
        "Tenants/Register" => code(t.register(proto::RegisterTenantRequest::default()).await),
        "Tenants/Update" => code(t.update(proto::UpdateTenantRequest::default()).await),
        "Tenants/Deregister" => code(
            t.deregister(proto::DeregisterTenantRequest::default())
                .await,
        ),
        "Migrations/Current" => code(m.current(proto::CurrentRequest::default()).await),
        "Migrations/History" => code(m.history(proto::HistoryRequest::default()).await),
        "Migrations/Heads" => code(m.heads(proto::HeadsRequest::default()).await),
        "Migrations/Plan" => code(m.plan(proto::PlanRequest::default()).await),
        "Migrations/Verify" => code(m.verify(proto::VerifyRequest::default()).await),
        "Migrations/Upgrade" => code(m.upgrade(proto::MigrateRequest::default()).await),
        "Migrations/Downgrade" => code(m.downgrade(proto::MigrateRequest::default()).await),
        "Migrations/Cancel" => code(m.cancel(proto::CancelRequest::default()).await),
        "Migrations/Stamp" => code(m.stamp(proto::StampRequest::default()).await),
        "Migrations/Onboard" => code(m.onboard(proto::OnboardRequest::default()).await),
        "Rollouts/Start" => code(r.start(proto::StartRolloutRequest::default()).await),
        "Rollouts/Get" => code(r.get(proto::GetRolloutRequest::default()).await),
        "Rollouts/List" => code(r.list(proto::ListRolloutsRequest::default()).await),
        "Rollouts/Watch" => code(r.watch(proto::GetRolloutRequest::default()).await),
        "Rollouts/Pause" => code(r.pause(id()).await),
        "Rollouts/Resume" => code(r.resume(id()).await),
        "Rollouts/Cancel" => code(r.cancel(id()).await),
        "Rollouts/RetryFailed" => code(r.retry_failed(id()).await),
        other => panic!("no such rpc {other}"),
    }
}

fn below(scope: fleetmig::auth::Scope) -> &'static str {
    match scope {
        fleetmig::auth::Scope::Read => "",
        fleetmig::auth::Scope::Write => "read",
        fleetmig::auth::Scope::Admin => "write",
    }
}

#[tokio::test]
async fn auth_matrix_every_rpc_gets_the_expected_code_for_every_credential() {
    let Some(s) = secured("authmatrix", |_| {}).await else {
        return;
    };
    let channel = s.good_channel().await;
    let other_key = rcgen::KeyPair::generate().unwrap();
    let forger = EncodingKey::from_ec_pem(other_key.serialize_pem().as_bytes()).unwrap();
    let mut failures = vec![];
    for (rpc, scope) in RPCS {
        let forged = {
            let claims = serde_json::json!({"sub": "mallory", "iss": "https://idp.test/", "aud": "fleetmig", "exp": chrono::Utc::now().timestamp() + 600, "scope": "admin"});
            jsonwebtoken::encode(
                &Header::new(jsonwebtoken::Algorithm::ES256),
                &claims,
                &forger,
            )
            .unwrap()
        };
        // With an empty request, a call that passes authorization is refused by validation
        // (the Lists need no field).
        let served = if rpc == "Tenants/List" || rpc == "Rollouts/List" {
            Code::Ok
        } else {
            Code::InvalidArgument
        };
        let cases: Vec<(&str, Option<String>, Code)> = vec![
            ("no token", None, Code::Unauthenticated),
            ("bad signature", Some(forged), Code::Unauthenticated),
            (
                "expired",
                Some(s.jwt("ops", "admin", |c| {
                    c["exp"] = (chrono::Utc::now().timestamp() - 3600).into()
                })),
                Code::Unauthenticated,
            ),
            (
                "wrong audience",
                Some(s.jwt("ops", "admin", |c| c["aud"] = "another-service".into())),
                Code::Unauthenticated,
            ),
            (
                "under-scoped",
                Some(s.jwt("ops", below(scope), |_| {})),
                Code::PermissionDenied,
            ),
            ("valid", Some(s.jwt("ops", scope.as_str(), |_| {})), served),
        ];
        for (what, token, expected) in cases {
            let got = call(channel.clone(), token, rpc).await;
            if got != expected {
                failures.push(format!("{rpc} with {what}: {got:?}, expected {expected:?}"));
            }
        }
    }
    // Static tokens: the viewer may read, not write; a token with no scope may do nothing.
    for (token, rpc, expected) in [
        (VIEWER, "Tenants/List", Code::Ok),
        (VIEWER, "Migrations/Upgrade", Code::PermissionDenied),
        (NOBODY, "Tenants/List", Code::PermissionDenied),
        ("not-a-known-token", "Tenants/List", Code::Unauthenticated),
    ] {
        let got = call(channel.clone(), Some(token.into()), rpc).await;
        if got != expected {
            failures.push(format!(
                "static token on {rpc}: {got:?}, expected {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // A refused call is not served: a well-formed Register under a read token registers nothing.
    let mut viewer = proto::tenants_client::TenantsClient::with_interceptor(
        channel.clone(),
        with_token(Some(VIEWER.into()), None),
    );
    let t = dh::tenant("refused-1", "aletheia", "nowhere", &[], &[]);
    let e = viewer
        .register(proto::RegisterTenantRequest { tenant: Some(t) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("needs scope 'write'"),
        "{}",
        e.message()
    );
    let e = viewer
        .get(proto::GetTenantRequest {
            id: "refused-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A password reference makes the daemon send a secret to the tenant's host: admin only.
    let mut writer = proto::tenants_client::TenantsClient::with_interceptor(
        channel.clone(),
        with_token(Some(s.jwt("bot", "write", |_| {})), None),
    );
    let mut t = dh::tenant("pw-1", "aletheia", "nowhere", &[], &[]);
    t.connection.as_mut().unwrap().password = Some(proto::PasswordRef {
        source: Some(proto::password_ref::Source::Env("TENANT_X".into())),
    });
    let e = writer
        .register(proto::RegisterTenantRequest {
            tenant: Some(t.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("tenant.connection.password"),
        "{}",
        e.message()
    );
    t.connection.as_mut().unwrap().password = None;
    writer
        .register(proto::RegisterTenantRequest { tenant: Some(t) })
        .await
        .unwrap();

    // Health stays open (probes), reflection needs a token by default.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    assert!(
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
    );
    s.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn tls_matrix_rejects_bad_clients_and_serves_none_of_their_calls() {
    let health_port = harness::free_port();
    let Some(s) = secured("tlsmatrix", |c| {
        c.server.health_listen = Some(([127, 0, 0, 1], health_port).into())
    })
    .await
    else {
        return;
    };
    let admin = s.jwt("ops", "admin", |_| {});
    // Each attempt tries to register its own tenant; none may exist afterwards.
    let attempts: Vec<(&str, Result<Channel, String>)> = vec![
        ("no client certificate", s.channel(&s.issued.ca, None).await),
        (
            "client certificate from another CA",
            s.channel(&s.issued.ca, Some(&s.issued.foreign_client))
                .await,
        ),
        (
            "expired client certificate",
            s.channel(&s.issued.ca, Some(&s.issued.expired_client))
                .await,
        ),
        (
            "client that does not trust the server's CA",
            s.channel(&s.issued.foreign_ca, Some(&s.issued.client))
                .await,
        ),
        (
            "plaintext to the TLS port",
            Channel::from_shared(format!("http://{}", s.daemon.addr))
                .unwrap()
                .connect()
                .await
                .map_err(|e| format!("{e:?}")),
        ),
    ];
    for (i, (what, channel)) in attempts.into_iter().enumerate() {
        let Ok(channel) = channel else {
            continue; // refused at the handshake
        };
        let mut t = proto::tenants_client::TenantsClient::with_interceptor(
            channel,
            with_token(Some(admin.clone()), None),
        );
        let tenant = dh::tenant(&format!("tls-{i}"), "aletheia", "nowhere", &[], &[]);
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            t.register(proto::RegisterTenantRequest {
                tenant: Some(tenant),
            }),
        )
        .await
        .expect("a refused connection fails fast");
        let e = r.expect_err(what);
        assert!(
            matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Internal),
            "{what}: {e:?}"
        );
    }
    // The good client: mTLS + token works, and none of the attempts registered anything.
    let mut good = proto::tenants_client::TenantsClient::with_interceptor(
        s.good_channel().await,
        with_token(Some(admin), None),
    );
    let listed = good
        .list(proto::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tenants.is_empty(), "{:?}", listed.tenants);

    // The plaintext health port (for probes that cannot speak TLS) serves health and nothing else.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{health_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(plain.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let e = proto::tenants_client::TenantsClient::new(plain)
        .list(proto::ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    s.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn audit_records_name_caller_request_revision_checksum_and_fence_and_are_rotated() {
    let Some(s) = secured("audit", |c| c.audit.max_records = 2).await else {
        return;
    };
    let pg = harness::postgres().unwrap();
    let (url, db) = pg.database("audit").await;
    let channel = s.good_channel().await;
    let alice = s.jwt("ops-alice", "admin", |_| {});
    let mut t = proto::tenants_client::TenantsClient::with_interceptor(
        channel.clone(),
        with_token(Some(alice.clone()), Some("req-audit-1")),
    );
    let tenant = dh::tenant("audited-1", "aletheia", &db, &[], &[("EMBEDDING_DIM", "8")]);
    t.register(proto::RegisterTenantRequest {
        tenant: Some(tenant),
    })
    .await
    .unwrap();
    let mut m = proto::migrations_client::MigrationsClient::with_interceptor(
        channel.clone(),
        with_token(Some(alice.clone()), Some("req-audit-2")),
    );
    let events = dh::collect(
        m.upgrade(proto::MigrateRequest {
            app: "aletheia".into(),
            target: "head".into(),
            selector: Some(proto::Selector {
                tenant_ids: vec!["audited-1".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert_eq!(dh::summary(&events).done, 1, "{events:?}");

    let mut etcd = harness::etcd().unwrap().client().await;
    let app = fleetmig::revision::App::load(&harness::repo_migrations(), "aletheia").unwrap();
    let c = fleetmig::pg::connect_str(&url).await.unwrap();
    let history: Vec<(String, i64)> = c
        .query(
            "SELECT revision, fence_token FROM fleetmig_history WHERE direction = 'upgrade' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(history.len(), app.graph.len());
    // Records are written in the background: wait for all of them (the two calls', and the
    // tenant's run, naming its revisions).
    let expected = 3;
    let records = harness::audit_until(&mut etcd, &s.prefix, |r| r.len() >= expected).await;
    assert_eq!(records.len(), expected, "{records:#?}");
    let who = "ops-alice (jwt, certificate rollout-bot)";
    let register = records
        .iter()
        .find(|r| r.action == "Tenants/Register")
        .unwrap();
    assert_eq!(
        (register.who.as_str(), register.request_id.as_str()),
        (who, "req-audit-1")
    );
    assert_eq!(
        (register.tenant.as_deref(), register.outcome.as_str()),
        (Some("audited-1"), "ok")
    );
    let upgrade = records
        .iter()
        .find(|r| r.action == "Migrations/Upgrade")
        .unwrap();
    assert_eq!(
        (upgrade.request_id.as_str(), upgrade.outcome.as_str()),
        ("req-audit-2", "ok")
    );
    let accepted = events
        .iter()
        .find_map(|e| match &e.event {
            Some(proto::migration_event::Event::Accepted(a)) => Some(a.job_id.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(upgrade.job_id.as_deref(), Some(accepted.as_str()));
    let run = records
        .iter()
        .find(|r| r.action == "upgrade tenant")
        .unwrap_or_else(|| panic!("no record of the tenant's run: {records:#?}"));
    // An Upgrade is a rollout: its revisions are applied on behalf of the caller.
    assert_eq!(
        (run.who.as_str(), run.request_id.as_str()),
        (
            format!("rollout {accepted} started by {who}").as_str(),
            "req-audit-2"
        )
    );
    assert_eq!(run.tenant.as_deref(), Some("audited-1"));
    assert_eq!(run.outcome, "done");
    // Each revision, in the order applied, with the file's checksum, under the fence token of
    // its history row.
    let named: Vec<&str> = run.revisions.iter().map(|r| r.revision.as_str()).collect();
    let applied: Vec<&str> = history.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(named, applied, "{run:#?}");
    for ((revision, fence), r) in history.iter().zip(&run.revisions) {
        let file = app.graph.revision(app.graph.node(revision).unwrap());
        assert_eq!(r.checksum.as_deref(), Some(file.checksum.as_str()));
        assert_eq!(run.fence_token, Some(*fence));
        assert!(
            r.outcome == "applied" || r.outcome.starts_with("skipped"),
            "{r:?}"
        );
    }
    // Rotation: at shutdown the writer trims to the newest max_records (2).
    s.daemon.shutdown().await.unwrap();
    let kept = fleetmig::audit::read_all(&mut etcd, &s.prefix)
        .await
        .unwrap();
    assert_eq!(kept, records[records.len() - 2..].to_vec());
}

/// A Stamp's audit record names each revision stamped and the fence token, as its history
/// rows do; a tenant that fails before its first revision gets a record with the reason.
#[tokio::test]
async fn stamps_and_early_failures_are_audited() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let prefix = etcd.prefix("audit-stamp");
    let daemon = dh::start(dh::config(
        &etcd.endpoint,
        &prefix,
        &harness::repo_migrations(),
    ))
    .await;
    let (url, db) = pg.database("audit_stamp").await;
    let mut t = daemon.tenants().await;
    for tenant in [
        dh::tenant("stamped", "aletheia", &db, &[], &[]),
        dh::tenant("no-database", "aletheia", "no_such_database", &[], &[]),
    ] {
        dh::register(&mut t, tenant).await;
    }
    let mut m = daemon.migrations().await;
    m.stamp(proto::StampRequest {
        tenant_id: "stamped".into(),
        revision: "0002".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let events = dh::collect(
        m.upgrade(proto::MigrateRequest {
            app: "aletheia".into(),
            selector: Some(proto::Selector {
                tenant_ids: vec!["no-database".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert_eq!(dh::summary(&events).failed, 1, "{events:?}");
    let c = fleetmig::pg::connect_str(&url).await.unwrap();
    let (revision, fence): (String, i64) = {
        let r = c
            .query_one(
                "SELECT revision::text, fence_token FROM fleetmig_history WHERE direction = 'stamp'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(revision, "0002");
    let mut client = etcd.client().await;
    let find = |records: &[fleetmig::audit::AuditRecord], action: &str| {
        records.iter().find(|r| r.action == action).cloned()
    };
    let records = harness::audit_until(&mut client, &prefix, |r| {
        find(r, "stamp revision").is_some() && find(r, "upgrade tenant").is_some()
    })
    .await;
    let (Some(stamp), Some(early)) = (
        find(&records, "stamp revision"),
        find(&records, "upgrade tenant"),
    ) else {
        panic!("{records:#?}")
    };
    assert_eq!(stamp.tenant.as_deref(), Some("stamped"));
    assert_eq!(stamp.revision.as_deref(), Some("0002"));
    assert_eq!(stamp.fence_token, Some(fence));
    assert!(stamp.checksum.is_some());
    assert_eq!(early.tenant.as_deref(), Some("no-database"));
    assert!(
        early.outcome.starts_with("failed before any revision")
            && early.outcome.contains("does not exist"),
        "{early:?}"
    );
    daemon.shutdown().await.unwrap();
}

/// Audit records ride on the next lock acquire instead of a request of their own: with two
/// tenants upgraded one after the other, the first one's run record is written in the same
/// etcd revision as the second one's lock (its fence token). All records still arrive.
#[tokio::test]
async fn audit_records_ride_on_the_next_lock_acquire() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let prefix = etcd.prefix("audit-ride");
    let daemon = dh::start(dh::config(
        &etcd.endpoint,
        &prefix,
        &harness::repo_migrations(),
    ))
    .await;
    let (url1, db1) = pg.database("audit_ride_1").await;
    let (url2, db2) = pg.database("audit_ride_2").await;
    let mut t = daemon.tenants().await;
    for tenant in [
        dh::tenant("ride-1", "aletheia", &db1, &[], &[("EMBEDDING_DIM", "8")]),
        dh::tenant("ride-2", "aletheia", &db2, &[], &[("EMBEDDING_DIM", "8")]),
    ] {
        dh::register(&mut t, tenant).await;
    }
    let mut m = daemon.migrations().await;
    let events = dh::collect(
        m.upgrade(dh::all("aletheia", "head", 1))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(dh::summary(&events).done, 2, "{events:?}");
    let fence_of = |url: String| async move {
        let c = fleetmig::pg::connect_str(&url).await.unwrap();
        let r = c
            .query_one("SELECT min(fence_token) FROM fleetmig_history", &[])
            .await
            .unwrap();
        r.get::<_, i64>(0)
    };
    let (f1, f2) = (fence_of(url1).await, fence_of(url2).await);
    let (first, second) = if f1 < f2 { (f1, f2) } else { (f2, f1) };
    let first_tenant = if f1 < f2 { "ride-1" } else { "ride-2" };
    let mut client = etcd.client().await;
    // The registers, the Upgrade, and each tenant's run.
    let expected = 2 + 1 + 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    let kvs = loop {
        let kvs = harness::audit_kvs(&mut client, &prefix).await;
        if kvs.len() >= expected || Instant::now() > deadline {
            break kvs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let records: Vec<(fleetmig::audit::AuditRecord, i64)> = kvs
        .iter()
        .map(|kv| {
            (
                serde_json::from_slice(kv.value()).unwrap(),
                kv.mod_revision(),
            )
        })
        .collect();
    assert_eq!(records.len(), expected, "{records:#?}");
    // The first tenant's records were queued while it ran; the second tenant's lock, taken
    // right after, carried them.
    let carried: Vec<_> = records
        .iter()
        .filter(|(r, rev)| r.tenant.as_deref() == Some(first_tenant) && *rev == second)
        .collect();
    assert!(
        !carried.is_empty(),
        "no record of {first_tenant} written with the lock at revision {second} (first lock at {first}): {records:#?}"
    );
    daemon.shutdown().await.unwrap();
}

/// A tenant's run is one audit record however many revisions it applies: 40 revisions, one
/// transaction each, the last failing; the record names the 39 applied and the failure (with
/// its SQLSTATE), in order, each with its file's checksum.
#[tokio::test]
async fn a_long_run_is_one_audit_record_naming_each_revision_and_the_failure() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let files: Vec<(String, String)> = (1..=40)
        .map(|i| {
            let down = if i == 1 { String::new() } else { format!("l{}", i - 1) };
            let up = if i == 40 { "SELECT 1 / 0;".to_string() } else { format!("CREATE TABLE t{i} (id int);") };
            (
                format!("l{i}.sql"),
                format!("-- revision: l{i}\n-- down_revision: {down}\n-- +upgrade\n{up}\n-- +downgrade\nDROP TABLE IF EXISTS t{i};\n"),
            )
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_tmp, root) = harness::scratch_app("longrun", "transaction_per_revision = true\n", &files);
    let prefix = etcd.prefix("audit-long");
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let (_, db) = pg.database("audit_long").await;
    dh::register(
        &mut daemon.tenants().await,
        dh::tenant("long-1", "longrun", &db, &[], &[]),
    )
    .await;
    let events = dh::collect(
        daemon
            .migrations()
            .await
            .upgrade(dh::all("longrun", "head", 1))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(dh::summary(&events).failed, 1, "{events:?}");
    let app = fleetmig::revision::App::load(&root, "longrun").unwrap();
    let mut client = etcd.client().await;
    let records = harness::audit_until(&mut client, &prefix, |records| {
        records.iter().any(|r| r.action == "upgrade tenant")
    })
    .await;
    // The Register, the Upgrade, the run: nothing per revision.
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["Tenants/Register", "Migrations/Upgrade", "upgrade tenant"],
        "{records:#?}"
    );
    let run = &records[2];
    assert_eq!(run.tenant.as_deref(), Some("long-1"));
    assert_eq!(run.revision.as_deref(), Some("l40"));
    assert!(run.outcome.starts_with("failed: SQLSTATE 22012"), "{run:?}");
    assert_eq!(run.revisions.len(), 40);
    for (i, r) in run.revisions.iter().enumerate() {
        assert_eq!(r.revision, format!("l{}", i + 1));
        let file = app.graph.revision(app.graph.node(&r.revision).unwrap());
        assert_eq!(r.checksum.as_deref(), Some(file.checksum.as_str()));
        let expected = if i < 39 {
            "applied"
        } else {
            "failed: SQLSTATE 22012"
        };
        assert!(r.outcome.starts_with(expected), "{r:?}");
    }
    daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn etcd_over_tls_with_a_client_certificate_and_a_user() {
    let Some(_) = harness::etcd() else { return };
    let (pki, issued) = Pki::issue();
    let Some(endpoint) = harness::etcd_tls(&issued.server.cert, &issued.server.key, &issued.ca)
    else {
        return;
    };
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(
            std::fs::read(&issued.ca).unwrap(),
        ))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(&issued.client.cert).unwrap(),
            std::fs::read(&issued.client.key).unwrap(),
        ));
    // Turn on etcd authentication: a root user with a password.
    let mut admin = etcd_client::Client::connect(
        [&endpoint],
        Some(etcd_client::ConnectOptions::new().with_tls(tls.clone())),
    )
    .await
    .unwrap();
    admin.user_add("root", "etcd-root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let base = |c: &mut fleetmig::config::Config| {
        c.etcd.ca_cert = Some(issued.ca.clone());
        c.etcd.cert = Some(issued.client.cert.clone());
        c.etcd.key = Some(issued.client.key.clone());
        c.etcd.user = Some("root".into());
        c.etcd.password_file = Some(pki.dir.path().join("etcd-password"));
    };
    std::fs::write(pki.dir.path().join("etcd-password"), "etcd-root-pw\n").unwrap();
    let mut c = dh::config(&endpoint, "/fleetmig-tls/", &harness::repo_migrations());
    base(&mut c);
    let daemon = dh::start(c).await;
    let mut t = daemon.tenants().await;
    let tenant = dh::tenant("over-tls", "aletheia", "nowhere", &[], &[]);
    dh::register(&mut t, tenant).await;
    daemon.shutdown().await.unwrap();

    // With a wrong password, or without TLS, the daemon does not start.
    std::fs::write(pki.dir.path().join("wrong-password"), "not-the-password").unwrap();
    let mut c = dh::config(&endpoint, "/fleetmig-tls/", &harness::repo_migrations());
    base(&mut c);
    c.etcd.password_file = Some(pki.dir.path().join("wrong-password"));
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        fleetmig::app::serve_until(c, std::future::pending(), |_| {}),
    )
    .await
    .expect("refused at once")
    .unwrap_err();
    assert!(format!("{e:#}").contains("authentication failed"), "{e:#}");
    let mut c = dh::config(
        &endpoint.replace("https://", "http://"),
        "/fleetmig-tls/",
        &harness::repo_migrations(),
    );
    c.etcd.connect_timeout = Duration::from_secs(2);
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        fleetmig::app::serve_until(c, std::future::pending(), |_| {}),
    )
    .await
    .expect("gives up within the connect timeout");
    assert!(r.is_err());
}

#[test]
fn the_production_profile_refuses_insecure_settings_naming_the_key() {
    use fleetmig::transport::{Profile, check_profile};
    let mut c = fleetmig::config::Config {
        profile: Profile::Production,
        ..Default::default()
    };
    c.server.tls = Some(ServerTls {
        cert: "/x.crt".into(),
        key: "/x.key".into(),
        client_ca: None,
    });
    c.etcd.endpoints = vec!["https://etcd:2379".into()];
    c.etcd.user = Some("fleetmig".into());
    c.pools.privileged_roles = fleetmig::registry::pools::PrivilegedRoles::Refuse;
    check_profile(&c).unwrap();
    let refused = |tweak: &dyn Fn(&mut fleetmig::config::Config), key: &str| {
        let mut bad = c.clone();
        tweak(&mut bad);
        let e = check_profile(&bad).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("production"), "{key}: {e}");
    };
    refused(&|c| c.server.plaintext = true, "server.plaintext");
    refused(&|c| c.server.tls = None, "server.plaintext");
    refused(&|c| c.auth.mode = AuthMode::None, "auth.mode");
    refused(
        &|c| c.etcd.endpoints.push("http://etcd-2:2379".into()),
        "etcd.endpoints",
    );
    refused(&|c| c.etcd.user = None, "etcd.user");
    refused(
        &|c| c.pools.privileged_roles = fleetmig::registry::pools::PrivilegedRoles::Warn,
        "pools.privileged_roles",
    );
    refused(
        &|c| {
            c.pools.insecure_connections =
                Some(fleetmig::registry::pools::InsecureConnections::Allow)
        },
        "pools.insecure_connections",
    );
    // Development: the same insecure settings start (with warnings).
    let mut dev = c.clone();
    dev.profile = Profile::Development;
    dev.server.plaintext = true;
    dev.auth.mode = AuthMode::None;
    check_profile(&dev).unwrap();
}

// The CLI runs as a blocking child process: the in-process daemon needs its own threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_client_passes_certificates_and_tokens() {
    let Some(s) = secured("clitls", |_| {}).await else {
        return;
    };
    let d = s._pki.dir.path();
    std::fs::write(d.join("viewer.token"), format!("{VIEWER}\n")).unwrap();
    let server = format!("https://127.0.0.1:{}", s.daemon.addr.port());
    let run = |args: &[&str], token: bool, client_cert: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmig"));
        cmd.args(args)
            .args(["--server", &server, "--ca-cert"])
            .arg(&s.issued.ca)
            .current_dir(d)
            .env_remove("FLEETMIG_SERVER");
        if client_cert {
            cmd.arg("--client-cert")
                .arg(&s.issued.client.cert)
                .arg("--client-key")
                .arg(&s.issued.client.key);
        }
        if token {
            cmd.env("FLEETMIG_TOKEN_FILE", d.join("viewer.token"));
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&["tenants", "ls", "-o", "json"], true, true);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["tenants", "ls"], false, true);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("Unauthenticated") && out.contains("--token-file"),
        "{out}"
    );
    let (code, out) = run(&["fleet", "upgrade", "--app", "aletheia"], true, true);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("PermissionDenied") && out.contains("needs scope 'write'"),
        "{out}"
    );
    let (code, out) = run(&["tenants", "ls"], true, false);
    assert_eq!(code, Some(1), "{out}");
    // A token never goes over plaintext to a non-loopback address.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .args(["tenants", "ls", "--server", "http://fleetmig.example:50051"])
        .env("FLEETMIG_TOKEN_FILE", d.join("viewer.token"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only sent over TLS"));
    s.daemon.shutdown().await.unwrap();
}
