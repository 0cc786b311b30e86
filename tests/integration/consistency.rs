//! Small consistencies: error locations at the server's error position (`file:line:column`),
//! field names in every INVALID_ARGUMENT (Stamp's revision, ids that are given but malformed
//! are not "required"), map entries spelled one way.

use std::process::Command;

use fleetmig::grpc::proto;
use tonic::Code;

use crate::daemon_harness as dh;
use crate::harness;

/// The unknown type is at line 6, column 7; the unknown column of the second file at line 7,
/// column 27 (its second statement on that line).
const TX: &str = "-- revision: k1\n-- down_revision:\n-- +upgrade\nCREATE TABLE k (\n    id int,\n    v nosuchtype\n);\n-- +downgrade\nDROP TABLE k;\n";
const AUTOCOMMIT: &str = "-- revision: k2\n-- down_revision: k1\n-- transaction: none\n-- +upgrade\nCREATE TABLE j (id int);\nCREATE INDEX CONCURRENTLY ij\n    ON j (id); SELECT 1 + nosuchcolumn FROM j;\n-- +downgrade\nDROP TABLE j;\n";

fn upgrade(root: &std::path::Path, url: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .current_dir(root)
        .arg("--migrations-dir")
        .arg(root)
        // k2's concurrent build is not idempotent (the lint gate would refuse it): these
        // revisions are about where failures are located.
        .args(["upgrade", "head", "--allow-lint"])
        .env("DATABASE_URL", url)
        .env_remove("FLEETMIG_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn a_failure_is_located_at_the_servers_error_position() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (_tmp, root) = harness::scratch_app("loc", "", &[("k1.sql", TX)]);
    let (url, _) = pg.database("located").await;
    let (code, err) = upgrade(&root, &url);
    assert_eq!(code, Some(1), "{err}");
    let at = format!("at {}:6:7", root.join("loc/k1.sql").display());
    assert!(err.contains(&at), "{at} in {err}");
    // Statement by statement (transaction: none): the second statement of line 7.
    std::fs::write(root.join("loc/k1.sql"), TX.replace("v nosuchtype", "v int")).unwrap();
    std::fs::write(root.join("loc/k2.sql"), AUTOCOMMIT).unwrap();
    let (code, err) = upgrade(&root, &url);
    assert_eq!(code, Some(1), "{err}");
    let at = format!("at {}:7:27", root.join("loc/k2.sql").display());
    assert!(err.contains(&at), "{at} in {err}");
}

#[tokio::test]
async fn ids_revisions_and_map_entries_are_named_one_way() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (_tmp, root) = harness::scratch_app(
        "loc",
        "[placeholders.DIM]\ntype = \"int\"\ndefault = 3\n",
        &[("k1.sql", TX.replace("nosuchtype", "int").as_str())],
    );
    let (_, db) = pg.database("consistency").await;
    let daemon = dh::start(dh::config(
        &etcd.endpoint,
        &etcd.prefix("consistency"),
        &root,
    ))
    .await;
    let mut tenants = daemon.tenants().await;
    dh::register(&mut tenants, dh::tenant("k-0", "loc", &db, &[], &[])).await;
    let mut m = daemon.migrations().await;
    // Stamp with a well-formed revision the app does not have: the field is named.
    let e = m
        .stamp(proto::StampRequest {
            tenant_id: "k-0".into(),
            revision: "abc123".into(),
            purge: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("revision: "), "{e:?}");
    assert!(e.message().contains("abc123"), "{e:?}");
    // Given but malformed is not "required"; missing is.
    let e = m
        .cancel(proto::CancelRequest {
            job_id: "not-a-job!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("job_id: \"not-a-job!\" is not an id"),
        "{e:?}"
    );
    let e = m.cancel(proto::CancelRequest::default()).await.unwrap_err();
    assert!(e.message().starts_with("job_id: required"), "{e:?}");
    let mut r = proto::rollouts_client::RolloutsClient::new(daemon.channel().await);
    let e = r
        .get(proto::GetRolloutRequest { id: "x".repeat(65) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("id: ") && !e.message().contains("required"),
        "{e:?}"
    );
    let e = r
        .get(proto::GetRolloutRequest::default())
        .await
        .unwrap_err();
    assert!(e.message().starts_with("id: required"), "{e:?}");
    // Map entries: the key quoted, whatever was wrong with the entry.
    for (placeholders, labels, field) in [
        (
            vec![("DIM", "many")],
            vec![],
            "tenant.placeholders[\"DIM\"]",
        ),
        (vec![("NOPE", "1")], vec![], "tenant.placeholders[\"NOPE\"]"),
        (
            vec![("DIM", "9".repeat(2000).leak() as &str)],
            vec![],
            "tenant.placeholders[\"DIM\"]",
        ),
        (vec![], vec![("tier", "a b")], "tenant.labels[\"tier\"]"),
        (vec![], vec![("Tier", "a")], "tenant.labels[\"Tier\"]"),
    ] {
        let e = tenants
            .register(proto::RegisterTenantRequest {
                tenant: Some(dh::tenant("k-1", "loc", &db, &labels, &placeholders)),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{field}: {e:?}");
    }
    daemon.shutdown().await.unwrap();
}
