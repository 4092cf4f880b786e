//! Connect's 5-byte envelopes (a flags byte, a big-endian length, the message) around each
//! message of a stream, and the content codings a message may travel in (`gzip`, `zstd`, `br`):
//! inflated within the body limit as it comes out, never past it, and deflated per message.

use std::{io, pin::Pin};

use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder, ZstdEncoder,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncRead;
use tokio_util::io::ReaderStream;

/// The flag of a compressed message.
pub const COMPRESSED: u8 = 0x01;
/// The flag of the message that ends a stream (never set by a client).
pub const END_STREAM: u8 = 0x02;

/// The codings the gateway reads and writes, as `Connect-Accept-Encoding` lists them.
pub const ACCEPTED_CODINGS: &str = "gzip, zstd, br";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Zstd,
    Brotli,
}

impl Coding {
    /// A coding by its registered name; `Ok(None)` for `identity`.
    pub fn named(name: &str) -> Result<Option<Self>, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(None),
            "gzip" => Ok(Some(Coding::Gzip)),
            "zstd" => Ok(Some(Coding::Zstd)),
            "br" => Ok(Some(Coding::Brotli)),
            other => Err(format!(
                "messages may be compressed with {ACCEPTED_CODINGS} or identity, not {other}"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
        }
    }

    /// The first coding of an ordered `Accept-Encoding`-style list that the gateway writes.
    pub fn preferred(list: &str) -> Option<Self> {
        list.split(',')
            .filter(|entry| !refused(entry))
            .filter_map(|entry| entry.split(';').next())
            .find_map(|name| Coding::named(name).ok().flatten())
    }
}

/// Whether an entry of an accept list says `q=0`: "not acceptable" (RFC 9110 §12.4.2).
fn refused(entry: &str) -> bool {
    entry.split(';').skip(1).any(|parameter| {
        let parameter = parameter.trim();
        parameter
            .get(..2)
            .is_some_and(|name| name.eq_ignore_ascii_case("q="))
            && parameter[2..].trim().parse::<f32>() == Ok(0.0)
    })
}

/// Why a message could not be inflated.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    #[error("the message inflates past {0} bytes (MAX_REQUEST_BODY_SIZE)")]
    TooLarge(usize),
    #[error("the message is not valid in its coding: {0}")]
    Malformed(io::Error),
    /// What it inflated to did not fit the budget of calls in flight.
    #[error("{0}")]
    OverBudget(crate::budget::Exhausted),
}

/// `compressed` inflated, refused as soon as it passes `max_bytes`; within a call, each chunk
/// is charged to its budget (`MAX_INFLIGHT_BYTES`) before it is kept, as HTTP bodies inflated
/// by the body limit are, so many small bombs cannot hold more than the budget between them.
pub async fn inflate(
    compressed: &[u8],
    coding: Coding,
    max_bytes: usize,
) -> Result<Bytes, InflateError> {
    let decoder: Pin<Box<dyn AsyncRead + Send + '_>> = match coding {
        Coding::Gzip => Box::pin(GzipDecoder::new(compressed)),
        Coding::Zstd => Box::pin(crate::budget::zstd_decoder(compressed)),
        Coding::Brotli => Box::pin(BrotliDecoder::new(compressed)),
    };
    let mut chunks = ReaderStream::with_capacity(decoder, 64 * 1024);
    let mut inflated = BytesMut::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(InflateError::Malformed)?;
        if inflated.len().saturating_add(chunk.len()) > max_bytes {
            return Err(InflateError::TooLarge(max_bytes));
        }
        if let Some(Err(exhausted)) = crate::budget::charge(chunk.len()) {
            return Err(InflateError::OverBudget(exhausted));
        }
        inflated.extend_from_slice(&chunk);
    }
    Ok(inflated.freeze())
}

/// `message` compressed in `coding`.
pub async fn deflate(message: &[u8], coding: Coding) -> io::Result<Bytes> {
    let encoder: Pin<Box<dyn AsyncRead + Send + '_>> = match coding {
        Coding::Gzip => Box::pin(GzipEncoder::new(message)),
        Coding::Zstd => Box::pin(ZstdEncoder::new(message)),
        Coding::Brotli => Box::pin(BrotliEncoder::new(message)),
    };
    let mut chunks = ReaderStream::new(encoder);
    let mut compressed = BytesMut::new();
    while let Some(chunk) = chunks.next().await {
        compressed.extend_from_slice(&chunk?);
    }
    Ok(compressed.freeze())
}

/// One envelope around `message`.
pub fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut envelope = BytesMut::with_capacity(5 + message.len());
    envelope.put_u8(flags);
    envelope.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    envelope.put_slice(message);
    envelope.freeze()
}

/// One enveloped message, as a request stream holds it.
#[derive(Debug)]
pub struct Enveloped {
    pub flags: u8,
    pub message: Bytes,
}

/// The envelopes of a whole request body; `Err` when the body ends inside one.
pub fn split(mut body: Bytes) -> Result<Vec<Enveloped>, String> {
    let mut messages = Vec::new();
    while body.has_remaining() {
        if body.len() < 5 {
            return Err("the request stream ends inside an envelope's prefix".to_owned());
        }
        let flags = body[0];
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + length {
            return Err(format!(
                "the request stream ends inside a message of {length} bytes"
            ));
        }
        body.advance(5);
        messages.push(Enveloped {
            flags,
            message: body.split_to(length),
        });
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{Coding, deflate, envelope, inflate, split};

    #[tokio::test]
    async fn a_message_survives_each_coding_and_a_bomb_is_stopped_at_the_limit() {
        let message = vec![b'a'; 100_000];
        for coding in [Coding::Gzip, Coding::Zstd, Coding::Brotli] {
            let compressed = deflate(&message, coding).await.expect("deflates");
            assert!(compressed.len() < 1000, "{coding:?}");
            let inflated = inflate(&compressed, coding, 200_000)
                .await
                .expect("inflates");
            assert_eq!(inflated.len(), message.len());
            assert!(inflate(&compressed, coding, 50_000).await.is_err());
        }
    }

    #[test]
    fn envelopes_split_back_into_their_messages() {
        let mut body = envelope(0, b"one").to_vec();
        body.extend_from_slice(&envelope(1, b"two"));
        let messages = split(Bytes::from(body)).expect("splits");
        assert_eq!(messages.len(), 2);
        assert_eq!(&messages[1].message[..], b"two");
        assert_eq!(messages[1].flags, 1);
        assert!(split(Bytes::from_static(b"\0\0\0\0\x09abc")).is_err());
    }

    #[test]
    fn the_first_accepted_coding_the_gateway_writes_is_chosen() {
        assert_eq!(Coding::preferred("snappy, zstd, gzip"), Some(Coding::Zstd));
        assert_eq!(Coding::preferred("identity"), None);
        // `q=0` is "not acceptable", however it is written.
        assert_eq!(Coding::preferred("gzip;q=0"), None);
        assert_eq!(Coding::preferred("gzip; Q=0.000, br"), Some(Coding::Brotli));
        assert_eq!(Coding::preferred("gzip;q=0.5"), Some(Coding::Gzip));
        assert_eq!(Coding::named("lz4").map_err(|_| ()), Err(()));
    }
}
