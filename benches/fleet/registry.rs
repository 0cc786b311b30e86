//! Registry scale: register many tenants through the daemon, then List with a label filter
//! (page 500) and Get, and the daemon's resident set with them all registered.

use std::sync::Arc;
use std::time::Instant;

use fleetmig::grpc::proto;
use tonic::transport::Channel;

use crate::measure::rss_mb;
use crate::report::{RegistryScale, Stat};

pub async fn scale(channel: &Channel, n: usize, pid: u32) -> RegistryScale {
    let mut client = proto::tenants_client::TenantsClient::new(channel.clone());
    let started = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = vec![];
    for i in 0..n {
        let (slots, mut c) = (slots.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let _s = slots.acquire_owned().await.unwrap();
            let tier = if i % 10 == 0 { "enterprise" } else { "free" };
            let t = proto::Tenant {
                id: format!("scale-{i:06}"),
                app: "aletheia".into(),
                connection: Some(proto::Connection {
                    host: "db-scale.internal".into(),
                    port: 5432,
                    dbname: format!("t{i}"),
                    user: "app".into(),
                    ..Default::default()
                }),
                labels: [
                    ("tier".to_string(), tier.to_string()),
                    ("scale".to_string(), "yes".to_string()),
                ]
                .into(),
                ..Default::default()
            };
            c.register(proto::RegisterTenantRequest { tenant: Some(t) })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let register_s = started.elapsed().as_secs_f64();
    let mut list = vec![];
    for _ in 0..7 {
        let t = Instant::now();
        let page = client
            .list(proto::ListTenantsRequest {
                app: "aletheia".into(),
                labels: [("tier".to_string(), "enterprise".to_string())].into(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.tenants.len(), n.div_ceil(10).min(500));
    }
    let mut get = vec![];
    for i in 0..25 {
        let t = Instant::now();
        client
            .get(proto::GetTenantRequest {
                id: format!("scale-{:06}", (i * 397) % n),
            })
            .await
            .unwrap();
        get.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    RegistryScale {
        tenants: n,
        register_s,
        list_filtered_page500_ms_median: Stat::of(&list).median,
        get_ms_median: Stat::of(&get).median,
        daemon_rss_mb: rss_mb(pid, "VmRSS:"),
    }
}
