//! Compressed HTTP request bodies (`Content-Encoding: gzip`, `zstd` or `br`), inflated as they
//! stream in: every inflated chunk is counted against `MAX_REQUEST_BODY_SIZE` and charged to
//! `MAX_INFLIGHT_BYTES` before it is handed on, so a small body that inflates to gigabytes is
//! refused after at most one chunk past the limit, not after it has been inflated. gRPC bodies
//! never come here: gRPC compresses per message (`grpc-encoding`), which tonic inflates.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder};
use axum::{
    body::Body,
    http::{HeaderMap, header},
};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::budget::{self, Charge};

/// The content codings a request body may arrive in, as `Accept-Encoding` names them in a 415.
pub const ACCEPTED_CODINGS: &str = "gzip, zstd, br, identity";

/// Inflated bytes are handed on in chunks of at most this size, each counted before it goes.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Zstd,
    Brotli,
}

/// The request's content coding: `Ok(None)` when it has none (or only `identity`), `Err` with
/// the coding's name when it is one the gateway cannot inflate, or more than one.
pub fn content_coding(headers: &HeaderMap) -> Result<Option<Coding>, String> {
    let mut codings = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("unreadable").split(','))
        .map(str::trim)
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
    let Some(first) = codings.next() else {
        return Ok(None);
    };
    if let Some(second) = codings.next() {
        return Err(format!("{first}, {second}"));
    }
    match first.to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Ok(Some(Coding::Gzip)),
        "zstd" => Ok(Some(Coding::Zstd)),
        "br" => Ok(Some(Coding::Brotli)),
        _ => Err(first.to_owned()),
    }
}

/// Why inflating stopped early, for the body-limit layer's answer.
#[derive(Debug, Clone)]
pub struct InflateLimits {
    pub max_bytes: usize,
    pub charge: Arc<Charge>,
    /// Set when the inflated body went over `max_bytes`.
    pub too_large: Arc<AtomicBool>,
    /// Set when the body is not valid in its coding (or its transfer failed).
    pub malformed: Arc<AtomicBool>,
}

/// `body` inflated, as a body that fails once what it inflates to is over the limits.
pub fn inflate(body: Body, coding: Coding, limits: InflateLimits) -> Body {
    let compressed = StreamReader::new(body.into_data_stream().map_err(io::Error::other));
    let decoder: Pin<Box<dyn AsyncRead + Send>> = match coding {
        Coding::Gzip => {
            let mut decoder = GzipDecoder::new(compressed);
            // `cat a.gz b.gz` is one valid gzip body.
            decoder.multiple_members(true);
            Box::pin(decoder)
        }
        Coding::Zstd => Box::pin(budget::zstd_decoder(compressed)),
        Coding::Brotli => Box::pin(BrotliDecoder::new(compressed)),
    };
    let mut inflated = 0usize;
    let chunks = ReaderStream::with_capacity(decoder, CHUNK).map(move |chunk| {
        let chunk = chunk.inspect_err(|_| limits.malformed.store(true, Ordering::Release))?;
        inflated = inflated.saturating_add(chunk.len());
        if inflated > limits.max_bytes {
            limits.too_large.store(true, Ordering::Release);
            return Err(io::Error::other(
                "the request body inflates past MAX_REQUEST_BODY_SIZE",
            ));
        }
        if limits.charge.add(chunk.len()).is_err() {
            limits.charge.mark_exhausted();
            return Err(io::Error::other(
                "the gateway holds MAX_INFLIGHT_BYTES of request bodies",
            ));
        }
        Ok(chunk)
    });
    Body::from_stream(chunks)
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::{Coding, content_coding};

    fn coded(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn codings_are_read_by_their_registered_names() {
        assert_eq!(content_coding(&HeaderMap::new()), Ok(None));
        assert_eq!(content_coding(&coded("identity")), Ok(None));
        assert_eq!(content_coding(&coded("GZIP")), Ok(Some(Coding::Gzip)));
        assert_eq!(content_coding(&coded("x-gzip")), Ok(Some(Coding::Gzip)));
        assert_eq!(content_coding(&coded("zstd")), Ok(Some(Coding::Zstd)));
        assert_eq!(content_coding(&coded("br")), Ok(Some(Coding::Brotli)));
        assert_eq!(content_coding(&coded("compress")), Err("compress".into()));
        assert_eq!(content_coding(&coded("gzip, br")), Err("gzip, br".into()));
    }
}
