//! Request ids: the caller's `x-request-id` when it is sane (1–128 characters of
//! `[A-Za-z0-9._:-]`), otherwise a new UUID. The id is put back on the request (so the gRPC
//! service and REST transcoder see it), kept in the extensions, and returned on the response
//! (an HTTP header, which is gRPC initial metadata, or trailers in a trailers-only answer).

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{HeaderValue, Request, Response},
};
use tower::{Layer, Service};

use super::after::{AfterAnswer, Answering};
use crate::extensions::{RequestId, names::X_REQUEST_ID};

const MAX_LEN: usize = 128;

fn sane(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The id a request goes by, its header value, and whether the request's header already
/// says so: the caller's own id when sane (its header then stays as it came, unless it was
/// given twice), otherwise a new UUID.
fn id_of(request: &Request<Body>) -> (RequestId, HeaderValue, bool) {
    let mut given = request.headers().get_all(&X_REQUEST_ID).iter();
    if let Some(value) = given.next()
        && let Ok(text) = value.to_str()
        && sane(text)
    {
        let alone = given.next().is_none();
        return (RequestId(Arc::from(text)), value.clone(), alone);
    }
    let mut buffer = uuid::Uuid::encode_buffer();
    let text: &str = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer);
    // A UUID is a valid header value.
    let value = HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    (RequestId(Arc::from(text)), value, false)
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
    S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = Answering<S::Future, Stamp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let (id, value, in_place) = id_of(&request);
        if !in_place {
            request.headers_mut().insert(X_REQUEST_ID, value.clone());
        }
        request.extensions_mut().insert(id);
        Answering::new(self.inner.call(request), Stamp(value))
    }
}

/// The request id, given to the answer.
pub struct Stamp(HeaderValue);

impl<B> AfterAnswer<B> for Stamp {
    fn answered(self, mut response: Response<B>) -> Response<B> {
        // Never indexed by HPACK: an id used once only costs the encoder a table insert and
        // pushes out of the client's table the names and values that do repeat.
        let mut value = self.0;
        value.set_sensitive(true);
        response.headers_mut().insert(X_REQUEST_ID, value);
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::HeaderMap;
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// Calls the layer with `ids` as the request's `x-request-id` lines; returns the request's
    /// headers and id as the service saw them, and the answer's headers.
    async fn call(ids: &[&str]) -> (HeaderMap, Option<RequestId>, HeaderMap) {
        let seen = Arc::new(Mutex::new(None));
        let keep = Arc::clone(&seen);
        let service = RequestIdLayer.layer(service_fn(move |request: Request<Body>| {
            let keep = Arc::clone(&keep);
            async move {
                let id = request.extensions().get::<RequestId>().cloned();
                *keep.lock().expect("seen") = Some((request.headers().clone(), id));
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        }));
        let mut request = Request::get("/v1/streams")
            .body(Body::empty())
            .expect("request");
        for id in ids {
            request
                .headers_mut()
                .append(&X_REQUEST_ID, HeaderValue::from_str(id).expect("value"));
        }
        let response = service
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let (headers, id) = seen.lock().expect("seen").take().expect("called");
        (headers, id, response.headers().clone())
    }

    fn lines(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(&X_REQUEST_ID)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect()
    }

    #[tokio::test]
    async fn the_service_and_the_answer_see_one_id() {
        let (request, id, answer) = call(&["req-42"]).await;
        assert_eq!(lines(&request), ["req-42"]);
        assert_eq!(id.as_ref().map(RequestId::as_str), Some("req-42"));
        assert_eq!(lines(&answer), ["req-42"]);

        // Given twice: the first, alone, as the old layer kept it.
        let (request, id, answer) = call(&["req-1", "req-2"]).await;
        assert_eq!(lines(&request), ["req-1"]);
        assert_eq!(id.as_ref().map(RequestId::as_str), Some("req-1"));
        assert_eq!(lines(&answer), ["req-1"]);

        for ids in [&[][..], &["has space"][..], &["bad id", "req-3"][..]] {
            let (request, id, answer) = call(ids).await;
            let new = id.expect("an id");
            let parsed = uuid::Uuid::parse_str(new.as_str()).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 7, "{ids:?}");
            assert_eq!(lines(&request), [new.as_str()], "{ids:?}");
            assert_eq!(lines(&answer), [new.as_str()], "{ids:?}");
        }
    }

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
