//! `iggy.gateway.v1.StreamService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{expected_etag, identifier, name, stream_to_proto};
use crate::{
    answer::broker_status,
    broker::{Broker, UpdateStream},
    proto::{self, stream_service_server::StreamService},
};

#[derive(Clone)]
pub struct StreamApi {
    broker: Arc<dyn Broker>,
}

impl StreamApi {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl StreamService for StreamApi {
    async fn create_stream(
        &self,
        request: Request<proto::CreateStreamRequest>,
    ) -> Result<Response<proto::CreateStreamResponse>, Status> {
        let request = request.into_inner();
        let name = name("name", &request.name)?;
        let stream = self
            .broker
            .create_stream(name)
            .await
            .map_err(broker_status)?;
        Ok(Response::new(proto::CreateStreamResponse {
            stream: Some(stream_to_proto(stream)),
        }))
    }

    async fn get_stream(
        &self,
        request: Request<proto::GetStreamRequest>,
    ) -> Result<Response<proto::GetStreamResponse>, Status> {
        let stream = identifier("stream", &request.into_inner().stream)?;
        let stream = self
            .broker
            .get_stream(stream)
            .await
            .map_err(broker_status)?;
        Ok(Response::new(proto::GetStreamResponse {
            stream: Some(stream_to_proto(stream)),
        }))
    }

    async fn list_streams(
        &self,
        _request: Request<proto::ListStreamsRequest>,
    ) -> Result<Response<proto::ListStreamsResponse>, Status> {
        let streams = self.broker.list_streams().await.map_err(broker_status)?;
        Ok(Response::new(proto::ListStreamsResponse {
            streams: streams.into_iter().map(stream_to_proto).collect(),
        }))
    }

    async fn update_stream(
        &self,
        request: Request<proto::UpdateStreamRequest>,
    ) -> Result<Response<proto::UpdateStreamResponse>, Status> {
        let request = request.into_inner();
        let update = UpdateStream {
            stream: identifier("stream", &request.stream)?,
            name: name("name", &request.name)?,
            expected: expected_etag(&request.etag),
        };
        let stream = self
            .broker
            .update_stream(update)
            .await
            .map_err(broker_status)?;
        Ok(Response::new(proto::UpdateStreamResponse {
            stream: Some(stream_to_proto(stream)),
        }))
    }

    async fn delete_stream(
        &self,
        request: Request<proto::DeleteStreamRequest>,
    ) -> Result<Response<proto::DeleteStreamResponse>, Status> {
        let request = request.into_inner();
        let stream = identifier("stream", &request.stream)?;
        self.broker
            .delete_stream(stream, expected_etag(&request.etag))
            .await
            .map_err(broker_status)?;
        Ok(Response::new(proto::DeleteStreamResponse {}))
    }

    async fn purge_stream(
        &self,
        request: Request<proto::PurgeStreamRequest>,
    ) -> Result<Response<proto::PurgeStreamResponse>, Status> {
        let stream = identifier("stream", &request.into_inner().stream)?;
        self.broker
            .purge_stream(stream)
            .await
            .map_err(broker_status)?;
        Ok(Response::new(proto::PurgeStreamResponse {}))
    }
}
