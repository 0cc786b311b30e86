//! Compiles proto/ with protox (no protoc needed for our own protos) and writes the file
//! descriptor set that gRPC server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/fleetmig/v1/tenants.proto",
        "proto/fleetmig/v1/migrations.proto",
        "proto/fleetmig/v1/rollouts.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fleetmig_descriptor.bin"), fds.encode_to_vec())?;
    // Serialize (not Deserialize) for the CLI's `--output json`; timestamps as RFC 3339.
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .type_attribute(".fleetmig.v1", "#[derive(serde::Serialize)]")
        .type_attribute(".fleetmig.v1", "#[serde(rename_all = \"snake_case\")]")
        .field_attribute(
            "fleetmig.v1.UpdateTenantRequest.update_mask",
            "#[serde(skip)]",
        );
    for field in [
        "fleetmig.v1.Tenant.created_at",
        "fleetmig.v1.Tenant.updated_at",
        "fleetmig.v1.MigrationEvent.at",
        "fleetmig.v1.HistoryEntry.applied_at",
        "fleetmig.v1.Rollout.created_at",
        "fleetmig.v1.Rollout.updated_at",
        "fleetmig.v1.RolloutTenant.started_at",
        "fleetmig.v1.RolloutTenant.finished_at",
    ] {
        builder = builder.field_attribute(
            field,
            "#[serde(serialize_with = \"crate::grpc::serialize_timestamp\")]",
        );
    }
    builder.compile_fds(fds)?;
    Ok(())
}
