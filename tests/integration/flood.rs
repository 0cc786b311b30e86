//! Connection floods against real daemons: idle TCP connections that never send a byte (or
//! stop after the TLS handshake), on the gRPC and the health port, under a low open-file
//! limit. Valid calls must still be served within the handshake timeout, the idle
//! connections must be closed, and the daemon must not spin.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::daemon_harness::{self as dh, Process};
use crate::harness;
use crate::pki::Pki;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn soft_open_files(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn set_soft_open_files(pid: u32, soft: u64, hard: u64) {
    let st = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "prlimit --pid {pid}");
}

async fn idle(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// How many of `conns` the server closed within `within`.
async fn closed(conns: Vec<TcpStream>, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let reads = conns.into_iter().map(|mut c| async move {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // A TLS alert or HTTP/2 frames on the way out: read on to the close.
                Ok(Ok(_)) => continue,
            }
        }
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|c| *c)
        .count()
}

async fn check(channel: Result<Channel, tonic::transport::Error>) -> Result<i32, String> {
    let channel = channel.map_err(|e| format!("connect: {e:?}"))?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
        .map_err(|e| format!("{e:?}"))
}

/// A health check on a fresh plaintext connection; how long it took.
async fn health(addr: &str) -> (Result<i32, String>, Duration) {
    let started = Instant::now();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .connect()
        .await;
    (check(channel).await, started.elapsed())
}

#[tokio::test]
async fn idle_connections_neither_lock_out_valid_calls_nor_make_the_daemon_spin() {
    let Some(etcd) = harness::etcd() else {
        return;
    };
    let health_port = harness::free_port();
    let health_addr = format!("127.0.0.1:{health_port}");
    let mut daemon = Process::start_under(
        &["prlimit", "--nofile=128:512"],
        &[etcd.endpoint.as_str()],
        &etcd.prefix("flood"),
        &harness::repo_migrations(),
        &[
            ("FLEETMIG_SERVER__HANDSHAKE_TIMEOUT", "1s"),
            ("FLEETMIG_SERVER__MAX_CONNECTIONS", "100"),
            ("FLEETMIG_SERVER__HEALTH_MAX_CONNECTIONS", "16"),
            ("FLEETMIG_SERVER__HEALTH_LISTEN", health_addr.as_str()),
        ],
    );
    let pid = daemon.child.id();
    let addr = daemon.addr.clone();
    // The soft open-file limit was raised to the hard one at start, and that was logged.
    assert_eq!(soft_open_files(pid), 512);
    assert!(
        daemon
            .logs()
            .contains("raised the open-file limit (RLIMIT_NOFILE) to its hard limit"),
        "{}",
        daemon.logs()
    );

    // 300 idle connections on the gRPC port (cap 100), 50 on the health port (cap 16).
    let (cpu_before, started) = (cpu_time(pid), Instant::now());
    let mut flood = idle(&addr, 300).await;
    flood.extend(idle(&health_addr, 50).await);
    for a in [&addr, &health_addr] {
        let (status, took) = health(a).await;
        assert_eq!(status, Ok(ServingStatus::Serving as i32), "{a}");
        assert!(
            took < HANDSHAKE_TIMEOUT,
            "a valid call on {a} waited {took:?} behind idle connections"
        );
    }
    let n = closed(flood, HANDSHAKE_TIMEOUT * 4).await;
    assert_eq!(n, 350, "idle connections the daemon closed");
    let (cpu, wall) = (cpu_time(pid) - cpu_before, started.elapsed());
    assert!(
        cpu < Duration::from_millis(500),
        "the daemon used {cpu:?} of CPU in {wall:?} while flooded"
    );
    assert!(
        daemon
            .logs()
            .contains("closed connections that did not finish their handshake"),
        "the flood was logged: {}",
        daemon.logs()
    );

    // Out of descriptors: accept fails with EMFILE. The daemon backs off instead of spinning,
    // logs it once per interval, and gives a descriptor back by closing idle handshakes.
    let spare = 4;
    set_soft_open_files(pid, (open_files(pid) + spare) as u64, 512);
    let (cpu_before, started) = (cpu_time(pid), Instant::now());
    let flood = idle(&addr, 100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu, wall) = (cpu_time(pid) - cpu_before, started.elapsed());
    assert!(
        cpu < Duration::from_millis(500),
        "the daemon used {cpu:?} of CPU in {wall:?} while out of descriptors"
    );
    let logs = daemon.logs();
    let lines = logs.matches("accepting a connection failed").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} accept-failure lines in {wall:?}: {logs}"
    );
    assert!(logs.contains("out of file descriptors"), "{logs}");
    assert_eq!(closed(flood, HANDSHAKE_TIMEOUT * 4).await, 100);
    let (status, _) = health(&addr).await;
    assert_eq!(status, Ok(ServingStatus::Serving as i32));
    set_soft_open_files(pid, 512, 512);
    assert!(daemon.terminate().success(), "{}", daemon.logs());
}

/// A TLS client that stops after the TLS handshake, before the HTTP/2 preface.
async fn tls_then_silence(addr: &str, ca: &Path, cert: &Path, key: &Path) -> TcpStream {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake itself succeeds");
    let (tcp, _) = tls.into_inner();
    tcp
}

#[tokio::test]
async fn a_tls_port_closes_stalled_handshakes_and_connections_without_a_preface() {
    let Some(etcd) = harness::etcd() else {
        return;
    };
    let (_pki, issued) = Pki::issue();
    let mut c = dh::config(
        &etcd.endpoint,
        &etcd.prefix("floodtls"),
        &harness::repo_migrations(),
    );
    c.server.plaintext = false;
    c.server.tls = Some(fleetmig::transport::ServerTls {
        cert: issued.server.cert.clone(),
        key: issued.server.key.clone(),
        client_ca: Some(issued.ca.clone()),
    });
    c.server.handshake_timeout = HANDSHAKE_TIMEOUT;
    c.server.max_connections = 20;
    let daemon = dh::start(c).await;
    let addr = daemon.addr.to_string();
    let valid = || async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&issued.ca).unwrap()))
            .identity(Identity::from_pem(
                std::fs::read(&issued.client.cert).unwrap(),
                std::fs::read(&issued.client.key).unwrap(),
            ))
            .domain_name("localhost");
        let started = Instant::now();
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await;
        (check(channel).await, started.elapsed())
    };
    // Past the TLS handshake, then silence: tonic's own TLS timeout would not close these.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(
            tls_then_silence(&addr, &issued.ca, &issued.client.cert, &issued.client.key).await,
        );
    }
    let started = Instant::now();
    assert_eq!(closed(silent, HANDSHAKE_TIMEOUT * 3).await, 5);
    assert!(started.elapsed() < HANDSHAKE_TIMEOUT * 2);
    // No ClientHello at all, three times the cap: the oldest make room for a valid client.
    let flood = idle(&addr, 60).await;
    let (status, took) = valid().await;
    assert_eq!(status, Ok(ServingStatus::Serving as i32));
    assert!(took < HANDSHAKE_TIMEOUT, "the valid call waited {took:?}");
    assert_eq!(closed(flood, HANDSHAKE_TIMEOUT * 3).await, 60);
    daemon.shutdown().await.unwrap();
}
