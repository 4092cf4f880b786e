//! `iggy.gateway.v1.EventService`: the original REST service's event envelope. An event is
//! checked by its type's rules (`event/model.rs`) and stored as one JSON message (the envelope
//! itself) whose id is the event's id.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::{
    UnaryAnswers,
    access::{Want, access_of, authorize, authorize_consumer, refund_failed, take},
    convert::{BODY_FORM_HEADER, identifier, message_id_text, timestamp},
    message::Limits,
    polls,
};
use crate::{
    answer::{broker_status, invalid_field},
    broker::{
        Broker, ConsumerOffsetRef, HeaderValue, Headers, Identifier, Name, NewMessage,
        Partitioning, PollMessages, PollingStrategy, SendMessages, TopicRef, now_micros,
    },
    extensions::NoReturn,
    identity::{Access, Class},
    proto::{self, event_service_server::EventService},
};

mod currency;
mod model;

pub use model::{CheckedEvent, TypedPayload, check_event, check_payload, read_event};

/// The original service's defaults for a poll without count or consumer.
const DEFAULT_POLL_COUNT: u32 = 10;
const DEFAULT_CONSUMER_ID: u32 = 1;

/// The topic event calls use when they name none (`IGGY_STREAM`, `IGGY_TOPIC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultTopic {
    pub stream: Name,
    pub topic: Name,
    /// Partitions to create it with when it is missing at start-up.
    pub partitions: u32,
}

#[derive(Clone)]
pub struct EventApi {
    broker: Arc<dyn Broker>,
    limits: Limits,
    default_topic: Option<DefaultTopic>,
    answers: UnaryAnswers,
}

impl EventApi {
    pub fn new(
        broker: Arc<dyn Broker>,
        limits: Limits,
        default_topic: Option<DefaultTopic>,
    ) -> Self {
        Self {
            broker,
            limits,
            default_topic,
            answers: UnaryAnswers::default(),
        }
    }

    /// Unary answers are compressed as `answers` says.
    pub fn with_answers(mut self, answers: UnaryAnswers) -> Self {
        self.answers = answers;
        self
    }

    /// The topic addressed, with the names to echo back.
    fn target(&self, stream: &str, topic: &str) -> Result<(TopicRef, String, String), Status> {
        let default = self.default_topic.as_ref();
        let stream = match (stream, default) {
            ("", Some(default)) => default.stream.to_string(),
            ("", None) => {
                return Err(invalid_field(
                    "stream",
                    "is required: no default stream is configured (IGGY_STREAM)",
                ));
            }
            (stream, _) => stream.to_owned(),
        };
        let topic = match (topic, default) {
            ("", Some(default)) => default.topic.to_string(),
            ("", None) => {
                return Err(invalid_field(
                    "topic",
                    "is required: no default topic is configured (IGGY_TOPIC)",
                ));
            }
            (topic, _) => topic.to_owned(),
        };
        let at = TopicRef {
            stream: identifier("stream", &stream)?,
            topic: identifier("topic", &topic)?,
        };
        Ok((at, stream, topic))
    }

    /// At most 255 bytes: the proto's rule.
    fn partitioning(key: &str) -> Partitioning {
        if key.is_empty() {
            Partitioning::Balanced
        } else {
            Partitioning::Key(key.as_bytes().to_vec())
        }
    }

    /// Checks an event (model.rs) and turns it into the message that stores it.
    fn event_message(
        &self,
        field: &str,
        event: Option<proto::Event>,
    ) -> Result<NewMessage, Status> {
        let event = event.ok_or_else(|| invalid_field(field, "is required"))?;
        let CheckedEvent { id, envelope } = check_event(field, event)?;
        let payload =
            serde_json::to_vec(&envelope).map_err(|err| invalid_field(field, err.to_string()))?;
        if payload.len() > self.limits.message_max_bytes {
            return Err(invalid_field(
                field,
                format!(
                    "is {} bytes as JSON; the limit (MAX_MESSAGE_SIZE) is {}",
                    payload.len(),
                    self.limits.message_max_bytes
                ),
            ));
        }
        let mut headers = Headers::new();
        headers.insert(BODY_FORM_HEADER.into(), HeaderValue::String("json".into()));
        Ok(NewMessage {
            id,
            headers,
            payload: Bytes::from(payload),
        })
    }

    /// The topic addressed, once the caller's scope on it is checked.
    async fn authorized(
        &self,
        access: Option<&Access>,
        stream: &str,
        topic: &str,
    ) -> Result<(TopicRef, String, String), Status> {
        let target = self.target(stream, topic)?;
        authorize(self.broker.as_ref(), access, &[Want::Topic(&target.0)]).await?;
        Ok(target)
    }

    async fn publish(
        &self,
        access: Option<&Access>,
        (at, stream, topic): (TopicRef, String, String),
        partition_key: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<proto::PublishEventResponse>, Status> {
        let bytes = messages.iter().map(NewMessage::size).sum();
        let taken = take(access, Class::Produce, bytes)?;
        let ids: Vec<String> = messages.iter().map(|m| message_id_text(m.id)).collect();
        self.broker
            .send_messages(SendMessages {
                topic: at,
                partitioning: Self::partitioning(partition_key),
                messages,
                idempotency: None,
            })
            .await
            .map_err(|err| {
                refund_failed(taken, &err);
                broker_status(err)
            })?;
        let acknowledged = timestamp(now_micros());
        Ok(ids
            .into_iter()
            .map(|event_id| proto::PublishEventResponse {
                success: true,
                event_id,
                stream: stream.clone(),
                topic: topic.clone(),
                timestamp: Some(acknowledged),
            })
            .collect())
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    async fn publish_event(
        &self,
        request: Request<proto::PublishEventRequest>,
    ) -> Result<Response<proto::PublishEventResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let target = self
            .authorized(access.as_deref(), &request.stream, &request.topic)
            .await?;
        let message = self.event_message("event", request.event)?;
        let mut results = self
            .publish(
                access.as_deref(),
                target,
                &request.partition_key,
                vec![message],
            )
            .await?;
        let result = results
            .pop()
            .ok_or_else(|| Status::internal("no result for the published event"))?;
        Ok(self.answers.of(result))
    }

    async fn publish_events(
        &self,
        request: Request<proto::PublishEventsRequest>,
    ) -> Result<Response<proto::PublishEventsResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let target = self
            .authorized(access.as_deref(), &request.stream, &request.topic)
            .await?;
        // At least one: the proto's rule; the most is configured (BATCH_MAX_SIZE).
        if request.events.len() > self.limits.batch_max {
            return Err(invalid_field(
                "events",
                format!(
                    "holds {} events; the limit (BATCH_MAX_SIZE) is {}",
                    request.events.len(),
                    self.limits.batch_max
                ),
            ));
        }
        let messages = request
            .events
            .into_iter()
            .enumerate()
            .map(|(index, event)| self.event_message(&format!("events[{index}]"), Some(event)))
            .collect::<Result<Vec<_>, _>>()?;
        let results = self
            .publish(access.as_deref(), target, &request.partition_key, messages)
            .await?;
        Ok(self.answers.of(proto::PublishEventsResponse { results }))
    }

    async fn poll_events(
        &self,
        request: Request<proto::PollEventsRequest>,
    ) -> Result<Response<proto::PollEventsResponse>, Status> {
        let access = access_of(&request);
        let no_return = request.extensions().get::<NoReturn>().cloned();
        let request = request.into_inner();
        let (at, _, _) = self
            .authorized(access.as_deref(), &request.stream, &request.topic)
            .await?;
        let count = request.count.unwrap_or(DEFAULT_POLL_COUNT);
        if count == 0 || count > self.limits.poll_max {
            return Err(invalid_field(
                "count",
                format!(
                    "must be between 1 and {} (POLL_MAX_COUNT), got {count}",
                    self.limits.poll_max
                ),
            ));
        }
        let consumer = Identifier::Id(request.consumer_id.unwrap_or(DEFAULT_CONSUMER_ID));
        authorize_consumer(access.as_deref(), &consumer.to_string())?;
        let polled = self
            .broker
            .poll_messages(PollMessages {
                topic: at.clone(),
                partition_id: request.partition_id,
                consumer: Some(consumer.clone()),
                strategy: request
                    .offset
                    .map_or(PollingStrategy::Next, PollingStrategy::Offset),
                count,
                max_bytes: polls::read_limit(self.limits.poll_max_bytes)?,
                // Committed once the answer is built (see MessageApi::poll_messages).
                auto_commit: false,
            })
            .await
            .map_err(broker_status)?;
        polls::charge_polled(&polled.messages)?;
        let room = self.limits.poll_max_bytes;
        let sizes: Vec<(u64, usize)> = polled
            .messages
            .iter()
            .map(|message| (message.offset, message.size()))
            .collect();
        let mut last = polled.messages.last().map(|message| message.offset);
        let mut messages: Vec<proto::PolledEvent> = polled
            .messages
            .into_iter()
            .filter_map(|message| {
                let event = read_event(&message.payload);
                if event.is_none() {
                    tracing::debug!(
                        offset = message.offset,
                        "skipping a message that is not an event"
                    );
                }
                let polled = proto::PolledEvent {
                    offset: message.offset,
                    timestamp: Some(timestamp(message.timestamp_micros)),
                    id: message_id_text(message.id),
                    size: message.payload.len() as u64,
                    event: Some(event?),
                };
                // An event has no raw form to fall back to: one whose data would not fit an
                // answer (stored by another client) is passed over, as a message that is not
                // an event is; `PollMessages` still reads its bytes.
                if prost::Message::encoded_len(&polled) > polls::message_room(room) {
                    tracing::warn!(
                        offset = message.offset,
                        "skipping an event larger than an answer may be (POLL_MAX_BYTES)"
                    );
                    return None;
                }
                Some(polled)
            })
            .collect();
        // Cut to what encodes within the limit, the commit goes only as far as what is kept.
        if polls::fit_answer(&mut messages, room) {
            last = messages.last().map(|event| event.offset);
        }
        // Before the consumer's offset moved: refused, it moved nothing.
        let kept = sizes
            .iter()
            .filter(|(offset, _)| last.is_some_and(|last| *offset <= last))
            .map(|(_, size)| size)
            .sum();
        let _taken = take(access.as_deref(), Class::Consume, kept)?;
        if request.auto_commit
            && let Some(last) = last
        {
            // Past here the deadline waits for the answer (see MessageApi::poll_messages).
            if let Some(no_return) = &no_return {
                no_return.pass();
            }
            self.broker
                .store_consumer_offset(
                    ConsumerOffsetRef {
                        topic: at,
                        partition_id: polled.partition_id,
                        consumer,
                    },
                    last,
                )
                .await
                .map_err(broker_status)?;
        }
        Ok(self.answers.of(proto::PollEventsResponse {
            count: u32::try_from(messages.len()).unwrap_or(u32::MAX),
            messages,
            partition_id: polled.partition_id,
            current_offset: polled.current_offset,
        }))
    }
}
