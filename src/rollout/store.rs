//! Rollouts in etcd. Keys under the daemon's prefix:
//! - `rollouts/<id>`: the document (spec, waves, per-tenant state), written by its owner;
//! - `rollout-active/<id>`: present while it is running or paused: what replicas look for;
//! - `rollout-owner/<id>`: the replica driving it, under that replica's lease (it vanishes
//!   when the replica dies, and another one claims the rollout);
//! - `rollout-control/<id>`: what operators asked for (running, paused, cancelled);
//! - `rollout-keys/<key>`: idempotency keys of Start;
//! - `rollout-gate/<id>`: the wave other replicas may help with now (absent: none);
//! - `rollout-tenants/<id>/<tenant>`: a tenant run by a helping replica: under that
//!   replica's lease while running (it vanishes if the replica dies), then its final state.
//!   The owner folds these into the document.

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{RolloutDoc, TenantDoc};
use crate::etcd::retry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rollout {0} not found")]
    NotFound(String),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("rollout {id}: unreadable record: {message}")]
    Corrupt { id: String, message: String },
}

/// What operators asked for; the owner follows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    #[default]
    Running,
    Paused,
    Cancelled,
}

impl Desired {
    /// The control key's value (absent or unreadable: running).
    fn of(value: Option<&[u8]>) -> Desired {
        value
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or_default()
    }
}

/// What a replica's claim loop looks at: the rollouts running or paused (by id), and the
/// owner of every owned one. Read on its own, or carried by an owner's poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimable {
    pub active: Vec<String>,
    pub owners: std::collections::HashMap<String, String>,
}

/// An owner's poll: what operators want, the results written after the revision it asked
/// from, the revision it read at, and (riding along) what the claim loop looks at.
#[derive(Debug, Clone)]
pub struct Polled {
    pub desired: Desired,
    pub results: Vec<TenantDoc>,
    pub at: i64,
    pub claimable: Claimable,
}

#[derive(Clone)]
pub struct RolloutStore {
    client: Client,
    prefix: String,
}

impl RolloutStore {
    pub fn new(client: Client, prefix: &str) -> RolloutStore {
        RolloutStore {
            client,
            prefix: prefix.to_string(),
        }
    }

    pub fn doc_key(&self, id: &str) -> String {
        format!("{}rollouts/{id}", self.prefix)
    }
    fn active_dir(&self) -> String {
        format!("{}rollout-active/", self.prefix)
    }
    fn active_key(&self, id: &str) -> String {
        self.active_dir() + id
    }
    fn owner_dir(&self) -> String {
        format!("{}rollout-owner/", self.prefix)
    }
    fn owner_key(&self, id: &str) -> String {
        self.owner_dir() + id
    }
    pub fn control_key(&self, id: &str) -> String {
        format!("{}rollout-control/{id}", self.prefix)
    }
    fn gate_key(&self, id: &str) -> String {
        format!("{}rollout-gate/{id}", self.prefix)
    }
    fn results_dir(&self, id: &str) -> String {
        format!("{}rollout-tenants/{id}/", self.prefix)
    }
    fn idempotency_key(&self, key: &str) -> String {
        format!("{}rollout-keys/{key}", self.prefix)
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    // Every request is retried on transient errors within a deadline (another member, after
    // an election). Each is safe to run twice: reads, puts of the same value, and
    // transactions guarded by compares (a second run finds its compare failed, which the
    // callers read as "someone else did").
    //
    // Not the owner's and helpers' periodic requests (poll, save, gate, results): their next
    // tick is the retry, and a request held up for seconds would hold up the loop that
    // reports tenants (a lease lost meanwhile must show at once).
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.client.kv_client().txn(txn).await
    }

    async fn txn_retried(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        retry::within("a rollout transaction", || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    async fn read(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        let key = key.into();
        retry::within("reading a rollout", || {
            let (mut kv, key, options) = (self.client.kv_client(), key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
    }

    async fn put(
        &self,
        key: String,
        value: Vec<u8>,
        options: Option<PutOptions>,
    ) -> Result<etcd_client::PutResponse, etcd_client::Error> {
        retry::within("writing a rollout key", || {
            let (mut kv, key, value, options) = (
                self.client.kv_client(),
                key.clone(),
                value.clone(),
                options.clone(),
            );
            async move { kv.put(key, value, options).await }
        })
        .await
    }

    /// gzip-compressed JSON: a tenant's entry repeats the same keys and replica names, so a
    /// document shrinks about tenfold.
    /// The JSON is built first and compressed in one write: the encoder zeroes its output
    /// buffer on every write, and the serializer writes token by token.
    pub fn encode(doc: &RolloutDoc) -> Vec<u8> {
        use std::io::Write;
        let json = serde_json::to_vec(doc).expect("rollouts serialize");
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(json.len() / 8),
            flate2::Compression::fast(),
        );
        gz.write_all(&json).expect("writes to memory");
        gz.finish().expect("writes to memory")
    }

    /// gzip-compressed or (as written before compression) plain JSON.
    pub fn decode(id: &str, bytes: &[u8]) -> Result<RolloutDoc, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            id: id.to_string(),
            message,
        };
        if bytes.starts_with(&[0x1f, 0x8b]) {
            use std::io::Read;
            let mut json = Vec::with_capacity(bytes.len() * 10);
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut json)
                .map_err(|e| corrupt(e.to_string()))?;
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
        } else {
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
        }
    }

    /// Create the rollout, or return the one its idempotency key already names. With `owner`
    /// (name, lease), that replica owns it from the start.
    pub async fn create(
        &self,
        doc: &RolloutDoc,
        owner: Option<(&str, i64)>,
    ) -> Result<(RolloutDoc, bool), StoreError> {
        let control = serde_json::to_vec(&Desired::Running).expect("serializable");
        let mut puts = vec![
            TxnOp::put(self.doc_key(&doc.id), Self::encode(doc), None),
            TxnOp::put(self.active_key(&doc.id), doc.id.as_bytes(), None),
            TxnOp::put(self.control_key(&doc.id), control, None),
        ];
        if let Some((name, lease)) = owner {
            puts.push(TxnOp::put(
                self.owner_key(&doc.id),
                name,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        let key = &doc.spec.idempotency_key;
        if key.is_empty() {
            self.txn_retried(Txn::new().and_then(puts)).await?;
            return Ok((doc.clone(), true));
        }
        let idem = self.idempotency_key(key);
        puts.push(TxnOp::put(idem.as_str(), doc.id.as_bytes(), None));
        let r = self
            .txn_retried(
                Txn::new()
                    .when([Compare::create_revision(idem.as_str(), CompareOp::Equal, 0)])
                    .and_then(puts)
                    .or_else([TxnOp::get(idem.as_str(), None)]),
            )
            .await?;
        if r.succeeded() {
            return Ok((doc.clone(), true));
        }
        let existing = r
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).to_string()),
                _ => None,
            })
            .ok_or_else(|| StoreError::NotFound(format!("for idempotency key {key}")))?;
        Ok((self.get(&existing).await?.0, false))
    }

    /// The document and its mod revision.
    pub async fn get(&self, id: &str) -> Result<(RolloutDoc, i64), StoreError> {
        let r = self.read(self.doc_key(id), None).await?;
        let kv = r
            .kvs()
            .first()
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        Ok((Self::decode(id, kv.value())?, kv.mod_revision()))
    }

    pub async fn list(&self) -> Result<Vec<RolloutDoc>, StoreError> {
        let r = self
            .read(
                format!("{}rollouts/", self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        r.kvs()
            .iter()
            .map(|kv| Self::decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }

    pub async fn owner(&self, id: &str) -> Result<Option<String>, StoreError> {
        let r = self.read(self.owner_key(id), None).await?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).to_string()))
    }

    /// The owner of every owned rollout, by id, in one read.
    pub async fn owners(&self) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let r = self
            .read(self.owner_dir(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(self.owners_in(&r))
    }

    fn owners_in(
        &self,
        owned: &etcd_client::GetResponse,
    ) -> std::collections::HashMap<String, String> {
        let dir = self.owner_dir();
        owned
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key()[dir.len()..]).to_string(),
                    String::from_utf8_lossy(kv.value()).to_string(),
                )
            })
            .collect()
    }

    pub async fn desired(&self, id: &str) -> Result<Desired, StoreError> {
        let r = self.read(self.control_key(id), None).await?;
        Ok(Desired::of(r.kvs().first().map(|kv| kv.value())))
    }

    pub async fn set_desired(&self, id: &str, desired: Desired) -> Result<(), StoreError> {
        self.put(
            self.control_key(id),
            serde_json::to_vec(&desired).expect("serializable"),
            None,
        )
        .await?;
        Ok(())
    }

    /// The rollouts running or paused and their owners, in one request (one etcd revision):
    /// what each replica's claim loop asks every second, unless an owner's poll carried it.
    pub async fn active_and_owners(&self) -> Result<Claimable, StoreError> {
        let r = self
            .txn_retried(Txn::new().and_then(self.claim_reads()))
            .await?;
        let mut gets = Self::gets(&r);
        match (gets.next(), gets.next()) {
            (Some(active), Some(owned)) => Ok(self.claimable(&active, &owned)),
            _ => Err(StoreError::Corrupt {
                id: String::new(),
                message: "a transaction of two reads answered without them".into(),
            }),
        }
    }

    /// The claim loop's reads: active rollouts' keys, and the owner keys with their values.
    fn claim_reads(&self) -> [TxnOp; 2] {
        [
            TxnOp::get(
                self.active_dir(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
            TxnOp::get(self.owner_dir(), Some(GetOptions::new().with_prefix())),
        ]
    }

    fn claimable(
        &self,
        active: &etcd_client::GetResponse,
        owned: &etcd_client::GetResponse,
    ) -> Claimable {
        let dir = self.active_dir();
        Claimable {
            active: active
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key()[dir.len()..]).to_string())
                .collect(),
            owners: self.owners_in(owned),
        }
    }

    /// The reads of a transaction's answer, in order (its writes skipped).
    fn gets(r: &etcd_client::TxnResponse) -> impl Iterator<Item = etcd_client::GetResponse> {
        r.op_responses().into_iter().filter_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
    }

    /// Become the rollout's owner, under `lease`, unless another replica is or it is over.
    pub async fn claim(&self, id: &str, owner: &str, lease: i64) -> Result<bool, StoreError> {
        let key = self.owner_key(id);
        let r = self
            .txn_retried(
                Txn::new()
                    .when([
                        Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                        Compare::create_revision(self.active_key(id), CompareOp::Greater, 0),
                    ])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        owner,
                        Some(PutOptions::new().with_lease(lease)),
                    )]),
            )
            .await?;
        Ok(r.succeeded())
    }

    /// Save the document if `owner` still owns it; a final state also retires the rollout
    /// (no longer active, owner released). `Ok(false)`: ownership was lost.
    pub async fn save_owned(&self, doc: &RolloutDoc, owner: &str) -> Result<bool, StoreError> {
        let key = self.owner_key(&doc.id);
        let mut ops = vec![TxnOp::put(self.doc_key(&doc.id), Self::encode(doc), None)];
        if doc.state.is_final() {
            ops.push(TxnOp::delete(self.active_key(&doc.id), None));
            ops.push(TxnOp::delete(self.control_key(&doc.id), None));
            ops.push(TxnOp::delete(key.as_str(), None));
            ops.push(TxnOp::delete(self.gate_key(&doc.id), None));
            ops.push(TxnOp::delete(
                self.results_dir(&doc.id),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ));
        }
        let r = self
            .txn(
                Txn::new()
                    .when([Compare::value(key.as_str(), CompareOp::Equal, owner)])
                    .and_then(ops),
            )
            .await?;
        Ok(r.succeeded())
    }

    /// Give the rollout up (shutdown): another replica may claim it at once.
    pub async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        let key = self.owner_key(id);
        self.txn_retried(
            Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, owner)])
                .and_then([TxnOp::delete(key.as_str(), None)]),
        )
        .await?;
        Ok(())
    }

    /// Put a finished rollout back to running (RetryFailed), if nobody changed or owns it
    /// since it was read at `revision`.
    pub async fn restart(&self, doc: &RolloutDoc, revision: i64) -> Result<bool, StoreError> {
        let control = serde_json::to_vec(&Desired::Running).expect("serializable");
        let r = self
            .txn_retried(
                Txn::new()
                    .when([
                        Compare::mod_revision(self.doc_key(&doc.id), CompareOp::Equal, revision),
                        Compare::create_revision(self.owner_key(&doc.id), CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::put(self.doc_key(&doc.id), Self::encode(doc), None),
                        TxnOp::put(self.active_key(&doc.id), doc.id.as_bytes(), None),
                        TxnOp::put(self.control_key(&doc.id), control, None),
                        // A result a helper wrote late must not count in the new run.
                        TxnOp::delete(
                            self.results_dir(&doc.id),
                            Some(etcd_client::DeleteOptions::new().with_prefix()),
                        ),
                    ]),
            )
            .await?;
        Ok(r.succeeded())
    }
}

/// Helping replicas: the gate and per-tenant results.
impl RolloutStore {
    /// Open the gate to wave `wave` (`None`: closed), if `owner` still owns the rollout.
    pub async fn set_gate(
        &self,
        id: &str,
        owner: &str,
        wave: Option<u32>,
    ) -> Result<bool, StoreError> {
        let op = match wave {
            Some(w) => TxnOp::put(self.gate_key(id), w.to_string(), None),
            None => TxnOp::delete(self.gate_key(id), None),
        };
        let r = self
            .txn(
                Txn::new()
                    .when([Compare::value(self.owner_key(id), CompareOp::Equal, owner)])
                    .and_then([op]),
            )
            .await?;
        Ok(r.succeeded())
    }

    /// The open wave, if operators want the rollout running and its owner lets others help.
    pub async fn open_wave(&self, id: &str) -> Result<Option<u32>, StoreError> {
        let r = self
            .txn(Txn::new().and_then([
                TxnOp::get(self.gate_key(id), None),
                TxnOp::get(self.control_key(id), None),
            ]))
            .await?;
        let mut values = r.op_responses().into_iter().map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let gate = values.next().flatten();
        let desired = Desired::of(values.next().flatten().as_deref());
        Ok(match (gate, desired) {
            (Some(w), Desired::Running) => String::from_utf8_lossy(&w).parse().ok(),
            _ => None,
        })
    }

    /// Record a tenant run by a helper: under `lease` while it runs, without once final; only
    /// while the rollout is active (a late result of a finished one is dropped).
    pub async fn put_result(
        &self,
        id: &str,
        tenant: &TenantDoc,
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        self.txn(
            Txn::new()
                .when([Compare::create_revision(
                    self.active_key(id),
                    CompareOp::Greater,
                    0,
                )])
                .and_then([TxnOp::put(
                    format!("{}{}", self.results_dir(id), tenant.id),
                    serde_json::to_vec(tenant).expect("serializable"),
                    options,
                )]),
        )
        .await?;
        Ok(())
    }

    /// The owner's poll, in one request: what operators want, the results written after etcd
    /// revision `since`, the revision read at, and what the claim loop looks at.
    pub async fn poll(&self, id: &str, since: i64) -> Result<Polled, StoreError> {
        let r = self
            .txn(Txn::new().and_then(self.poll_reads(id, since)))
            .await?;
        self.polled(id, &r, since)
    }

    /// The owner's poll carrying a save of its (not final) document, in one request: saved
    /// if `owner` still owns the rollout (`false`: ownership was lost), polled either way.
    /// The owner's periodic request is this or [`RolloutStore::poll`], never both.
    pub async fn save_and_poll(
        &self,
        doc: &RolloutDoc,
        owner: &str,
        since: i64,
    ) -> Result<(bool, Polled), StoreError> {
        debug_assert!(
            !doc.state.is_final(),
            "a final state is saved with save_owned"
        );
        let reads = self.poll_reads(&doc.id, since);
        let mut ops = vec![TxnOp::put(self.doc_key(&doc.id), Self::encode(doc), None)];
        ops.extend(reads.iter().cloned());
        let r = self
            .txn(
                Txn::new()
                    .when([Compare::value(
                        self.owner_key(&doc.id),
                        CompareOp::Equal,
                        owner,
                    )])
                    .and_then(ops)
                    .or_else(reads),
            )
            .await?;
        Ok((r.succeeded(), self.polled(&doc.id, &r, since)?))
    }

    /// What a poll reads: the control key, the results written after revision `since`, and
    /// the claim loop's two ranges (a replica that drives need not read those on its own).
    fn poll_reads(&self, id: &str, since: i64) -> Vec<TxnOp> {
        let results = GetOptions::new()
            .with_prefix()
            .with_min_mod_revision(since + 1);
        let mut reads = vec![
            TxnOp::get(self.control_key(id), None),
            TxnOp::get(self.results_dir(id), Some(results)),
        ];
        reads.extend(self.claim_reads());
        reads
    }

    /// A poll's answer from its transaction's reads (a put before them is skipped).
    fn polled(
        &self,
        id: &str,
        r: &etcd_client::TxnResponse,
        since: i64,
    ) -> Result<Polled, StoreError> {
        let at = r.header().map(|h| h.revision()).unwrap_or(since);
        let mut gets = Self::gets(r);
        let (Some(control), Some(results), Some(active), Some(owned)) =
            (gets.next(), gets.next(), gets.next(), gets.next())
        else {
            return Err(StoreError::Corrupt {
                id: id.into(),
                message: "a poll answered without its four reads".into(),
            });
        };
        Ok(Polled {
            desired: Desired::of(control.kvs().first().map(|kv| kv.value())),
            results: results
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect(),
            at,
            claimable: self.claimable(&active, &owned),
        })
    }

    /// Every tenant with a result (running or final). One attempt: asked periodically.
    pub async fn result_ids(
        &self,
        id: &str,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let dir = self.results_dir(id);
        let r = self
            .client
            .kv_client()
            .get(
                dir.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key()[dir.len()..]).to_string())
            .collect())
    }
}
