//! `iggy.gateway.v1.StatsService`: the statistics report as protobuf.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    UnaryAnswers,
    access::{access_of, authorize_all},
    convert::timestamp,
};
use crate::{
    proto::{self, stats_service_server::StatsService},
    stats::Stats,
};

#[derive(Clone)]
pub struct StatsApi {
    stats: Arc<Stats>,
    answers: UnaryAnswers,
}

impl StatsApi {
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            stats,
            answers: UnaryAnswers::default(),
        }
    }

    /// Unary answers are compressed as `answers` says.
    pub fn with_answers(mut self, answers: UnaryAnswers) -> Self {
        self.answers = answers;
        self
    }
}

#[tonic::async_trait]
impl StatsService for StatsApi {
    async fn get_stats(
        &self,
        request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::GetStatsResponse>, Status> {
        // Its totals and call counts span every tenant: a key scoped to part sees none of them.
        authorize_all(access_of(&request).as_deref())?;
        let report = self.stats.report();
        let backend = report.backend;
        Ok(self.answers.of(proto::GetStatsResponse {
            streams_count: backend.streams_count,
            topics_count: backend.topics_count,
            total_messages: backend.total_messages,
            total_size_bytes: backend.total_size_bytes,
            refreshed_at: backend.refreshed_at_micros.map(timestamp),
            stale: backend.stale,
            uptime_seconds: report.uptime_seconds,
            messages_sent: report.messages_sent,
            messages_polled: report.messages_polled,
            messages_received: report.messages_polled,
            calls_by_protocol: report
                .calls_by_protocol
                .into_iter()
                .map(|(protocol, count)| (protocol.to_owned(), count))
                .collect(),
            errors: report.errors,
            backend_reconnects: report.backend_reconnects,
        }))
    }
}
