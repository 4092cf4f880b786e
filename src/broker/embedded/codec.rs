//! How values become bytes in the store: postcard for the metadata records and the message
//! headers, and the message record's own fixed layout (see [`encode_message`]).
//!
//! Knows nothing of tables or transactions, so the writer and the readers share one encoding.

use bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};

use crate::broker::{BrokerError, BrokerResult, Headers, NewMessage, StoredMessage};

const MESSAGE_RECORD_VERSION: u8 = 1;
/// version + timestamp + id + headers length.
const MESSAGE_FIXED_LEN: usize = 1 + 8 + 16 + 4;

pub(super) fn encode<T: Serialize>(value: &T) -> BrokerResult<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|err| BrokerError::Storage(format!("encode: {err}")))
}

pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, redb::Error> {
    postcard::from_bytes(bytes)
        .map_err(|err| redb::Error::Corrupted(format!("undecodable record: {err}")))
}

/// Message record layout (all integers little-endian):
/// `version:u8 | timestamp_micros:u64 | id:u128 | headers_len:u32 | headers (postcard) | payload`.
/// The payload is last and unframed so it is copied out in one piece.
pub(super) fn encode_message(timestamp: u64, message: &NewMessage) -> BrokerResult<Vec<u8>> {
    let headers = if message.headers.is_empty() {
        Vec::new()
    } else {
        encode(&message.headers)?
    };
    let headers_len = u32::try_from(headers.len())
        .map_err(|_| BrokerError::Storage("headers too large to store".into()))?;
    // Written straight into the Vec the store takes, so the payload is copied once.
    let mut out = Vec::with_capacity(MESSAGE_FIXED_LEN + headers.len() + message.payload.len());
    out.put_u8(MESSAGE_RECORD_VERSION);
    out.put_u64_le(timestamp);
    out.put_u128_le(message.id);
    out.put_u32_le(headers_len);
    out.put_slice(&headers);
    out.put_slice(&message.payload);
    Ok(out)
}

pub(super) fn decode_message(offset: u64, record: &[u8]) -> Result<StoredMessage, redb::Error> {
    let (message, payload_at) = decode_head(offset, record)?;
    Ok(StoredMessage {
        payload: Bytes::copy_from_slice(&record[payload_at..]),
        ..message
    })
}

/// [`decode_message`] for a record held as `Bytes` (the store in memory): the payload is a
/// slice of the record, not a copy.
pub(super) fn decode_shared(offset: u64, record: &Bytes) -> Result<StoredMessage, redb::Error> {
    let (message, payload_at) = decode_head(offset, record)?;
    Ok(StoredMessage {
        payload: record.slice(payload_at..),
        ..message
    })
}

/// Everything but the payload, and where the payload starts.
fn decode_head(offset: u64, record: &[u8]) -> Result<(StoredMessage, usize), redb::Error> {
    let corrupt =
        |what: &str| redb::Error::Corrupted(format!("message at offset {offset}: {what}"));
    let mut rest = record;
    if rest.len() < MESSAGE_FIXED_LEN {
        return Err(corrupt("record too short"));
    }
    if rest.get_u8() != MESSAGE_RECORD_VERSION {
        return Err(corrupt("unknown record version"));
    }
    let timestamp_micros = rest.get_u64_le();
    let id = rest.get_u128_le();
    let headers_len = rest.get_u32_le() as usize;
    if rest.len() < headers_len {
        return Err(corrupt("headers cut short"));
    }
    let header_bytes = &rest[..headers_len];
    let headers: Headers = if header_bytes.is_empty() {
        Headers::new()
    } else {
        decode(header_bytes)?
    };
    let message = StoredMessage {
        offset,
        timestamp_micros,
        id,
        headers,
        payload: Bytes::new(),
    };
    Ok((message, MESSAGE_FIXED_LEN + headers_len))
}
