//! gRPC-Web bodies must be protobuf (`application/grpc-web`, `+proto`, `-text`): a browser
//! client set to JSON (`application/grpc-web+json`) is refused in gRPC-Web's own terms, a
//! `grpc-status` with a message it can show, never the empty 400 tonic-web would answer. The
//! same for gRPC with a codec other than protobuf. JSON is REST's (`/v1/…`). Framing that
//! tonic refuses as INTERNAL though the caller is at fault is answered INVALID_ARGUMENT, and so
//! is a second request message on a call that takes one (tonic would drop it unread), in any
//! letter case of the media type and through gRPC-Web text's base64.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, Request, Response, header},
};
use bytes::Bytes;
use http_body::Frame;
use tonic::{Code, Status};

use super::guard::{Exempt, Policy};
use crate::{
    answer::Rejection,
    extensions::names::{self, GRPC_STATUS},
};

/// The content types of gRPC and gRPC-Web bodies the services decode.
fn is_protobuf_grpc(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc-web",
        "application/grpc-web+proto",
        "application/grpc-web-text",
        "application/grpc-web-text+proto",
    ]
    .iter()
    .any(|served| essence.eq_ignore_ascii_case(served))
}

/// Whether `text` begins with `prefix`, in any letter case (media types are case-insensitive).
fn starts_with_any_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Refuses gRPC and gRPC-Web bodies in any codec but protobuf.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtobufOnly;

impl Policy for ProtobufOnly {
    /// Set when the body's second message was refused.
    type Admitted = Option<Arc<AtomicBool>>;
    const EXEMPT: Exempt = Exempt::Nothing;

    fn check(&self, request: &mut Request<Body>) -> Result<Self::Admitted, Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let grpc = starts_with_any_case(content_type.trim_start(), "application/grpc");
        if grpc && !is_protobuf_grpc(content_type) {
            let message = format!(
                "{content_type} bodies are not served: use protobuf (application/grpc-web+proto \
                 or application/grpc-web-text), or JSON over REST (/v1/…)"
            );
            return Err(Rejection::new(
                Code::Unimplemented,
                "UNSUPPORTED_CODEC",
                message,
            ));
        }
        if !grpc || request.uri().path().starts_with(STREAMING_REQUESTS) {
            return Ok(None);
        }
        let text = starts_with_any_case(content_type.trim_start(), "application/grpc-web-text");
        let refused = Arc::new(AtomicBool::new(false));
        let body = std::mem::take(request.body_mut());
        *request.body_mut() = Body::new(OneMessage::new(body, Arc::clone(&refused), text));
        Ok(Some(refused))
    }

    fn answered(&self, refused: Self::Admitted, mut response: Response<Body>) -> Response<Body> {
        // tonic-web words the refusal as its own error, with the status's debug text: answer
        // it in the refusal's words.
        if refused.is_some_and(|refused| refused.load(Ordering::Acquire)) {
            let headers = response.headers_mut();
            headers.remove("grpc-status-details-bin");
            // The status's own header writing (percent-encoded, as tonic writes it).
            let _ = second_message().add_header(headers);
            return response;
        }
        if is_framing_fault(response.headers()) {
            response
                .headers_mut()
                .insert(GRPC_STATUS, HeaderValue::from_static("3"));
        }
        response
    }
}

/// The one service whose calls stream requests (reflection); every other method, unary or
/// server-streaming, takes exactly one request message.
const STREAMING_REQUESTS: &str = "/grpc.reflection.";

pin_project_lite::pin_project! {
    /// A gRPC or gRPC-Web request body that may hold one length-prefixed message: the first
    /// byte of a second frame ends it with INVALID_ARGUMENT. gRPC-Web text is followed through
    /// its base64, four characters at a time.
    struct OneMessage {
        #[pin]
        inner: Body,
        frames: Frames,
        text: Option<Base64Quads>,
        refused: Arc<AtomicBool>,
    }
}

impl OneMessage {
    fn new(inner: Body, refused: Arc<AtomicBool>, text: bool) -> Self {
        Self {
            inner,
            frames: Frames::default(),
            text: text.then(Base64Quads::default),
            refused,
        }
    }
}

/// gRPC-Web text's base64 as it arrives, decoded a group of four characters at a time (a group
/// may straddle chunks). What does not decode is left to tonic-web to refuse: counting stops.
#[derive(Debug, Default)]
struct Base64Quads {
    quad: [u8; 4],
    held: usize,
    broken: bool,
}

impl Base64Quads {
    /// Follows the bytes `text` decodes to through `frames`.
    fn follow(&mut self, text: &[u8], frames: &mut Frames) -> Result<(), Status> {
        use base64::Engine;
        for &byte in text {
            if self.broken {
                return Ok(());
            }
            self.quad[self.held] = byte;
            self.held += 1;
            if self.held < self.quad.len() {
                continue;
            }
            self.held = 0;
            let mut bytes = [0u8; 3];
            match base64::engine::general_purpose::STANDARD.decode_slice(self.quad, &mut bytes) {
                Ok(len) => frames.follow(&bytes[..len])?,
                Err(_) => self.broken = true,
            }
        }
        Ok(())
    }
}

/// How a body holding a second request message is refused.
fn second_message() -> Status {
    Status::invalid_argument("this call takes one request message; the body holds more")
}

/// Where a body stands in its length-prefixed frames.
#[derive(Debug, Default)]
struct Frames {
    /// The frame header being read (flag and length), and how much of it has come.
    head: [u8; 5],
    head_read: usize,
    /// Message bytes of the current frame still to come.
    left: u64,
    /// A frame has begun.
    framed: bool,
}

impl Frames {
    /// Follows `data` through the frames; an error once a second frame begins.
    fn follow(&mut self, data: &[u8]) -> Result<(), Status> {
        let mut at = 0;
        while at < data.len() {
            if self.left > 0 {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - at);
                at += take;
                self.left -= take as u64;
                continue;
            }
            if self.head_read == 0 {
                if self.framed {
                    return Err(second_message());
                }
                self.framed = true;
            }
            self.head[self.head_read] = data[at];
            self.head_read += 1;
            at += 1;
            if self.head_read == self.head.len() {
                let [_, a, b, c, d] = self.head;
                self.left = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.head_read = 0;
            }
        }
        Ok(())
    }
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(status) = match this.text {
                Some(text) => text.follow(data, this.frames),
                None => this.frames.follow(data),
            }
        {
            this.refused.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(status))));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What tonic and tonic-web answer INTERNAL though the caller's framing is at fault (no
/// message, a length past the end, an unknown flag, a body that does not inflate, broken
/// base64), as `grpc-message` writes them (percent-encoded). Before any service runs, so the
/// status is in the answer's head. A compressed flag without `grpc-encoding` stays INTERNAL,
/// as gRPC's compression spec requires.
const FRAMING_FAULTS: [&str; 5] = [
    "Missing%20request%20message.",
    "Unexpected%20EOF%20decoding%20stream.",
    "protocol%20error:%20received%20message%20with%20invalid%20compression%20flag",
    "Error%20decompressing:",
    "tonic-web:",
];

fn is_framing_fault(headers: &HeaderMap) -> bool {
    headers
        .get(&GRPC_STATUS)
        .is_some_and(|status| status == "13")
        && headers
            .get(&names::GRPC_MESSAGE)
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| {
                FRAMING_FAULTS
                    .iter()
                    .any(|fault| message.starts_with(fault))
            })
}

#[cfg(test)]
mod tests {
    use super::{Frames, is_protobuf_grpc};

    /// gRPC-Web text: the frames are found through the base64, however its chunks cut the
    /// groups of four.
    #[test]
    fn a_second_frame_is_found_through_base64_text() {
        use base64::Engine;
        let frame = [0u8, 0, 0, 0, 2, 7, 7];
        let text = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let (one, two) = (text(&frame), text(&[frame, frame].concat()));
        for chunk in [1, 2, 3, 5, 64] {
            let (mut quads, mut frames) = (super::Base64Quads::default(), Frames::default());
            for piece in one.as_bytes().chunks(chunk) {
                assert!(quads.follow(piece, &mut frames).is_ok(), "{chunk}");
            }
            let (mut quads, mut frames) = (super::Base64Quads::default(), Frames::default());
            let refused = two
                .as_bytes()
                .chunks(chunk)
                .map(|piece| quads.follow(piece, &mut frames))
                .find(Result::is_err);
            assert!(refused.is_some(), "{chunk}");
        }
    }

    /// Frames are followed however the body's chunks cut them: a header split across chunks,
    /// an empty message, a message longer than a chunk.
    #[test]
    fn a_second_frame_is_found_wherever_the_chunks_cut() {
        let frame = |len: u32| {
            let mut frame = vec![0];
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend(std::iter::repeat_n(7u8, len as usize));
            frame
        };
        for len in [0, 1, 5, 300] {
            let one = frame(len);
            let two: Vec<u8> = [one.clone(), frame(2)].concat();
            for chunk in [1, 2, 3, 7, 64, 1000] {
                let mut frames = Frames::default();
                assert!(
                    one.chunks(chunk).all(|c| frames.follow(c).is_ok()),
                    "{len}/{chunk}"
                );
                let mut frames = Frames::default();
                let refused = two
                    .chunks(chunk)
                    .map(|c| frames.follow(c))
                    .find(Result::is_err);
                let status = refused.expect("refused").expect_err("an error");
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{len}/{chunk}");
            }
        }
    }

    #[test]
    fn only_protobuf_codecs_pass() {
        for served in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-web",
            "application/grpc-web+proto; charset=utf-8",
            "application/grpc-web-text",
        ] {
            assert!(is_protobuf_grpc(served), "{served}");
        }
        for refused in [
            "application/grpc-web+json",
            "application/grpc+json",
            "application/grpcx",
        ] {
            assert!(!is_protobuf_grpc(refused), "{refused}");
        }
    }
}
