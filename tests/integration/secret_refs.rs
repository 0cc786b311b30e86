//! A password typed into a reference field (`password.env`, `password.file`, an onboarding
//! `admin_password`, etcd's `password_env` / `password_file`) never comes back: not in the
//! INVALID_ARGUMENT message (which names the field and the expected shape), not in the audit
//! records in etcd, not in the logs.

use std::process::Command;
use std::time::Duration;

use fleetmig::grpc::proto::{self, password_ref::Source};
use tonic::Code;

use crate::daemon_harness::{self as dh, Process};
use crate::harness;

const CANARY: &str = "Canary-d41c9e-pAssw0rd";
/// Shaped like a variable name, but outside `secrets.env_prefixes`.
const NAME_CANARY: &str = "CANARY_D41C9E_PASSW0RD";

fn reference(source: Source) -> Option<proto::PasswordRef> {
    Some(proto::PasswordRef {
        source: Some(source),
    })
}

#[tokio::test]
async fn a_password_typed_into_a_reference_field_is_never_echoed() {
    let (Some(_pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let prefix = etcd.prefix("echo");
    let (_tmp, root) = harness::scratch_app(
        "plain",
        "",
        &[(
            "p1.sql",
            "-- revision: p1\n-- down_revision:\n-- +upgrade\nSELECT 1;\n-- +downgrade\nSELECT 1;\n",
        )],
    );
    let mut daemon = Process::start(&etcd.endpoint, &prefix, &root, &[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tenants = proto::tenants_client::TenantsClient::new(channel.clone());
    let mut migrations = proto::migrations_client::MigrationsClient::new(channel);
    let typed = [
        (Source::Env(CANARY.into()), "password.env"),
        (Source::Env(NAME_CANARY.into()), "password.env"),
        (Source::File(CANARY.into()), "password.file"),
        (Source::File(format!("/etc/{CANARY}")), "password.file"),
        (
            Source::File(format!("/run/secrets/../{CANARY}")),
            "password.file",
        ),
    ];
    let mut seen = String::new();
    for (source, field) in &typed {
        let mut t = dh::tenant("echo-1", "plain", "postgres", &[], &[]);
        t.connection.as_mut().unwrap().password = reference(source.clone());
        let e = tenants
            .register(proto::RegisterTenantRequest {
                tenant: Some(t.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let field = format!("tenant.connection.{field}");
        assert!(e.message().starts_with(&field), "{field}: {e:?}");
        seen += &format!("{e:?}");
        // The same through Update of a registered tenant, and Onboard's admin_password.
        let e = migrations
            .onboard(proto::OnboardRequest {
                request_id: "echo-onboard".into(),
                tenant: Some(dh::tenant("echo-2", "plain", "echo_db", &[], &[])),
                admin_user: "postgres".into(),
                admin_password: reference(source.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("admin_password."), "{e:?}");
        seen += &format!("{e:?}");
        let mut plain = t.clone();
        plain.connection.as_mut().unwrap().password = None;
        let _ = tenants
            .register(proto::RegisterTenantRequest {
                tenant: Some(plain),
            })
            .await;
        let e = tenants
            .update(proto::UpdateTenantRequest {
                tenant: Some(t),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        seen += &format!("{e:?}");
    }
    assert!(
        seen.contains("not the password itself"),
        "the messages say what was expected: {seen}"
    );
    // Audit records are written in the background, batched: wait until they have landed.
    let mut client = etcd.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dump = loop {
        let dump = client
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let refusals = dump
            .kvs()
            .iter()
            .filter(|kv| {
                String::from_utf8_lossy(kv.key()).contains("/audit/")
                    && String::from_utf8_lossy(kv.value()).contains("InvalidArgument")
            })
            .count();
        if refusals >= typed.len() * 3 || std::time::Instant::now() > deadline {
            break dump;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut audit = 0;
    for kv in dump.kvs() {
        let (k, v) = (
            String::from_utf8_lossy(kv.key()),
            String::from_utf8_lossy(kv.value()),
        );
        audit += usize::from(k.contains("/audit/") && v.contains("InvalidArgument"));
        seen += &k;
        seen += &v;
    }
    assert!(
        audit >= typed.len() * 3,
        "the refusals were audited: {seen}"
    );
    assert!(daemon.terminate().success());
    let logs = daemon.logs();
    for canary in [CANARY, NAME_CANARY] {
        assert!(
            !seen.contains(canary),
            "{canary} came back in a reply or etcd: {seen}"
        );
        assert!(!logs.contains(canary), "{canary} is in the logs: {logs}");
    }
}

#[tokio::test]
async fn a_password_typed_into_etcds_reference_keys_is_never_echoed() {
    let Some(etcd) = harness::etcd() else {
        return;
    };
    let (_tmp, root) = harness::scratch_app(
        "plain",
        "",
        &[(
            "p1.sql",
            "-- revision: p1\n-- down_revision:\n-- +upgrade\nSELECT 1;\n-- +downgrade\nSELECT 1;\n",
        )],
    );
    for (key, value) in [
        ("FLEETMIG_ETCD__PASSWORD_ENV", CANARY.to_string()),
        (
            "FLEETMIG_ETCD__PASSWORD_FILE",
            format!("/nonexistent/{CANARY}"),
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetmig"))
            .args(["serve", "--listen", "127.0.0.1:0", "--etcd", &etcd.endpoint])
            .arg("--migrations-dir")
            .arg(&root)
            .env("FLEETMIG_SERVER__PLAINTEXT", "true")
            .env("FLEETMIG_AUTH__MODE", "none")
            .env("FLEETMIG_ETCD__USER", "fleetmig")
            .env(key, &value)
            .env_remove("FLEETMIG_CONFIG")
            .current_dir(&root)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{key}: {all}");
        let field = key.trim_start_matches("FLEETMIG_ETCD__").to_lowercase();
        assert!(all.contains(&format!("etcd.{field}")), "{all}");
        assert!(!all.contains(CANARY), "{key}: the value came back: {all}");
    }
}
