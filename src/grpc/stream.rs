//! `iggy.gateway.v1.StreamService`.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status};

use super::{
    UnaryAnswers,
    access::{Want, access_of, authorize},
    convert::{expected_etag, identifier, name, stream_to_proto},
};
use crate::{
    answer::broker_status,
    broker::{Broker, BrokerError, Identifier, StreamInfo, UpdateStream},
    identity::{Access, Target},
    proto::{self, stream_service_server::StreamService},
};

/// Streams a listing reads whole at once, for a key that sees some of them in part.
const PARTIAL_READS_AT_ONCE: usize = 8;

#[derive(Clone)]
pub struct StreamApi {
    broker: Arc<dyn Broker>,
    answers: UnaryAnswers,
}

impl StreamApi {
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

/// Whether a key sees only some of a stream's topics.
fn sees_part_of(access: Option<&Access>, stream: &StreamInfo) -> bool {
    access.is_some_and(|access| {
        !access.is_unrestricted() && !access.allows(&Target::Stream(stream.name.clone()))
    })
}

/// What a key that may read only some of a stream's topics sees of it: those topics, and the
/// stream's counts over those alone (how many others there are, and how large, is theirs).
fn readable_topics(access: Option<&Access>, mut stream: StreamInfo) -> StreamInfo {
    if let Some(access) = access.filter(|_| sees_part_of(access, &stream)) {
        let name = stream.name.clone();
        stream
            .topics
            .retain(|topic| access.allows(&Target::Topic(name.clone(), topic.name.clone())));
        stream.topics_count = u32::try_from(stream.topics.len()).unwrap_or(u32::MAX);
        stream.size_bytes = stream.topics.iter().map(|topic| topic.size_bytes).sum();
        stream.messages_count = stream.topics.iter().map(|topic| topic.messages_count).sum();
    }
    stream
}

#[tonic::async_trait]
impl StreamService for StreamApi {
    async fn create_stream(
        &self,
        request: Request<proto::CreateStreamRequest>,
    ) -> Result<Response<proto::CreateStreamResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let name = name("name", &request.name)?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::NewStream(name.as_str())],
        )
        .await?;
        let stream = self
            .broker
            .create_stream(name)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::CreateStreamResponse {
            stream: Some(stream_to_proto(stream)),
        }))
    }

    async fn get_stream(
        &self,
        request: Request<proto::GetStreamRequest>,
    ) -> Result<Response<proto::GetStreamResponse>, Status> {
        let access = access_of(&request);
        let stream = identifier("stream", &request.into_inner().stream)?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::StreamView(&stream)],
        )
        .await?;
        let stream = self
            .broker
            .get_stream(stream)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::GetStreamResponse {
            stream: Some(stream_to_proto(readable_topics(access.as_deref(), stream))),
        }))
    }

    async fn list_streams(
        &self,
        request: Request<proto::ListStreamsRequest>,
    ) -> Result<Response<proto::ListStreamsResponse>, Status> {
        let access = access_of(&request);
        authorize(self.broker.as_ref(), access.as_deref(), &[Want::Any]).await?;
        let streams = self.broker.list_streams().await.map_err(broker_status)?;
        let access = access.as_deref();
        // A key sees the streams it may look into, and nothing of the others; of a stream it
        // sees in part, the counts of its topics alone, which a listing does not carry: each
        // is read whole, a few at a time, in the listing's order.
        let visible = streams.into_iter().filter(|stream| {
            access.is_none_or(|access| access.allows(&Target::StreamView(stream.name.clone())))
        });
        let read = futures_util::stream::iter(visible)
            .map(|stream| async move {
                if !sees_part_of(access, &stream) {
                    return Ok(Some(stream));
                }
                match self.broker.get_stream(Identifier::Id(stream.id)).await {
                    Ok(whole) => Ok(Some(StreamInfo {
                        topics: Vec::new(),
                        ..readable_topics(access, whole)
                    })),
                    // Deleted since it was listed.
                    Err(BrokerError::StreamNotFound(_)) => Ok(None),
                    Err(err) => Err(broker_status(err)),
                }
            })
            .buffered(PARTIAL_READS_AT_ONCE)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(self.answers.of(proto::ListStreamsResponse {
            streams: read.into_iter().flatten().map(stream_to_proto).collect(),
        }))
    }

    async fn update_stream(
        &self,
        request: Request<proto::UpdateStreamRequest>,
    ) -> Result<Response<proto::UpdateStreamResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let update = UpdateStream {
            stream: identifier("stream", &request.stream)?,
            name: name("name", &request.name)?,
            expected: expected_etag(&request.etag),
        };
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[
                Want::Stream(&update.stream),
                Want::NewStream(update.name.as_str()),
            ],
        )
        .await?;
        let stream = self
            .broker
            .update_stream(update)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::UpdateStreamResponse {
            stream: Some(stream_to_proto(stream)),
        }))
    }

    async fn delete_stream(
        &self,
        request: Request<proto::DeleteStreamRequest>,
    ) -> Result<Response<proto::DeleteStreamResponse>, Status> {
        let access = access_of(&request);
        let request = request.into_inner();
        let stream = identifier("stream", &request.stream)?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::Stream(&stream)],
        )
        .await?;
        self.broker
            .delete_stream(stream, expected_etag(&request.etag))
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::DeleteStreamResponse {}))
    }

    async fn purge_stream(
        &self,
        request: Request<proto::PurgeStreamRequest>,
    ) -> Result<Response<proto::PurgeStreamResponse>, Status> {
        let access = access_of(&request);
        let stream = identifier("stream", &request.into_inner().stream)?;
        authorize(
            self.broker.as_ref(),
            access.as_deref(),
            &[Want::Stream(&stream)],
        )
        .await?;
        self.broker
            .purge_stream(stream)
            .await
            .map_err(broker_status)?;
        Ok(self.answers.of(proto::PurgeStreamResponse {}))
    }
}
