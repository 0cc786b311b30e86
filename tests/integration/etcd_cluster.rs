//! A three-member etcd cluster on loopback for fault tests. Members are children of the test
//! process (killed when the cluster is dropped), each with its own data directory and ports:
//! `kill` sends SIGKILL, `restart` starts the member again on the same directory and ports
//! (it rejoins with its data; the initial-cluster flags are ignored then).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness;

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    initial: String,
    token: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Three members, started and with a leader; None (a skip) without an etcd binary.
    pub async fn start(hint: &str) -> Option<EtcdCluster> {
        let bin = harness::etcd_bin()?;
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: harness::free_port(),
                peer: harness::free_port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial,
            token: format!("{hint}-{}", std::process::id()),
            bin,
            dir: tempfile::tempdir().unwrap(),
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for m in &cluster.members {
            harness::wait_for_port(m.client, "etcd member", &cluster.log(&m.name));
        }
        cluster.until_writable(Duration::from_secs(30)).await;
        Some(cluster)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(&m.name))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.path().join(&m.name))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &self.initial,
                "--initial-cluster-token",
                &self.token,
                "--initial-cluster-state",
                "new",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("etcd");
        self.members[i].child = Some(child);
    }

    /// Client URLs, member 0 first.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The index of the member that leads now.
    pub async fn leader(&self) -> usize {
        let mut c = self.client().await;
        let leader = c.status().await.unwrap().leader();
        for (i, e) in self.endpoints().iter().enumerate() {
            let mut one = etcd_client::Client::connect([e.as_str()], None)
                .await
                .unwrap();
            if one
                .status()
                .await
                .ok()
                .and_then(|s| s.header().map(|h| h.member_id()))
                == Some(leader)
            {
                return i;
            }
        }
        panic!("no member leads");
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Start a killed member again, on its data directory and ports.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// A client of every member.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), None)
            .await
            .unwrap()
    }

    /// Wait until the cluster takes a write (it has a leader and a quorum).
    pub async fn until_writable(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = async {
                let mut c = etcd_client::Client::connect(
                    self.endpoints(),
                    Some(
                        etcd_client::ConnectOptions::new()
                            .with_timeout(Duration::from_secs(1))
                            .with_connect_timeout(Duration::from_millis(500)),
                    ),
                )
                .await
                .ok()?;
                c.put("/fleetmig-test/cluster-probe", "1", None).await.ok()
            };
            if ok.await.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the etcd cluster took no write within {within:?}; m0 log:\n{}",
                std::fs::read_to_string(self.log("m0")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
