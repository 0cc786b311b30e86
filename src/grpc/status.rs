//! The one mapping from errors to gRPC status codes. Exhaustive: a new error variant must be
//! given its code here. Messages name the field and say what to do; they never carry secrets.

use tonic::{Code, Status};

use crate::engine::EngineError;
use crate::fleet::FleetError;
use crate::lint::LintError;
use crate::lock::LockError;
use crate::registry::{FieldError, RegistryError};
use crate::revision::graph::ResolveError;
use crate::revision::plan::PlanError;

pub fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn plan_code(e: &PlanError) -> Code {
    match e {
        PlanError::Resolve(ResolveError::MultipleHeads { .. }) => Code::FailedPrecondition,
        PlanError::Resolve(
            ResolveError::NotFound { .. }
            | ResolveError::NoSuchBranch(_)
            | ResolveError::Ambiguous { .. }
            | ResolveError::NotInBranch { .. },
        )
        | PlanError::BadRange(_) => Code::InvalidArgument,
        // Depends on the tenant's rows: a walk past base, a fork, overlapping rows.
        PlanError::Resolve(
            ResolveError::Overlap { .. } | ResolveError::Revision(_) | ResolveError::NoRevision(_),
        )
        | PlanError::UnknownInDatabase(_)
        | PlanError::OverlappingRows { .. }
        | PlanError::NotValidTarget { .. }
        | PlanError::NotAncestor { .. }
        | PlanError::AmbiguousFromHeads { .. }
        | PlanError::Rows(_)
        | PlanError::Irreversible { .. } => Code::FailedPrecondition,
    }
}

fn engine_code(e: &EngineError) -> Code {
    match e {
        EngineError::Connect(_) | EngineError::Database { .. } => Code::Unavailable,
        EngineError::Plan(p) => plan_code(p),
        EngineError::Render(_)
        | EngineError::ChecksumMismatch(_)
        | EngineError::Setting { .. }
        | EngineError::NeedsSession { .. } => Code::FailedPrecondition,
        EngineError::StepFailed { .. } | EngineError::StateChanged(_) => Code::Aborted,
        EngineError::LockHeld
        | EngineError::StaleFence { .. }
        | EngineError::Stopped { .. }
        | EngineError::LeaseExpired => Code::Aborted,
        // The app's scratch prelude does not run: the app needs fixing.
        EngineError::Prelude { .. } => Code::FailedPrecondition,
        EngineError::Scratch { source, .. } => engine_code(source),
    }
}

fn lint_code(e: &LintError) -> Code {
    match e {
        // The revision files decide: fix or justify them, then try again.
        LintError::Refused(_) => Code::FailedPrecondition,
        // Checked when the app is loaded; reaching a request means the app needs fixing.
        LintError::Config { .. } | LintError::Values { .. } => Code::FailedPrecondition,
    }
}

fn lock_code(e: &LockError) -> Code {
    match e {
        LockError::Timeout { .. } | LockError::Busy { .. } => Code::Aborted,
        LockError::SessionLost | LockError::Unavailable(_) => Code::Unavailable,
    }
}

fn registry_code(e: &RegistryError) -> Code {
    match e {
        RegistryError::NotFound(_) => Code::NotFound,
        RegistryError::AlreadyExists(_) => Code::AlreadyExists,
        RegistryError::Conflict(_) => Code::Aborted,
        RegistryError::Unavailable(_) => Code::Unavailable,
        RegistryError::Corrupt { .. } => Code::DataLoss,
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        Status::new(registry_code(&e), e.to_string())
    }
}

impl From<FleetError> for Status {
    fn from(e: FleetError) -> Status {
        let code = match &e {
            FleetError::UnknownApp { .. }
            | FleetError::Selector(_)
            | FleetError::WrongApp { .. } => Code::InvalidArgument,
            FleetError::Target(p) | FleetError::StampRevision(p) => plan_code(p),
            FleetError::Registry(r) => registry_code(r),
            FleetError::UnknownJob(_) => Code::NotFound,
            FleetError::ShuttingDown => Code::Unavailable,
            FleetError::Placeholders { .. } => Code::FailedPrecondition,
            FleetError::Engine { source, .. } => engine_code(source),
            FleetError::Connect { .. } => Code::Unavailable,
            FleetError::Lock { source, .. } => lock_code(source),
            FleetError::Lint(l) => lint_code(l),
        };
        if code == Code::Unavailable || code == Code::DataLoss {
            tracing::warn!(error = %e, "request failed");
        }
        Status::new(code, e.to_string())
    }
}
