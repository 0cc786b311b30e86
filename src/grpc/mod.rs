//! The gRPC API: tonic services that validate, convert into model types, make one call into
//! the fleet, and convert back. Errors become `Status` in one place ([`status`]). Never
//! touches etcd or SQL directly.

pub mod convert;
pub mod guard;
pub mod migrations;
pub mod rollouts;
pub mod status;
pub mod tenants;

/// Generated protobuf and gRPC code for `fleetmig.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fleetmig.v1");
}

/// The file descriptor set served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fleetmig_descriptor.bin"));

/// RFC 3339 for protobuf timestamps in JSON output.
pub fn serialize_timestamp<S: serde::Serializer>(
    t: &Option<prost_types::Timestamp>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
    {
        Some(dt) => s.serialize_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => s.serialize_none(),
    }
}

/// Records a mutating call in the audit log (who, request id, tenant named in the request,
/// outcome), then passes its result on.
pub fn audited<T>(
    fleet: &crate::fleet::Fleet,
    caller: &crate::auth::Caller,
    rpc: &str,
    tenant: Option<String>,
    result: Result<T, tonic::Status>,
) -> Result<T, tonic::Status> {
    audited_job(fleet, caller, rpc, tenant, None, result)
}

/// [`audited`], naming the job the call started or stopped.
pub fn audited_job<T>(
    fleet: &crate::fleet::Fleet,
    caller: &crate::auth::Caller,
    rpc: &str,
    tenant: Option<String>,
    job_id: Option<String>,
    result: Result<T, tonic::Status>,
) -> Result<T, tonic::Status> {
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    let mut record = crate::audit::AuditRecord::new(caller, rpc, outcome);
    record.job_id = job_id;
    // As the client sent it (validation may have refused it): bounded, never interpreted.
    record.tenant = tenant
        .filter(|t| !t.is_empty())
        .map(|t| t.chars().take(128).collect());
    fleet.audit().record(record);
    result
}
