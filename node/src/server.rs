//! Boot and shutdown of a node.
//!
//! Runtime layout (see `docs/runtime.md`): one multi-thread tokio runtime, "core", owns the
//! ractor actors (rooms, users, supervisors) and the store's tasks; the HTTP server (actix-server
//! with actix-web's `App`, as `HttpServer` builds it, plus a WebSocket upgrade handler, see
//! [`crate::upgrade`]) is started inside it and runs its own worker threads (one
//! single-threaded runtime each) for sockets and session actors. Sessions reach rooms by `cast`/`call` (thread-safe channels);
//! rooms reach sessions through bounded queues.

use std::sync::Arc;
use std::time::Duration;

use std::rc::Rc;

use actix_http::HttpService;
use actix_service::{fn_factory, fn_service, map_config, ServiceFactory};
use actix_web::dev::{AppConfig, Extensions};
use actix_web::rt::net::TcpStream;
use actix_web::{web, App};
use anyhow::Context;
use history::scylla::{ScyllaConfig, ScyllaError, ScyllaStore};
use history::{EmbeddedStore, HistoryStore};
use rooms::{Hub, RestartPolicy, RoomConfig, Rooms, RoomsConfig, UserConfig};
use sessions::{AuthConfig, Authenticator, Limits, SessionsContext};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backend::NodeBackend;
use crate::config::{Config, HistoryBackend, JwtAlgorithm};
use crate::http::{self, HttpState};
use crate::upgrade::{self, LiveSockets};

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Open files kept for everything but client connections: the store's files, cluster links,
/// plain HTTP requests.
const RESERVED_FILES: u64 = 128;

/// `max_connections`, or the open-files limit less [`RESERVED_FILES`] when it is 0.
fn max_connections(cfg: &Config) -> usize {
    if cfg.max_connections > 0 {
        return cfg.max_connections;
    }
    match open_files_limit() {
        Some(n) => n.saturating_sub(RESERVED_FILES).max(64) as usize,
        None => 1_000_000,
    }
}

/// Raises the soft open-files limit to the hard one (many systems start processes at 1,024
/// of a much higher hard limit) and returns it; `None` when unlimited or unknown.
fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Runs a node until SIGINT/SIGTERM.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let threads = if cfg.core_threads == 0 {
        cores()
    } else {
        cfg.core_threads
    };
    let core = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("core")
        .enable_all()
        .build()
        .context("building the core runtime")?;
    core.block_on(serve(cfg))
}

fn rooms_config(cfg: &Config) -> RoomsConfig {
    RoomsConfig {
        node_name: cfg.node_name.clone(),
        room: RoomConfig {
            history_on_join: cfg.history_on_join,
            idle_timeout: cfg.room_idle_timeout,
            typing_ttl: cfg.typing_ttl,
            dedupe_window: cfg.dedupe_window,
            // A join must be answered (without history if need be) before the caller's deadline.
            join_history_wait: (cfg.call_timeout / 2).min(Duration::from_secs(2)),
            ..RoomConfig::default()
        },
        user: UserConfig {
            rate_per_sec: cfg.rate_limit_per_sec,
            burst: cfg.rate_limit_burst,
            idle_timeout: cfg.user_idle_timeout,
            hibernate_after: cfg.user_hibernate_after,
        },
        restart: RestartPolicy {
            max_restarts: cfg.max_restarts,
            period: cfg.restart_period,
        },
        call_timeout: cfg.call_timeout,
        max_history_page: cfg.max_history_page,
        max_resume: cfg.max_resume,
    }
}

fn limits(cfg: &Config) -> Limits {
    Limits {
        max_frame_bytes: cfg.max_frame_bytes,
        max_text_chars: cfg.max_text_chars,
        max_attachments: cfg.max_attachments,
        max_rooms_per_connection: cfg.max_rooms_per_connection,
        max_inflight: cfg.max_inflight,
        outbound_queue: cfg.outbound_queue,
        slow_consumer_grace: cfg.slow_consumer_grace,
        max_consecutive_errors: cfg.max_consecutive_errors,
        heartbeat_interval: cfg.heartbeat_interval,
        client_timeout: cfg.client_timeout,
        max_engine_sessions: max_connections(cfg),
    }
}

/// Builds the authenticator from the configuration (warning loudly about the dev secret).
pub fn authenticator(cfg: &Config) -> anyhow::Result<Authenticator> {
    let (secret, is_dev) = cfg.effective_jwt_secret();
    if is_dev {
        warn!("**********************************************************************");
        warn!("NO jwt_secret CONFIGURED: using the public development secret.");
        warn!("Anyone can mint tokens for this node. Set PARLEY_JWT_SECRET in production.");
        warn!("**********************************************************************");
    }
    let alg = match cfg.jwt_public_key_algorithm {
        JwtAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        JwtAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
    };
    let auth = AuthConfig {
        hs256_secret: secret,
        public_key_pem: cfg.public_key_pem()?.map(|pem| (pem, alg)),
        leeway_secs: cfg.jwt_leeway.as_secs(),
        allowed_origins: cfg.allowed_origins.clone(),
    };
    Ok(Authenticator::new(&auth)?)
}

async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn HistoryStore>> {
    match cfg.history {
        HistoryBackend::Embedded => {
            let dir = cfg.data_dir.join("history");
            let store = EmbeddedStore::open(&dir)
                .with_context(|| format!("opening the embedded store in {}", dir.display()))?;
            info!(dir = %dir.display(), "embedded history store open");
            Ok(store)
        }
        HistoryBackend::Scylla => {
            let store = connect_scylla(&cfg.scylla, cfg.history_connect_timeout).await?;
            info!(
                contact_points = ?cfg.scylla.contact_points,
                keyspace = %cfg.scylla.keyspace,
                bucket_bits = store.bucket_bits(),
                "scylla history store connected"
            );
            Ok(store)
        }
    }
}

/// Whether connecting again may help: the cluster may be starting, restarting or unreachable
/// for a moment. Configuration, TLS and schema-version problems will not fix themselves.
fn worth_retrying(e: &ScyllaError) -> bool {
    match e {
        ScyllaError::Prepare { source, .. } => history::scylla::error::prepare_is_transient(source),
        _ => e.is_transient(),
    }
}

/// Connects to the cluster (on the calling runtime: the core runtime, which then runs the
/// driver's connection tasks and the store's writer), retrying with a capped backoff until
/// `deadline` has passed; the last attempt starts at the deadline at the latest and is bounded
/// by the driver's `connect_timeout`. Every failed attempt is logged; the last error is
/// returned.
async fn connect_scylla(
    scfg: &ScyllaConfig,
    deadline: Duration,
) -> anyhow::Result<Arc<ScyllaStore>> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        // `{e}`, not the error chain: the driver's messages already repeat their causes.
        let e = match ScyllaStore::connect(scfg).await {
            Ok(store) => return Ok(store),
            Err(e) => e,
        };
        let where_ = format!("{:?} (keyspace {})", scfg.contact_points, scfg.keyspace);
        if !worth_retrying(&e) {
            anyhow::bail!("the scylla history store {where_} refused to start: {e}");
        }
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            anyhow::bail!(
                "could not reach the scylla history store {where_} within \
                 history_connect_timeout ({deadline:?}, {attempt} attempts): {e}"
            );
        }
        let pause = delay.min(left);
        warn!(attempt, error = %e, retry_in = ?pause, "cannot reach the scylla history store yet");
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(Duration::from_secs(5));
        attempt += 1;
    }
}

/// `parley migrate`: creates or migrates the `[scylla]` keyspace and prints the report.
pub fn migrate(cfg: &Config) -> anyhow::Result<()> {
    if cfg.history != HistoryBackend::Scylla {
        eprintln!("note: history = \"embedded\"; migrating the [scylla] keyspace anyway");
    }
    // The driver wants a multi-thread runtime for its connection tasks.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("migrate")
        .enable_all()
        .build()
        .context("building the runtime")?;
    let report = rt
        .block_on(history::scylla::migrate(&cfg.scylla))
        .with_context(|| {
            format!(
                "migrating keyspace {} on {:?}",
                cfg.scylla.keyspace, cfg.scylla.contact_points
            )
        })?;
    let applied = if report.applied.is_empty() {
        "none (already up to date)".to_string()
    } else {
        report
            .applied
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("keyspace: {}", report.keyspace);
    println!("schema version: {}", report.version);
    println!("applied migrations: {applied}");
    println!(
        "bucket_bits: {} ({} messages per partition)",
        report.bucket_bits,
        1u64 << report.bucket_bits
    );
    Ok(())
}

/// Sets TCP_USER_TIMEOUT and keepalive on an accepted client socket, so that a peer that stops
/// reading (zero window) or vanishes is dropped by the kernel and its session actor ends.
/// Also records the socket's identity for the slow-consumer kill switch (`sessions::conn`).
fn tune_socket(tcp: &TcpStream, ext: &mut Extensions, user_timeout: Duration) {
    if let Some(sock) = sessions::conn::ConnSocket::of(tcp) {
        ext.insert(sock);
    }
    let sock = socket2::SockRef::from(tcp);
    // Pushes and acks are small frames written back to back: without TCP_NODELAY, Nagle's
    // algorithm holds the second until the first is acknowledged (measured: acks at 20 ms).
    let _ = sock.set_tcp_nodelay(true);
    let _ = sock.set_tcp_user_timeout(Some(user_timeout));
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = sock.set_tcp_keepalive(&ka);
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    info!(node = %cfg.node_name, "starting parley {}", env!("CARGO_PKG_VERSION"));
    let prometheus = crate::telemetry::init_metrics()?;
    for var in crate::config::ignored_env_vars() {
        info!(%var, "not a setting; ignored");
    }
    let store = open_store(&cfg).await?;
    let hub = Arc::new(Hub::default());
    let (view, transport) = crate::cluster::view(&cfg.node_name, &cfg.cluster);
    if cfg.otlp_endpoint.is_some() {
        view.set_traceparent(Arc::new(crate::telemetry::current_traceparent));
    }
    let rooms = Rooms::start(rooms_config(&cfg), store.clone(), hub, view).await?;
    info!("room and user supervisors started");
    let cluster = match transport {
        Some(t) => {
            let c = crate::cluster::Cluster::start(
                &cfg.node_name,
                &cfg.cluster,
                t,
                rooms.clone(),
                cfg.test_hooks,
            )
            .await?;
            info!(listen = %c.listen, advertise = %c.advertise, peers = ?cfg.cluster.peers, "cluster listening");
            println!("parley cluster listening on {}", c.listen);
            Some(Arc::new(c))
        }
        None => None,
    };
    let auth = authenticator(&cfg)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let sessions = web::Data::new(SessionsContext::new(
        Arc::new(NodeBackend::new(rooms.clone())),
        auth,
        limits(&cfg),
        shutdown_rx.clone(),
    ));
    let live = Arc::new(LiveSockets::new(max_connections(&cfg)));
    tracing::info!(max_connections = live.max(), "connection limit");
    let state = web::Data::new(HttpState {
        rooms: rooms.clone(),
        prometheus,
        shutdown: shutdown_rx,
        cluster: cluster.clone(),
        live: live.clone(),
    });
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let test_hooks = cfg.test_hooks;
    let user_timeout = cfg.tcp_user_timeout;
    let workers = if cfg.http_workers == 0 {
        cores()
    } else {
        cfg.http_workers
    };
    let make_app = move || {
        let app = App::new()
            .app_data(sessions.clone())
            .app_data(state.clone())
            .route("/ws", web::get().to(sessions::ws_endpoint))
            .route("/socket.io/", web::route().to(sessions::socketio_endpoint))
            .route("/socket.io", web::route().to(sessions::socketio_endpoint))
            .route("/healthz", web::get().to(http::healthz))
            .route("/readyz", web::get().to(http::readyz))
            .route("/metrics", web::get().to(http::metrics))
            .route("/cluster", web::get().to(http::cluster))
            .route("/cluster/owner/{room}", web::get().to(http::cluster_owner));
        if test_hooks {
            app.route(
                "/debug/rooms/{room}/panic",
                web::post().to(http::debug_panic),
            )
        } else {
            app
        }
    };
    // actix-web's `HttpServer`, assembled by hand so WebSocket upgrades can leave actix-http's
    // dispatcher (see `upgrade`): one App instance per worker serves plain HTTP, another the
    // upgrade requests.
    let server_live = live.clone();
    let server = actix_server::Server::build()
        .workers(workers)
        .backlog(4096)
        .max_concurrent_connections(200_000)
        .disable_signals()
        .shutdown_timeout(cfg.shutdown_grace.as_secs().max(1))
        .listen("parley-http", listener, move || {
            let make_app = make_app.clone();
            let live = server_live.clone();
            let upgrade_app = make_app.clone();
            HttpService::build()
                .on_connect_ext(move |tcp: &TcpStream, ext: &mut Extensions| {
                    tune_socket(tcp, ext, user_timeout)
                })
                .upgrade(fn_factory(move || {
                    let factory = map_config(upgrade_app(), |_| AppConfig::default());
                    let live = live.clone();
                    async move {
                        // On the worker thread: its sessions are woken through its doorbell.
                        sessions::doorbell::Doorbell::install();
                        let app = Rc::new(factory.new_service(()).await?);
                        Ok::<_, ()>(fn_service(move |(req, framed)| {
                            upgrade::hand_over(app.clone(), live.clone(), req, framed);
                            std::future::ready(Ok::<_, actix_web::Error>(()))
                        }))
                    }
                }))
                .h1(map_config(make_app(), |_| AppConfig::default()))
                .tcp()
        })?
        .run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    let janitor = tokio::spawn(crate::memory::janitor(rooms.clone()));
    if test_hooks {
        warn!("test hooks are enabled: /debug endpoints can crash rooms");
    }
    info!(%addr, workers, "listening");
    // A machine-readable line for scripts and tests that start the node on port 0.
    println!("parley listening on {addr}");

    wait_for_signal().await;
    if let Some(c) = &cluster {
        // Drain: leave the ring first, so peers route this node's rooms to their next owners
        // while its clients reconnect elsewhere.
        info!("draining: leaving the cluster");
        c.leave().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    info!("shutting down: closing sessions (1001)");
    let _ = shutdown_tx.send(true);
    if !live.drained(cfg.shutdown_grace).await {
        warn!(
            left = live.count(),
            "WebSocket connections still open after the shutdown grace; dropping them"
        );
    }
    handle.stop(true).await;
    janitor.abort();
    let _ = server_task.await;
    rooms.stop();
    if let Some(c) = &cluster {
        c.stop();
    }
    store.shutdown().await;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
