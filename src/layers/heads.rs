//! An HTTP/2 request's header list is held to [`MAX_HEADER_LIST_BYTES`] here, where a refusal
//! can answer in the caller's protocol: gRPC clients read hyper's own answer to an oversized
//! list (431, before any layer) as UNKNOWN, without a word. hyper's limit is a little higher
//! ([`HEADER_LIST_CEILING`]), so a list just past the limit is answered here, and what a
//! decoded head may hold in memory stays near what it was (HPACK lets a small frame decode to
//! a large list: past the ceiling hyper refuses it while it decodes).

use axum::{
    body::Body,
    http::{Request, StatusCode, Version},
};
use tonic::Code;

use super::guard::{Exempt, Policy};
use crate::answer::Rejection;

/// The largest header list an HTTP/2 request may send, counted as HTTP/2 counts it (RFC 9113
/// §6.5.2: each field's name and value, and 32 bytes more).
pub const MAX_HEADER_LIST_BYTES: usize = 16 * 1024;

/// The header list hyper takes at all (the listener's setting): beyond it, its own 431.
pub const HEADER_LIST_CEILING: usize = MAX_HEADER_LIST_BYTES + 4 * 1024;

/// Refuses an HTTP/2 request whose header list is larger than [`MAX_HEADER_LIST_BYTES`]:
/// RESOURCE_EXHAUSTED, `HEADERS_TOO_LARGE` (REST: 431). HTTP/1.1 heads are held by the
/// listener as they arrive (64 KiB, 100 headers).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderList;

impl Policy for HeaderList {
    type Admitted = ();
    const EXEMPT: Exempt = Exempt::Nothing;

    fn check(&self, request: &mut Request<Body>) -> Result<(), Rejection> {
        if request.version() != Version::HTTP_2 {
            return Ok(());
        }
        // The pseudo-headers `:method`, `:scheme`, `:authority` and `:path`, names included.
        let uri = request.uri();
        let pseudo = request.method().as_str().len()
            + uri.scheme_str().map_or(0, str::len)
            + uri
                .authority()
                .map_or(0, |authority| authority.as_str().len())
            + uri.path_and_query().map_or(0, |path| path.as_str().len())
            + ":method:scheme:authority:path".len()
            + 4 * 32;
        // `x-request-id` is not counted: the request id layer, above, sets one when the client
        // sent none.
        let bytes = request
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str() != "x-request-id")
            .fold(pseudo, |sum, (name, value)| {
                sum + name.as_str().len() + value.len() + 32
            });
        if bytes <= MAX_HEADER_LIST_BYTES {
            return Ok(());
        }
        Err(Rejection::new(
            Code::ResourceExhausted,
            "HEADERS_TOO_LARGE",
            format!(
                "the request's headers take {bytes} bytes (as HTTP/2 counts them); at most \
                 {MAX_HEADER_LIST_BYTES}"
            ),
        )
        .http_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
    }
}
