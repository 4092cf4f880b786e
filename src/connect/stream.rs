//! The answer half of a Connect server stream: each message the method's direct call yields,
//! already written in the request's codec, becomes one envelope as it arrives (compressed per
//! message when the client accepts a coding and the message is large enough), and the stream
//! ends with the end-of-stream message: `{}`, or the error that ended the method's stream, or
//! `deadline_exceeded` at `Connect-Timeout-Ms`.

use std::convert::Infallible;

use axum::{
    body::Body,
    http::{HeaderValue, header},
    response::Response,
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tonic::Code;

use super::{
    envelope::{self, Coding},
    internal, status,
};
use crate::{
    answer::connect,
    rest::direct::{ItemError, Items},
};

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

/// The streamed answer: HTTP 200 at once, then envelopes as the method yields messages.
pub fn respond(mut items: Items, writer: Writer) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let json = writer.json;
    let compression = writer.compression;
    tokio::spawn(async move {
        let deadline = async {
            match writer.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let end: Option<tonic::Status> = loop {
            let item = tokio::select! {
                item = items.next() => item,
                () = &mut deadline => break Some(status(
                    Code::DeadlineExceeded,
                    "DEADLINE_EXCEEDED",
                    "the stream reached its Connect-Timeout-Ms",
                )),
            };
            let message = match item {
                None => break None,
                Some(Ok(message)) => message,
                Some(Err(ItemError::Status(status))) => break Some(status),
                Some(Err(ItemError::Unwritable(detail))) => break Some(internal(detail)),
            };
            match writer.envelope(message).await {
                Ok(envelope) => {
                    if tx.send(Ok(envelope)).await.is_err() {
                        // The client went away; dropping the items ends the method's stream.
                        return;
                    }
                }
                Err(status) => break Some(status),
            }
        };
        let _ = tx.send(Ok(connect::end_stream(end.as_ref()))).await;
    });
    let mut response = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
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
