//! The statistics behind `/stats` and `StatsService.GetStats`: the backend's numbers (streams,
//! topics, messages, bytes) read by a background task every `STATS_REFRESH_INTERVAL_MS` into a
//! cache, and the gateway's own counters read live. An answer never waits on the backend, so it
//! stays cheap under load and answers while the backend is down, then marked `stale`.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, Durability, SkippedHoles, now_micros},
    metrics::Metrics,
};

/// What the backend held at the last read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendNumbers {
    pub streams_count: u32,
    pub topics_count: u32,
    pub total_messages: u64,
    pub total_size_bytes: u64,
    /// When these numbers were read; `None` before the first successful read.
    pub refreshed_at_micros: Option<u64>,
    /// The last read failed (or none has succeeded yet): the numbers are older than that.
    pub stale: bool,
}

/// One answer: the cached backend numbers and the gateway's counters now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub backend: BackendNumbers,
    pub uptime_seconds: u64,
    pub messages_sent: u64,
    pub messages_polled: u64,
    pub calls_by_protocol: Vec<(&'static str, u64)>,
    pub errors: u64,
    pub backend_reconnects: u64,
    /// What an acknowledgement is worth after a crash, as far as the gateway can tell.
    pub durability: Durability,
    pub skipped_holes: SkippedHoles,
}

pub struct Stats {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    cached: RwLock<BackendNumbers>,
}

impl Stats {
    pub fn new(broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Self {
        Self {
            broker,
            metrics,
            cached: RwLock::new(BackendNumbers {
                stale: true,
                ..BackendNumbers::default()
            }),
        }
    }

    /// Reads the backend's numbers once; on failure the last ones are kept, marked stale.
    pub async fn refresh(&self) {
        let read = self.broker.list_streams().await;
        let Ok(mut cached) = self.cached.write() else {
            return;
        };
        match read {
            Ok(streams) => {
                *cached = BackendNumbers {
                    streams_count: u32::try_from(streams.len()).unwrap_or(u32::MAX),
                    topics_count: u32::try_from(
                        streams
                            .iter()
                            .map(|s| u64::from(s.topics_count))
                            .sum::<u64>(),
                    )
                    .unwrap_or(u32::MAX),
                    total_messages: streams.iter().map(|s| s.messages_count).sum(),
                    total_size_bytes: streams.iter().map(|s| s.size_bytes).sum(),
                    refreshed_at_micros: Some(now_micros()),
                    stale: false,
                };
            }
            Err(err) => {
                if !cached.stale {
                    tracing::warn!(error = %err, "cannot refresh the statistics; serving the last ones");
                }
                cached.stale = true;
            }
        }
    }

    /// Refreshes now and then every `every` until `stop` is cancelled.
    pub fn spawn_refresher(
        self: Arc<Self>,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => self.refresh().await,
                }
            }
        })
    }

    pub fn report(&self) -> Report {
        let backend = self
            .cached
            .read()
            .map(|cached| *cached)
            .unwrap_or(BackendNumbers {
                stale: true,
                ..BackendNumbers::default()
            });
        Report {
            backend,
            uptime_seconds: self.metrics.uptime_seconds(),
            messages_sent: self.metrics.messages_sent(),
            messages_polled: self.metrics.messages_polled(),
            calls_by_protocol: self.metrics.calls_by_protocol(),
            errors: self.metrics.errors(),
            backend_reconnects: self.broker.reconnects(),
            durability: self.broker.durability(),
            skipped_holes: self.broker.skipped_holes(),
        }
    }
}
