//! Prometheus metrics (prometheus-client, OpenMetrics text at `/metrics`): calls by protocol,
//! route and status, latency, calls in flight, refusals by reason, messages and bytes sent and
//! polled (counted at the broker seam by `broker::metered::MeteredBroker`), and the backend's
//! availability.

use std::{
    borrow::Cow,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::extensions::{Protocol, RejectedFor};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    protocol: &'static str,
    route: Arc<str>,
    status: StatusLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

/// A call's `status` label: its gRPC code, or its HTTP status, as a number. Written once per
/// process for every code there is, so labelling a call allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusLabel(Cow<'static, str>);

const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

static HTTP_CODES: LazyLock<Box<[String]>> =
    LazyLock::new(|| (100..1000u16).map(|code| code.to_string()).collect());

impl StatusLabel {
    /// A `grpc-status` header's code; none is OK.
    pub fn grpc(code: Option<&str>) -> Self {
        let code = code.unwrap_or("0");
        Self(GRPC_CODES.iter().find(|known| **known == code).map_or_else(
            || Cow::Owned(code.to_owned()),
            |known| Cow::Borrowed(*known),
        ))
    }

    pub fn http(status: http::StatusCode) -> Self {
        let code = status.as_u16();
        Self(
            HTTP_CODES
                .get(usize::from(code).wrapping_sub(100))
                .map_or_else(
                    || Cow::Owned(code.to_string()),
                    |known| Cow::Borrowed(known.as_str()),
                ),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for StatusLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Per identity: the name comes from the keys file (or `api-key`, `anonymous`), never from
/// the client, so the series stay as many as the file has names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityLabels {
    identity: Arc<str>,
    scope: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityReasonLabels {
    identity: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityClassLabels {
    identity: Arc<str>,
    class: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    identity_calls: Family<IdentityLabels, Counter>,
    identity_refusals: Family<IdentityReasonLabels, Counter>,
    identity_bytes: Family<IdentityClassLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    latency: Family<ProtocolLabels, Histogram>,
    in_flight: Gauge,
    rejections: Family<ReasonLabels, Counter>,
    messages_sent: Counter,
    bytes_sent: Counter,
    messages_polled: Counter,
    bytes_polled: Counter,
    backend_available: Gauge,
    backend_reconnects: Counter,
    /// Holes in a partition's log that polls stepped past, and the offsets passed over
    /// (`broker::SkippedHoles`): messages the backend acknowledged and can no longer read.
    backend_holes_skipped: Counter,
    backend_offsets_skipped: Counter,
    /// Sends made to the backend and the calls they carried (`broker::SendCounts`): their
    /// ratio is how many calls one round trip to Iggy carries under the load of the moment.
    backend_sends: Counter,
    backend_offsets_stored: Counter,
    backend_send_calls: Counter,
    connections_open: Gauge,
    connections_refused: Counter,
    connections_refused_per_client: Counter,
    /// Times an HTTP/2 connection stopped reading because too many requests, across all
    /// connections, were handed on and not yet begun (an HPACK flood; `listener::pace`).
    http2_reads_held: Counter,
    http2_quiet_reads: Counter,
    accept_errors: Counter,
    /// TLS handshakes that failed or timed out (no client certificate under mutual TLS, a
    /// client that does not trust ours, a port scan).
    tls_handshake_failures: Counter,
    /// Calls answered per protocol (gRPC, gRPC-Web, REST, Connect) and answered with an error, for
    /// `/stats`: plain totals, read without walking the labelled families.
    calls_by_protocol: [AtomicU64; 4],
    errors: AtomicU64,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("iggy_gateway");
        let calls = Family::<CallLabels, Counter>::default();
        let latency = Family::<ProtocolLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let metrics = Self {
            identity_calls: Family::default(),
            identity_refusals: Family::default(),
            identity_bytes: Family::default(),
            calls,
            latency,
            in_flight: Gauge::default(),
            rejections: Family::default(),
            messages_sent: Counter::default(),
            bytes_sent: Counter::default(),
            messages_polled: Counter::default(),
            bytes_polled: Counter::default(),
            backend_available: Gauge::default(),
            backend_reconnects: Counter::default(),
            backend_holes_skipped: Counter::default(),
            backend_offsets_skipped: Counter::default(),
            backend_sends: Counter::default(),
            backend_offsets_stored: Counter::default(),
            backend_send_calls: Counter::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            connections_refused_per_client: Counter::default(),
            http2_reads_held: Counter::default(),
            http2_quiet_reads: Counter::default(),
            accept_errors: Counter::default(),
            tls_handshake_failures: Counter::default(),
            registry: Mutex::new(Registry::default()),
            calls_by_protocol: Default::default(),
            errors: AtomicU64::new(0),
            started: Instant::now(),
        };
        registry.register(
            "calls",
            "Calls answered, by protocol, route and status",
            metrics.calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Time to answer a call",
            metrics.latency.clone(),
        );
        registry.register(
            "calls_in_flight",
            "Calls being served",
            metrics.in_flight.clone(),
        );
        registry.register(
            "rejections",
            "Calls refused by the layers, by reason",
            metrics.rejections.clone(),
        );
        registry.register(
            "messages_sent",
            "Messages stored through the gateway",
            metrics.messages_sent.clone(),
        );
        registry.register(
            "message_bytes_sent",
            "Payload bytes stored through the gateway",
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "messages_polled",
            "Messages returned by polls",
            metrics.messages_polled.clone(),
        );
        registry.register(
            "message_bytes_polled",
            "Payload bytes returned by polls",
            metrics.bytes_polled.clone(),
        );
        registry.register(
            "backend_available",
            "1 when the backend can serve calls",
            metrics.backend_available.clone(),
        );
        registry.register(
            "backend_reconnects",
            "Reconnections to the backend since start-up",
            metrics.backend_reconnects.clone(),
        );
        registry.register(
            "backend_holes_skipped",
            "Holes in a partition's log (offsets the backend could not read) that polls stepped past",
            metrics.backend_holes_skipped.clone(),
        );
        registry.register(
            "backend_offsets_skipped",
            "Offsets passed over by polls stepping past holes in a partition's log",
            metrics.backend_offsets_skipped.clone(),
        );
        registry.register(
            "backend_offsets_stored",
            "Consumer offsets stored in the backend: StoreConsumerOffset calls and subscriptions' \
             commits (a poll's auto_commit is the backend's own)",
            metrics.backend_offsets_stored.clone(),
        );
        registry.register(
            "backend_sends",
            "Sends made to the backend (one round trip each; with Iggy one may carry many calls)",
            metrics.backend_sends.clone(),
        );
        registry.register(
            "backend_send_calls",
            "Send calls carried by the backend's sends (divided by backend_sends: calls per send)",
            metrics.backend_send_calls.clone(),
        );
        registry.register(
            "connections_open",
            "TCP connections being served",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed on arrival because MAX_CONNECTIONS were open",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "connections_refused_per_client",
            "Connections closed on arrival: their client had MAX_CONNECTIONS_PER_CLIENT open",
            metrics.connections_refused_per_client.clone(),
        );
        registry.register(
            "http2_reads_held",
            "Times an HTTP/2 connection stopped reading while 256 requests waited to begin",
            metrics.http2_reads_held.clone(),
        );
        registry.register(
            "http2_quiet_reads",
            "HTTP/2 header blocks of quiet connections (no call in flight, a client with few \
             connections) read past a shut head gate",
            metrics.http2_quiet_reads.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts (out of file descriptors or buffers), each followed by a back-off",
            metrics.accept_errors.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "identity_calls",
            "Calls admitted, by identity (keys-file name, api-key or anonymous) and the scope \
             they needed",
            metrics.identity_calls.clone(),
        );
        registry.register(
            "identity_refusals",
            "Calls refused for an identity, by reason (SCOPE_MISSING, QUOTA_EXCEEDED)",
            metrics.identity_refusals.clone(),
        );
        registry.register(
            "identity_bytes",
            "Message bytes (payloads and headers) counted against an identity, by class \
             (produce, consume)",
            metrics.identity_bytes.clone(),
        );
        if let Ok(mut slot) = metrics.registry.lock() {
            *slot = registry;
        }
        metrics
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = encode(&mut out, &registry);
        }
        out
    }

    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.get()
    }

    pub fn messages_polled(&self) -> u64 {
        self.messages_polled.get()
    }

    /// Counts a stored batch: its messages and their payload bytes.
    pub fn count_sent(&self, messages: u64, bytes: u64) {
        self.messages_sent.inc_by(messages);
        self.bytes_sent.inc_by(bytes);
    }

    /// Counts what a poll returned: its messages and their payload bytes.
    pub fn count_polled(&self, messages: u64, bytes: u64) {
        self.messages_polled.inc_by(messages);
        self.bytes_polled.inc_by(bytes);
    }

    /// Counts a call admitted for `identity`, needing `scope`.
    pub fn identity_call(&self, identity: &Arc<str>, scope: &'static str) {
        // Labels that allocate nothing: every call counts here.
        self.identity_calls
            .get_or_create(&IdentityLabels {
                identity: Arc::clone(identity),
                scope,
            })
            .inc();
    }

    /// Counts a call refused for `identity`, by reason.
    pub fn identity_refused(&self, identity: &str, reason: &str) {
        self.identity_refusals
            .get_or_create(&IdentityReasonLabels {
                identity: identity.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts message bytes moved for `identity` (`produce` or `consume`).
    pub fn identity_bytes(&self, identity: &Arc<str>, class: &'static str, bytes: u64) {
        self.identity_bytes
            .get_or_create(&IdentityClassLabels {
                identity: Arc::clone(identity),
                class,
            })
            .inc_by(bytes);
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Brings the reconnect counter up to the backend's own count (read at scrape time).
    pub fn observe_reconnects(&self, total: u64) {
        let seen = self.backend_reconnects.get();
        if total > seen {
            self.backend_reconnects.inc_by(total - seen);
        }
    }

    /// Brings the hole counters up to the backend's own counts (read at scrape time).
    pub fn observe_skipped_holes(&self, holes: u64, offsets: u64) {
        for (counter, total) in [
            (&self.backend_holes_skipped, holes),
            (&self.backend_offsets_skipped, offsets),
        ] {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// Brings the send counters up to the backend's own counts (read at scrape time).
    pub fn observe_send_counts(&self, sends: u64, calls: u64) {
        for (counter, total) in [
            (&self.backend_sends, sends),
            (&self.backend_send_calls, calls),
        ] {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    pub fn offset_stored(&self) {
        self.backend_offsets_stored.inc();
    }

    pub fn set_backend_available(&self, available: bool) {
        self.backend_available.set(i64::from(available));
    }

    /// Counts an open connection until the returned guard is dropped.
    pub fn connection_opened(&self) -> impl Drop + Send + 'static {
        self.connections_open.inc();
        GaugeGuard(self.connections_open.clone())
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn connection_refused_per_client(&self) {
        self.connections_refused_per_client.inc();
    }

    /// The counter the listener's head gate bumps when it parks a connection.
    pub fn http2_reads_held(&self) -> Counter {
        self.http2_reads_held.clone()
    }

    /// The counter the listener's head gate bumps when it lets a quiet connection's block by.
    pub fn http2_quiet_reads(&self) -> Counter {
        self.http2_quiet_reads.clone()
    }

    pub fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Counts a call in flight until the returned guard is dropped.
    pub fn call_started(&self) -> GaugeGuard {
        self.in_flight.inc();
        GaugeGuard(self.in_flight.clone())
    }

    /// Counts one answered call under labels the caller keeps bounded, and why a layer
    /// refused it, if one did.
    pub fn call_answered(
        &self,
        protocol: Protocol,
        route: Arc<str>,
        status: StatusLabel,
        elapsed: Duration,
        rejected: Option<RejectedFor>,
    ) {
        let index = Self::protocol_index(protocol);
        self.calls_by_protocol[index].fetch_add(1, Ordering::Relaxed);
        let failed = match protocol {
            Protocol::Grpc | Protocol::GrpcWeb => status.as_str() != "0",
            Protocol::Connect | Protocol::ConnectStream { .. } | Protocol::Rest => status
                .as_str()
                .parse::<u16>()
                .map_or(true, |code| code >= 400),
        };
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.calls
            .get_or_create(&CallLabels {
                protocol: protocol.name(),
                route,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&ProtocolLabels {
                protocol: protocol.name(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(rejected) = rejected {
            self.rejections
                .get_or_create(&ReasonLabels {
                    reason: rejected.0.to_owned(),
                })
                .inc();
        }
    }

    fn protocol_index(protocol: Protocol) -> usize {
        match protocol {
            Protocol::Grpc => 0,
            Protocol::GrpcWeb => 1,
            Protocol::Rest => 2,
            Protocol::Connect | Protocol::ConnectStream { .. } => 3,
        }
    }

    /// Calls answered so far, per protocol name.
    pub fn calls_by_protocol(&self) -> Vec<(&'static str, u64)> {
        [
            Protocol::Grpc,
            Protocol::GrpcWeb,
            Protocol::Rest,
            Protocol::Connect,
        ]
        .into_iter()
        .map(|protocol| {
            let count =
                self.calls_by_protocol[Self::protocol_index(protocol)].load(Ordering::Relaxed);
            (protocol.name(), count)
        })
        .collect()
    }

    /// Calls answered with an error so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Decrements a gauge when dropped, so a cancelled task cannot leave it counted.
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::StatusLabel;

    #[test]
    fn a_status_label_is_the_code_as_written() {
        assert_eq!(StatusLabel::grpc(None).as_str(), "0");
        assert_eq!(StatusLabel::grpc(Some("14")).as_str(), "14");
        // Not a code tonic writes, kept as it came (the gateway's own answers only).
        assert_eq!(StatusLabel::grpc(Some("17")).as_str(), "17");
        for code in [100u16, 200, 204, 404, 429, 599, 999] {
            let status = http::StatusCode::from_u16(code).expect("a status");
            assert_eq!(StatusLabel::http(status).as_str(), code.to_string());
        }
    }
}
