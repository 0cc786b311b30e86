//! Transient etcd errors and retries within a deadline. A member that is down, restarting,
//! without a leader (an election takes about a second), overloaded or slow to answer gives
//! errors that a moment later, or another member, does not: those are retried with jittered
//! exponential backoff until a deadline, never past it. Anything else (a failed compare is
//! not an error; a bad request, permission denied, a lease not found) is returned at once.
//!
//! Every operation retried here must be safe to run twice: reads, puts of the same value,
//! and transactions guarded by a compare (a second run finds the compare failed and says so).

use std::time::Duration;

use backon::BackoffBuilder;
use tokio::time::Instant;
use tonic::Code;

/// How long fleetmig keeps retrying an etcd request that fails transiently before it gives
/// up on it. Long enough for a member to die and the others to elect a leader (etcd's
/// default election timeout is 1 s) and for the member probe to take it out of rotation.
pub const RETRY_WITHIN: Duration = Duration::from_secs(10);

/// Whether another attempt (likely on another member) may succeed.
pub fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            // Connection refused or reset, no leader, leader changed, request timed out.
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => true,
            // A client-side timeout ("Timeout expired"), a stream torn down with its member.
            Code::Cancelled | Code::Unknown => true,
            _ => false,
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // The lease keep-alive and watch streams report a closed stream this way.
        etcd_client::Error::LeaseKeepAliveError(_) | etcd_client::Error::WatchError(_) => true,
        _ => false,
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .without_max_times()
        .with_jitter()
        .build()
}

/// Run `op` until it succeeds, fails for good, or `deadline` passes (each attempt is cut off
/// at the deadline too). `what` names the operation in the warnings.
pub async fn until<T, F, Fut>(
    what: &str,
    deadline: Instant,
    mut op: F,
) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut delays = backoff();
    let mut attempt = 1u32;
    loop {
        let error = match tokio::time::timeout_at(deadline, op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if !transient(&e) => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(etcd_client::Error::GRpcStatus(
                    tonic::Status::deadline_exceeded(format!(
                        "{what}: no answer from etcd before the deadline ({attempt} attempts)"
                    )),
                ));
            }
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(1));
        if Instant::now() + delay >= deadline {
            tracing::warn!(%what, attempts = attempt, error = %error, "etcd request failed; giving up at the deadline");
            return Err(error);
        }
        tracing::debug!(%what, attempt, error = %error, ?delay, "etcd request failed; retrying");
        crate::metrics::metrics().etcd_retries.add(1, &[]);
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// [`until`] with the default deadline, [`RETRY_WITHIN`] from now.
pub async fn within<T, F, Fut>(what: &str, op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    until(what, Instant::now() + RETRY_WITHIN, op).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_and_timeouts_are_transient_a_bad_request_is_not() {
        let status = |s| etcd_client::Error::GRpcStatus(s);
        assert!(transient(&status(tonic::Status::unavailable(
            "etcdserver: no leader"
        ))));
        assert!(transient(&status(tonic::Status::unavailable(
            "tcp connect error"
        ))));
        assert!(transient(&status(tonic::Status::cancelled(
            "Timeout expired"
        ))));
        assert!(!transient(&status(tonic::Status::invalid_argument(
            "etcdserver: duplicate key given in txn request"
        ))));
        assert!(!transient(&status(tonic::Status::not_found(
            "etcdserver: requested lease not found"
        ))));
        assert!(!transient(&etcd_client::Error::InvalidArgs("x".into())));
    }

    #[tokio::test]
    async fn retries_until_success_and_stops_at_the_deadline() {
        let mut n = 0;
        let r = within("test", || {
            n += 1;
            let fail = n < 4;
            async move {
                if fail {
                    Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                        "down",
                    )))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 4);
        let started = Instant::now();
        let r: Result<(), _> = until("test", started + Duration::from_millis(300), || async {
            Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                "down",
            )))
        })
        .await;
        assert!(r.is_err());
        assert!(started.elapsed() <= Duration::from_millis(400));
    }
}
