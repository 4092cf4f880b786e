//! The answer half of a Connect server stream: each message the method's direct call yields,
//! already written in the request's codec, becomes one envelope as it arrives (compressed per
//! message when the client accepts a coding and the message is large enough), and the stream
//! ends with the end-of-stream message: `{}`, or the error that ended the method's stream, or
//! `deadline_exceeded` at `Connect-Timeout-Ms`.

use std::{convert::Infallible, future::Future, pin::Pin};

use axum::{
    body::Body,
    http::{HeaderValue, header},
    response::Response,
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tonic::Code;

use super::{
    envelope::{self, Coding},
    internal, status,
};
use crate::{
    answer::connect,
    rest::direct::{ItemError, Items},
};

/// Where a stream stands: its items until it has ended (the end-of-stream message written),
/// how its messages are written, and its deadline.
struct Streaming {
    items: Option<Items>,
    writer: Writer,
    deadline: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// How the stream's messages are sent.
pub struct Writer {
    pub json: bool,
    /// The coding the client accepts (`Connect-Accept-Encoding`), if the gateway writes one.
    pub compression: Option<Coding>,
    pub compression_min_bytes: usize,
    /// When the client's `Connect-Timeout-Ms` runs out.
    pub deadline: Option<tokio::time::Instant>,
}

impl Writer {
    /// One message, in the request's codec, as one envelope.
    async fn envelope(&self, message: Vec<u8>) -> Result<Bytes, tonic::Status> {
        match self.compression {
            Some(coding) if message.len() >= self.compression_min_bytes => {
                let compressed = envelope::deflate(&message, coding)
                    .await
                    .map_err(|err| internal(format!("compressing a message: {err}")))?;
                Ok(envelope::envelope(envelope::COMPRESSED, &compressed))
            }
            _ => Ok(envelope::envelope(0, &message)),
        }
    }
}

/// The streamed answer: HTTP 200 at once, then envelopes as the method yields messages,
/// written as the connection takes them (no task or buffer in between: a client gone drops
/// the method's stream at once).
pub fn respond(items: Items, writer: Writer) -> Response {
    let json = writer.json;
    let compression = writer.compression;
    let deadline: Pin<Box<dyn Future<Output = ()> + Send>> = match writer.deadline {
        Some(deadline) => Box::pin(tokio::time::sleep_until(deadline)),
        None => Box::pin(std::future::pending()),
    };
    let state = Streaming {
        items: Some(items),
        writer,
        deadline,
    };
    let envelopes = futures_util::stream::unfold(state, |mut state| async move {
        let mut items = state.items.take()?;
        let item = tokio::select! {
            item = items.next() => item,
            () = &mut state.deadline => {
                let end = status(
                    Code::DeadlineExceeded,
                    "DEADLINE_EXCEEDED",
                    "the stream reached its Connect-Timeout-Ms",
                );
                return Some((Ok(connect::end_stream(Some(&end))), state));
            }
        };
        let end = match item {
            None => None,
            Some(Ok(message)) => match state.writer.envelope(message).await {
                Ok(envelope) => {
                    state.items = Some(items);
                    return Some((Ok::<_, Infallible>(envelope), state));
                }
                Err(status) => Some(status),
            },
            Some(Err(ItemError::Status(status))) => Some(status),
            Some(Err(ItemError::Unwritable(detail))) => Some(internal(detail)),
        };
        Some((Ok(connect::end_stream(end.as_ref())), state))
    });
    let mut response = Response::new(Body::from_stream(envelopes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, connect::stream_content_type(json));
    if let Some(coding) = compression {
        headers.insert(
            "connect-content-encoding",
            HeaderValue::from_static(coding.name()),
        );
    }
    headers.insert(
        "connect-accept-encoding",
        HeaderValue::from_static(envelope::ACCEPTED_CODINGS),
    );
    response
}
