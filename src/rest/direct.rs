//! REST's direct call: a unary RPC's request message handed to the service's method as a
//! `tonic::Request` (the same metadata and extensions the in-process gRPC call would carry),
//! with no protobuf framing, no second HTTP request and no router in between. The table is built
//! where the services are (`startup`), each entry guarded by the same scope policy as the gRPC
//! paths; a method without an entry is called in process over gRPC, as before.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use prost_reflect::DynamicMessage;

use crate::answer::Rejection;

/// Why a direct call has no answer: the service's own status, or the scope policy's refusal
/// (answered as the gRPC path would answer it, so REST renders both alike).
pub enum Failure {
    Status(tonic::Status),
    Refused(Rejection),
}

pub type Reply = Result<tonic::Response<DynamicMessage>, Failure>;

/// One unary method: takes the request message (of the method's input type) and answers one
/// message of its output type.
pub type Call = Arc<
    dyn Fn(tonic::Request<DynamicMessage>) -> Pin<Box<dyn Future<Output = Reply> + Send>>
        + Send
        + Sync,
>;

/// The unary methods REST calls directly, by gRPC path (`/package.Service/Method`).
#[derive(Clone, Default)]
pub struct Direct(HashMap<String, Call>);

impl Direct {
    pub fn insert(&mut self, path: impl Into<String>, call: Call) {
        self.0.insert(path.into(), call);
    }

    pub fn get(&self, path: &str) -> Option<&Call> {
        self.0.get(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}
