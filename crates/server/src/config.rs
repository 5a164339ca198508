//! Configuration: every setting is a flag and an environment variable, validated at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};
use modelcast_protocol::AlertLevel;

/// The `modelcast` server's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "modelcast",
    version,
    about = "Real-time AI-model notification hub: WebSocket + HTTP on one port.",
    long_about = "Real-time AI-model notification hub.\n\n\
        Frontends connect to ws://HOST:PORT/ws/<connection_id> and subscribe to topics; \
        backends publish with POST /api/publish. Also serves /healthz, /readyz, /api/stats \
        and /metrics (Prometheus) on the same port.\n\n\
        Every option can also be set by the environment variable shown with it."
)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on (WebSocket and HTTP share it).
    #[arg(long, env = "MODELCAST_BIND", default_value = "127.0.0.1:8000", value_parser = parse_bind)]
    pub bind: SocketAddr,

    /// Seconds between WebSocket pings; a peer silent for two intervals is dropped.
    #[arg(long, env = "WEBSOCKET_HEARTBEAT_INTERVAL", default_value = "30", value_name = "SECONDS",
          value_parser = seconds("WEBSOCKET_HEARTBEAT_INTERVAL"))]
    pub heartbeat_interval: Duration,

    /// Most WebSocket connections at once; more are refused with HTTP 503.
    #[arg(long, env = "WEBSOCKET_MAX_CONNECTIONS", default_value = "10000", value_name = "N",
          value_parser = count("WEBSOCKET_MAX_CONNECTIONS"))]
    pub max_connections: usize,

    /// Frames that may wait per connection before progress is collapsed and, failing that,
    /// the connection is closed as a slow consumer.
    #[arg(long, env = "WEBSOCKET_MESSAGE_QUEUE_SIZE", default_value = "1000", value_name = "N",
          value_parser = count("WEBSOCKET_MESSAGE_QUEUE_SIZE"))]
    pub queue_size: usize,

    /// Seconds between sweeps of the model availability source (publishes only changes).
    #[arg(long, env = "MODEL_STATUS_UPDATE_INTERVAL", default_value = "5", value_name = "SECONDS",
          value_parser = seconds("MODEL_STATUS_UPDATE_INTERVAL"))]
    pub model_status_interval: Duration,

    /// At most one download progress update per model per this many seconds (fractions
    /// allowed); the newest value is always delivered.
    #[arg(long, env = "DOWNLOAD_PROGRESS_THROTTLE", default_value = "2", value_name = "SECONDS",
          value_parser = seconds("DOWNLOAD_PROGRESS_THROTTLE"))]
    pub download_progress_throttle: Duration,

    /// Lowest level of health results that is published.
    #[arg(long, env = "HEALTH_CHECK_NOTIFICATION_LEVEL", default_value = "warning",
          value_name = "info|warning|error|critical", value_parser = parse_health_level)]
    pub health_level: HealthLevel,

    /// Messages kept per topic for recovery with `since`.
    #[arg(long, env = "MODELCAST_HISTORY_SIZE", default_value = "1000", value_name = "N",
          value_parser = count("MODELCAST_HISTORY_SIZE"))]
    pub history_size: usize,

    /// Seconds a message stays recoverable.
    #[arg(long, env = "MODELCAST_HISTORY_AGE", default_value = "300", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_HISTORY_AGE"))]
    pub history_age: Duration,

    /// Seconds a key's current state (what new subscribers receive first) lives without a newer
    /// message (default one day): state whose publisher vanished is dropped.
    #[arg(long, env = "MODELCAST_STATE_TTL", default_value = "86400", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_STATE_TTL"))]
    pub state_ttl: Duration,

    /// Keys with current state per topic (download ids, model ids, task ids…). Keeping one more
    /// evicts the key updated longest ago: its subscribers get `state_cleared`, and
    /// `modelcast_state_evicted_total` counts it.
    #[arg(long, env = "MODELCAST_STATE_MAX_KEYS", default_value = "10000", value_name = "N",
          value_parser = count("MODELCAST_STATE_MAX_KEYS"))]
    pub state_max_keys: usize,

    /// Ids a subscription's `filter.model_ids` may list; a longer filter is refused with an
    /// `error` (the connection stays).
    #[arg(long, env = "MODELCAST_MAX_FILTER_IDS", default_value = "256", value_name = "N",
          value_parser = count("MODELCAST_MAX_FILTER_IDS"))]
    pub max_filter_ids: usize,

    /// Idempotency keys a node remembers at once (each for 10 minutes). When that many are
    /// unexpired, a keyed publish is refused with 503 and `Retry-After` (never published twice).
    #[arg(long, env = "MODELCAST_IDEMPOTENCY_KEYS", default_value = "100000", value_name = "N",
          value_parser = count("MODELCAST_IDEMPOTENCY_KEYS"))]
    pub idempotency_keys: usize,

    /// Bytes of history kept for recovery, all topics together (default 256 MiB). A topic
    /// over the budget drops its oldest messages first; recovery from before them reports a
    /// gap.
    #[arg(long, env = "MODELCAST_HISTORY_BYTES", default_value = "268435456", value_name = "BYTES",
          value_parser = count("MODELCAST_HISTORY_BYTES"))]
    pub history_bytes: usize,

    /// Run as one node of a cluster: `seq`, history and current state live in this Redis
    /// (e.g. `redis://127.0.0.1:6379/0`; `rediss://` for TLS, to every Redis and sentinel the
    /// engine reaches), shared by every node with the same prefix. Without it: a single node,
    /// everything in memory.
    #[arg(long, env = "MODELCAST_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// TLS to Redis: a CA certificate (PEM) to trust instead of the system's roots (a private
    /// CA). Needs a `rediss://` URL.
    #[arg(long, env = "MODELCAST_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<std::path::PathBuf>,

    /// TLS to Redis: a client certificate (PEM) to present (mutual TLS), with
    /// `MODELCAST_REDIS_KEY`.
    #[arg(long, env = "MODELCAST_REDIS_CERT", value_name = "FILE")]
    pub redis_cert: Option<std::path::PathBuf>,

    /// TLS to Redis: the client certificate's private key (PEM).
    #[arg(long, env = "MODELCAST_REDIS_KEY", value_name = "FILE")]
    pub redis_key: Option<std::path::PathBuf>,

    /// TLS on this server's port (HTTPS and WSS): the certificate chain (PEM), with
    /// `MODELCAST_TLS_KEY`. Re-read on `SIGHUP` (open connections keep theirs). Without it:
    /// plain TCP (TLS at a proxy).
    #[arg(long, env = "MODELCAST_TLS_CERT", value_name = "FILE", help_heading = "Security")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS on this server's port: the certificate's private key (PEM).
    #[arg(long, env = "MODELCAST_TLS_KEY", value_name = "FILE", help_heading = "Security")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Redis Sentinel (`host:port,host:port,...`): the cluster's Redis is the primary these
    /// sentinels name for `MODELCAST_REDIS_MASTER`, followed through failovers.
    /// `MODELCAST_REDIS_URL` then only gives the database, password and TLS.
    #[arg(
        long,
        env = "MODELCAST_REDIS_SENTINELS",
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        requires = "redis_master"
    )]
    pub redis_sentinels: Vec<String>,

    /// The master's name the sentinels monitor (with `MODELCAST_REDIS_SENTINELS`).
    #[arg(long, env = "MODELCAST_REDIS_MASTER", value_name = "NAME")]
    pub redis_master: Option<String>,

    /// The sentinels' own password, if they have one.
    #[arg(
        long,
        env = "MODELCAST_REDIS_SENTINEL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub redis_sentinel_password: Option<String>,

    /// Redis Cluster (`host:port,host:port,...`: seed nodes): each topic lives on the shard of
    /// its name's hash slot, published and followed sharded (`SPUBLISH`/`SSUBSCRIBE`).
    /// `MODELCAST_REDIS_URL` then only gives the user and password.
    #[arg(
        long,
        env = "MODELCAST_REDIS_CLUSTER",
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        conflicts_with = "redis_sentinels"
    )]
    pub redis_cluster: Vec<String>,

    /// Prefix of the cluster's Redis keys, so several clusters can share one Redis.
    #[arg(long, env = "MODELCAST_REDIS_PREFIX", default_value = "mc", value_name = "PREFIX")]
    pub redis_prefix: String,

    /// Publishes that may wait for Redis on this node (a cluster node); past it a publish is
    /// refused at once with 503 and `Retry-After` (Redis is slow), so memory stays bounded.
    #[arg(long, env = "MODELCAST_REDIS_APPEND_QUEUE", default_value = "10000", value_name = "N",
          value_parser = count("MODELCAST_REDIS_APPEND_QUEUE"))]
    pub redis_append_queue: usize,

    /// Replicas of its primary that must hold a publish before it is acknowledged (`WAIT`):
    /// then a primary's failure loses nothing acknowledged, and a failover to such a replica
    /// keeps the topics' epochs. 0: acknowledged once the primary has it (Redis's
    /// asynchronous replication; a failover may lose the newest publishes, and says so).
    #[arg(long, env = "MODELCAST_REDIS_ACK_REPLICAS", default_value = "0", value_name = "N",
          value_parser = whole("MODELCAST_REDIS_ACK_REPLICAS"))]
    pub redis_ack_replicas: usize,

    /// How long a publish waits for `MODELCAST_REDIS_ACK_REPLICAS` replicas; past it the
    /// publish is answered 503 with `Retry-After` (it may have gone out: retry with the same
    /// `Idempotency-Key`).
    #[arg(long, env = "MODELCAST_REDIS_ACK_TIMEOUT", default_value = "1", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_REDIS_ACK_TIMEOUT"))]
    pub redis_ack_timeout: Duration,

    /// How long a node's word in Redis lasts that its users are online and its connections
    /// are open (`/api/connections`, `/api/presence`, push's `offline`); renewed at a third of
    /// it, so a dead node's entries are gone within this time.
    #[arg(long, env = "MODELCAST_PRESENCE_LEASE", default_value = "15", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_PRESENCE_LEASE"))]
    pub presence_lease: Duration,

    /// Where a model going from no watchers to some, and back, is POSTed (signed as Standard
    /// Webhooks says, with `MODELCAST_DEMAND_WEBHOOK_SECRET`; one call per change across a
    /// cluster). Off without it.
    #[arg(long, env = "MODELCAST_DEMAND_WEBHOOK", value_name = "URL")]
    pub demand_webhook: Option<String>,

    /// The demand webhook's signing secret: `whsec_<base64>` (Standard Webhooks) or at least
    /// 16 bytes of text.
    #[arg(
        long,
        env = "MODELCAST_DEMAND_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub demand_webhook_secret: Option<String>,

    /// Seconds a model's change between watched and unwatched must hold before the webhook
    /// is told (a reconnect storm is no change).
    #[arg(long, env = "MODELCAST_DEMAND_DEBOUNCE", default_value = "5", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_DEMAND_DEBOUNCE"))]
    pub demand_debounce: Duration,

    /// This node's id, shown in logs, `/api/stats`, `/metrics` and `welcome` (default: random).
    #[arg(long, env = "MODELCAST_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// While the server writes more than `MODELCAST_WRITE_COALESCE_ABOVE` frames per second,
    /// a connection writes at most once per this many milliseconds: frames arriving meanwhile
    /// share its next write (fewer system calls per delivery when busy). The most it adds to a
    /// frame's latency, and only while busy; 0 (the default) turns it off. Measured in
    /// BENCHMARKS.md: 30 at 200 msg/s to 1,000 subscribers took a third off the server's CPU.
    #[arg(long, env = "MODELCAST_WRITE_COALESCE_MS", default_value = "0", value_name = "MS",
          value_parser = whole("MODELCAST_WRITE_COALESCE_MS"))]
    pub write_coalesce_ms: usize,

    /// Frames per second (all connections together) above which writes are coalesced.
    #[arg(long, env = "MODELCAST_WRITE_COALESCE_ABOVE", default_value = "50000", value_name = "N",
          value_parser = whole("MODELCAST_WRITE_COALESCE_ABOVE"))]
    pub write_coalesce_above: usize,

    /// Milliseconds over which bursts of model status updates are batched.
    #[arg(long, env = "MODELCAST_BATCH_WINDOW_MS", default_value = "100", value_name = "MS",
          value_parser = millis("MODELCAST_BATCH_WINDOW_MS"))]
    pub batch_window: Duration,

    /// Largest WebSocket frame a client may send, in bytes; larger frames close the connection
    /// with 1009. (Publish bodies have their own limit: --max-publish-bytes.)
    #[arg(long, env = "MODELCAST_MAX_FRAME_SIZE", default_value = "65536", value_name = "BYTES",
          value_parser = count("MODELCAST_MAX_FRAME_SIZE"))]
    pub max_frame_size: usize,

    /// permessage-deflate (RFC 7692) with WebSocket clients that offer it (browsers, Node's
    /// `ws` and Python's `websockets` do): a frame is compressed once, however many
    /// connections receive it, and no connection keeps a compressor.
    /// (true/false, 1/0, yes/no, on/off.)
    #[arg(long, env = "MODELCAST_COMPRESSION", default_value = "on", value_name = "ON/OFF",
          action = ArgAction::Set, value_parser = boolish("MODELCAST_COMPRESSION"))]
    pub compression: bool,

    /// Frames shorter than this many bytes go uncompressed, even to a compressing client:
    /// deflate saves little on them (see BENCHMARKS.md).
    #[arg(long, env = "MODELCAST_COMPRESSION_MIN_SIZE", default_value = "128", value_name = "BYTES",
          value_parser = bytes_or_zero("MODELCAST_COMPRESSION_MIN_SIZE"))]
    pub compression_min_size: usize,

    /// Largest `POST /api/publish` body, in bytes (one message or an array of them); larger
    /// bodies get HTTP 413.
    #[arg(long, env = "MODELCAST_MAX_PUBLISH_BYTES", default_value = "1048576", value_name = "BYTES",
          value_parser = count("MODELCAST_MAX_PUBLISH_BYTES"))]
    pub max_publish_bytes: usize,

    /// Seconds a client has to complete the HTTP/WebSocket handshake.
    #[arg(long, env = "MODELCAST_HANDSHAKE_TIMEOUT", default_value = "10", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_HANDSHAKE_TIMEOUT"))]
    pub handshake_timeout: Duration,

    /// Seconds a client has to send a request body (e.g. a publish) once its headers are in;
    /// slower bodies get 408 and the connection is closed.
    #[arg(long, env = "MODELCAST_BODY_TIMEOUT", default_value = "10", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_BODY_TIMEOUT"))]
    pub body_timeout: Duration,

    /// Most TCP connections at once that have not (yet) become WebSockets: HTTP requests and
    /// handshakes in progress. More are answered 503 at once, so slow or idle HTTP clients can
    /// never use up the process's file descriptors (kept below the open-file limit).
    #[arg(long, env = "MODELCAST_MAX_HTTP_CONNECTIONS", default_value = "4096", value_name = "N",
          value_parser = count("MODELCAST_MAX_HTTP_CONNECTIONS"))]
    pub max_http_connections: usize,

    /// Seconds to drain queued messages to clients on shutdown before closing anyway.
    #[arg(long, env = "MODELCAST_SHUTDOWN_TIMEOUT", default_value = "10", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_SHUTDOWN_TIMEOUT"))]
    pub shutdown_timeout: Duration,

    /// Seconds without progress after which a download is shown as `stale`.
    #[arg(long, env = "MODELCAST_STALE_AFTER", default_value = "30", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_STALE_AFTER"))]
    pub stale_after: Duration,

    /// Run the demo: a simulated model catalog publishing every message type through the same
    /// notifiers and policy as production.
    /// (MODELCAST_DEMO accepts true/false, 1/0, yes/no, on/off.)
    #[arg(long, env = "MODELCAST_DEMO", action = ArgAction::SetTrue,
          value_parser = boolish("MODELCAST_DEMO"))]
    pub demo: bool,

    /// Require a JWT signed with this HS256 secret (as `?token=` on the WebSocket URL or an
    /// `{"action":"auth"}` frame). Prefer MODELCAST_JWT_SECRET over the flag (it shows in `ps`).
    #[arg(long, env = "MODELCAST_JWT_SECRET", hide_env_values = true, help_heading = "Security")]
    pub jwt_secret: Option<String>,

    /// Require a JWT verified with this PEM public key file (RS256 or ES256, see
    /// --jwt-algorithm).
    #[arg(
        long,
        env = "MODELCAST_JWT_PUBLIC_KEY",
        value_name = "PEM_FILE",
        help_heading = "Security"
    )]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// The algorithm of --jwt-public-key.
    #[arg(long, env = "MODELCAST_JWT_ALGORITHM", default_value = "RS256", value_name = "RS256|ES256",
          value_parser = parse_jwt_algorithm, help_heading = "Security")]
    pub jwt_algorithm: JwtAlgorithm,

    /// Required `aud` claim, if set.
    #[arg(long, env = "MODELCAST_JWT_AUDIENCE", help_heading = "Security")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim, if set.
    #[arg(long, env = "MODELCAST_JWT_ISSUER", help_heading = "Security")]
    pub jwt_issuer: Option<String>,

    /// Clock skew allowed when checking a token's `exp` and `nbf`, in whole seconds (0–300).
    #[arg(long, env = "MODELCAST_JWT_LEEWAY", default_value = "5", value_name = "SECONDS",
          value_parser = leeway, help_heading = "Security")]
    pub jwt_leeway: u64,

    /// Seconds a connection without a URL token has to send `{"action":"auth"}`; also the
    /// grace period to refresh an expired token.
    #[arg(long, env = "MODELCAST_AUTH_DEADLINE", default_value = "10", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_AUTH_DEADLINE"), help_heading = "Security")]
    pub auth_deadline: Duration,

    /// Topics restricted to roles (the token's `roles` claim), e.g.
    /// `analytics_updates=admin,alerts=admin|ops`. Unlisted topics are open to any
    /// authenticated connection. Needs a JWT setting.
    #[arg(long, env = "MODELCAST_TOPIC_ROLES", value_delimiter = ',', value_name = "TOPIC=ROLE|ROLE",
          value_parser = parse_topic_roles, help_heading = "Security")]
    pub topic_roles: Vec<(modelcast_protocol::Topic, Vec<String>)>,

    /// API keys accepted by `POST /api/publish` as `Authorization: Bearer <key>` (several for
    /// rotation). Without keys the endpoint is open, which is allowed only on loopback unless
    /// --insecure-publish.
    #[arg(
        long = "publish-key",
        env = "MODELCAST_PUBLISH_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "KEY",
        help_heading = "Security"
    )]
    pub publish_keys: Vec<String>,

    /// Require `Authorization: Bearer <token>` on `/metrics` and `/api/stats` (when set).
    #[arg(
        long,
        env = "MODELCAST_METRICS_TOKEN",
        hide_env_values = true,
        help_heading = "Security"
    )]
    pub metrics_token: Option<String>,

    /// Token roles that make a caller an operator: with one of them, a JWT opens the operator
    /// endpoints (`/api/stats`, `/metrics`, every key of `/api/state`) as the metrics token and
    /// the publish keys do.
    #[arg(
        long = "operator-role",
        env = "MODELCAST_OPERATOR_ROLES",
        value_delimiter = ',',
        default_value = "admin",
        value_name = "ROLE",
        help_heading = "Security"
    )]
    pub operator_roles: Vec<String>,

    /// Revocations (`POST /api/revoke`) held at once. When that many are unexpired, a new one
    /// is refused with 503 `revocations_full` (none is ever forgotten early).
    #[arg(long, env = "MODELCAST_MAX_REVOCATIONS", default_value = "100000", value_name = "N",
          value_parser = count("MODELCAST_MAX_REVOCATIONS"), help_heading = "Security")]
    pub max_revocations: usize,

    /// How long a revocation without `expires_at` lasts after its `issued_before`: set it to
    /// the longest lifetime of your tokens (a token issued before then is expired after it).
    #[arg(long, env = "MODELCAST_REVOKE_FOR", default_value = "86400", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_REVOKE_FOR"), help_heading = "Security")]
    pub revoke_for: Duration,

    /// Allow an open `POST /api/publish` on a non-loopback address (on purpose).
    #[arg(long, env = "MODELCAST_INSECURE_PUBLISH", action = ArgAction::SetTrue,
          value_parser = boolish("MODELCAST_INSECURE_PUBLISH"), help_heading = "Security")]
    pub insecure_publish: bool,

    /// Browser origins allowed to open WebSockets (e.g. `https://app.example.com`); others get
    /// 403. Empty: any origin. Also the only browser origins that may `POST /api/publish`
    /// (`*` allows any); with none listed, browser pages cannot publish. Clients that send no
    /// Origin (non-browsers) are not affected.
    #[arg(
        long = "allowed-origin",
        env = "MODELCAST_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN",
        help_heading = "Security"
    )]
    pub allowed_origins: Vec<String>,

    /// Inbound messages per second per connection (token bucket, with --rate-burst).
    #[arg(long, env = "MODELCAST_RATE_LIMIT", default_value = "50", value_name = "PER_SECOND",
          value_parser = count("MODELCAST_RATE_LIMIT"), help_heading = "Security")]
    pub rate_limit: usize,

    /// Burst size of the inbound message rate limit.
    #[arg(long, env = "MODELCAST_RATE_BURST", default_value = "100", value_name = "N",
          value_parser = count("MODELCAST_RATE_BURST"), help_heading = "Security")]
    pub rate_burst: usize,

    /// Messages refused by the rate limit within one second after which the connection is
    /// closed with 1008 (each refused message is answered with an `error` `rate_limited`).
    #[arg(long, env = "MODELCAST_ABUSE_LIMIT", default_value = "200", value_name = "N",
          value_parser = count("MODELCAST_ABUSE_LIMIT"), help_heading = "Security")]
    pub abuse_limit: usize,

    /// WebSocket connection attempts per second per client IP (burst: ten times as many). The
    /// default admits 2,000 clients reconnecting at once from one address (a NAT, or a proxy
    /// not listed in MODELCAST_TRUSTED_PROXIES), then 200 more per second.
    #[arg(long, env = "MODELCAST_CONNECT_RATE", default_value = "200", value_name = "PER_SECOND",
          value_parser = count("MODELCAST_CONNECT_RATE"), help_heading = "Security")]
    pub connect_rate: usize,

    /// Reverse proxies (CIDRs, e.g. `10.0.0.0/8,::1/128`) whose `X-Forwarded-For` / `Forwarded`
    /// headers name the client: per-IP limits then apply to the client, not the proxy.
    #[arg(long = "trusted-proxy", env = "MODELCAST_TRUSTED_PROXIES", value_delimiter = ',',
          value_name = "CIDR", value_parser = parse_cidr, help_heading = "Security")]
    pub trusted_proxies: Vec<Cidr>,

    /// WebSocket and event-stream connections per client address (IPv6: per /64, what one
    /// host usually holds); more are refused with 503 and `Retry-After`. Behind the trusted
    /// proxies, per real client.
    #[arg(long, env = "MODELCAST_MAX_CONNECTIONS_PER_IP", default_value = "1000", value_name = "N",
          value_parser = count("MODELCAST_MAX_CONNECTIONS_PER_IP"), help_heading = "Security")]
    pub max_connections_per_ip: usize,

    /// TCP connections per peer address that are not (yet) WebSockets or event streams (IPv6:
    /// per /64), so one address cannot hold every place of MODELCAST_MAX_HTTP_CONNECTIONS;
    /// more are answered 503 with `Retry-After`. The trusted proxies are not limited.
    #[arg(long, env = "MODELCAST_MAX_HTTP_CONNECTIONS_PER_IP", default_value = "256",
          value_name = "N", value_parser = count("MODELCAST_MAX_HTTP_CONNECTIONS_PER_IP"),
          help_heading = "Security")]
    pub max_http_connections_per_ip: usize,

    /// Seconds a new TCP connection has to send its first byte; a silent one is closed (the
    /// whole request then has MODELCAST_HANDSHAKE_TIMEOUT).
    #[arg(long, env = "MODELCAST_FIRST_BYTE_TIMEOUT", default_value = "3", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_FIRST_BYTE_TIMEOUT"), help_heading = "Security")]
    pub first_byte_timeout: Duration,

    /// Frames one WebSocket message may be cut into (fragments); a message in more is refused
    /// with close code 1008. Bytes alone do not bound the work: empty fragments cost CPU.
    #[arg(long, env = "MODELCAST_MAX_FRAGMENTS", default_value = "128", value_name = "N",
          value_parser = count("MODELCAST_MAX_FRAGMENTS"), help_heading = "Security")]
    pub max_fragments: usize,

    /// Subscriptions per connection.
    #[arg(long, env = "MODELCAST_MAX_SUBSCRIPTIONS", default_value = "9", value_name = "N",
          value_parser = count("MODELCAST_MAX_SUBSCRIPTIONS"), help_heading = "Security")]
    pub max_subscriptions: usize,

    /// Web Push: the VAPID private key (PEM, EC P-256; `modelcast push-keys` makes one). Push
    /// is on when this, `MODELCAST_FCM_SERVICE_ACCOUNT` or `MODELCAST_APNS_KEY` is given.
    #[arg(long, env = "MODELCAST_VAPID_PRIVATE_KEY", value_name = "FILE", help_heading = "Push")]
    pub vapid_private_key: Option<std::path::PathBuf>,

    /// Web Push: the contact push services may use (`mailto:` or `https:`).
    #[arg(long, env = "MODELCAST_VAPID_SUBJECT", value_name = "URL", help_heading = "Push")]
    pub vapid_subject: Option<String>,

    /// The message types pushed. The defaults, each with its rule (urgent: `Urgency: high`):
    /// `download_status_change` (to completed; failed, urgent), `model_availability_change`
    /// (to available or loaded; unavailable, corrupted or missing, urgent),
    /// `corruption_detection` (urgent when high or critical), `alert` (error; critical,
    /// urgent), `health_monitoring_alert` (unhealthy; critical, urgent). Other types named
    /// here are pushed whenever published.
    #[arg(
        long,
        env = "MODELCAST_PUSH_TYPES",
        value_delimiter = ',',
        value_name = "TYPE,...",
        default_value = "download_status_change,model_availability_change,corruption_detection,alert,health_monitoring_alert",
        help_heading = "Push"
    )]
    pub push_types: Vec<String>,

    /// `offline`: push to users with no WebSocket or event stream open on any node; `always`:
    /// to every user owed the message.
    #[arg(long, env = "MODELCAST_PUSH_WHEN", default_value = "offline", value_name = "offline|always",
          value_parser = ["offline", "always"], help_heading = "Push")]
    pub push_when: String,

    /// Pushes per user per minute; past it, dropped (counted in `/metrics`).
    #[arg(long, env = "MODELCAST_PUSH_RATE", default_value = "30", value_name = "N",
          value_parser = count("MODELCAST_PUSH_RATE"), help_heading = "Push")]
    pub push_rate: usize,

    /// Devices per user.
    #[arg(long, env = "MODELCAST_PUSH_MAX_DEVICES", default_value = "10", value_name = "N",
          value_parser = count("MODELCAST_PUSH_MAX_DEVICES"), help_heading = "Push")]
    pub push_max_devices: usize,

    /// How long a push service may keep a push for an unreachable device.
    #[arg(long, env = "MODELCAST_PUSH_TTL", default_value = "86400", value_name = "SECONDS",
          value_parser = seconds("MODELCAST_PUSH_TTL"), help_heading = "Push")]
    pub push_ttl: Duration,

    /// Accept `http://` push endpoints on loopback (for tests and local stand-ins only).
    #[arg(long, env = "MODELCAST_PUSH_INSECURE_ENDPOINTS", action = ArgAction::SetTrue,
          value_parser = boolish("MODELCAST_PUSH_INSECURE_ENDPOINTS"), help_heading = "Push")]
    pub push_insecure_endpoints: bool,

    /// A CA (PEM) trusted for push services besides the public roots (a private gateway).
    #[arg(long, env = "MODELCAST_PUSH_CA", value_name = "FILE", help_heading = "Push")]
    pub push_ca: Option<std::path::PathBuf>,

    /// Where a single node keeps its push registrations (`push/registrations.json` in it).
    /// Default: `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else
    /// `$XDG_STATE_HOME/modelcast`, else `~/.local/state/modelcast`. A cluster keeps them in
    /// Redis.
    #[arg(long, env = "MODELCAST_DATA_DIR", value_name = "DIR", help_heading = "Push")]
    pub data_dir: Option<std::path::PathBuf>,

    /// Firebase Cloud Messaging: the service account's JSON key file.
    #[arg(long, env = "MODELCAST_FCM_SERVICE_ACCOUNT", value_name = "FILE", help_heading = "Push")]
    pub fcm_service_account: Option<std::path::PathBuf>,

    /// FCM's API base URL.
    #[arg(
        long,
        env = "MODELCAST_FCM_URL",
        default_value = "https://fcm.googleapis.com",
        value_name = "URL",
        help_heading = "Push"
    )]
    pub fcm_url: String,

    /// APNs: the token-signing key (`.p8`).
    #[arg(long, env = "MODELCAST_APNS_KEY", value_name = "FILE", help_heading = "Push")]
    pub apns_key: Option<std::path::PathBuf>,

    /// APNs: the key's id.
    #[arg(long, env = "MODELCAST_APNS_KEY_ID", value_name = "ID", help_heading = "Push")]
    pub apns_key_id: Option<String>,

    /// APNs: the developer team id.
    #[arg(long, env = "MODELCAST_APNS_TEAM_ID", value_name = "ID", help_heading = "Push")]
    pub apns_team_id: Option<String>,

    /// APNs: the app's bundle id (`apns-topic`).
    #[arg(long, env = "MODELCAST_APNS_TOPIC", value_name = "BUNDLE", help_heading = "Push")]
    pub apns_topic: Option<String>,

    /// APNs' URL (`https://api.sandbox.push.apple.com` for development builds).
    #[arg(
        long,
        env = "MODELCAST_APNS_URL",
        default_value = "https://api.push.apple.com",
        value_name = "URL",
        help_heading = "Push"
    )]
    pub apns_url: String,

    /// Log format.
    #[arg(long, env = "MODELCAST_LOG_FORMAT", default_value = "text", value_name = "text|json",
          value_parser = parse_log_format)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `modelcast_server=debug,info`.
    #[arg(long, env = "MODELCAST_LOG", default_value = "info", value_name = "FILTER")]
    pub log: String,

    /// Check the configuration (every setting, and the JWT key file if one is set), print what
    /// it amounts to and exit: 0 when it is valid, 1 with the problem when not. Nothing is
    /// bound and Redis is not contacted — for a configuration change before a restart.
    #[arg(long, action = ArgAction::SetTrue)]
    pub check_config: bool,
}

impl Default for Config {
    /// The documented defaults: no flags, and the environment is *not* read (only `main`
    /// reads it, through [`Config::try_parse_args`]). Pure: never exits, never panics.
    fn default() -> Self {
        let command = Self::command().mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(["modelcast"]).expect("the defaults parse");
        Self::from_arg_matches(&matches).expect("the defaults are valid settings")
    }
}

impl Config {
    /// Checks the settings that depend on each other; the message names the variables.
    pub fn validate(&self) -> Result<(), String> {
        let auth = self.jwt_secret.is_some() || self.jwt_public_key.is_some();
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return Err(
                "MODELCAST_JWT_SECRET and MODELCAST_JWT_PUBLIC_KEY are both set; choose one".into(),
            );
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < MIN_HS256_SECRET
        {
            return Err(format!(
                "MODELCAST_JWT_SECRET: an HS256 secret must be at least {MIN_HS256_SECRET} bytes \
                 (it is {}); a short one can be guessed offline from any token. Generate one \
                 with `openssl rand -base64 48`",
                secret.len()
            ));
        }
        if !self.topic_roles.is_empty() && !auth {
            return Err("MODELCAST_TOPIC_ROLES needs authentication: set MODELCAST_JWT_SECRET or MODELCAST_JWT_PUBLIC_KEY".into());
        }
        let placeholders: Vec<&str> = [
            ("MODELCAST_JWT_SECRET", self.jwt_secret.as_deref()),
            ("MODELCAST_METRICS_TOKEN", self.metrics_token.as_deref()),
        ]
        .into_iter()
        .chain(self.publish_keys.iter().map(|k| ("MODELCAST_PUBLISH_KEYS", Some(k.as_str()))))
        .filter(|(_, value)| value.is_some_and(|v| v.starts_with(PLACEHOLDER)))
        .map(|(var, _)| var)
        .collect();
        if !placeholders.is_empty() {
            return Err(format!(
                "{}: still the placeholder of deploy/production.env (`{PLACEHOLDER} …`); put \
                 the real secret there, from your secret store (e.g. `openssl rand -base64 32`)",
                placeholders.join(", ")
            ));
        }
        if self.publish_keys.iter().any(|k| k.len() < 16) {
            return Err("MODELCAST_PUBLISH_KEYS: every key must be at least 16 characters".into());
        }
        if self.publish_keys.is_empty() && !self.bind.ip().is_loopback() && !self.insecure_publish {
            return Err(format!(
                "refusing to serve an open POST /api/publish on {} (not loopback): set \
                 MODELCAST_PUBLISH_KEYS, or --insecure-publish / MODELCAST_INSECURE_PUBLISH=true on purpose",
                self.bind
            ));
        }
        Ok(())
    }

    /// The defaults with `bind` set (tests bind `127.0.0.1:0`); the environment is not read.
    pub fn with_bind(bind: SocketAddr) -> Self {
        Self { bind, ..Self::default() }
    }

    /// Parses flags from `args` (the first is the program name), with the environment.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
    }
}

/// `MODELCAST_JWT_ALGORITHM`: how a public key verifies tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    /// RSA with SHA-256.
    #[value(name = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256.
    #[value(name = "ES256")]
    Es256,
}

fn parse_jwt_algorithm(s: &str) -> Result<JwtAlgorithm, String> {
    JwtAlgorithm::from_str(s.trim(), true)
        .map_err(|_| format!("MODELCAST_JWT_ALGORITHM: expected RS256 or ES256, got `{s}`"))
}

fn parse_topic_roles(s: &str) -> Result<(modelcast_protocol::Topic, Vec<String>), String> {
    let (topic, roles) = s.split_once('=').ok_or_else(|| {
        format!("MODELCAST_TOPIC_ROLES: expected TOPIC=ROLE[|ROLE…], e.g. analytics_updates=admin, got `{s}`")
    })?;
    let topic = topic.trim().parse().map_err(|e| format!("MODELCAST_TOPIC_ROLES: {e}"))?;
    let roles: Vec<String> =
        roles.split('|').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect();
    if roles.is_empty() {
        return Err(format!("MODELCAST_TOPIC_ROLES: `{s}` names no role"));
    }
    Ok((topic, roles))
}

/// `HEALTH_CHECK_NOTIFICATION_LEVEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HealthLevel {
    /// Every result, healthy ones too.
    Info,
    /// Degraded and worse.
    Warning,
    /// Corrupted or missing and worse.
    Error,
    /// Only critical.
    Critical,
}

impl From<HealthLevel> for AlertLevel {
    fn from(level: HealthLevel) -> Self {
        match level {
            HealthLevel::Info => AlertLevel::Info,
            HealthLevel::Warning => AlertLevel::Warning,
            HealthLevel::Error => AlertLevel::Error,
            HealthLevel::Critical => AlertLevel::Critical,
        }
    }
}

/// `MODELCAST_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_health_level(s: &str) -> Result<HealthLevel, String> {
    HealthLevel::from_str(s.trim(), true).map_err(|_| {
        format!("HEALTH_CHECK_NOTIFICATION_LEVEL: expected one of info, warning, error, critical, got `{s}`")
    })
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    LogFormat::from_str(s.trim(), true)
        .map_err(|_| format!("MODELCAST_LOG_FORMAT: expected `text` or `json`, got `{s}`"))
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("MODELCAST_BIND / --bind: expected HOST:PORT with an IP address, e.g. 127.0.0.1:8000 or 0.0.0.0:8000, got `{s}`")
    })
}

/// An IP network, `address/prefix` (a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let bad = || {
        format!("MODELCAST_TRUSTED_PROXIES: expected an address or CIDR like 10.0.0.0/8, got `{s}`")
    };
    let (addr, prefix) = match s.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s.trim(), None),
    };
    let network: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok(Cidr { network, prefix })
}

/// How `deploy/production.env` marks a secret it cannot ship: such a value is refused, naming
/// the variable, so a placeholder never becomes a real key.
pub(crate) const PLACEHOLDER: &str = "CHANGE-ME";

/// The shortest HS256 secret accepted: 256 bits, the hash's own size (RFC 7518 §3.2).
const MIN_HS256_SECRET: usize = 32;

/// The usual spellings of a yes/no setting; the error names the variable.
fn boolish(var: &'static str) -> impl Fn(&str) -> Result<bool, String> + Clone {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        "0" | "false" | "no" | "off" | "n" | "f" | "" => Ok(false),
        _ => Err(format!("{var}: expected true/false, 1/0, yes/no or on/off, got `{s}`")),
    }
}

fn leeway(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().ok().filter(|v| *v <= 300).ok_or_else(|| {
        format!("MODELCAST_JWT_LEEWAY: expected whole seconds from 0 to 300, got `{s}`")
    })
}

fn seconds(var: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s| {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                format!("{var}: expected a positive number of seconds (fractions allowed, e.g. 30 or 0.5), got `{s}`")
            })
    }
}

fn millis(var: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s| {
        s.trim().parse::<u64>().ok().filter(|v| *v > 0).map(Duration::from_millis).ok_or_else(
            || format!("{var}: expected a positive whole number of milliseconds, got `{s}`"),
        )
    }
}

fn whole(var: &'static str) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| format!("{var}: expected a whole number (0 or more), got `{s}`"))
    }
}

fn bytes_or_zero(var: &'static str) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| format!("{var}: expected a whole number of bytes (0 or more), got `{s}`"))
    }
}

fn count(var: &'static str) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s| {
        s.trim()
            .parse::<usize>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("{var}: expected a positive whole number, got `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs this test binary again with `env` set, running only `test`; asserts it passed.
    fn probe(test: &str, env: &[(&str, &str)]) {
        let exe = std::env::current_exe().expect("the test binary");
        let mut command = std::process::Command::new(exe);
        command.args(["--exact", test]).env("MODELCAST_CONFIG_PROBE", "1");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().expect("run the probe");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("1 passed"), "the probe ran: {stdout}");
    }

    fn in_probe() -> bool {
        std::env::var_os("MODELCAST_CONFIG_PROBE").is_some()
    }

    /// `Config::default()` must not read the environment, while `try_parse_args` must. The
    /// environment can only be set safely in a fresh process, so the test runs itself again
    /// with variables set, and that run checks both.
    #[test]
    fn default_ignores_the_environment_and_parsing_reads_it() {
        if in_probe() {
            assert_eq!(Config::default().max_connections, 10_000);
            assert_eq!(Config::default().heartbeat_interval, Duration::from_secs(30));
            assert!(!Config::default().demo);
            let parsed = Config::try_parse_args(["modelcast"]).expect("valid environment");
            assert_eq!(parsed.max_connections, 7);
            assert_eq!(parsed.heartbeat_interval, Duration::from_secs(11));
            assert!(parsed.demo, "MODELCAST_DEMO=yes");
            return;
        }
        probe(
            "config::tests::default_ignores_the_environment_and_parsing_reads_it",
            &[
                ("WEBSOCKET_MAX_CONNECTIONS", "7"),
                ("WEBSOCKET_HEARTBEAT_INTERVAL", "11"),
                ("MODELCAST_DEMO", "yes"),
            ],
        );
    }

    /// Sentinels are a comma list and need the master's name.
    #[test]
    fn sentinels_need_a_master_name() {
        let parsed = Config::try_parse_args([
            "modelcast",
            "--redis-sentinels",
            "10.0.0.1:26379,10.0.0.2:26379",
            "--redis-master",
            "mymaster",
        ])
        .expect("valid");
        assert_eq!(parsed.redis_sentinels, ["10.0.0.1:26379", "10.0.0.2:26379"]);
        assert_eq!(parsed.redis_master.as_deref(), Some("mymaster"));
        let missing = Config::try_parse_args(["modelcast", "--redis-sentinels", "h:26379"]);
        let message = missing.expect_err("no master name").to_string();
        assert!(message.contains("--redis-master"), "{message}");
    }

    /// Yes/no settings take the usual spellings from the environment, and a bad one is named.
    #[test]
    fn boolean_variables_take_the_usual_spellings() {
        if in_probe() {
            let demo = std::env::var("MODELCAST_DEMO").unwrap_or_default();
            match Config::try_parse_args(["modelcast"]) {
                Ok(c) => assert_eq!(c.demo, ["1", "on", "true", "yes"].contains(&demo.as_str())),
                Err(e) => {
                    assert_eq!(demo, "maybe", "{e}");
                    assert!(e.to_string().contains("MODELCAST_DEMO"), "{e}");
                }
            }
            return;
        }
        for value in ["1", "on", "true", "yes", "0", "no", "off", "false", "maybe"] {
            probe(
                "config::tests::boolean_variables_take_the_usual_spellings",
                &[("MODELCAST_DEMO", value)],
            );
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net = parse_cidr("10.0.0.0/8").unwrap();
        assert!(net.contains("10.200.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()), "IPv4-mapped");
        let host = parse_cidr("::1").unwrap();
        assert!(host.contains("::1".parse().unwrap()) && !host.contains("::2".parse().unwrap()));
        assert!(parse_cidr("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x"] {
            assert!(parse_cidr(bad).unwrap_err().contains("MODELCAST_TRUSTED_PROXIES"), "{bad}");
        }
    }

    #[test]
    fn defaults_match_the_seed() {
        let c = Config::default();
        assert_eq!(c.bind, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.queue_size, 1000);
        assert_eq!(c.model_status_interval, Duration::from_secs(5));
        assert_eq!(c.download_progress_throttle, Duration::from_secs(2));
        assert_eq!(c.health_level, HealthLevel::Warning);
    }

    #[test]
    fn a_bad_value_names_the_variable_the_value_and_what_is_accepted() {
        let err = Config::try_parse_args(["modelcast", "--download-progress-throttle", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DOWNLOAD_PROGRESS_THROTTLE"), "{err}");
        assert!(err.contains("soon"), "{err}");
        assert!(err.contains("positive number of seconds"), "{err}");
        let err = Config::try_parse_args(["modelcast", "--health-level", "loud"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("HEALTH_CHECK_NOTIFICATION_LEVEL") && err.contains("loud"), "{err}");
        assert!(err.contains("warning"), "{err}");
        assert!(
            Config::try_parse_args(["modelcast", "--download-progress-throttle", "0.5"]).is_ok()
        );
    }

    #[test]
    fn open_publishing_off_loopback_and_roles_without_auth_are_refused() {
        let public = Config::try_parse_args(["modelcast", "--bind", "0.0.0.0:8000"]).unwrap();
        assert!(public.validate().unwrap_err().contains("MODELCAST_PUBLISH_KEYS"));
        let on_purpose =
            Config::try_parse_args(["modelcast", "--bind", "0.0.0.0:8000", "--insecure-publish"])
                .unwrap();
        assert!(on_purpose.validate().is_ok());
        let keyed = Config::try_parse_args([
            "modelcast",
            "--bind",
            "0.0.0.0:8000",
            "--publish-key",
            "0123456789abcdef",
        ])
        .unwrap();
        assert!(keyed.validate().is_ok());
        let short = Config::try_parse_args(["modelcast", "--publish-key", "short"]).unwrap();
        assert!(short.validate().unwrap_err().contains("16 characters"));
        let roles =
            Config::try_parse_args(["modelcast", "--topic-roles", "analytics_updates=admin"])
                .unwrap();
        assert!(roles.validate().unwrap_err().contains("MODELCAST_JWT_SECRET"));
        let err = Config::try_parse_args(["modelcast", "--topic-roles", "weather=admin"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MODELCAST_TOPIC_ROLES") && err.contains("weather"), "{err}");
        assert!(Config::default().validate().is_ok());
    }
}
