//! The tower layer in front of every service: authenticates each call, checks the scope its
//! method needs, and hands the [`Caller`] to the handlers through the request's extensions.
//! Refused calls never reach a handler: UNAUTHENTICATED or PERMISSION_DENIED.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::auth::{AuthError, Authenticator, Caller};

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

/// A client-chosen request id is kept when it is a plain token (it ends up in logs and etcd).
fn request_id<B>(request: &http::Request<B>) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The common name of the verified client certificate (mTLS), if any.
fn certificate_subject<B>(request: &http::Request<B>) -> Option<String> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("?"));
        let certificate = certificate_subject(&request);
        let path = request.uri().path().to_string();
        match self.auth.check(
            &path,
            authorization,
            certificate.as_deref(),
            request_id(&request),
        ) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                // The clone is ready only if `self.inner` was: swap them (tower's idiom).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(refused) => {
                let status = match &refused {
                    AuthError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
                    AuthError::Denied(m) => Status::permission_denied(m.clone()),
                };
                tracing::warn!(
                    target: "fleetmig::audit",
                    rpc = %path.trim_start_matches('/'),
                    certificate = certificate.as_deref().unwrap_or(""),
                    outcome = ?status.code(),
                    reason = %refused,
                    "call refused"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The caller of a request that went through the layer (anonymous when it did not).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller {
            subject: "anonymous".into(),
            via: crate::auth::Via::Anonymous,
            scopes: vec![],
            request_id: uuid::Uuid::new_v4().to_string(),
            certificate: None,
        })
}
