//! The protobuf codec of every generated service and client: prost's encoder, and a decoder
//! that, for a call served through the layer stack, first walks the wire bytes against the
//! message's descriptor, estimates what decoding will build, and charges it to the call's
//! memory budget (`budget`) before anything is allocated.
//!
//! Why: each entry of a repeated message field costs two bytes on the wire (`2a 00`) and a
//! whole struct once decoded, so a 16 MiB body of empty entries would take over a gigabyte.
//! Decoding errors are the caller's fault: INVALID_ARGUMENT, not prost's INTERNAL. A decoded
//! message is then held to the rules its proto declares (`validate`), so every protocol that
//! reaches a service is checked by the same code before the service sees the request.

use std::{marker::PhantomData, sync::LazyLock};

use bytes::Buf;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstCodec;

use crate::{
    answer::{malformed_protobuf, request_over_budget},
    budget,
};

pub mod validate;

use validate::Validate;

/// What one decoded message instance is counted as, in bytes: at least the size of the largest
/// struct the API decodes (a unit test holds it to that), plus its allocation's overhead.
pub const MESSAGE_COST: usize = 256;

/// Nesting deeper than prost decodes is refused by the walk as well.
const MAX_DEPTH: u32 = 100;

static POOL: LazyLock<Option<DescriptorPool>> = LazyLock::new(|| crate::descriptors::pool().ok());

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
    U: Message + Name + Default + Validate + Send + 'static,
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

/// Charges the current call's budget with what decoding `wire` as `descriptor`'s message will
/// build, before anything is built; nothing outside a served call (a client reading an answer).
/// The gRPC decoder and REST's direct call both charge through here.
pub fn charge_decoding(descriptor: &MessageDescriptor, wire: &[u8]) -> Result<(), Status> {
    if budget::charge(0).is_none() {
        return Ok(());
    }
    let mut estimate = decoded_size(descriptor, wire).map_err(Status::from)?;
    // A compressed message was inflated by tonic (into at most the decoding limit) after its
    // compressed bytes were charged: the inflated ones count as well.
    if budget::inflated() {
        estimate = estimate.saturating_add(wire.len());
    }
    match budget::charge(estimate) {
        None | Some(Ok(())) => Ok(()),
        // With its reason, so REST says 413 (never fits) or 503 (retry), as for a body.
        Some(Err(exhausted)) => Err(request_over_budget(
            exhausted,
            &format!("decoding this message would take about {estimate} bytes"),
        )),
    }
}

impl<U: Message + Default + Validate> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Some(descriptor) = &self.descriptor {
            // tonic hands over the whole message in one contiguous buffer.
            let wire = buf.chunk();
            if wire.len() == buf.remaining() {
                charge_decoding(descriptor, wire)?;
            }
        }
        let message = U::decode(buf).map_err(not_protobuf)?;
        message.validate()?;
        Ok(Some(message))
    }
}

/// One request message decoded as the gRPC decoder decodes it, for a protocol that hands the
/// service its protobuf directly (Connect's `proto` codec): charged to the call's budget
/// before anything is built, then decoded and held to the protos' rules.
pub fn decode_request<U: Message + Name + Default + Validate>(wire: &[u8]) -> Result<U, Status> {
    if let Some(descriptor) = POOL
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(&U::full_name()))
    {
        charge_decoding(&descriptor, wire)?;
    }
    let message = U::decode(wire).map_err(not_protobuf)?;
    message.validate()?;
    Ok(message)
}

fn not_protobuf(err: prost::DecodeError) -> Status {
    malformed_protobuf(err)
}

/// Why a message was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeRefusal {
    #[error("{0}")]
    Malformed(&'static str),
}

impl From<DecodeRefusal> for Status {
    fn from(refusal: DecodeRefusal) -> Self {
        malformed_protobuf(refusal)
    }
}

/// About what decoding `wire` as a `descriptor` message builds, in bytes: [`MESSAGE_COST`] per
/// message instance (map entries included) plus the length of every length-delimited scalar.
pub fn decoded_size(descriptor: &MessageDescriptor, wire: &[u8]) -> Result<usize, DecodeRefusal> {
    let mut walk = Walk { estimate: 0 };
    walk.message(descriptor, wire, 0)?;
    Ok(walk.estimate)
}

struct Walk {
    estimate: usize,
}

impl Walk {
    fn charge(&mut self, bytes: usize) {
        self.estimate = self.estimate.saturating_add(bytes);
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
        self.charge(MESSAGE_COST);
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
                        _ => self.charge(len),
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
