//! OpenTelemetry export from a real `fleetmig serve` process to an in-process OTLP receiver:
//! the span tree of a job over 5 tenants, the caller's traceparent continued, errors with
//! their SQLSTATE, metrics, no secrets; and a blackholed collector that costs the job nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmig::grpc::proto;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::daemon_harness as dh;
use crate::harness;

#[derive(Clone, Default)]
pub struct Receiver {
    pub spans: Arc<Mutex<Vec<Span>>>,
    metric_names: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self.metric_names.lock().unwrap();
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                names.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A collector on its own thread and runtime: it keeps answering while a test blocks its own
/// thread (e.g. waiting for the daemon to exit, which is when the daemon flushes its last spans).
pub async fn start_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let r = receiver.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(r.clone()))
                .add_service(MetricsServiceServer::new(r))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    (receiver, format!("http://{addr}"))
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

const CANARY: &str = "Canary-Telemetry-9d4e1f";

async fn register_tenants(daemon: &dh::Process, hint: &str, n: usize, broken: Option<usize>) {
    let pg = harness::postgres().unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tenants = proto::tenants_client::TenantsClient::new(channel);
    for i in 0..n {
        let (url, db) = pg.database(&format!("{hint}{i}")).await;
        if Some(i) == broken {
            // 0002 creates memory_links: a table of that name already there makes it fail (42P07).
            fleetmig::pg::connect_str(&url)
                .await
                .unwrap()
                .batch_execute("CREATE TABLE memory_links (x int)")
                .await
                .unwrap();
        }
        let mut t = dh::tenant(&format!("{hint}-{i}"), "aletheia", &db, &[], &[]);
        t.connection.as_mut().unwrap().password = Some(proto::PasswordRef {
            source: Some(proto::password_ref::Source::Env("TENANT_PW".into())),
        });
        dh::register(&mut tenants, t).await;
    }
}

async fn upgrade_all(daemon: &dh::Process, traceparent: Option<&str>) -> proto::JobSummary {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut m = proto::migrations_client::MigrationsClient::new(channel);
    let mut request = tonic::Request::new(proto::MigrateRequest {
        app: "aletheia".into(),
        target: "head".into(),
        selector: Some(proto::Selector {
            all: true,
            ..Default::default()
        }),
        concurrency: 5,
        ..Default::default()
    });
    if let Some(tp) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
    }
    let events = dh::collect(m.upgrade(request).await.unwrap().into_inner()).await;
    dh::summary(&events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_exports_its_whole_span_tree() {
    let (Some(_), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (receiver, endpoint) = start_receiver().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("FLEETMIG_TELEMETRY__METRICS_INTERVAL", "500ms"),
        ("TENANT_PW", CANARY),
    ];
    let mut daemon = dh::Process::start(
        &etcd.endpoint,
        &etcd.prefix("otel"),
        &harness::repo_migrations(),
        &env,
    );
    register_tenants(&daemon, "otel", 5, Some(3)).await;
    let (trace_id, parent_id) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let summary = upgrade_all(&daemon, Some(&format!("00-{trace_id}-{parent_id}-01"))).await;
    assert_eq!((summary.done, summary.failed), (4, 1), "{summary:?}");
    assert!(daemon.terminate().success());
    let spans = receiver.spans.lock().unwrap().clone();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let by_id: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();
    let children = |parent: &Span| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| hex(&s.parent_span_id) == hex(&parent.span_id))
            .collect()
    };

    let rpc = spans
        .iter()
        .find(|s| s.name == "fleetmig.v1.Migrations/Upgrade")
        .expect("the RPC span");
    assert_eq!(
        hex(&rpc.trace_id),
        trace_id,
        "the caller's trace is continued"
    );
    assert_eq!(
        hex(&rpc.parent_span_id),
        parent_id,
        "the caller's span is the parent"
    );
    assert_eq!(attr(rpc, "rpc.system").as_deref(), Some("grpc"));
    let job = children(rpc)
        .into_iter()
        .find(|s| s.name.starts_with("upgrade aletheia"))
        .expect("the job span under the RPC span");
    let tenants = children(job);
    assert_eq!(
        tenants.len(),
        5,
        "{:?}",
        tenants.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for t in &tenants {
        assert_eq!(hex(&t.trace_id), trace_id);
        assert!(attr(t, "fleetmig.tenant.id").unwrap().starts_with("otel-"));
        assert_eq!(attr(t, "server.address").as_deref(), Some("127.0.0.1"));
        assert!(attr(t, "db.namespace").is_some());
        assert_eq!(attr(t, "fleetmig.revision.from").as_deref(), Some("base"));
        let kids = children(t);
        let lock = kids
            .iter()
            .find(|s| s.name.starts_with("lock "))
            .expect("a lock span");
        assert!(
            attr(lock, "fleetmig.fence_token")
                .unwrap()
                .parse::<i64>()
                .unwrap()
                > 0
        );
        assert!(attr(lock, "fleetmig.lock.wait_ms").is_some());
        let revisions: Vec<&&Span> = kids
            .iter()
            .filter(|s| s.name.starts_with("upgrade 000"))
            .collect();
        assert!(!revisions.is_empty());
        for r in &revisions {
            let statements = children(r);
            assert!(!statements.is_empty(), "{} has statement spans", r.name);
            for s in statements {
                assert_eq!(attr(s, "db.system.name").as_deref(), Some("postgresql"));
                assert_eq!(
                    attr(s, "db.operation.name").as_deref(),
                    Some(s.name.as_str())
                );
                assert!(
                    s.name.chars().all(|c| c.is_ascii_uppercase() || c == ' '),
                    "operation names only: {}",
                    s.name
                );
            }
        }
    }
    let failed = tenants
        .iter()
        .find(|t| attr(t, "fleetmig.outcome").as_deref() == Some("failed"))
        .expect("the failing tenant");
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );
    assert_eq!(
        attr(failed, "db.response.status_code").as_deref(),
        Some("42P07")
    );
    assert!(
        failed
            .events
            .iter()
            .any(|e| e.name.contains("tenant failed")),
        "{:?}",
        failed.events
    );
    let bad_revision = children(failed)
        .into_iter()
        .find(|s| s.name == "upgrade 0002")
        .expect("the failing revision's span");
    assert_eq!(bad_revision.status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(
        attr(bad_revision, "db.response.status_code").as_deref(),
        Some("42P07")
    );
    let ok = tenants
        .iter()
        .find(|t| attr(t, "fleetmig.outcome").as_deref() == Some("done"))
        .unwrap();
    assert_eq!(attr(ok, "fleetmig.revision.to").as_deref(), Some("0003"));
    assert!(
        by_id
            .values()
            .all(|s| !s.name.starts_with("h2") && !s.name.contains("hyper")),
        "transport spans are not exported"
    );
    // Nothing secret anywhere in spans or logs.
    let all = format!("{spans:?}");
    assert!(!all.contains(CANARY), "the password leaked into a span");
    assert!(!all.contains("postgres://"), "a DSN leaked into a span");
    let logs = daemon.logs();
    assert!(!logs.contains(CANARY), "the password leaked into the logs");
    assert!(
        logs.contains("trace_id=") && logs.contains(trace_id),
        "log lines carry trace ids"
    );
    let metrics = receiver.metric_names.lock().unwrap().clone();
    for m in [
        "fleetmig.tenants",
        "fleetmig.revision.duration",
        "fleetmig.lock.wait",
    ] {
        assert!(metrics.iter().any(|n| n == m), "{m} exported: {metrics:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_collector_costs_the_job_nothing() {
    let (Some(_), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    // A collector that accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((sock, _)) = hole.accept().await {
            held.push(sock);
        }
    });
    let mut times = vec![];
    for (hint, otel) in [("plain", None), ("blackhole", Some(endpoint.as_str()))] {
        let mut env = vec![
            ("TENANT_PW", CANARY),
            ("FLEETMIG_TELEMETRY__EXPORT_TIMEOUT", "1s"),
        ];
        if let Some(e) = otel {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", e));
            env.push(("OTEL_BSP_SCHEDULE_DELAY", "100"));
        }
        let mut daemon = dh::Process::start(
            &etcd.endpoint,
            &etcd.prefix(hint),
            &harness::repo_migrations(),
            &env,
        );
        register_tenants(&daemon, hint, 8, None).await;
        let summary = upgrade_all(&daemon, None).await;
        assert_eq!(summary.done, 8, "{hint}: {summary:?}");
        times.push(summary.wall_time_ms);
        let stopping = std::time::Instant::now();
        assert!(daemon.terminate().success());
        if otel.is_some() {
            assert!(
                daemon.logs().contains("spans were not exported"),
                "unexported spans are counted: {}",
                daemon.logs()
            );
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "{hint}: shutdown (with its bounded flush) took {:?}",
            stopping.elapsed()
        );
    }
    let (plain, blackhole) = (times[0], times[1]);
    eprintln!("job wall time: without telemetry {plain} ms, blackholed collector {blackhole} ms");
    assert!(
        blackhole <= plain * 2 + 1000,
        "a blackholed collector slowed the job: {blackhole} ms vs {plain} ms"
    );
}
