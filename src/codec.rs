//! The protobuf codec of every generated service and client: prost's encoder, and a decoder
//! that first walks the wire bytes against the message's descriptor and refuses a message
//! whose decoded form would be out of proportion to its size, before anything is allocated.
//!
//! Why: each entry of a repeated message field costs two bytes on the wire (`2a 00`) and a
//! whole struct once decoded, so a 16 MiB body of empty entries would take over a gigabyte.
//! Decoding errors are the caller's fault: INVALID_ARGUMENT, not prost's INTERNAL.

use std::{marker::PhantomData, sync::LazyLock};

use bytes::Buf;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstCodec;

/// What one decoded message instance is counted as, in bytes: at least the size of the largest
/// struct the API decodes (a unit test holds it to that), plus its allocation's overhead.
pub const MESSAGE_COST: usize = 256;

/// A message may take at most this many times its wire size once decoded, plus
/// [`DECODE_ALLOWANCE`]; beyond, it is refused with RESOURCE_EXHAUSTED.
pub const DECODE_RATIO: usize = 2;

/// Room for small messages made of many small parts (a batch of tiny messages), in bytes.
pub const DECODE_ALLOWANCE: usize = 1024 * 1024;

/// Nesting deeper than prost decodes is refused by the walk as well.
const MAX_DEPTH: u32 = 100;

static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).ok());

/// prost's codec with a bounded decoder; named by `build.rs` as the codec of generated code.
#[derive(Debug)]
pub struct BoundedCodec<T, U> {
    prost: ProstCodec<T, U>,
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self {
            prost: ProstCodec::default(),
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            descriptor: POOL
                .as_ref()
                .and_then(|pool| pool.get_message_by_name(&U::full_name())),
            _type: PhantomData,
        }
    }
}

#[derive(Debug)]
pub struct BoundedDecoder<U> {
    /// `None` only for a type outside the API's descriptor set, which is then decoded unchecked.
    descriptor: Option<MessageDescriptor>,
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Some(descriptor) = &self.descriptor {
            // tonic hands over the whole message in one contiguous buffer.
            let wire = buf.chunk();
            if wire.len() == buf.remaining() {
                check(descriptor, wire).map_err(Status::from)?;
            }
        }
        U::decode(buf).map(Some).map_err(|err| {
            Status::invalid_argument(format!(
                "the request is not a valid protobuf message: {err}"
            ))
        })
    }
}

/// Why a message was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeRefusal {
    #[error(
        "the message would take about {estimate} bytes decoded, more than {limit} for its {wire} \
         bytes (many empty entries?)"
    )]
    TooExpensive {
        estimate: usize,
        limit: usize,
        wire: usize,
    },
    #[error("the message is not valid protobuf: {0}")]
    Malformed(&'static str),
}

impl From<DecodeRefusal> for Status {
    fn from(refusal: DecodeRefusal) -> Self {
        match refusal {
            DecodeRefusal::TooExpensive { .. } => Status::resource_exhausted(refusal.to_string()),
            DecodeRefusal::Malformed(_) => Status::invalid_argument(refusal.to_string()),
        }
    }
}

/// The most a message of `wire` bytes may take decoded.
pub fn decode_limit(wire: usize) -> usize {
    wire.saturating_mul(DECODE_RATIO)
        .saturating_add(DECODE_ALLOWANCE)
}

/// Walks `wire` as a `descriptor` message and refuses it if decoding would cost more than
/// [`decode_limit`]. Costs: [`MESSAGE_COST`] per message instance (map entries included) and
/// the length of every length-delimited scalar.
pub fn check(descriptor: &MessageDescriptor, wire: &[u8]) -> Result<(), DecodeRefusal> {
    let limit = decode_limit(wire.len());
    let mut walk = Walk { estimate: 0, limit };
    walk.message(descriptor, wire, 0)?;
    Ok(())
}

struct Walk {
    estimate: usize,
    limit: usize,
}

impl Walk {
    fn charge(&mut self, bytes: usize, wire: usize) -> Result<(), DecodeRefusal> {
        self.estimate = self.estimate.saturating_add(bytes);
        if self.estimate > self.limit {
            return Err(DecodeRefusal::TooExpensive {
                estimate: self.estimate,
                limit: self.limit,
                wire,
            });
        }
        Ok(())
    }

    fn message(
        &mut self,
        descriptor: &MessageDescriptor,
        mut bytes: &[u8],
        depth: u32,
    ) -> Result<(), DecodeRefusal> {
        if depth > MAX_DEPTH {
            return Err(DecodeRefusal::Malformed("nested too deeply"));
        }
        let wire = bytes.len();
        self.charge(MESSAGE_COST, wire)?;
        while !bytes.is_empty() {
            let key = varint(&mut bytes)?;
            let number = u32::try_from(key >> 3).map_err(|_| DecodeRefusal::Malformed("field"))?;
            match key & 7 {
                0 => {
                    varint(&mut bytes)?;
                }
                1 => bytes = skip(bytes, 8)?,
                5 => bytes = skip(bytes, 4)?,
                2 => {
                    let len = usize::try_from(varint(&mut bytes)?)
                        .map_err(|_| DecodeRefusal::Malformed("length"))?;
                    if len > bytes.len() {
                        return Err(DecodeRefusal::Malformed("a length past the end"));
                    }
                    let (field, rest) = bytes.split_at(len);
                    bytes = rest;
                    match descriptor.get_field(number).map(|f| f.kind()) {
                        Some(Kind::Message(inner)) => self.message(&inner, field, depth + 1)?,
                        _ => self.charge(len, wire)?,
                    }
                }
                _ => return Err(DecodeRefusal::Malformed("a group or an invalid wire type")),
            }
        }
        Ok(())
    }
}

fn varint(bytes: &mut &[u8]) -> Result<u64, DecodeRefusal> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or(DecodeRefusal::Malformed("a truncated varint"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeRefusal::Malformed("a varint over ten bytes"))
}

fn skip(bytes: &[u8], len: usize) -> Result<&[u8], DecodeRefusal> {
    bytes
        .get(len..)
        .ok_or(DecodeRefusal::Malformed("a truncated fixed-size field"))
}

#[cfg(test)]
mod tests;
