//! Conversions between protobuf messages and model types. Validation happens here, on the
//! way in, with errors that name the request field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::proto;
use crate::fleet::{self, JobEvent, Selector, TenantEvent};
use crate::model::Direction;
use crate::registry::tenant::{ChannelBinding, ConnectionOptions, Endpoint, SslNegotiation};
use crate::registry::tenant::{field_error, map_entry, shown, validate_labels};
use crate::registry::{ConnectionSpec, FieldError, PasswordRef, SslMode, Tenant, TenantId};
use crate::revision::App;

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub fn app_name(field: &str, app: &str) -> Result<String, FieldError> {
    if app.is_empty() {
        return Err(field_error(
            field,
            "required: the app (migration graph) name",
        ));
    }
    if !crate::revision::is_valid_app_name(app) {
        return Err(field_error(
            field,
            format!("{} is not an app name", shown(app)),
        ));
    }
    Ok(app.to_string())
}

pub fn connection(c: Option<proto::Connection>, at: &str) -> Result<ConnectionSpec, FieldError> {
    let c = c.ok_or_else(|| field_error(at, "required: host, port, dbname, user"))?;
    let port = match c.port {
        0 => 5432,
        p if p <= u32::from(u16::MAX) => p as u16,
        _ => return Err(field_error(format!("{at}.port"), "must be 1-65535")),
    };
    let sslmode = match c.sslmode.as_str() {
        "" => SslMode::Prefer,
        m => SslMode::parse(m).ok_or_else(|| {
            field_error(
                format!("{at}.sslmode"),
                format!(
                    "{} is not an sslmode ({})",
                    shown(m),
                    crate::pg::target::SSLMODES
                ),
            )
        })?,
    };
    let choice = |field: &str, value: &str, options: &str| {
        field_error(
            format!("{at}.{field}"),
            format!("{} is not one of {options}", shown(value)),
        )
    };
    let sslnegotiation = match c.sslnegotiation.as_str() {
        "" | "postgres" => SslNegotiation::Postgres,
        "direct" => SslNegotiation::Direct,
        other => return Err(choice("sslnegotiation", other, "postgres, direct")),
    };
    let channel_binding = match c.channel_binding.as_str() {
        "" | "prefer" => ChannelBinding::Prefer,
        "disable" => ChannelBinding::Disable,
        "require" => ChannelBinding::Require,
        other => return Err(choice("channel_binding", other, "disable, prefer, require")),
    };
    let pooler = crate::pg::Pooler::parse(&c.pooler)
        .ok_or_else(|| choice("pooler", &c.pooler, "none, session, transaction"))?;
    let session_port = match c.session_port {
        0 => 5432,
        p if p <= u32::from(u16::MAX) => p as u16,
        _ => return Err(field_error(format!("{at}.session_port"), "must be 1-65535")),
    };
    let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let options = ConnectionOptions {
        sslrootcert: match c.sslrootcert.as_str() {
            "" => None,
            "system" => Some(crate::pg::tls::RootCert::System),
            p => Some(crate::pg::tls::RootCert::File(p.into())),
        },
        sslcert: path(&c.sslcert),
        sslkey: path(&c.sslkey),
        sslnegotiation,
        channel_binding,
        require_auth: (!c.require_auth.is_empty()).then_some(c.require_auth),
        pooler,
        session: (!c.session_host.is_empty()).then_some(Endpoint {
            host: c.session_host,
            port: session_port,
        }),
    };
    let password = match c.password.and_then(|p| p.source) {
        None => None,
        Some(proto::password_ref::Source::Env(v)) => Some(PasswordRef::Env(v)),
        Some(proto::password_ref::Source::File(f)) => Some(PasswordRef::File(PathBuf::from(f))),
        Some(proto::password_ref::Source::Passfile(true)) => Some(PasswordRef::Passfile),
        Some(proto::password_ref::Source::Passfile(false)) => None,
    };
    let spec = ConnectionSpec {
        host: c.host,
        port,
        dbname: c.dbname,
        user: c.user,
        sslmode,
        schema: (!c.schema.is_empty()).then_some(c.schema),
        password,
        options,
    };
    spec.validate(at)?;
    Ok(spec)
}

/// Placeholder values must be declared by the app and parse as their declared type.
pub fn placeholders(
    app: &App,
    values: std::collections::HashMap<String, String>,
    at: &str,
) -> Result<BTreeMap<String, String>, FieldError> {
    let values: BTreeMap<String, String> = values.into_iter().collect();
    if let Some(long) = values.iter().find(|(k, v)| k.len() > 63 || v.len() > 1024) {
        return Err(field_error(
            map_entry(at, long.0),
            "names are at most 63 characters, values at most 1024",
        ));
    }
    app.declarations.resolve(&|_| None, &values).map_err(|e| {
        use crate::revision::placeholder::PlaceholderError as P;
        let name = match &e {
            P::IllTyped { name, .. }
            | P::Undeclared { name, .. }
            | P::Unresolved { name }
            | P::NotBool { name, .. } => name.clone(),
            P::Unterminated | P::BadName(_) => String::new(),
        };
        field_error(map_entry(at, &name), e.to_string())
    })?;
    Ok(values)
}

pub fn labels(
    values: std::collections::HashMap<String, String>,
    at: &str,
) -> Result<BTreeMap<String, String>, FieldError> {
    let labels: BTreeMap<String, String> = values.into_iter().collect();
    validate_labels(at, &labels)?;
    Ok(labels)
}

/// A job or rollout id (they are the same kind): 1-64 letters and digits. `what` says where
/// the caller got it from.
pub fn job_id(field: &str, id: &str, what: &str) -> Result<String, FieldError> {
    if id.is_empty() {
        return Err(field_error(field, format!("required: {what}")));
    }
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(field_error(
            field,
            format!(
                "{} is not an id: ids are 1-64 letters and digits ({what})",
                shown(id)
            ),
        ));
    }
    Ok(id.to_string())
}

pub fn tenant_id(field: &str, id: &str) -> Result<TenantId, FieldError> {
    if id.is_empty() {
        return Err(field_error(field, "required"));
    }
    TenantId::parse(field, id)
}

pub fn tenant_to_proto(t: &Tenant) -> proto::Tenant {
    let c = &t.connection;
    proto::Tenant {
        id: t.id.to_string(),
        app: t.app.clone(),
        connection: Some(proto::Connection {
            host: c.host.clone(),
            port: u32::from(c.port),
            dbname: c.dbname.clone(),
            user: c.user.clone(),
            sslmode: c.sslmode.as_str().to_string(),
            schema: c.schema.clone().unwrap_or_default(),
            sslrootcert: c
                .options
                .sslrootcert
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default(),
            sslcert: c
                .options
                .sslcert
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            sslkey: c
                .options
                .sslkey
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            sslnegotiation: match c.options.sslnegotiation {
                SslNegotiation::Postgres => "",
                SslNegotiation::Direct => "direct",
            }
            .into(),
            channel_binding: match c.options.channel_binding {
                ChannelBinding::Prefer => "",
                ChannelBinding::Disable => "disable",
                ChannelBinding::Require => "require",
            }
            .into(),
            require_auth: c.options.require_auth.clone().unwrap_or_default(),
            pooler: match c.options.pooler {
                crate::pg::Pooler::None => String::new(),
                p => p.as_str().to_string(),
            },
            session_host: c
                .options
                .session
                .as_ref()
                .map(|e| e.host.clone())
                .unwrap_or_default(),
            session_port: c.options.session.as_ref().map_or(0, |e| u32::from(e.port)),
            password: c.password.as_ref().map(|p| proto::PasswordRef {
                source: Some(match p {
                    PasswordRef::Env(v) => proto::password_ref::Source::Env(v.clone()),
                    PasswordRef::File(f) => {
                        proto::password_ref::Source::File(f.display().to_string())
                    }
                    PasswordRef::Passfile => proto::password_ref::Source::Passfile(true),
                }),
            }),
        }),
        labels: t.labels.clone().into_iter().collect(),
        placeholders: t.placeholders.clone().into_iter().collect(),
        created_at: Some(timestamp(t.created_at)),
        updated_at: Some(timestamp(t.updated_at)),
    }
}

/// Exactly one of tenant_ids, labels, all.
pub fn selector(s: Option<proto::Selector>) -> Result<Selector, FieldError> {
    let s = s.ok_or_else(|| field_error("selector", "required: tenant_ids, labels, or all"))?;
    let given = usize::from(!s.tenant_ids.is_empty())
        + usize::from(!s.labels.is_empty())
        + usize::from(s.all);
    if given != 1 {
        return Err(field_error(
            "selector",
            "set exactly one of tenant_ids, labels, all",
        ));
    }
    if s.all {
        return Ok(Selector::All);
    }
    if !s.labels.is_empty() {
        return Ok(Selector::Labels(labels(s.labels, "selector.labels")?));
    }
    if s.tenant_ids.len() > 100_000 {
        return Err(field_error(
            "selector.tenant_ids",
            "at most 100000 ids; use labels or all",
        ));
    }
    s.tenant_ids
        .iter()
        .enumerate()
        .map(|(i, id)| tenant_id(&format!("selector.tenant_ids[{i}]"), id))
        .collect::<Result<_, _>>()
        .map(Selector::Ids)
}

/// A selector that may be left out: every tenant of the app.
pub fn selector_or_all(s: Option<proto::Selector>) -> Result<Selector, FieldError> {
    match s {
        None => Ok(Selector::All),
        some => selector(some),
    }
}

pub fn target(field: &str, t: &str, direction: Direction) -> Result<String, FieldError> {
    let t = t.trim();
    if t.is_empty() {
        return match direction {
            Direction::Upgrade => Ok("head".into()),
            Direction::Downgrade => Err(field_error(
                field,
                "required for a downgrade: -N, a revision, or base",
            )),
        };
    }
    let ok = t.len() <= 80
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+' | b'@'));
    if !ok {
        return Err(field_error(
            field,
            format!(
                "{} is not a target (head, heads, base, a revision, label@head, +N, -N)",
                shown(t)
            ),
        ));
    }
    Ok(t.to_string())
}

/// A request's blocker policy (`field` is its name in the request); unset: `None`.
pub fn blocker_policy(
    field: &str,
    p: Option<proto::BlockerPolicy>,
) -> Result<Option<crate::model::BlockerPolicy>, FieldError> {
    let Some(p) = p else { return Ok(None) };
    let action = match p.action.as_str() {
        "" => crate::model::BlockerAction::Report,
        a => crate::model::BlockerAction::parse(a).ok_or_else(|| {
            field_error(
                format!("{field}.action"),
                format!("{} is not one of report, cancel, terminate", shown(a)),
            )
        })?,
    };
    let secs = |s: u32| (s > 0).then(|| Duration::from_secs(u64::from(s)));
    let policy = crate::model::BlockerPolicy {
        action,
        idle_in_transaction_after: secs(p.idle_in_transaction_seconds),
        older_than: secs(p.older_than_seconds),
    };
    policy.validate().map_err(|m| field_error(field, m))?;
    Ok(Some(policy))
}

pub fn blocker_policy_to_proto(p: &crate::model::BlockerPolicy) -> proto::BlockerPolicy {
    proto::BlockerPolicy {
        action: p.action.as_str().into(),
        idle_in_transaction_seconds: p
            .idle_in_transaction_after
            .map_or(0, |d| d.as_secs() as u32),
        older_than_seconds: p.older_than.map_or(0, |d| d.as_secs() as u32),
    }
}

/// A blocker as the API shows it.
pub fn blocker_to_proto(b: &crate::engine::blockers::Blocker) -> proto::Blocker {
    proto::Blocker {
        pid: b.pid,
        application_name: b.application_name.clone(),
        user: b.user.clone(),
        client_addr: b.client_addr.clone(),
        state: b.state.clone(),
        transaction_age_ms: b.transaction_age.map_or(0, ms),
        state_age_ms: b.state_age.map_or(0, ms),
        wait_event: b.wait_event.clone(),
        query: b.query.clone(),
        holds: b.holds.clone(),
        wants: b.wants.clone(),
        action: b.action.clone(),
        summary: b.summary(),
    }
}

pub fn direction(field: &str, d: &str) -> Result<Direction, FieldError> {
    match d {
        "" | "upgrade" => Ok(Direction::Upgrade),
        "downgrade" => Ok(Direction::Downgrade),
        other => Err(field_error(
            field,
            format!("{} is not a direction (upgrade, downgrade)", shown(other)),
        )),
    }
}

fn tenant_event(e: TenantEvent) -> proto::tenant_event::Kind {
    use proto::tenant_event::Kind;
    match e {
        TenantEvent::Queued => Kind::Queued(proto::Queued {}),
        TenantEvent::WaitingForLock { database_key } => {
            Kind::WaitingForLock(proto::WaitingForLock { database_key })
        }
        TenantEvent::Locked { fence_token, wait } => Kind::Locked(proto::Locked {
            fence_token,
            wait_ms: ms(wait),
        }),
        TenantEvent::RevisionStarted {
            revision,
            direction,
        } => Kind::RevisionStarted(proto::RevisionStarted {
            revision,
            direction: direction.to_string(),
        }),
        TenantEvent::RevisionApplied {
            revision,
            direction,
            duration,
            skipped_by_condition,
            attempts,
        } => Kind::RevisionApplied(proto::RevisionApplied {
            revision,
            direction: direction.to_string(),
            duration_ms: ms(duration),
            skipped_by_condition: skipped_by_condition.unwrap_or_default(),
            attempts,
        }),
        TenantEvent::LockRetry {
            revision,
            attempt,
            delay,
            message,
            blockers,
        } => Kind::LockRetry(proto::LockRetry {
            revision,
            attempt,
            delay_ms: ms(delay),
            message,
            blockers: blockers.iter().map(blocker_to_proto).collect(),
        }),
        TenantEvent::Reconnected { attempt, reason } => {
            Kind::Reconnected(proto::Reconnected { attempt, reason })
        }
        TenantEvent::UpToDate { revisions } => Kind::UpToDate(proto::UpToDate { revisions }),
        TenantEvent::Done {
            revisions,
            applied,
            duration,
        } => Kind::Done(proto::Done {
            revisions,
            applied,
            duration_ms: ms(duration),
        }),
        TenantEvent::Failed(f) => Kind::Failed(proto::Failed {
            revision: f.revision,
            sqlstate: f.sqlstate,
            message: f.message,
            location: f.location,
            applied: f.applied,
        }),
        TenantEvent::Skipped { reason } => Kind::Skipped(proto::Skipped { reason }),
        TenantEvent::Busy { holder } => Kind::Busy(proto::Busy { holder }),
        TenantEvent::Interrupted { reason, applied } => {
            Kind::Interrupted(proto::Interrupted { reason, applied })
        }
        TenantEvent::Planned { revisions, sql } => Kind::Planned(proto::Planned { revisions, sql }),
    }
}

pub fn job_event(e: JobEvent) -> proto::MigrationEvent {
    use proto::migration_event::Event;
    let event = match e {
        JobEvent::Accepted {
            job_id,
            app,
            target,
            direction,
            tenant_ids,
            dry_run,
        } => Event::Accepted(proto::JobAccepted {
            job_id,
            app,
            target,
            direction: direction.to_string(),
            tenant_ids,
            dry_run,
        }),
        JobEvent::Tenant { tenant_id, event } => Event::Tenant(proto::TenantEvent {
            tenant_id,
            kind: Some(tenant_event(event)),
        }),
        JobEvent::Summary(s) => Event::Summary(summary(s)),
    };
    proto::MigrationEvent {
        at: Some(timestamp(Utc::now())),
        event: Some(event),
    }
}

fn summary(s: fleet::Summary) -> proto::JobSummary {
    proto::JobSummary {
        job_id: s.job_id,
        tenants: s.tenants,
        done: s.done,
        up_to_date: s.up_to_date,
        failed: s.failed,
        skipped: s.skipped,
        interrupted: s.interrupted,
        planned: s.planned,
        wall_time_ms: ms(s.wall_time),
        cancelled: s.cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocker_policy_is_checked_and_named_by_field() {
        assert_eq!(blocker_policy("blockers", None), Ok(None));
        let p = |action: &str, idle: u32, older: u32| proto::BlockerPolicy {
            action: action.into(),
            idle_in_transaction_seconds: idle,
            older_than_seconds: older,
        };
        let ok = blocker_policy("blockers", Some(p("terminate", 30, 0)))
            .unwrap()
            .unwrap();
        assert_eq!(ok.idle_in_transaction_after, Some(Duration::from_secs(30)));
        assert_eq!(blocker_policy_to_proto(&ok), p("terminate", 30, 0));
        let e = blocker_policy("blockers", Some(p("kill", 1, 0))).unwrap_err();
        assert_eq!(e.field, "blockers.action");
        let e = blocker_policy("blockers", Some(p("cancel", 30, 0))).unwrap_err();
        assert_eq!(e.field, "blockers");
        assert!(e.message.contains("use action = \"terminate\""), "{e:?}");
        let e = blocker_policy("blockers", Some(p("terminate", 0, 0))).unwrap_err();
        assert!(
            e.message
                .contains("needs idle_in_transaction_after or older_than"),
            "{e:?}"
        );
    }
}
