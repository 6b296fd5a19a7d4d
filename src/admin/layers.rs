//! Tower layers of the admin API that tower itself does not provide: bearer-token auth and
//! a request body limit. Both answer with the API's JSON error document.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::response::error_response;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What is served without the token: only `GET /`. The status page holds no data (it reads `/status` with the token it asks for), and a browser
/// cannot send a bearer header when it opens an address.
fn public(req_method: &Method, path: &str) -> bool {
    path == "/" && (req_method == Method::GET || req_method == Method::HEAD)
}

/// Requires `Authorization: Bearer <token>` when a token is set (see [`public`]).
#[derive(Clone)]
pub struct BearerAuthLayer {
    token: Option<Arc<str>>,
}

impl BearerAuthLayer {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(Arc::from),
        }
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;
    fn layer(&self, inner: S) -> BearerAuth<S> {
        BearerAuth {
            inner,
            token: self.token.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    token: Option<Arc<str>>,
}

/// Compares without an early exit, so the time taken does not tell how much of a guess
/// was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(token: &str, header: Option<&HeaderValue>) -> bool {
    let Some(value) = header.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && same_secret(given.trim().as_bytes(), token.as_bytes())
}

impl<S, B> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>, Response = Response<Full<Bytes>>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(token) = &self.token {
            if !public(req.method(), req.uri().path())
                && !authorized(token, req.headers().get(AUTHORIZATION))
            {
                tracing::warn!(path = %req.uri().path(), "admin request without a valid token");
                let mut resp = error_response(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                );
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Box::pin(async move { Ok(resp) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// Refuses bodies over `max` bytes: at once when `Content-Length` says so, otherwise while
/// reading (the body is wrapped in [`Limited`], whose error the handler maps to 413).
#[derive(Clone, Copy)]
pub struct BodyLimitLayer {
    max: usize,
}

impl BodyLimitLayer {
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            max: self.max,
        }
    }
}

#[derive(Clone)]
pub struct BodyLimit<S> {
    inner: S,
    max: usize,
}

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<Limited<B>>, Response = Response<Full<Bytes>>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max as u64) {
            let resp = payload_too_large(self.max);
            return Box::pin(async move { Ok(resp) });
        }
        let max = self.max;
        Box::pin(self.inner.call(req.map(|body| Limited::new(body, max))))
    }
}

pub fn payload_too_large(max: usize) -> Response<Full<Bytes>> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body over {max} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_forms() {
        let ok = |h: &str| authorized("s3cret", Some(&HeaderValue::from_str(h).unwrap()));
        assert!(ok("Bearer s3cret"));
        assert!(ok("bearer s3cret"));
        assert!(!ok("Bearer s3cre"));
        assert!(!ok("Bearer s3cret2"));
        assert!(!ok("Basic s3cret"));
        assert!(!ok("s3cret"));
        assert!(!authorized("s3cret", None));
    }
}
