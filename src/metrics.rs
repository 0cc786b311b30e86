//! The daemon's metrics. Instruments come from the global meter: exported over OTLP when
//! telemetry is on, no-ops otherwise. Attributes are low-cardinality (app, outcome,
//! direction): never tenant ids, databases or anything secret.

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use opentelemetry::{KeyValue, global};

pub struct Metrics {
    /// Tenants finished, by app and outcome (done, up_to_date, failed, skipped, interrupted).
    pub tenants: Counter<u64>,
    /// Seconds per applied revision, by app, direction and outcome.
    pub revision_duration: Histogram<f64>,
    /// Seconds waiting for a database lock, by app.
    pub lock_wait: Histogram<f64>,
    /// Tenants being migrated now.
    pub tenants_in_flight: UpDownCounter<i64>,
    /// Jobs running now.
    pub jobs_running: UpDownCounter<i64>,
    /// Failed etcd keep-alive rounds.
    pub keepalive_failures: Counter<u64>,
    /// etcd requests sent again after a transient error.
    pub etcd_retries: Counter<u64>,
    /// Leases lost (the daemon stopped every tenant and took a new lease).
    pub leases_lost: Counter<u64>,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = global::meter("fleetmig");
        Metrics {
            tenants: m
                .u64_counter("fleetmig.tenants")
                .with_description("Tenants finished, by outcome")
                .build(),
            revision_duration: m
                .f64_histogram("fleetmig.revision.duration")
                .with_unit("s")
                .with_description("Time to apply one revision")
                .build(),
            lock_wait: m
                .f64_histogram("fleetmig.lock.wait")
                .with_unit("s")
                .with_description("Time waiting for a database lock")
                .build(),
            tenants_in_flight: m
                .i64_up_down_counter("fleetmig.tenants.in_flight")
                .with_description("Tenants being migrated")
                .build(),
            jobs_running: m
                .i64_up_down_counter("fleetmig.jobs.running")
                .with_description("Jobs running")
                .build(),
            keepalive_failures: m
                .u64_counter("fleetmig.lease.keepalive_failures")
                .with_description("Failed etcd keep-alive rounds")
                .build(),
            etcd_retries: m
                .u64_counter("fleetmig.etcd.retries")
                .with_description("etcd requests retried after a transient error")
                .build(),
            leases_lost: m
                .u64_counter("fleetmig.lease.lost")
                .with_description("etcd leases lost")
                .build(),
        }
    })
}

pub fn attrs(pairs: &[(&'static str, &str)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.to_string()))
        .collect()
}
