//! The answer half of a Connect server stream: each gRPC message, as it arrives, becomes one
//! envelope in the request's codec (compressed per message when the client accepts a coding
//! and the message is large enough), and the stream ends with the end-of-stream message: `{}`,
//! or the error the gRPC trailers carried, or `deadline_exceeded` at `Connect-Timeout-Ms`.

use std::convert::Infallible;

use axum::{
    body::Body,
    http::{HeaderValue, header},
    response::Response,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tonic::Code;

use super::{
    envelope::{self, Coding},
    internal, status,
};
use crate::{
    answer::connect,
    rest::{direct::WriteJson, framing::FrameDecoder},
};

/// How the stream's messages are written.
pub struct Writer {
    /// The method's typed codec of one answer, protobuf to JSON.
    pub json_answer: WriteJson,
    pub json: bool,
    /// The coding the client accepts (`Connect-Accept-Encoding`), if the gateway writes one.
    pub compression: Option<Coding>,
    pub compression_min_bytes: usize,
    /// When the client's `Connect-Timeout-Ms` runs out.
    pub deadline: Option<tokio::time::Instant>,
}

impl Writer {
    /// One gRPC message as one envelope.
    async fn envelope(&self, payload: Bytes) -> Result<Bytes, tonic::Status> {
        let message = if self.json {
            Bytes::from((self.json_answer)(&payload).map_err(|err| {
                internal(format!(
                    "writing a message of the gRPC stream as JSON: {err}"
                ))
            })?)
        } else {
            payload
        };
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

/// The streamed answer: HTTP 200 at once, then envelopes as the gRPC stream yields messages.
pub fn respond(mut body: Body, writer: Writer) -> Response {
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
        let mut frames = FrameDecoder::default();
        let end: Option<tonic::Status> = loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = &mut deadline => break Some(status(
                    Code::DeadlineExceeded,
                    "DEADLINE_EXCEEDED",
                    "the stream reached its Connect-Timeout-Ms",
                )),
            };
            let Some(frame) = frame else { break None };
            let frame = match frame {
                Ok(frame) => frame,
                Err(err) => break Some(internal(format!("reading the gRPC stream: {err}"))),
            };
            match frame.into_data() {
                Ok(data) => {
                    frames.push(&data);
                    loop {
                        match frames.next_message() {
                            Ok(Some(payload)) => match writer.envelope(payload).await {
                                Ok(envelope) => {
                                    if tx.send(Ok(envelope)).await.is_err() {
                                        // The client went away; dropping the body ends the call.
                                        return;
                                    }
                                }
                                Err(status) => {
                                    let _ = tx.send(Ok(connect::end_stream(Some(&status)))).await;
                                    return;
                                }
                            },
                            Ok(None) => break,
                            Err(err) => {
                                let status = internal(err.to_string());
                                let _ = tx.send(Ok(connect::end_stream(Some(&status)))).await;
                                return;
                            }
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        break crate::rest::framing::error_status(&trailers);
                    }
                }
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
