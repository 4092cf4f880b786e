//! gRPC framing of the transcoder's in-process call: each message travels as one
//! length-prefixed frame (a flag byte, a 4-byte big-endian length, the protobuf message).
//! Nothing here knows JSON or REST.

use bytes::{Buf, Bytes, BytesMut};

/// Takes one complete gRPC message out of the buffer, if it holds one.
pub(super) fn next_message(buffer: &mut BytesMut) -> Option<Bytes> {
    if buffer.len() < 5 {
        return None;
    }
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + length {
        return None;
    }
    buffer.advance(5);
    Some(buffer.split_to(length).freeze())
}
