//! gRPC framing of REST's in-process calls (a transcoder built without the direct table): the request goes out as one
//! length-prefixed frame (a flag byte, a 4-byte big-endian length, the protobuf message), and
//! the answer's frames are taken apart by one decoder, whether the answer is one message (unary)
//! or a stream. The answer's `grpc-status` is read here too. Nothing here knows JSON or REST:
//! its errors are its own, which the caller turns into problems.

use axum::http::HeaderMap;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use prost_reflect::DynamicMessage;

/// A frame's prefix: the compressed flag, then the message's length.
const PREFIX: usize = 5;

/// Why the request could not be framed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EncodeError {
    /// The message's length does not fit the prefix's four bytes.
    #[error("request too large")]
    TooLarge,
    #[error("encoding the request: {0}")]
    Message(#[from] prost::EncodeError),
}

/// Why the answer's frames could not be taken apart.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// No message where one was due, or a compressed one: the in-process call never offers
    /// compression, so the service never uses it.
    #[error("the gRPC answer was not one uncompressed message")]
    NotOneMessage,
    #[error("the gRPC answer was cut short")]
    CutShort,
}

/// The request body of the in-process call: one message, one uncompressed frame.
pub(crate) fn encode(message: &DynamicMessage) -> Result<Bytes, EncodeError> {
    let length = message.encoded_len();
    let mut frame = BytesMut::with_capacity(PREFIX + length);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(length).map_err(|_| EncodeError::TooLarge)?);
    message.encode(&mut frame)?;
    Ok(frame.freeze())
}

/// Takes messages out of an answer's bytes, which may arrive in pieces that split a frame
/// anywhere (a stream's data frames), or all at once (a unary answer).
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    /// Bytes received and not yet taken out as messages: at most one incomplete frame once
    /// `next_message` has returned `None`.
    buffer: BytesMut,
}

impl From<Bytes> for FrameDecoder {
    fn from(data: Bytes) -> Self {
        // Reuses `data`'s memory when nothing else shares it, and copies it otherwise.
        Self {
            buffer: BytesMut::from(data),
        }
    }
}

impl FrameDecoder {
    /// Adds the next piece of the answer.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// Takes one complete message out of the buffer, if it holds one; `None` until more bytes
    /// arrive.
    pub(crate) fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < PREFIX {
            return Ok(None);
        }
        if self.buffer[0] != 0 {
            return Err(FrameError::NotOneMessage);
        }
        let length = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if self.buffer.len() < PREFIX + length {
            return Ok(None);
        }
        self.buffer.advance(PREFIX);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}

/// The one message of a complete unary answer (bytes after it are ignored).
pub(crate) fn single_message(data: Bytes) -> Result<Bytes, FrameError> {
    let mut decoder = FrameDecoder::from(data);
    match decoder.next_message()? {
        Some(message) => Ok(message),
        None if decoder.buffer.len() < PREFIX => Err(FrameError::NotOneMessage),
        None => Err(FrameError::CutShort),
    }
}

/// The status of a complete answer: its trailers', or, for a trailers-only answer (any error),
/// its headers'. `None` when neither carries a `grpc-status`.
pub(crate) fn status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<tonic::Status> {
    trailers
        .and_then(tonic::Status::from_header_map)
        .or_else(|| tonic::Status::from_header_map(headers))
}

/// The error status in `headers` (a stream's trailers, or the headers of a trailers-only
/// answer); `None` when they carry none or an OK one.
pub(crate) fn error_status(headers: &HeaderMap) -> Option<tonic::Status> {
    tonic::Status::from_header_map(headers).filter(|status| status.code() != tonic::Code::Ok)
}
