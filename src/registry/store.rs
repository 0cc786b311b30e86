//! Tenant records in etcd under `<prefix>tenants/<id>`, as JSON. Creation is a
//! compare-and-create transaction; updates compare the record's mod revision so two writers
//! never silently overwrite each other.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};

use super::tenant::{Tenant, TenantId};
use crate::etcd::retry;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("tenant {0} does not exist")]
    NotFound(TenantId),
    #[error("tenant {0} already exists")]
    AlreadyExists(TenantId),
    #[error("tenant {0} was changed concurrently; read it again and retry")]
    Conflict(TenantId),
    #[error("the registry (etcd) is unavailable: {0}")]
    Unavailable(#[from] etcd_client::Error),
    #[error("registry record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
}

/// The tenant registry.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
    requests: String,
}

/// What an idempotent request (onboarding) did, so a retry replays it instead of redoing it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestRecord {
    pub tenant_id: String,
    /// running, done, failed.
    pub state: String,
    /// (step, status, message) in order.
    pub events: Vec<(String, String, String)>,
}

/// The first key after every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Registry records read per etcd request when scanning (a record is a few hundred bytes).
const SCAN_CHUNK: i64 = 1000;

impl Registry {
    pub fn new(client: Client, prefix: &str) -> Registry {
        Registry {
            client,
            prefix: format!("{prefix}tenants/"),
            requests: format!("{prefix}requests/"),
        }
    }

    /// A read, retried on transient etcd errors within a deadline (another member, after an
    /// election). Writes are not: the caller sees the error and decides.
    async fn read(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        let key = key.into();
        retry::within("reading the registry", || {
            let (mut c, key, options) = (self.client.clone(), key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    fn key(&self, id: &TenantId) -> String {
        format!("{}{}", self.prefix, id)
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<Tenant, RegistryError> {
        serde_json::from_slice(value).map_err(|e| RegistryError::Corrupt {
            key: String::from_utf8_lossy(key).into(),
            message: e.to_string(),
        })
    }

    pub async fn register(&self, tenant: Tenant) -> Result<Tenant, RegistryError> {
        let key = self.key(&tenant.id);
        let value = serde_json::to_vec(&tenant).expect("tenants serialize");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.client.clone().txn(txn).await?;
        if resp.succeeded() {
            Ok(tenant)
        } else {
            Err(RegistryError::AlreadyExists(tenant.id))
        }
    }

    async fn get_with_revision(&self, id: &TenantId) -> Result<(Tenant, i64), RegistryError> {
        let key = self.key(id);
        let resp = self.read(key.as_str(), None).await?;
        let kv = resp
            .kvs()
            .first()
            .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
        Ok((Self::decode(kv.key(), kv.value())?, kv.mod_revision()))
    }

    pub async fn get(&self, id: &TenantId) -> Result<Tenant, RegistryError> {
        Ok(self.get_with_revision(id).await?.0)
    }

    /// Several records, in `ids`' order: one etcd request per 100 (etcd's default limit of
    /// operations in a transaction is 128), not one per tenant.
    pub async fn get_many(&self, ids: &[TenantId]) -> Result<Vec<Tenant>, RegistryError> {
        const PER_TXN: usize = 100;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PER_TXN) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|id| TxnOp::get(self.key(id), None))
                .collect();
            let txn = Txn::new().and_then(gets);
            let resp = retry::within("reading tenant records", || {
                let (mut c, txn) = (self.client.clone(), txn.clone());
                async move { c.txn(txn).await }
            })
            .await?;
            for (id, op) in chunk.iter().zip(resp.op_responses()) {
                let TxnOpResponse::Get(g) = op else {
                    return Err(RegistryError::NotFound(id.clone()));
                };
                let kv = g
                    .kvs()
                    .first()
                    .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
                out.push(Self::decode(kv.key(), kv.value())?);
            }
        }
        Ok(out)
    }

    /// Replace a record with `change(old)`, failing on a concurrent change.
    pub async fn update(
        &self,
        id: &TenantId,
        change: impl FnOnce(Tenant) -> Tenant,
    ) -> Result<Tenant, RegistryError> {
        let (old, revision) = self.get_with_revision(id).await?;
        let new = change(old);
        let key = self.key(id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(
                key,
                serde_json::to_vec(&new).expect("tenants serialize"),
                None,
            )]);
        if self.client.clone().txn(txn).await?.succeeded() {
            Ok(new)
        } else {
            Err(RegistryError::Conflict(id.clone()))
        }
    }

    pub async fn deregister(&self, id: &TenantId) -> Result<Tenant, RegistryError> {
        let key = self.key(id);
        let txn = Txn::new().and_then([TxnOp::delete(
            key,
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        )]);
        let resp = self.client.clone().txn(txn).await?;
        for op in resp.op_responses() {
            if let TxnOpResponse::Delete(d) = op
                && let Some(kv) = d.prev_kvs().first()
            {
                return Self::decode(kv.key(), kv.value());
            }
        }
        Err(RegistryError::NotFound(id.clone()))
    }

    /// Tenants after `after` (exclusive) in id order, filtered; at most `limit`, and whether
    /// more match.
    pub async fn list(
        &self,
        app: Option<&str>,
        labels: &BTreeMap<String, String>,
        limit: usize,
        after: Option<&TenantId>,
    ) -> Result<(Vec<Tenant>, bool), RegistryError> {
        let mut start = match after {
            Some(id) => format!("{}\0", self.key(id)),
            None => self.prefix.clone(),
        }
        .into_bytes();
        // Cheap pre-filter on the raw JSON before decoding: app names, label keys and values are
        // from allowlists without quotes or escapes, so they serialize verbatim. A false
        // positive (the text elsewhere in the record) is caught by the real match below.
        let needles: Vec<Vec<u8>> = app
            .map(|a| format!("\"app\":\"{a}\""))
            .into_iter()
            .chain(labels.iter().map(|(k, v)| format!("\"{k}\":\"{v}\"")))
            .map(String::into_bytes)
            .collect();
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let mut out = Vec::new();
        // In chunks (one response for a whole large fleet exceeds gRPC's 4 MiB message limit),
        // all read at the revision of the first chunk: one consistent view.
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(prefix_end(&self.prefix))
                .with_limit(SCAN_CHUNK);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = self.read(start.clone(), Some(options)).await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                if !needles.iter().all(|n| contains(kv.value(), n)) {
                    continue;
                }
                let t = Self::decode(kv.key(), kv.value())?;
                if t.matches(app, labels) {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(t);
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((out, false)),
            }
        }
    }

    /// Every tenant of `app` with these labels.
    pub async fn select(
        &self,
        app: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Tenant>, RegistryError> {
        Ok(self.list(Some(app), labels, usize::MAX, None).await?.0)
    }

    /// Claim request `id` for `record`; if it was claimed before, the earlier record.
    pub async fn claim_request(
        &self,
        id: &str,
        record: &RequestRecord,
    ) -> Result<Option<RequestRecord>, RegistryError> {
        let key = format!("{}{id}", self.requests);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                serde_json::to_vec(record).expect("records serialize"),
                None,
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.client.clone().txn(txn).await?;
        if resp.succeeded() {
            return Ok(None);
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                return serde_json::from_slice(kv.value()).map(Some).map_err(|e| {
                    RegistryError::Corrupt {
                        key: key.clone(),
                        message: e.to_string(),
                    }
                });
            }
        }
        Ok(None)
    }

    pub async fn save_request(
        &self,
        id: &str,
        record: &RequestRecord,
    ) -> Result<(), RegistryError> {
        self.client
            .clone()
            .put(
                format!("{}{id}", self.requests),
                serde_json::to_vec(record).expect("records serialize"),
                None,
            )
            .await?;
        Ok(())
    }
}
