//! Putting the gateway together: open the backend, bind the port, compose the services on one
//! router, and serve until a shutdown future completes.
//!
//! [`Application::build`] binds (port 0 works) and exposes the bound address, so tests start a
//! gateway on a free port; [`Application::run_until_stopped`] takes any shutdown future.

// Public for the fuzz targets, which call the services as REST does; not an API of its own.
#[doc(hidden)]
pub mod direct;
mod reflection;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{body::Body, http::Request};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{codec::CompressionEncoding, server::NamedService, service::Routes};
use tonic_health::{ServingStatus, server::HealthReporter};
use tonic_web::GrpcWebLayer;
use tower::Layer;

use crate::{
    answer::methods::GrpcPaths,
    broker::{
        Broker,
        embedded::{EmbeddedBroker, Location},
        ensure_default_topic,
        iggy::IggyBroker,
        metered::MeteredBroker,
    },
    config::Config,
    connect::{Connect, ConnectPaths, ConnectSettings},
    grpc::{
        DefaultTopic, EventApi, Limits, MessageApi, StatsApi, StreamApi, TopicApi, UnaryAnswers,
        UncompressedStreams, server_streams,
    },
    identity,
    layers::{self, ApiCalls, Scoped, Scopes, rate_limit},
    listener::{self, ListenerSettings, Tls},
    metrics::Metrics,
    ops,
    proto::{
        event_service_server::EventServiceServer, message_service_server::MessageServiceServer,
        stats_service_server::StatsServiceServer, stream_service_server::StreamServiceServer,
        topic_service_server::TopicServiceServer,
    },
    rest::{self, RestSettings},
    stats::Stats,
    subscription::{self, CursorKeys, SubscribeSettings, Subscriptions},
};

/// Why the gateway could not start or stopped abnormally; each maps to a sysexits code.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// EX_CONFIG (78): a setting is wrong.
    #[error("configuration error: {0}")]
    Config(String),
    /// EX_UNAVAILABLE (69): a resource the gateway needs (port, data directory) is not usable.
    #[error("{0}")]
    Unavailable(String),
    /// EX_SOFTWARE (70): a fault of the gateway itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StartupError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => 78,
            StartupError::Unavailable(_) => 69,
            StartupError::Internal(_) => 70,
        }
    }
}

/// A health service name that is SERVING while the process runs, whatever the backend does:
/// the Kubernetes liveness probe asks for it, so an unreachable Iggy does not restart pods.
pub const LIVENESS_SERVICE: &str = "liveness";

/// The gRPC services whose health `grpc.health.v1.Health` reports, besides the overall "".
const SERVICE_NAMES: [&str; 4] = [
    <StreamServiceServer<StreamApi> as NamedService>::NAME,
    <TopicServiceServer<TopicApi> as NamedService>::NAME,
    <MessageServiceServer<MessageApi> as NamedService>::NAME,
    <EventServiceServer<EventApi> as NamedService>::NAME,
];

/// Answers from the statistics cache, so it is up while the process is, like liveness.
const STATS_SERVICE: &str = <StatsServiceServer<StatsApi> as NamedService>::NAME;

/// Connections the `METRICS_PORT` listener serves at once; more are closed on arrival. A
/// scraper or two needs a few, and the open-files limit keeps a quarter aside besides
/// `MAX_CONNECTIONS`.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    listener_settings: ListenerSettings,
    router: axum::Router,
    health: HealthReporter,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    subscriptions_stop: CancellationToken,
    /// The separate `/metrics` listener, when METRICS_PORT is set.
    metrics_listener: Option<TcpListener>,
    /// How long calls in flight (a health Watch, a slow poll) may run on after shutdown starts.
    shutdown_timeout: Duration,
    /// TLS on the main port, when a certificate is configured.
    tls: Option<Tls>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        // Loading validated it, but the fields are public and tests change them afterwards.
        config.validate().map_err(StartupError::Config)?;
        let metrics = Arc::new(Metrics::new());
        let iggy = config.iggy_settings().map_err(StartupError::Config)?;
        let with_iggy = iggy.is_some();
        let backend: Arc<dyn Broker> = match iggy {
            Some(settings) => {
                let wait = settings.operation_timeout;
                let iggy = Arc::new(IggyBroker::start(settings));
                if config.backend.iggy_require_at_startup {
                    require_backend(iggy.as_ref(), wait).await?;
                }
                iggy
            }
            None => {
                let location = config.location();
                Arc::new(
                    tokio::task::spawn_blocking(move || EmbeddedBroker::open(&location))
                        .await
                        .map_err(|err| StartupError::Internal(err.to_string()))?
                        .map_err(|err| StartupError::Unavailable(err.to_string()))?,
                )
            }
        };
        // After the store is open, so its directory exists and no other gateway holds it.
        let (cursor_keys, id_secret) = cursor_keys(&config, with_iggy).await?;
        let broker: Arc<dyn Broker> = Arc::new(MeteredBroker::new(backend, Arc::clone(&metrics)));
        tracing::info!(backend = %broker.describe(), "backend selected");
        let durability = broker.durability();
        tracing::info!(
            durability = durability.as_str(),
            "acknowledged messages are kept {durability}"
        );
        if config.backend.iggy_connection_string.is_none() {
            // An operator who meant to front Iggy and forgot the variable must not miss it.
            tracing::warn!(
                backend = %broker.describe(),
                "IGGY_CONNECTION_STRING is unset: messages are kept by the embedded store, not \
                 by an Iggy server"
            );
        }
        let default_topic = config.default_topic().map_err(StartupError::Config)?;
        if let Some(topic) = default_topic.clone() {
            let ensure = {
                let broker = Arc::clone(&broker);
                move || {
                    let (broker, topic) = (Arc::clone(&broker), topic.clone());
                    async move {
                        ensure_default_topic(
                            broker.as_ref(),
                            &topic.stream,
                            &topic.topic,
                            topic.partitions,
                        )
                        .await
                        .map_err(|err| err.to_string())
                    }
                }
            };
            let available = *broker.availability().borrow();
            if available {
                ensure()
                    .await
                    .map_err(|err| StartupError::Unavailable(format!("default topic: {err}")))?;
            }
            // Once the backend is reachable, if it is not yet, and again after each
            // reconnection: an Iggy server wiped and started again has no default topic.
            if with_iggy || !available {
                let reconnects = {
                    let broker = Arc::clone(&broker);
                    move || broker.reconnects()
                };
                tokio::spawn(keep_default_topic(
                    broker.availability(),
                    reconnects,
                    ensure,
                    available,
                    DEFAULT_TOPIC_EVERY,
                ));
            }
        }

        // Read before the port is bound: a file that cannot be used is a configuration error
        // (exit 78), not a gateway that starts and then fails every handshake.
        let tls = config
            .tls_settings()
            .map(Tls::load)
            .transpose()
            .map_err(|err| StartupError::Config(err.to_string()))?;
        let address = SocketAddr::new(config.server.host, config.server.port);
        let listener = TcpListener::bind(address).await.map_err(|err| {
            StartupError::Unavailable(format!("cannot listen on {address}: {err}"))
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|err| StartupError::Internal(err.to_string()))?;

        if config.is_open_to_the_network() {
            tracing::warn!(
                host = %config.server.host,
                "NO API_KEY IS SET and the gateway listens beyond loopback: anyone who can reach \
                 it can read, write and delete every stream. Set API_KEY."
            );
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        // Ends live subscriptions at shutdown, so their streams close politely.
        let subscriptions_stop = CancellationToken::new();
        // Read by `/stats` and `GetStats`, refreshed in the background until shutdown.
        let stats = Arc::new(Stats::new(Arc::clone(&broker), Arc::clone(&metrics)));
        Arc::clone(&stats).spawn_refresher(
            Duration::from_millis(config.telemetry.stats_refresh_interval_ms),
            subscriptions_stop.clone(),
        );
        // API_KEY's keys and the keys file's, reloaded on SIGHUP and when the file changes.
        let keys = Arc::new(
            config
                .auth
                .key_ring()
                .map_err(StartupError::Config)?
                .with_ceiling(config.layer_settings().rate_limit),
        );
        if let Some(path) = keys.file() {
            tracing::info!(path = %path.display(), keys = keys.current().len(), "keys file loaded");
            identity::spawn_reloader(
                Arc::clone(&keys),
                Duration::from_millis(config.auth.api_keys_reload_interval_ms),
                subscriptions_stop.clone(),
            )
            .map_err(|err| StartupError::Internal(format!("cannot listen for SIGHUP: {err}")))?;
        }
        let scopes =
            Scopes::new(Arc::clone(&keys), Arc::clone(&metrics)).map_err(StartupError::Internal)?;
        let api_calls = api_calls(&scopes)?;
        let routes = routes(
            scopes,
            config.limits.idempotency().with_id_secret(id_secret),
            Arc::clone(&broker),
            Arc::clone(&stats),
            config.limits(),
            default_topic,
            Subscriptions::new(
                SubscribeSettings {
                    cursor_keys,
                    ..config.subscribe_settings()
                },
                subscriptions_stop.clone(),
            ),
            Surfaces {
                rest: config.rest_settings(),
                connect: ConnectSettings {
                    max_body_bytes: config.rest_settings().max_body_bytes,
                    compression_min_bytes: usize::from(config.wire.compression_min_bytes),
                },
            },
            health_service,
        )?;
        let router = routes.into_axum_router().merge(ops::router(
            Arc::clone(&broker),
            Arc::clone(&metrics),
            Arc::clone(&stats),
        ));
        let (router, rate_limit) = layers::apply(
            router,
            &config.layer_settings(),
            Arc::clone(&metrics),
            keys,
            api_calls,
        );
        if let Some(rate_limit) = rate_limit {
            // Keeps the limiter's memory bounded under many distinct clients.
            rate_limit::spawn_sweeper(rate_limit, Duration::from_secs(10));
        }
        let metrics_listener = match config.telemetry.metrics_port {
            Some(port) => {
                let address = SocketAddr::new(config.server.host, port);
                Some(TcpListener::bind(address).await.map_err(|err| {
                    StartupError::Unavailable(format!(
                        "cannot listen on {address} (METRICS_PORT): {err}"
                    ))
                })?)
            }
            None => None,
        };
        let descriptor_limit = listener::raise_descriptor_limit();
        let listener_settings = config.listener_settings(descriptor_limit);
        if let Some(limit) = descriptor_limit {
            let spare = limit.saturating_sub(listener::reserved_descriptors(limit));
            tracing::info!(
                open_files_limit = limit,
                max_connections = listener_settings.max_connections,
                max_connections_per_client = listener_settings.max_connections_per_client,
                "descriptor limits"
            );
            if listener_settings.max_connections as u64 > spare {
                tracing::warn!(
                    open_files_limit = limit,
                    max_connections = listener_settings.max_connections,
                    "MAX_CONNECTIONS leaves fewer than {} descriptors for the store and the \
                     backend: accepts will fail (and back off) once descriptors run out",
                    listener::reserved_descriptors(limit)
                );
            }
        }
        Ok(Self {
            listener,
            local_addr,
            listener_settings,
            router,
            health,
            broker,
            metrics,
            subscriptions_stop,
            metrics_listener,
            shutdown_timeout: Duration::from_secs(config.server.shutdown_timeout),
            tls,
        })
    }

    /// The address actually bound (the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The separate metrics listener's address, when METRICS_PORT is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING, stops accepting, and lets
    /// calls in flight finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        self.run_until_stopped_or_hurried(shutdown, std::future::pending())
            .await
    }

    /// As [`run_until_stopped`](Self::run_until_stopped); once `hurry` completes (a second
    /// stop signal), the drain ends at once: calls in flight are closed and the backend is
    /// closed as at the end of any drain.
    pub async fn run_until_stopped_or_hurried(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        hurry: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            listener,
            local_addr,
            listener_settings,
            router,
            health,
            broker,
            metrics,
            subscriptions_stop,
            metrics_listener,
            shutdown_timeout,
            tls,
        } = self;
        if let Some(listener) = metrics_listener {
            // Logged as the main port is, so METRICS_PORT=0's pick can be found.
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "serving /metrics (METRICS_PORT)");
            }
            let router = ops::metrics_router(Arc::clone(&broker), Arc::clone(&metrics));
            // Served as the main port is (its timeouts and head limits), with places of its
            // own: it needs no key, and must not take the descriptors the main port counts on.
            let settings = listener::ListenerSettings {
                max_connections: METRICS_MAX_CONNECTIONS.min(listener_settings.max_connections),
                ..listener_settings.clone()
            };
            tokio::spawn(listener::serve(
                listener,
                router,
                settings,
                Arc::clone(&metrics),
                None,
                subscriptions_stop.clone(),
            ));
        }
        // The process itself, and the statistics (served from a cache, whatever the backend
        // does), are up until shutdown.
        for name in [LIVENESS_SERVICE, STATS_SERVICE] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        tokio::spawn(follow_backend_health(
            broker.availability(),
            health.clone(),
            Arc::clone(&metrics),
        ));
        if let Some(tls) = &tls {
            tls.spawn_reloader(subscriptions_stop.clone());
        }
        tracing::info!(
            address = %local_addr,
            tls = tls.is_some(),
            "serving gRPC, gRPC-Web and HTTP"
        );

        // A backend that gave up for good stops the gateway as a signal would, after saying
        // why; the exit code is then 69 (EX_UNAVAILABLE), so an orchestrator restarts it.
        let lost = Arc::new(std::sync::OnceLock::<String>::new());
        let shutdown = {
            let (mut gave_up, lost) = (broker.gave_up(), Arc::clone(&lost));
            let backend = broker.describe();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    Ok(_) = gave_up.wait_for(|gave_up| *gave_up) => {
                        let why = format!(
                            "lost the backend for good: {backend} used up its reconnection \
                             attempts (MAX_RECONNECT_ATTEMPTS)"
                        );
                        tracing::error!("{why}; stopping");
                        let _ = lost.set(why);
                    }
                }
            }
        };
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_serving = CancellationToken::new();
        let draining = {
            let stop_serving = stop_serving.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: reporting NOT_SERVING and draining calls");
                set_health(&health, ServingStatus::NotServing).await;
                subscriptions_stop.cancel();
                for name in [LIVENESS_SERVICE, STATS_SERVICE] {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                stop_serving.cancel();
                let _ = draining_tx.send(());
            }
        };
        tokio::spawn(draining);
        let server = listener::serve(
            listener,
            router,
            listener_settings,
            Arc::clone(&metrics),
            tls,
            stop_serving,
        );
        // Long-lived calls (a health Watch) would hold a graceful shutdown open forever, so
        // draining is bounded.
        let deadline = async move {
            if draining_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::select! {
                () = tokio::time::sleep(shutdown_timeout) => {}
                () = hurry => {}
            }
        };
        tokio::select! {
            () = server => {}
            () = deadline => {
                tracing::warn!(timeout = ?shutdown_timeout, "calls still running at the shutdown deadline; closing them");
            }
        }
        broker.close().await;
        tracing::info!("stopped");
        match lost.get() {
            Some(why) => Err(StartupError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }
}

/// Waits up to `wait` for the backend's first connection (`IGGY_REQUIRE_AT_STARTUP`).
async fn require_backend(broker: &dyn Broker, wait: Duration) -> Result<(), StartupError> {
    let mut available = broker.availability();
    let mut gave_up = broker.gave_up();
    let reached = tokio::time::timeout(wait, async {
        tokio::select! {
            up = available.wait_for(|up| *up) => up.is_ok(),
            Ok(_) = gave_up.wait_for(|gave_up| *gave_up) => false,
        }
    })
    .await;
    match reached {
        Ok(true) => Ok(()),
        _ => Err(StartupError::Unavailable(format!(
            "{} is not reachable within {wait:?} and IGGY_REQUIRE_AT_STARTUP is set",
            broker.describe()
        ))),
    }
}

/// One instance of each API service, over `broker`.
fn services(
    broker: Arc<dyn Broker>,
    stats: Arc<Stats>,
    limits: Limits,
    default_topic: Option<DefaultTopic>,
    subscriptions: Subscriptions,
    idempotency: crate::idempotency::Idempotency,
    answers: UnaryAnswers,
) -> direct::Services {
    direct::Services {
        streams: Arc::new(StreamApi::new(Arc::clone(&broker)).with_answers(answers)),
        topics: Arc::new(TopicApi::new(Arc::clone(&broker)).with_answers(answers)),
        messages: Arc::new(
            MessageApi::new(Arc::clone(&broker), limits, subscriptions)
                .with_idempotency(Arc::new(idempotency))
                .with_answers(answers),
        ),
        events: Arc::new(EventApi::new(broker, limits, default_topic).with_answers(answers)),
        stats: Arc::new(StatsApi::new(stats).with_answers(answers)),
    }
}

/// Every method's typed JSON codec as start-up builds them (services over a throw-away
/// store), for tests that check each against the descriptors.
#[cfg(test)]
pub(crate) fn json_codecs() -> std::collections::HashMap<String, rest::direct::JsonCodec> {
    direct_table().1
}

/// The direct calls and typed JSON codecs as start-up builds them, over a throw-away store.
#[cfg(test)]
pub(crate) fn direct_table() -> (
    rest::direct::Direct,
    std::collections::HashMap<String, rest::direct::JsonCodec>,
) {
    let config = Config::for_tests(":memory:");
    let broker: Arc<dyn Broker> =
        Arc::new(EmbeddedBroker::open(&Location::Memory).expect("a store in memory"));
    let metrics = Arc::new(Metrics::new());
    let stats = Arc::new(Stats::new(Arc::clone(&broker), Arc::clone(&metrics)));
    let apis = services(
        broker,
        stats,
        config.limits(),
        None,
        Subscriptions::new(config.subscribe_settings(), CancellationToken::new()),
        config.limits.idempotency(),
        UnaryAnswers::default(),
    );
    let scopes = Scopes::new(Arc::new(identity::KeyRing::from_static(&[])), metrics)
        .expect("every RPC declares its scope");
    let table = rest::route_table().expect("the route table");
    direct::table(&scopes, &apis, &table).expect("the direct table")
}

/// The requests the scope policy admits or refuses (and so holds a keys-file key to its
/// quotas): an RPC's gRPC path (gRPC, gRPC-Web, Connect), or a REST route called as REST.
fn api_calls(scopes: &Scopes) -> Result<ApiCalls, StartupError> {
    let scopes = scopes.clone();
    let table = rest::route_table().map_err(StartupError::Internal)?;
    Ok(Arc::new(move |request: &Request<Body>| {
        let path = request.uri().path();
        scopes.knows(path)
            || (!rest::is_grpc(request.headers())
                && matches!(table.find(request.method(), path), rest::Lookup::Found(..)))
    }))
}

/// How the HTTP surfaces over the services (REST, Connect) read requests.
struct Surfaces {
    rest: RestSettings,
    connect: ConnectSettings,
}

/// One router for every protocol: REST's router is the base (so an unknown path answers as
/// REST, not as gRPC), and each gRPC service is mounted under its own `/package.Service/`
/// prefix, wrapped in its own gRPC-Web translation (wrapping the whole router would answer
/// plain HTTP/1.1 REST calls with 400). REST reaches the same service instances. Each API
/// service is guarded by `scopes`, on both ways in, so every protocol meets the same check.
#[allow(clippy::too_many_arguments)]
fn routes(
    scopes: Scopes,
    idempotency: crate::idempotency::Idempotency,
    broker: Arc<dyn Broker>,
    stats: Arc<Stats>,
    limits: Limits,
    default_topic: Option<DefaultTopic>,
    subscriptions: Subscriptions,
    surfaces: Surfaces,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<Routes, StartupError> {
    let Surfaces {
        rest: rest_settings,
        connect: connect_settings,
    } = surfaces;
    let max_request_bytes = rest_settings.max_body_bytes;

    // gzip and zstd both ways, as each client negotiates (`grpc-encoding` for what it sends,
    // `grpc-accept-encoding` for what it takes back); tonic inflates a message into at most
    // `max_decoding_message_size` bytes, and the codec charges them to the budget.
    macro_rules! compressed {
        ($server:expr) => {
            $server
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Zstd)
        };
    }
    // One instance of each service, served to gRPC and called directly by REST. Small unary
    // answers go uncompressed on every protocol: one knob, `COMPRESSION_MIN_BYTES`.
    let apis = services(
        broker,
        stats,
        limits,
        default_topic,
        subscriptions,
        idempotency,
        UnaryAnswers::new(connect_settings.compression_min_bytes),
    );
    let streams = compressed!(StreamServiceServer::from_arc(Arc::clone(&apis.streams)))
        .max_decoding_message_size(max_request_bytes);
    let topics = compressed!(TopicServiceServer::from_arc(Arc::clone(&apis.topics)))
        .max_decoding_message_size(max_request_bytes);
    let messages = compressed!(MessageServiceServer::from_arc(Arc::clone(&apis.messages)))
        .max_decoding_message_size(max_request_bytes);
    let events = compressed!(EventServiceServer::from_arc(Arc::clone(&apis.events)))
        .max_decoding_message_size(max_request_bytes);
    let stats = compressed!(StatsServiceServer::from_arc(Arc::clone(&apis.stats)));

    let table = rest::route_table().map_err(StartupError::Internal)?;
    // REST's calls, unary and streamed, go straight to the same instances (no route without
    // one: start-up fails otherwise). Each method's typed JSON codec beside them is for tests.
    let (direct, _) = direct::table(&scopes, &apis, &table).map_err(StartupError::Internal)?;
    // Connect calls them straight as well; its JSON is read by REST's rules and written by
    // the same typed codecs.
    let connect =
        Arc::new(Connect::new(&direct, connect_settings).map_err(StartupError::Internal)?);
    let rest = rest::router(table, direct, rest_settings);

    // Plain HTTP methods other than POST on a service's paths are answered as on any path
    // (OPTIONS, 405), not by tonic-web's empty 400.
    fn web<S>(service: S) -> GrpcPaths<tonic_web::GrpcWebService<S>> {
        GrpcPaths::new(GrpcWebLayer::new().layer(service))
    }
    // The API's services also answer Connect calls on their paths (told apart by content type).
    // Connect calls are direct calls, admitted by the same scope policy; the guard here sees
    // gRPC and gRPC-Web calls only, so no call is checked twice.
    // Server streams go uncompressed over gRPC (see `UncompressedStreams`).
    let streamed = server_streams(&crate::descriptors::pool().map_err(StartupError::Internal)?);
    fn api<S>(
        connect: &Arc<Connect>,
        scopes: &Scopes,
        streamed: &Arc<[String]>,
        service: S,
    ) -> ConnectPaths<Scoped<GrpcPaths<tonic_web::GrpcWebService<UncompressedStreams<S>>>>> {
        let service = UncompressedStreams::new(service, Arc::clone(streamed));
        ConnectPaths::new(scopes.guard(web(service)), Arc::clone(connect))
    }
    Ok(Routes::from(rest)
        .add_service(api(&connect, &scopes, &streamed, streams))
        .add_service(api(&connect, &scopes, &streamed, topics))
        .add_service(api(&connect, &scopes, &streamed, messages))
        .add_service(api(&connect, &scopes, &streamed, events))
        .add_service(api(&connect, &scopes, &streamed, stats))
        .add_service(web(health_service))
        .add_service(web(reflection::v1()))
        .add_service(web(reflection::v1alpha()))
        .prepare())
}

/// The keys that sign subscription cursors: CURSOR_SECRET (and CURSOR_SECRET_PREVIOUS) when
/// set; otherwise the embedded store on disk keeps a generated secret beside its data, so
/// cursors survive a restart, and anything else gets a random key, loudly where it matters.
/// With them, the secret when it lasts (set, or kept on disk): it keys the message ids an
/// `Idempotency-Key` derives, which must come out the same after a restart and on every replica.
async fn cursor_keys(
    config: &Config,
    iggy: bool,
) -> Result<(CursorKeys, Option<Vec<u8>>), StartupError> {
    if let Some(keys) = config.subscriptions.cursor_keys() {
        let lasting = config
            .subscriptions
            .cursor_secret
            .as_ref()
            .map(|secret| secret.expose().as_bytes().to_vec());
        return Ok((keys, lasting));
    }
    if iggy {
        tracing::warn!(
            "CURSOR_SECRET IS NOT SET: subscription cursors are signed with a key random to this \
             process, so after a restart, or on another replica, every cursor is refused (400 / \
             INVALID_ARGUMENT) and clients must subscribe again from scratch. Set CURSOR_SECRET, \
             the same on every replica."
        );
        return Ok((CursorKeys::random(), None));
    }
    match config.location() {
        Location::Memory => Ok((CursorKeys::random(), None)),
        Location::Directory(dir) => {
            let secret = tokio::task::spawn_blocking(move || subscription::kept_secret(&dir))
                .await
                .map_err(|err| StartupError::Internal(err.to_string()))?
                .map_err(|err| StartupError::Unavailable(err.to_string()))?;
            let lasting = secret.to_vec();
            Ok((CursorKeys::new(secret, None), Some(lasting)))
        }
    }
}

/// How often the default topic's keeper looks at the backend's connections.
const DEFAULT_TOPIC_EVERY: Duration = Duration::from_secs(2);

/// Has the default topic made (`ensure`) once the backend is available, unless `ensured`
/// already, and again after each reconnection (`reconnects`, a count): an Iggy server wiped
/// and started again has none, and the pool may reconnect to it before it is ever seen
/// unavailable. Looks every `every`; a failed try is tried again then. Lives as long as the
/// backend's availability channel (which the broker it holds keeps open: the runtime ends it).
async fn keep_default_topic<R, F, Fut>(
    available: tokio::sync::watch::Receiver<bool>,
    reconnects: R,
    mut ensure: F,
    ensured: bool,
    every: Duration,
) where
    R: Fn() -> u64,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    // The reconnection count the topic was last made at.
    let mut made_at = ensured.then(&reconnects);
    while available.has_changed().is_ok() {
        let now = reconnects();
        if *available.borrow() && made_at != Some(now) {
            match ensure().await {
                Ok(()) => made_at = Some(now),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot create the default topic yet; retrying");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// Mirrors the backend's availability into gRPC health, for the overall status and each service.
async fn follow_backend_health(
    mut available: tokio::sync::watch::Receiver<bool>,
    health: HealthReporter,
    metrics: Arc<Metrics>,
) {
    loop {
        let up = *available.borrow_and_update();
        metrics.set_backend_available(up);
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(&health, status).await;
        if available.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    /// An Iggy server wiped and started again has no default topic: it is made again after
    /// each reconnection (which may come without the backend ever seen unavailable), once the
    /// backend is available; a failed try is tried again.
    #[tokio::test]
    async fn the_default_topic_is_made_again_after_each_reconnection() {
        let (up, available) = tokio::sync::watch::channel(true);
        let reconnects = Arc::new(AtomicU64::new(0));
        let tries = Arc::new(AtomicUsize::new(0));
        let ensure = {
            let tries = Arc::clone(&tries);
            move || {
                let tries = Arc::clone(&tries);
                // Every other try fails, as one against a server still starting may.
                async move {
                    match tries.fetch_add(1, Ordering::SeqCst) % 2 {
                        0 => Err("not yet".to_owned()),
                        _ => Ok(()),
                    }
                }
            }
        };
        let keeper = tokio::spawn(keep_default_topic(
            available,
            {
                let reconnects = Arc::clone(&reconnects);
                move || reconnects.load(Ordering::SeqCst)
            },
            ensure,
            true,
            Duration::from_millis(2),
        ));
        let settled = || tokio::time::sleep(Duration::from_millis(50));
        // Waits (up to 5 s) for `count` tries, then lets the keeper settle.
        let tried = |count: usize| {
            let tries = Arc::clone(&tries);
            async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while tries.load(Ordering::SeqCst) < count {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                tries.load(Ordering::SeqCst)
            }
        };
        // Made at start-up already: nothing until a reconnection.
        settled().await;
        assert_eq!(tries.load(Ordering::SeqCst), 0);
        for round in 1..=2 {
            reconnects.fetch_add(1, Ordering::SeqCst);
            assert_eq!(tried(2 * round).await, 2 * round, "round {round}");
        }
        // Reconnected while unavailable: made once it is available again.
        up.send_replace(false);
        reconnects.fetch_add(1, Ordering::SeqCst);
        settled().await;
        assert_eq!(tries.load(Ordering::SeqCst), 4);
        up.send_replace(true);
        assert_eq!(tried(6).await, 6);
        drop(up);
        tokio::time::timeout(Duration::from_secs(5), keeper)
            .await
            .expect("ends with the backend")
            .expect("no panic");
    }
}
