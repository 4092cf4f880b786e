//! Request ids: the caller's `x-request-id` when it is sane (1–128 characters of
//! `[A-Za-z0-9._:-]`), otherwise a new UUID. The id is put back on the request (so the gRPC
//! service and REST transcoder see it), kept in the extensions, and returned on the response
//! (an HTTP header, which is gRPC initial metadata, or trailers in a trailers-only answer).

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{HeaderName, HeaderValue, Request, Response},
};
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

use crate::extensions::RequestId;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

fn sane(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, ResBody> Service<Request<Body>> for RequestIdService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<ResBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let id = request
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| sane(v))
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        // Sane ids and UUIDs are valid header values.
        let value =
            HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), value.clone());
        request.extensions_mut().insert(RequestId(id));
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            response.headers_mut().insert(X_REQUEST_ID.clone(), value);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::sane;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(sane("req-42"));
        assert!(sane("0f8a:b.c_d"));
        assert!(!sane(""));
        assert!(!sane("has space"));
        assert!(!sane("line\nbreak"));
        assert!(!sane(&"a".repeat(129)));
    }
}
