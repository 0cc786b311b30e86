//! The harness itself: the services it starts are the real thing.

use crate::harness;

#[tokio::test]
async fn postgres_has_pgvector() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (url, _) = pg.database("pgvector").await;
    let client = fleetmig::pg::connect_str(&url).await.unwrap();
    client
        .batch_execute("CREATE EXTENSION vector; CREATE TABLE v (e vector(3))")
        .await
        .unwrap();
    let e = pgvector::Vector::from(vec![1.0, 2.0, 3.0]);
    client
        .execute("INSERT INTO v VALUES ($1)", &[&e])
        .await
        .unwrap();
    let row = client
        .query_one("SELECT e <=> $1 FROM v", &[&e])
        .await
        .unwrap();
    assert!(
        row.get::<_, f64>(0).abs() < 1e-9,
        "cosine distance of a vector to itself is 0"
    );
}

#[tokio::test]
async fn etcd_answers_on_its_own_prefix() {
    let Some(etcd) = harness::etcd() else { return };
    let prefix = etcd.prefix("smoke");
    let mut client = etcd.client().await;
    client.put(format!("{prefix}k"), "v", None).await.unwrap();
    let got = client.get(format!("{prefix}k"), None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
}
