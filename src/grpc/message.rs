//! `iggy.gateway.v1.MessageService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    UnaryAnswers,
    access::{
        Answers, Want, access_of, authorize, authorize_consumer, guard_stream, refund,
        refund_failed, take, until_deadline,
    },
    convert::{
        Ids, body_to_payload, headers_from_proto, identifier, message_id, message_id_text,
        polled_to_proto, timestamp_micros, topic_ref,
    },
    polls,
};
use crate::{
    answer::{QUOTA_EXCEEDED, broker_status, invalid_field},
    broker::{
        Broker, BrokerError, ConsumerOffsetRef, IdempotencyRecord, NewMessage, Partitioning,
        PollMessages, PollingStrategy, SendMessages, Sent, headers_size, now_micros,
    },
    extensions::{Deadline, NoReturn},
    idempotency::{self, Begin, Fingerprint, Idempotency},
    identity::{ANONYMOUS, Class, Target},
    proto::{self, message_service_server::MessageService},
    subscription::{self, Delivery, Event, Subscription, Subscriptions},
};

/// Request limits the gateway enforces before anything reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages in one send (`BATCH_MAX_SIZE`).
    pub batch_max: usize,
    /// Most messages one poll may ask for (`POLL_MAX_COUNT`).
    pub poll_max: u32,
    /// Largest payload of one message, in bytes (`MAX_MESSAGE_SIZE`).
    pub message_max_bytes: usize,
    /// Most bytes one poll answers, read and encoded (at least one message).
    pub poll_max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            batch_max: 1000,
            poll_max: 1000,
            message_max_bytes: 1024 * 1024,
            poll_max_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Clone)]
pub struct MessageApi {
    broker: Arc<dyn Broker>,
    limits: Limits,
    subscriptions: Subscriptions,
    idempotency: Arc<Idempotency>,
    answers: UnaryAnswers,
}

/// The metadata (REST: header) that makes a send idempotent, and the one that marks an answer
/// given again.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

impl MessageApi {
    /// With idempotency keys remembered for a day, at most 100,000 of them (see
    /// [`MessageApi::with_idempotency`]).
    pub fn new(broker: Arc<dyn Broker>, limits: Limits, subscriptions: Subscriptions) -> Self {
        Self {
            broker,
            limits,
            subscriptions,
            idempotency: Arc::new(Idempotency::new(
                std::time::Duration::from_secs(86_400),
                100_000,
            )),
            answers: UnaryAnswers::default(),
        }
    }

    /// Unary answers are compressed as `answers` says.
    pub fn with_answers(mut self, answers: UnaryAnswers) -> Self {
        self.answers = answers;
        self
    }

    /// Sends under an `Idempotency-Key` are coordinated by `idempotency`.
    pub fn with_idempotency(mut self, idempotency: Arc<Idempotency>) -> Self {
        self.idempotency = idempotency;
        self
    }

    fn new_messages(&self, messages: Vec<proto::Message>) -> Result<Vec<NewMessage>, Status> {
        // At least one: the proto's rule (checked when the request was decoded). The most is
        // configured (BATCH_MAX_SIZE), so it is checked here.
        if messages.len() > self.limits.batch_max {
            return Err(invalid_field(
                "messages",
                format!(
                    "holds {} messages; the limit (BATCH_MAX_SIZE) is {}",
                    messages.len(),
                    self.limits.batch_max
                ),
            ));
        }
        let mut ids = Ids::default();
        messages
            .into_iter()
            .enumerate()
            .map(|(index, message)| {
                // Paths are written out only for a refusal: a batch is a thousand messages.
                let id = message_id(format_args!("messages[{index}].id"), &message.id, &mut ids)?;
                let mut headers =
                    headers_from_proto(format_args!("messages[{index}].headers"), message.headers)?;
                // Name the body field the client sent, not the stored payload.
                let body_field = body_field_name(message.body.as_ref());
                // The client's headers count, not the body-form header the gateway adds.
                let header_bytes = headers_size(&headers);
                // Not empty (Iggy stores no empty message): the proto's rule on the body.
                let payload = body_to_payload(
                    format_args!("messages[{index}]"),
                    message.body,
                    &mut headers,
                )?;
                let size = payload.len() + header_bytes;
                if size > self.limits.message_max_bytes {
                    return Err(invalid_field(
                        format!("messages[{index}].{body_field}"),
                        format!(
                            "is {size} bytes with its headers; the limit (MAX_MESSAGE_SIZE) is {}",
                            self.limits.message_max_bytes
                        ),
                    ));
                }
                Ok(NewMessage {
                    id,
                    headers,
                    payload,
                })
            })
            .collect()
    }
}

/// The name of the body field a message was sent with.
fn body_field_name(body: Option<&proto::message::Body>) -> &'static str {
    match body {
        Some(proto::message::Body::Text(_)) => "text",
        Some(proto::message::Body::Json(_)) => "json",
        Some(proto::message::Body::Payload(_)) | None => "payload",
    }
}

/// The polling strategy a request names, with the values it needs; `unspecified` is used when
/// it names none.
fn polling_strategy(
    value: i32,
    offset: Option<u64>,
    timestamp: Option<&pbjson_types::Timestamp>,
    unspecified: PollingStrategy,
) -> Result<PollingStrategy, Status> {
    Ok(match proto::PollingStrategy::try_from(value) {
        Ok(proto::PollingStrategy::Unspecified) => unspecified,
        Ok(proto::PollingStrategy::Offset) => PollingStrategy::Offset(
            offset.ok_or_else(|| invalid_field("offset", "is required with strategy OFFSET"))?,
        ),
        Ok(proto::PollingStrategy::Timestamp) => {
            let at = timestamp
                .ok_or_else(|| invalid_field("timestamp", "is required with strategy TIMESTAMP"))?;
            PollingStrategy::Timestamp(timestamp_micros("timestamp", at)?)
        }
        Ok(proto::PollingStrategy::First) => PollingStrategy::First,
        Ok(proto::PollingStrategy::Last) => PollingStrategy::Last,
        Ok(proto::PollingStrategy::Next) => PollingStrategy::Next,
        Err(_) => {
            return Err(invalid_field("strategy", format!("unknown value {value}")));
        }
    })
}

fn consumer_ref(
    stream: &str,
    topic: &str,
    consumer: &str,
    partition_id: u32,
) -> Result<ConsumerOffsetRef, Status> {
    Ok(ConsumerOffsetRef {
        topic: topic_ref(stream, topic)?,
        consumer: identifier("consumer", consumer)?,
        partition_id,
    })
}

/// An answer given again for an idempotency key: the original ids (the retry's own, as its
/// fingerprint matched), marked replayed.
fn replayed(answers: UnaryAnswers, ids: Vec<String>) -> Response<proto::SendMessagesResponse> {
    let mut response = answers.of(proto::SendMessagesResponse { ids });
    response.metadata_mut().insert(
        IDEMPOTENT_REPLAYED,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    response
}

/// A digest of everything a send asks for: where it goes and each message (id, headers,
/// body), so a retry is told from another request under the same key.
fn fingerprint(
    stream: &str,
    topic: &str,
    partitioning: &Partitioning,
    messages: &[NewMessage],
) -> [u8; 32] {
    let mut digest = Fingerprint::default();
    digest.part(stream.as_bytes()).part(topic.as_bytes());
    match partitioning {
        Partitioning::Balanced => digest.part(b"balanced"),
        Partitioning::PartitionId(id) => digest.part(b"partition").part(&id.to_be_bytes()),
        Partitioning::Key(key) => digest.part(b"key").part(key),
    };
    for message in messages {
        digest
            .part(&message.id.to_be_bytes())
            .part(&postcard::to_allocvec(&message.headers).unwrap_or_default())
            .part(&message.payload);
    }
    digest.finish()
}

/// What a subscription's delivery counts against the consume byte quota: its message's
/// payload and headers (a heartbeat nothing).
fn delivered_bytes(delivery: &Delivery) -> usize {
    match &delivery.event {
        Event::Message { message, .. } => message.size(),
        Event::Heartbeat(_) => 0,
    }
}

/// One item of a subscription's stream as `SubscribeResponse`; an error ends the stream.
fn delivery_to_proto(
    item: subscription::Item,
    max_bytes: usize,
) -> Result<proto::SubscribeResponse, Status> {
    let Delivery { cursor, event } = item?;
    let event = match event {
        Event::Message {
            partition_id,
            message,
        } => proto::subscribe_response::Event::Message(polled_to_proto(
            partition_id,
            message,
            max_bytes,
        )),
        Event::Heartbeat(lags) => proto::subscribe_response::Event::Heartbeat(proto::Heartbeat {
            partitions: lags
                .into_iter()
                .map(|lag| proto::PartitionLag {
                    partition_id: lag.partition_id,
                    next_offset: lag.next_offset,
                    lag: lag.lag,
                })
                .collect(),
        }),
    };
    Ok(proto::SubscribeResponse {
        cursor,
        event: Some(event),
    })
}

#[tonic::async_trait]
impl MessageService for MessageApi {
    type SubscribeStream = Answers<proto::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Counted per client key, so an IPv6 client's whole prefix shares one cap.
        let client = request
            .extensions()
            .get::<crate::extensions::ClientIp>()
            .map(|ip| ip.key().network());
        let access = access_of(&request);
        // A keys-file key: limited by its scopes, quotas and consumers.
        let limited = access
            .as_deref()
            .is_some_and(|access| !access.is_unrestricted());
        // Every keys-file identity's subscriptions are counted, so a cap a reload adds finds
        // those already open; refused only over its quota's cap, if it sets one.
        let holder = access.as_deref().filter(|_| limited).map(|access| {
            let identity = access.identity();
            let most = identity
                .quota()
                .and_then(|quota| quota.settings().subscriptions)
                .map(|most| usize::try_from(most.get()).unwrap_or(usize::MAX));
            crate::subscription::Holder {
                name: Arc::from(identity.name()),
                most,
            }
        });
        // The client's own deadline ends the stream, on every protocol.
        let deadline = request.extensions().get::<Deadline>().copied();
        // Closed when the subscriber stops reading (see `Subscription::connection`).
        let connection = request
            .extensions()
            .get::<Arc<crate::budget::AnswerWatch>>()
            .cloned();
        let request = request.into_inner();
        let topic = topic_ref(&request.stream, &request.topic)?;
        // Taken before the scope check, so a rename after it is heard (see `Subscription`).
        let catalog = self.broker.catalog_changes();
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::Topic(&topic)],
        )
        .await?;
        // What a reload must still allow for the subscription to go on.
        let target = access
            .as_deref()
            .and_then(|access| access.checked_target().cloned())
            .unwrap_or(Target::Any);
        // The names a limited key's scope matched, which must still stand when it opens.
        let scoped_names = match &target {
            Target::Topic(stream, topic) if limited => Some((stream.clone(), topic.clone())),
            _ => None,
        };
        let consumer = match request.consumer.as_str() {
            "" => None,
            value => Some(identifier("consumer", value)?),
        };
        // The consumer a keys-file key commits as: the request's, or the one its cursor
        // carries (read here only for such keys: no one else is limited to some consumers).
        let commits_as = match (&consumer, request.cursor.as_str()) {
            _ if !limited => None,
            (Some(consumer), _) => Some(consumer.to_string()),
            (None, "") => None,
            (None, cursor) => Some(self.subscriptions.cursor_consumer(cursor)?)
                .filter(|consumer| !consumer.is_empty()),
        };
        if let Some(consumer) = &commits_as {
            authorize_consumer(access.as_deref(), consumer)?;
        }
        // Unspecified: from the offset if given, else after the consumer's stored offset, else
        // only new messages.
        let unspecified = match (&consumer, request.offset) {
            (_, Some(offset)) => PollingStrategy::Offset(offset),
            (Some(_), None) => PollingStrategy::Next,
            (None, None) => PollingStrategy::Last,
        };
        let strategy = polling_strategy(
            request.strategy,
            request.offset,
            request.timestamp.as_ref(),
            unspecified,
        )?;
        // The consumer may come from a cursor: the subscription checks it is there when NEXT
        // or commits need it.
        let receiver = self
            .subscriptions
            .start(
                Arc::clone(&self.broker),
                Subscription {
                    topic,
                    stream_text: request.stream,
                    topic_text: request.topic,
                    partition_id: request.partition_id,
                    consumer,
                    strategy,
                    cursor: (!request.cursor.is_empty()).then_some(request.cursor),
                    commit_every: request.commit_every,
                    commit_interval: std::time::Duration::from_millis(u64::from(
                        request.commit_interval_ms,
                    )),
                    client,
                    holder,
                    scoped_names,
                    catalog,
                    connection,
                },
            )
            .await
            .inspect_err(|status| {
                // Over its `subscriptions` quota: counted as the quota layer counts its own.
                if let Some(access) = &access
                    && tonic_types::StatusExt::get_error_details(status)
                        .error_info()
                        .is_some_and(|info| info.reason == QUOTA_EXCEEDED)
                {
                    access.count_refusal(QUOTA_EXCEEDED);
                }
            })?;
        let flow = receiver.flow();
        let deliveries = guard_stream(
            Box::pin(receiver),
            access,
            target,
            commits_as,
            delivered_bytes,
            flow,
        );
        let deliveries = match deadline {
            Some(Deadline(at)) => until_deadline(deliveries, at),
            None => deliveries,
        };
        let max_bytes = self.limits.poll_max_bytes;
        Ok(Response::new(Box::pin(futures_util::StreamExt::map(
            deliveries,
            move |item| delivery_to_proto(item, max_bytes),
        ))))
    }

    async fn send_messages(
        &self,
        request: Request<proto::SendMessagesRequest>,
    ) -> Result<Response<proto::SendMessagesResponse>, Status> {
        let access = access_of(&request);
        // Two keys would leave which one counts to chance (or to a proxy's order).
        if request
            .metadata()
            .get_all(IDEMPOTENCY_KEY)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(invalid_field(IDEMPOTENCY_KEY, "is given more than once"));
        }
        let key = match request.metadata().get(IDEMPOTENCY_KEY) {
            None => None,
            Some(value) => match value.to_str() {
                Ok(key) if idempotency::valid_key(key) => Some(key.to_owned()),
                _ => {
                    return Err(invalid_field(
                        IDEMPOTENCY_KEY,
                        format!(
                            "must be 1 to {} visible ASCII characters",
                            idempotency::MAX_KEY_LEN
                        ),
                    ));
                }
            },
        };
        let request = request.into_inner();
        let topic = topic_ref(&request.stream, &request.topic)?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::Topic(&topic)],
        )
        .await?;
        let partitioning = match request.partitioning {
            None => Partitioning::Balanced,
            Some(proto::send_messages_request::Partitioning::PartitionId(id)) => {
                Partitioning::PartitionId(id)
            }
            // 1 to 255 bytes: the proto's rule.
            Some(proto::send_messages_request::Partitioning::PartitionKey(key)) => {
                Partitioning::Key(key.into_bytes())
            }
        };
        // Which ids the client gave matters only under a key.
        let given: Vec<bool> = match key {
            Some(_) => request.messages.iter().map(|m| !m.id.is_empty()).collect(),
            None => Vec::new(),
        };
        let mut messages = self.new_messages(request.messages)?;
        let Some(key) = key else {
            let bytes = messages.iter().map(NewMessage::size).sum();
            let taken = take(access.as_deref(), Class::Produce, bytes)?;
            let ids = messages.iter().map(|m| message_id_text(m.id)).collect();
            self.broker
                .send_messages(SendMessages {
                    topic,
                    partitioning,
                    messages,
                    idempotency: None,
                })
                .await
                .map_err(|err| {
                    refund_failed(taken, &err);
                    broker_status(err)
                })?;
            return Ok(self.answers.of(proto::SendMessagesResponse { ids }));
        };

        // Under a key: ids the client left out are derived from (identity, key, index), and
        // the request is known by its fingerprint.
        let identity = access
            .as_deref()
            .map_or(ANONYMOUS, |access| access.identity().name())
            .to_owned();
        for (index, message) in messages.iter_mut().enumerate() {
            if !given[index] {
                message.id = self.idempotency.message_id(&identity, &key, index);
            }
        }
        let fingerprint = fingerprint(&request.stream, &request.topic, &partitioning, &messages);
        let record_key = idempotency::record_key(&identity, &key);
        let ids: Vec<String> = messages.iter().map(|m| message_id_text(m.id)).collect();
        let ticket = match self
            .idempotency
            .begin(&identity, record_key, fingerprint)
            .await
        {
            Begin::Replay => return Ok(replayed(self.answers, ids)),
            Begin::Conflict => return Err(broker_status(BrokerError::IdempotencyKeyReused)),
            Begin::Run(ticket) => ticket,
        };
        let expires_at_micros = now_micros()
            .saturating_add(u64::try_from(self.idempotency.ttl().as_micros()).unwrap_or(u64::MAX));
        let bytes = messages.iter().map(NewMessage::size).sum();
        // Charged before the send (an unanswered ticket is given up when dropped).
        let taken = take(access.as_deref(), Class::Produce, bytes)?;
        let sent = self
            .broker
            .send_messages(SendMessages {
                topic,
                partitioning,
                messages,
                idempotency: Some(IdempotencyRecord {
                    key: record_key,
                    fingerprint,
                    expires_at_micros,
                }),
            })
            .await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(err) => {
                refund_failed(taken, &err);
                return Err(broker_status(err));
            }
        };
        ticket.answered();
        Ok(match sent {
            Sent::Stored => self.answers.of(proto::SendMessagesResponse { ids }),
            Sent::Replayed => {
                refund(taken);
                replayed(self.answers, ids)
            }
        })
    }

    async fn poll_messages(
        &self,
        request: Request<proto::PollMessagesRequest>,
    ) -> Result<Response<proto::PollMessagesResponse>, Status> {
        let access = access_of(&request);
        let no_return = request.extensions().get::<NoReturn>().cloned();
        let request = request.into_inner();
        let topic = topic_ref(&request.stream, &request.topic)?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::Topic(&topic)],
        )
        .await?;
        let consumer = match request.consumer.as_str() {
            "" => None,
            value => Some(identifier("consumer", value)?),
        };
        if let Some(consumer) = &consumer {
            authorize_consumer(access.as_deref(), &consumer.to_string())?;
        }
        if request.count == 0 || request.count > self.limits.poll_max {
            return Err(invalid_field(
                "count",
                format!(
                    "must be between 1 and {} (POLL_MAX_COUNT), got {}",
                    self.limits.poll_max, request.count
                ),
            ));
        }
        // Unspecified: after the consumer's stored offset when a consumer and no offset are
        // given, else from the offset (or 0).
        let unspecified = match (&consumer, request.offset) {
            (Some(_), None) => PollingStrategy::Next,
            (_, offset) => PollingStrategy::Offset(offset.unwrap_or(0)),
        };
        let strategy = polling_strategy(
            request.strategy,
            request.offset,
            request.timestamp.as_ref(),
            unspecified,
        )?;
        if consumer.is_none() {
            if strategy == PollingStrategy::Next {
                return Err(invalid_field("consumer", "is required with strategy NEXT"));
            }
            if request.auto_commit {
                return Err(invalid_field("consumer", "is required with auto_commit"));
            }
        }
        let polled = self
            .broker
            .poll_messages(PollMessages {
                topic: topic.clone(),
                partition_id: request.partition_id,
                consumer: consumer.clone(),
                strategy,
                count: request.count,
                max_bytes: polls::read_limit(self.limits.poll_max_bytes)?,
                // Committed below, once the answer is built: a message that could not be
                // answered must not be skipped by the consumer's next poll.
                auto_commit: false,
            })
            .await
            .map_err(broker_status)?;
        polls::charge_polled(&polled.messages)?;
        let partition_id = polled.partition_id;
        let sizes: Vec<usize> = polled
            .messages
            .iter()
            .map(|message| message.size())
            .collect();
        let mut messages: Vec<proto::PolledMessage> = polled
            .messages
            .into_iter()
            .map(|message| polled_to_proto(partition_id, message, self.limits.poll_max_bytes))
            .collect();
        polls::fit_answer(&mut messages, self.limits.poll_max_bytes);
        // Before the consumer's offset moved: refused, it moved nothing.
        let _taken = take(
            access.as_deref(),
            Class::Consume,
            sizes.iter().take(messages.len()).sum(),
        )?;
        let last = messages.last().map(|message| message.offset);
        let response = proto::PollMessagesResponse {
            partition_id,
            current_offset: polled.current_offset,
            messages,
        };
        if request.auto_commit
            && let (Some(last), Some(consumer)) = (last, consumer)
        {
            // Once the commit is begun the consumer may have moved: answer what it moved
            // past, however long that takes, never a deadline's error.
            if let Some(no_return) = &no_return {
                no_return.pass();
            }
            self.broker
                .store_consumer_offset(
                    ConsumerOffsetRef {
                        topic,
                        partition_id,
                        consumer,
                    },
                    last,
                )
                .await
                .map_err(broker_status)?;
        }
        Ok(self.answers.of(response))
    }

    async fn store_consumer_offset(
        &self,
        request: Request<proto::StoreConsumerOffsetRequest>,
    ) -> Result<Response<proto::StoreConsumerOffsetResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let at = consumer_ref(
            &request.stream,
            &request.topic,
            &request.consumer,
            request.partition_id,
        )?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::Topic(&at.topic)],
        )
        .await?;
        authorize_consumer(access.as_deref(), &at.consumer.to_string())?;
        // Offset 0 is a position like any other: a request without one is refused, never
        // read as 0 (that would rewind the consumer).
        let offset = request
            .offset
            .ok_or_else(|| invalid_field("offset", "is required"))?;
        self.broker
            .store_consumer_offset(at, offset)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::StoreConsumerOffsetResponse {}))
    }

    async fn get_consumer_offset(
        &self,
        request: Request<proto::GetConsumerOffsetRequest>,
    ) -> Result<Response<proto::GetConsumerOffsetResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let at = consumer_ref(
            &request.stream,
            &request.topic,
            &request.consumer,
            request.partition_id,
        )?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::Topic(&at.topic)],
        )
        .await?;
        authorize_consumer(access.as_deref(), &at.consumer.to_string())?;
        let info = self
            .broker
            .get_consumer_offset(at)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::GetConsumerOffsetResponse {
            partition_id: info.partition_id,
            current_offset: info.current_offset,
            stored_offset: info.stored_offset,
        }))
    }

    async fn delete_consumer_offset(
        &self,
        request: Request<proto::DeleteConsumerOffsetRequest>,
    ) -> Result<Response<proto::DeleteConsumerOffsetResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let at = consumer_ref(
            &request.stream,
            &request.topic,
            &request.consumer,
            request.partition_id,
        )?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::Topic(&at.topic)],
        )
        .await?;
        authorize_consumer(access.as_deref(), &at.consumer.to_string())?;
        self.broker
            .delete_consumer_offset(at)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::DeleteConsumerOffsetResponse {}))
    }
}
