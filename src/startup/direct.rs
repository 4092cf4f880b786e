//! The table of direct calls (`rest::direct`), REST's and Connect's: every RPC of the API,
//! mapped to its service's method on the very instances gRPC serves. Each call passes the
//! scope policy on the way in and is settled with its outcome, as the gRPC paths' guard does;
//! start-up fails when a REST route or an RPC has no entry, so a new RPC cannot quietly take
//! a slower path. The request is charged to the budget and held to the protos' rules
//! (`codec`) as the gRPC decoder does it. A JSON body is read by the method's typed codec
//! (pbjson's, generated from the protos); what that codec refuses goes back to be parsed by
//! the descriptors, before the call is admitted, so nothing is counted twice. Protobuf
//! (Connect's `proto` codec) is decoded as the gRPC decoder decodes it
//! (`codec::decode_request`).

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage as _};
use tonic::{Code, Status};

use crate::{
    codec::{charge_decoding, decode_request, validate::Validate},
    grpc::{EventApi, MessageApi, StatsApi, StreamApi, TopicApi},
    identity::Access,
    layers::Scopes,
    proto::{
        self, event_service_server::EventService, message_service_server::MessageService,
        stats_service_server::StatsService, stream_service_server::StreamService,
        topic_service_server::TopicService,
    },
    rest::{
        self, RouteTable,
        direct::{
            Answer, Call, Direct, Failure, Input, ItemError, Items, ItemsAs, JsonCodec, Output,
            Reply, StreamCall,
        },
    },
};

/// The service instances the table calls.
pub struct Services {
    pub streams: Arc<StreamApi>,
    pub topics: Arc<TopicApi>,
    pub messages: Arc<MessageApi>,
    pub events: Arc<EventApi>,
    pub stats: Arc<StatsApi>,
}

/// What a method's request type is: decoded from protobuf (charged, then validated) or read
/// from JSON by its typed codec, and sent to the method's task.
trait TypedRequest:
    prost::Message + prost::Name + Default + Validate + serde::de::DeserializeOwned + Send + 'static
{
}

impl<T> TypedRequest for T where
    T: prost::Message
        + prost::Name
        + Default
        + Validate
        + serde::de::DeserializeOwned
        + Send
        + 'static
{
}

/// How a large answer of a method is written piece by piece: its list taken out, then written
/// around (`rest::typed_json_pieces`).
type InPieces<Res> = fn(Res) -> Result<Body, String>;

/// One unary method as a direct call: the request message becomes the method's typed input,
/// its answer protobuf again, or its JSON (in pieces when large and `pieces` says how).
fn unary<Req, Res, F, Fut>(
    scopes: &Scopes,
    path: &'static str,
    method: F,
    pieces: Option<InPieces<Res>>,
) -> (&'static str, Call, JsonCodec)
where
    Req: TypedRequest,
    Res: prost::Message + Default + serde::Serialize + Send + 'static,
    F: Fn(tonic::Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Res>, Status>> + Send + 'static,
{
    let scopes = scopes.clone();
    let method = Arc::new(method);
    let call: Call = Arc::new(move |request: tonic::Request<Input>, answer_as: Answer| {
        let (request, access) = match admitted::<Req>(&scopes, path, request) {
            Ok(admitted) => admitted,
            Err(failure) => {
                return Box::pin(std::future::ready(Err(failure)))
                    as Pin<Box<dyn Future<Output = Reply> + Send>>;
            }
        };
        let (scopes, method) = (scopes.clone(), Arc::clone(&method));
        Box::pin(async move {
            let answer = settled(&scopes, &access, called(request, &*method).await?)?;
            let (metadata, typed, extensions) = answer.into_parts();
            let unwritable = |err: String| Failure::Unwritable(format!("{path}: {err}"));
            let output = match (answer_as, pieces) {
                (Answer::Written, Some(pieces)) if typed.encoded_len() > rest::PIECES_ABOVE => {
                    Output::Json(pieces(typed).map_err(unwritable)?)
                }
                (Answer::Written, _) => Output::Json(Body::from(
                    rest::typed_json_bytes(&typed).map_err(unwritable)?,
                )),
                (Answer::ToRead, _) => {
                    Output::ToRead(rest::typed_json_bytes(&typed).map_err(unwritable)?)
                }
                (Answer::Protobuf, _) => Output::Protobuf(Bytes::from(typed.encode_to_vec())),
            };
            Ok(tonic::Response::from_parts(metadata, output, extensions))
        })
    });
    (path, call, json_codec::<Req, Res>())
}

/// One server-streaming method as a direct call: its answers are written as JSON by the typed
/// codec, or encoded as protobuf, one by one as the service yields them.
fn server_stream<Req, Res, F, Fut, St>(
    scopes: &Scopes,
    path: &'static str,
    method: F,
) -> (&'static str, StreamCall, JsonCodec)
where
    Req: TypedRequest,
    Res: prost::Message + Default + serde::Serialize + Send + 'static,
    F: Fn(tonic::Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<St>, Status>> + Send + 'static,
    St: Stream<Item = Result<Res, Status>> + Send + 'static,
{
    let scopes = scopes.clone();
    let method = Arc::new(method);
    let call: StreamCall = Arc::new(move |request: tonic::Request<Input>, items_as: ItemsAs| {
        let (request, access) = match admitted::<Req>(&scopes, path, request) {
            Ok(admitted) => admitted,
            Err(failure) => return Box::pin(std::future::ready(Err(failure))) as _,
        };
        let (scopes, method) = (scopes.clone(), Arc::clone(&method));
        Box::pin(async move {
            // As the gRPC guard settles a stream: by how it starts.
            let answer = settled(&scopes, &access, called(request, &*method).await?)?;
            let (metadata, items, extensions) = answer.into_parts();
            let items: Items = Box::pin(items.map(move |item| {
                match (item, items_as) {
                    (Ok(item), ItemsAs::Json) => rest::typed_json_bytes(&item)
                        .map_err(|err| ItemError::Unwritable(format!("{path}: {err}"))),
                    (Ok(item), ItemsAs::Protobuf) => Ok(item.encode_to_vec()),
                    (Err(status), _) => Err(ItemError::Status(status)),
                }
            }));
            Ok(tonic::Response::from_parts(metadata, items, extensions))
        }) as _
    });
    (path, call, json_codec::<Req, Res>())
}

/// The method's typed JSON codec, between JSON and protobuf (`Req` in, `Res` out).
fn json_codec<Req, Res>() -> JsonCodec
where
    Req: prost::Message + serde::de::DeserializeOwned,
    Res: prost::Message + Default + serde::Serialize,
{
    JsonCodec {
        request: request_from_json::<Req>,
        answer: answer_as_json::<Res>,
    }
}

/// What the direct call reads a JSON object as ([`typed_json`]), encoded.
fn request_from_json<Req: prost::Message + serde::de::DeserializeOwned>(
    json: &[u8],
) -> Option<Vec<u8>> {
    typed_json::<Req>(json, &[]).map(|typed| typed.encode_to_vec())
}

fn answer_as_json<Res: prost::Message + Default + serde::Serialize>(
    wire: &[u8],
) -> Result<Vec<u8>, String> {
    let typed = Res::decode(wire).map_err(|err| err.to_string())?;
    rest::typed_json_bytes(&typed)
}

/// A direct call's request, admitted by the scope policy: its typed message (or why it has
/// none, answered without calling the method), and the admission to settle. A JSON body
/// the typed codec does not take goes back before admission ([`Failure::Untyped`]), so the
/// call is admitted once, when its request is built by the descriptors.
#[allow(clippy::type_complexity)]
fn admitted<Req>(
    scopes: &Scopes,
    path: &'static str,
    request: tonic::Request<Input>,
) -> Result<(Result<tonic::Request<Req>, Failure>, Arc<Access>), Failure>
where
    Req: prost::Message + prost::Name + Default + Validate + serde::de::DeserializeOwned,
{
    let (metadata, mut extensions, input) = request.into_parts();
    let input = match input {
        // Charged for what it builds when REST inspected the body, before this.
        Input::Json { body, overlay } => match typed_json::<Req>(&body, &overlay) {
            Some(typed) => Typed::Built(typed),
            None => return Err(Failure::Untyped { body, overlay }),
        },
        Input::Message(message) => Typed::Dynamic(message),
        Input::Protobuf(wire) => Typed::Wire(wire),
    };
    // Admitted already when REST or Connect knew the method, before reading the request.
    let early = extensions
        .get::<Arc<Access>>()
        .filter(|access| access.rpc().path == path)
        .cloned();
    let admission = match early {
        Some(access) => Some(Ok(access)),
        None => scopes.admit_call(path, &mut extensions),
    };
    let access = match admission {
        Some(Ok(access)) => access,
        Some(Err(rejection)) => return Err(Failure::Refused(rejection)),
        // Every path in the table is an RPC of the API (checked at start-up).
        None => {
            return Err(Failure::Status(Status::unimplemented(format!(
                "unknown method {path}"
            ))));
        }
    };
    let typed = match input {
        Typed::Built(typed) => Ok(typed),
        // Validated as it is decoded, as the gRPC decoder does.
        Typed::Wire(wire) => {
            let request = decode_request::<Req>(&wire)
                .map(|typed| tonic::Request::from_parts(metadata, extensions, typed))
                .map_err(Failure::Status);
            return Ok((request, access));
        }
        // As the gRPC decoder does: charged to the budget before the typed message is built.
        Typed::Dynamic(message) => {
            let wire = message.encode_to_vec();
            charge_decoding(&message.descriptor(), &wire)
                .map_err(Failure::Status)
                .and_then(|()| {
                    // Same descriptors, so this cannot fail but for a bug; said as INTERNAL.
                    Req::decode(wire.as_slice())
                        .map_err(|err| Failure::Status(Status::internal(format!("{path}: {err}"))))
                })
        }
    };
    let request = typed.and_then(|typed| {
        typed.validate().map_err(Failure::Status)?;
        Ok(tonic::Request::from_parts(metadata, extensions, typed))
    });
    Ok((request, access))
}

/// The method's answer to an admitted call, or the status its request was refused with
/// (over the budget, not protobuf, against the protos' rules), which settles the call as the
/// gRPC guard settles a call its decoder refused: counted and, for an admin call, audited.
async fn called<Req, Res, F, Fut>(
    request: Result<tonic::Request<Req>, Failure>,
    method: &F,
) -> Result<Result<tonic::Response<Res>, Status>, Failure>
where
    F: Fn(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Res>, Status>>,
{
    match request {
        Ok(request) => Ok(method(request).await),
        Err(Failure::Status(status)) => Ok(Err(status)),
        Err(failure) => Err(failure),
    }
}

/// Settles an admitted call with the code its method answered: the answer, or why there is
/// none (the method's status, or the policy's refusal of a success it did not check).
fn settled<T>(
    scopes: &Scopes,
    access: &Access,
    answer: Result<tonic::Response<T>, Status>,
) -> Result<tonic::Response<T>, Failure> {
    let code = answer.as_ref().map_or_else(Status::code, |_| Code::Ok);
    scopes.settle_call(access, code).map_err(Failure::Refused)?;
    answer.map_err(Failure::Status)
}

/// A request ready for its method: built by the typed codec, parsed by the descriptors, or
/// protobuf to decode.
enum Typed<Req> {
    Built(Req),
    Dynamic(DynamicMessage),
    Wire(Bytes),
}

/// The typed request from a JSON object and the encoded path and query fields; `None` when the
/// codec does not take the JSON (the descriptors then say why, or take it).
fn typed_json<Req: prost::Message + serde::de::DeserializeOwned>(
    body: &[u8],
    overlay: &[u8],
) -> Option<Req> {
    let mut typed: Req = serde_json::from_slice(body).ok()?;
    typed.merge(overlay).ok()?;
    Some(typed)
}

/// How an answer is written in pieces: not at all, or around its list `$field`.
macro_rules! in_pieces {
    () => {
        None
    };
    ($answer:ident . $field:ident) => {
        Some(|mut answer: proto::$answer| {
            let items = std::mem::take(&mut answer.$field);
            rest::typed_json_pieces(&answer, stringify!($field), items)
        })
    };
}

/// `Service/Method` (under the API's package), the trait, its method, and the instance; and
/// the list a large answer is written around, piece by piece.
macro_rules! entries {
    ($scopes:expr; $($service:literal / $method:literal => $trait:ident :: $fn:ident on $api:expr $(, in pieces of $answer:ident . $field:ident)?;)*) => {
        vec![$({
            let api = Arc::clone(&$api);
            unary(
                $scopes,
                concat!("/iggy.gateway.v1.", $service, "/", $method),
                move |request| {
                    let api = Arc::clone(&api);
                    async move { $trait::$fn(&*api, request).await }
                },
                in_pieces!($($answer . $field)?),
            )
        }),*]
    };
}

/// Every unary RPC of the API, and its server streams; fails when a route of `table` has none.
/// Beside them, each method's typed JSON codec on its own, by gRPC path (for the tests that
/// hold it to the descriptors). Public for the fuzz targets, which call the services as REST
/// does.
pub fn table(
    scopes: &Scopes,
    services: &Services,
    table: &RouteTable,
) -> Result<(Direct, HashMap<String, JsonCodec>), String> {
    let entries = entries![scopes;
        "StreamService" / "CreateStream" => StreamService::create_stream on services.streams;
        "StreamService" / "GetStream" => StreamService::get_stream on services.streams;
        "StreamService" / "ListStreams" => StreamService::list_streams on services.streams;
        "StreamService" / "UpdateStream" => StreamService::update_stream on services.streams;
        "StreamService" / "DeleteStream" => StreamService::delete_stream on services.streams;
        "StreamService" / "PurgeStream" => StreamService::purge_stream on services.streams;
        "TopicService" / "CreateTopic" => TopicService::create_topic on services.topics;
        "TopicService" / "GetTopic" => TopicService::get_topic on services.topics;
        "TopicService" / "ListTopics" => TopicService::list_topics on services.topics;
        "TopicService" / "UpdateTopic" => TopicService::update_topic on services.topics;
        "TopicService" / "DeleteTopic" => TopicService::delete_topic on services.topics;
        "TopicService" / "PurgeTopic" => TopicService::purge_topic on services.topics;
        "TopicService" / "CreatePartitions" => TopicService::create_partitions on services.topics;
        "TopicService" / "DeletePartitions" => TopicService::delete_partitions on services.topics;
        "MessageService" / "SendMessages" => MessageService::send_messages on services.messages;
        "MessageService" / "PollMessages" => MessageService::poll_messages on services.messages, in pieces of PollMessagesResponse.messages;
        "MessageService" / "StoreConsumerOffset" => MessageService::store_consumer_offset on services.messages;
        "MessageService" / "GetConsumerOffset" => MessageService::get_consumer_offset on services.messages;
        "MessageService" / "DeleteConsumerOffset" => MessageService::delete_consumer_offset on services.messages;
        "EventService" / "PublishEvent" => EventService::publish_event on services.events;
        "EventService" / "PublishEvents" => EventService::publish_events on services.events;
        "EventService" / "PollEvents" => EventService::poll_events on services.events, in pieces of PollEventsResponse.messages;
        "StatsService" / "GetStats" => StatsService::get_stats on services.stats;
    ];
    let streams = [{
        let messages = Arc::clone(&services.messages);
        server_stream(
            scopes,
            "/iggy.gateway.v1.MessageService/Subscribe",
            move |request| {
                let messages = Arc::clone(&messages);
                async move { MessageService::subscribe(&*messages, request).await }
            },
        )
    }];
    let mut direct = Direct::default();
    let admission = scopes.clone();
    direct.set_admission(Arc::new(move |path, extensions| {
        admission
            .admit_call(path, extensions)
            .map(|admitted| admitted.map(|_| ()))
    }));
    let mut codecs = HashMap::new();
    for (path, call, codec) in entries {
        if !scopes.knows(path) {
            return Err(format!("{path} has no required_scope entry"));
        }
        direct.insert(path, call);
        codecs.insert(path.to_owned(), codec);
    }
    for (path, call, codec) in streams {
        if !scopes.knows(path) {
            return Err(format!("{path} has no required_scope entry"));
        }
        direct.insert_stream(path, call);
        codecs.insert(path.to_owned(), codec);
    }
    for route in table.routes() {
        let missing = if route.method.is_server_streaming() {
            direct.stream(&route.grpc_path).is_none()
        } else {
            direct.get(&route.grpc_path).is_none()
        };
        if missing {
            return Err(format!(
                "the REST route {} {} ({}) has no direct call in startup/direct.rs",
                route.http_method, route.template, route.grpc_path
            ));
        }
    }
    Ok((direct, codecs))
}
