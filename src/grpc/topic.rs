//! `iggy.gateway.v1.TopicService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    UnaryAnswers,
    access::{Want, access_of, authorize},
    convert::{
        compression_from_proto, duration_micros, expected_etag, identifier, name, topic_ref,
        topic_to_proto,
    },
};
use crate::{
    answer::{broker_status, invalid_field},
    broker::{Broker, Compression, CreateTopic, Identifier, UpdateTopic},
    identity::Target,
    proto::{self, topic_service_server::TopicService},
};

#[derive(Clone)]
pub struct TopicApi {
    broker: Arc<dyn Broker>,
    answers: UnaryAnswers,
}

impl TopicApi {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            answers: UnaryAnswers::default(),
        }
    }

    /// Unary answers are compressed as `answers` says.
    pub fn with_answers(mut self, answers: UnaryAnswers) -> Self {
        self.answers = answers;
        self
    }
}

fn replication_factor(value: u32) -> Result<u8, Status> {
    u8::try_from(value).map_err(|_| invalid_field("replication_factor", "must be at most 255"))
}

#[tonic::async_trait]
impl TopicService for TopicApi {
    async fn create_topic(
        &self,
        request: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::CreateTopicResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let (stream, name) = (
            identifier("stream", &request.stream)?,
            name("name", &request.name)?,
        );
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::NewTopic(&stream, name.as_str())],
        )
        .await?;
        let create = CreateTopic {
            stream,
            name,
            // 1 to 1000, under one of its two names: the proto's rules.
            partitions_count: match request.partitions_count {
                0 => request.partitions,
                count => count,
            },
            message_expiry_micros: match &request.message_expiry {
                Some(expiry) => duration_micros("message_expiry", expiry)?,
                None => None,
            },
            max_topic_size_bytes: (request.max_topic_size_bytes > 0)
                .then_some(request.max_topic_size_bytes),
            compression: compression_from_proto(request.compression_algorithm)?
                .unwrap_or(Compression::None),
            replication_factor: replication_factor(request.replication_factor.max(1))?,
        };
        let topic = self
            .broker
            .create_topic(create)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::CreateTopicResponse {
            topic: Some(topic_to_proto(topic)),
        }))
    }

    async fn get_topic(
        &self,
        request: Request<proto::GetTopicRequest>,
    ) -> Result<Response<proto::GetTopicResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let at = topic_ref(&request.stream, &request.topic)?;
        authorize(self.broker.as_ref(), access.as_deref(), &[Want::Topic(&at)]).await?;
        let topic = self.broker.get_topic(at).await.map_err(broker_status)?;
        Ok(self.answers.of(proto::GetTopicResponse {
            topic: Some(topic_to_proto(topic)),
        }))
    }

    async fn list_topics(
        &self,
        request: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        let access = access_of(&request);
        let stream = identifier("stream", &request.into_inner().stream)?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::StreamView(&stream)],
        )
        .await?;
        // The name patterns match against (an id was looked up by the check above).
        let stream_name = match (&stream, access.as_deref()) {
            (_, Some(access)) if !access.is_unrestricted() => Some(match &stream {
                Identifier::Name(name) => name.clone(),
                Identifier::Id(_) => {
                    self.broker
                        .get_stream(stream.clone())
                        .await
                        .map_err(broker_status)?
                        .name
                }
            }),
            _ => None,
        };
        let topics = self
            .broker
            .list_topics(stream)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::ListTopicsResponse {
            topics: topics
                .into_iter()
                .filter(|topic| match (&stream_name, access.as_deref()) {
                    (Some(stream), Some(access)) => {
                        access.allows(&Target::Topic(stream.clone(), topic.name.clone()))
                    }
                    _ => true,
                })
                .map(topic_to_proto)
                .collect(),
        }))
    }

    async fn update_topic(
        &self,
        request: Request<proto::UpdateTopicRequest>,
    ) -> Result<Response<proto::UpdateTopicResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let update = UpdateTopic {
            topic: topic_ref(&request.stream, &request.topic)?,
            expected: expected_etag(&request.etag),
            name: match request.name.as_str() {
                "" => None,
                value => Some(name("name", value)?),
            },
            message_expiry_micros: match &request.message_expiry {
                Some(expiry) => Some(duration_micros("message_expiry", expiry)?),
                None => None,
            },
            max_topic_size_bytes: request
                .max_topic_size_bytes
                .map(|max| (max > 0).then_some(max)),
            compression: compression_from_proto(request.compression_algorithm)?,
            replication_factor: request
                .replication_factor
                .map(replication_factor)
                .transpose()?,
        };
        let mut wants = vec![Want::Topic(&update.topic)];
        if let Some(name) = &update.name {
            wants.push(Want::NewTopic(&update.topic.stream, name.as_str()));
        }
        authorize(self.broker.as_ref(), access.as_deref(), &wants).await?;
        let topic = self
            .broker
            .update_topic(update)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::UpdateTopicResponse {
            topic: Some(topic_to_proto(topic)),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let at = topic_ref(&request.stream, &request.topic)?;
        authorize(self.broker.as_ref(), access.as_deref(), &[Want::Topic(&at)]).await?;
        self.broker
            .delete_topic(at, expected_etag(&request.etag))
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::DeleteTopicResponse {}))
    }

    async fn purge_topic(
        &self,
        request: Request<proto::PurgeTopicRequest>,
    ) -> Result<Response<proto::PurgeTopicResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let at = topic_ref(&request.stream, &request.topic)?;
        authorize(self.broker.as_ref(), access.as_deref(), &[Want::Topic(&at)]).await?;
        self.broker.purge_topic(at).await.map_err(broker_status)?;
        Ok(self.answers.of(proto::PurgeTopicResponse {}))
    }

    async fn create_partitions(
        &self,
        request: Request<proto::CreatePartitionsRequest>,
    ) -> Result<Response<proto::CreatePartitionsResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let at = topic_ref(&request.stream, &request.topic)?;
        authorize(self.broker.as_ref(), access.as_deref(), &[Want::Topic(&at)]).await?;
        // 1 to 1000: the proto's rule.
        let topic = self
            .broker
            .create_partitions(at, request.partitions_count)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::CreatePartitionsResponse {
            topic: Some(topic_to_proto(topic)),
        }))
    }

    async fn delete_partitions(
        &self,
        request: Request<proto::DeletePartitionsRequest>,
    ) -> Result<Response<proto::DeletePartitionsResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let at = topic_ref(&request.stream, &request.topic)?;
        authorize(self.broker.as_ref(), access.as_deref(), &[Want::Topic(&at)]).await?;
        let topic = self
            .broker
            .delete_partitions(at, request.partitions_count)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::DeletePartitionsResponse {
            topic: Some(topic_to_proto(topic)),
        }))
    }
}
