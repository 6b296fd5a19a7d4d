//! The admin API's response shapes: JSON documents, the error document every failing route
//! answers, and uncached bodies of a given type.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = body.to_string();
    text.push('\n');
    with_type(status, text.into(), "application/json")
}

/// The error document every failing route answers.
pub fn error_response(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    json_response(status, &serde_json::json!({ "ok": false, "error": error }))
}

pub fn with_type(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
