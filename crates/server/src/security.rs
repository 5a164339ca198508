//! Who may connect, what they may see, who may publish, and how much.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, ORIGIN};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use modelcast_protocol::Topic;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::{Cidr, Config, JwtAlgorithm};

/// An authenticated connection's identity: the token's subject and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) subject: String,
    pub(crate) roles: Vec<String>,
    /// When the token stops being accepted, in seconds since the Unix epoch: its `exp` plus
    /// `MODELCAST_JWT_LEEWAY`, the same instant the verification itself uses, so a connection
    /// is held to the rule its token was accepted by (one rule for WebSockets and event
    /// streams).
    pub(crate) expires_at: Option<u64>,
    /// When the token was issued (its `iat`), in seconds since the Unix epoch: what a
    /// revocation (`POST /api/revoke`) compares.
    pub(crate) issued_at: Option<u64>,
}

/// Who is asking, by the credential a request carries (`Authorization: Bearer`, or a
/// `?token=`): what the HTTP endpoints that show data decide by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The metrics token, a publish key, or a JWT with one of `MODELCAST_OPERATOR_ROLES`:
    /// sees every figure and every key.
    Operator,
    /// A JWT's user: sees what a subscription of that user would receive.
    Viewer(Identity),
    /// No credential.
    Anonymous,
}

/// Why a credential was refused: missing where one is needed (401), or not valid (401 with
/// the token's problem) or not enough (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// None was sent, and this needs one.
    Missing(String),
    /// One was sent and is not valid: what is wrong with it.
    Invalid(String),
    /// A valid one that does not allow this.
    Forbidden(String),
}

impl Identity {
    /// Who the connection is for audiences: the token's user and roles.
    pub(crate) fn viewer(&self) -> modelcast_hub::Viewer {
        modelcast_hub::Viewer::new(self.subject.as_str(), self.roles.iter().map(String::as_str))
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: Option<u64>,
    iat: Option<u64>,
}

/// How a refusal of a revoked token begins (the clients stop on it).
pub(crate) const REVOKED_TOKEN: &str = "the token was revoked";

/// Checks `config` as start-up would (settings that depend on each other, the JWT key file)
/// without binding or connecting, and says what it amounts to, one setting per line.
pub fn check_config(config: &Config) -> Result<String, String> {
    let security = Security::from_config(config)?;
    let [tls, redis_tls] = crate::tls::describe(config)?;
    let push = match crate::push_settings::settings(config)? {
        None => "push: off (no MODELCAST_VAPID_PRIVATE_KEY, MODELCAST_FCM_SERVICE_ACCOUNT or MODELCAST_APNS_KEY)".to_owned(),
        Some(push) => format!(
            "push: {} to {} users, types {}",
            [("web", push.vapid.is_some()), ("fcm", push.fcm.is_some()), ("apns", push.apns.is_some())]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join("+"),
            config.push_when,
            config.push_types.join(","),
        ),
    };
    let roles: Vec<String> = config
        .topic_roles
        .iter()
        .map(|(topic, roles)| format!("{topic}={}", roles.join("|")))
        .collect();
    let list = |items: &[String]| if items.is_empty() { "-".to_owned() } else { items.join(",") };
    let proxies: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
    Ok(
        [
            format!("bind: {}", config.bind),
            format!(
                "engine: {}",
                match (&config.redis_master, config.redis_sentinels.is_empty()) {
                    _ if !config.redis_cluster.is_empty() => {
                        format!("redis cluster via {}", config.redis_cluster.join(","))
                    }
                    (Some(master), false) => format!(
                        "redis sentinel: master {master} via {}",
                        config.redis_sentinels.join(",")
                    ),
                    _ => config
                        .redis_url
                        .as_deref()
                        .map_or("memory".to_owned(), modelcast_redis::redact),
                }
            ),
            tls,
            redis_tls,
            push,
            format!(
                "authentication: {}",
                if security.auth_required() { "JWT required" } else { "open" }
            ),
            format!("topic roles: {}", list(&roles)),
            format!("publish keys: {}", config.publish_keys.len()),
            format!("operator endpoints (/api/stats, /metrics, all of /api/state): {}", {
                if security.operator_guarded() {
                    format!(
                        "need a credential: {}",
                        [
                            config.metrics_token.as_ref().map(|_| "the metrics token".to_owned()),
                            (!config.publish_keys.is_empty()).then(|| "a publish key".to_owned()),
                            security.auth_required().then(|| {
                                format!("a token with role {}", config.operator_roles.join("|"))
                            }),
                        ]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(", ")
                    )
                } else {
                    "open (no token required and no MODELCAST_METRICS_TOKEN)".to_owned()
                }
            }),
            format!("allowed origins: {}", list(&config.allowed_origins)),
            format!("trusted proxies: {}", list(&proxies)),
            format!("max connections: {}", config.max_connections),
            format!("state keys per topic: {}", config.state_max_keys),
            format!("ids per filter: {}", config.max_filter_ids),
            format!("idempotency keys: {}", config.idempotency_keys),
        ]
        .join("\n"),
    )
}

/// The security settings, resolved at start-up.
pub(crate) struct Security {
    jwt: Option<(DecodingKey, Validation)>,
    leeway: u64,
    operator_roles: Vec<String>,
    topic_roles: HashMap<Topic, Vec<String>>,
    publish_keys: Vec<Vec<u8>>,
    metrics_token: Option<Vec<u8>>,
    origins: Vec<String>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    trusted_proxies: Vec<Cidr>,
    message_quota: Quota,
    /// Users whose older tokens are refused (`POST /api/revoke`).
    pub(crate) revocations: std::sync::Arc<crate::revoke::Revocations>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("auth", &self.jwt.is_some())
            .field("topic_roles", &self.topic_roles)
            .field("publish_keys", &self.publish_keys.len())
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

fn nonzero(n: usize) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX).max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Security {
    pub(crate) fn from_config(config: &Config) -> Result<Self, String> {
        config.validate()?;
        let per_ip = RateLimiter::keyed(
            Quota::per_second(nonzero(config.connect_rate))
                .allow_burst(nonzero(config.connect_rate * 10)),
        );
        Ok(Self {
            jwt: jwt(config)?,
            leeway: config.jwt_leeway,
            operator_roles: config.operator_roles.clone(),
            topic_roles: config.topic_roles.iter().cloned().collect(),
            publish_keys: config.publish_keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            metrics_token: config.metrics_token.as_ref().map(|t| t.as_bytes().to_vec()),
            origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
            per_ip,
            trusted_proxies: config.trusted_proxies.clone(),
            message_quota: Quota::per_second(nonzero(config.rate_limit))
                .allow_burst(nonzero(config.rate_burst)),
            revocations: std::sync::Arc::new(crate::revoke::Revocations::new(
                config.max_revocations,
            )),
        })
    }

    /// Whether connections must authenticate.
    pub(crate) fn auth_required(&self) -> bool {
        self.jwt.is_some()
    }

    /// Verifies a token: signature, expiry and, if configured, audience and issuer.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, String> {
        let Some((key, validation)) = &self.jwt else {
            return Err("authentication is not enabled on this server".into());
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => "the token has expired; get a new one".to_owned(),
                K::InvalidSignature => "the token's signature is invalid".to_owned(),
                K::InvalidAudience => "the token is for another audience".to_owned(),
                K::InvalidIssuer => "the token is from another issuer".to_owned(),
                K::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                K::ImmatureSignature => "the token is not valid yet (`nbf`)".to_owned(),
                _ => format!("the token is invalid: {e}"),
            }
        })?;
        if data.claims.sub.is_empty() {
            return Err("the token's `sub` claim is empty: it must name the user".into());
        }
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if self.revocations.refuses(&data.claims.sub, data.claims.iat, now) {
            return Err(format!(
                "{REVOKED_TOKEN}: an operator revoked the tokens of {} issued before a time                  after this one's `iat`; get a new one",
                data.claims.sub
            ));
        }
        Ok(Identity {
            subject: data.claims.sub,
            roles: data.claims.roles,
            expires_at: data.claims.exp.map(|exp| exp.saturating_add(self.leeway)),
            issued_at: data.claims.iat,
        })
    }

    /// Whether the endpoints that show every figure and key (`/api/stats`, `/metrics`, all of
    /// `/api/state`) need an operator credential: on a server that requires tokens, or has a
    /// metrics token. Otherwise they are open (the loopback default, or a server whose
    /// subscriptions are open to anyone anyway).
    pub(crate) fn operator_guarded(&self) -> bool {
        self.auth_required() || self.metrics_token.is_some()
    }

    /// Whether the server has no credential of any kind (the loopback default): everyone is an
    /// operator, as every other endpoint is open too.
    fn open(&self) -> bool {
        !self.auth_required() && self.metrics_token.is_none() && self.publish_keys.is_empty()
    }

    /// Who a request is, by its `Authorization: Bearer` credential (or `token`, a `?token=`
    /// a browser can send): the metrics token or a publish key is an operator; a JWT is its
    /// user, an operator with one of `MODELCAST_OPERATOR_ROLES`. A credential that is none of
    /// these is refused (never taken for anonymous). Without one: anonymous, an operator on a
    /// server without any credential.
    pub(crate) fn caller(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
    ) -> Result<Caller, Refused> {
        let bearer = bearer(headers).or(token);
        let Some(bearer) = bearer else {
            return Ok(if self.open() { Caller::Operator } else { Caller::Anonymous });
        };
        let mut keys: Vec<&[u8]> = self.publish_keys.iter().map(Vec::as_slice).collect();
        keys.extend(self.metrics_token.as_deref());
        if matches_any(&keys, bearer) {
            return Ok(Caller::Operator);
        }
        // Not a key: a token, if it looks like one (a refused token is 401, get a new one);
        // anything else is a wrong key (403), as for publishing.
        let looks_like_a_token = bearer.split('.').count() == 3;
        if !self.auth_required() || !looks_like_a_token {
            return Err(Refused::Forbidden("that credential is not valid here".into()));
        }
        let identity = self.verify(bearer).map_err(Refused::Invalid)?;
        if identity.roles.iter().any(|r| self.operator_roles.contains(r)) {
            Ok(Caller::Operator)
        } else {
            Ok(Caller::Viewer(identity))
        }
    }

    /// Whether a connection with `identity` (and a publish key, if `keyed`) could read the
    /// operator endpoints: the rule of [`Security::caller`] for a connection's credentials.
    pub(crate) fn is_operator(&self, identity: Option<&Identity>, keyed: bool) -> bool {
        self.open()
            || keyed
            || identity.is_some_and(|id| id.roles.iter().any(|r| self.operator_roles.contains(r)))
    }

    /// What an operator endpoint needs of `caller`: an operator, where the endpoints are
    /// guarded ([`Security::operator_guarded`]).
    pub(crate) fn operator(&self, caller: &Caller) -> Result<(), Refused> {
        match caller {
            Caller::Operator => Ok(()),
            _ if !self.operator_guarded() => Ok(()),
            Caller::Anonymous => Err(Refused::Missing(self.operator_credentials())),
            Caller::Viewer(identity) => Err(Refused::Forbidden(format!(
                "{} is not an operator: {}",
                identity.subject,
                self.operator_credentials()
            ))),
        }
    }

    /// What counts as an operator's credential here, for a refusal's message.
    fn operator_credentials(&self) -> String {
        let mut ways = Vec::new();
        if self.metrics_token.is_some() {
            ways.push("MODELCAST_METRICS_TOKEN".to_owned());
        }
        if !self.publish_keys.is_empty() {
            ways.push("a publish key".to_owned());
        }
        if self.auth_required() {
            ways.push(format!("a token with role {}", self.operator_roles.join("|")));
        }
        format!("this endpoint needs `Authorization: Bearer <{}>`", ways.join(" | "))
    }

    /// Whether `identity` may subscribe to `topic`.
    pub(crate) fn may_subscribe(&self, identity: Option<&Identity>, topic: Topic) -> bool {
        match self.topic_roles.get(&topic) {
            None => true,
            Some(allowed) => {
                identity.is_some_and(|id| id.roles.iter().any(|r| allowed.contains(r)))
            }
        }
    }

    /// The roles allowed on `topic`, for error messages.
    pub(crate) fn roles_for(&self, topic: Topic) -> String {
        self.topic_roles.get(&topic).map(|r| r.join(", ")).unwrap_or_default()
    }

    /// Checks `POST /api/publish`'s `Authorization: Bearer <key>`: `Err(true)` when missing
    /// (401), `Err(false)` when wrong (403).
    /// Whether publish keys are configured (`MODELCAST_PUBLISH_KEYS`).
    pub(crate) fn has_publish_keys(&self) -> bool {
        !self.publish_keys.is_empty()
    }

    pub(crate) fn check_publish_key(&self, headers: &HeaderMap) -> Result<(), bool> {
        check_bearer(&self.publish_keys, headers)
    }

    /// Whether a browser request (one with an `Origin`, or a `Sec-Fetch-Site` other than
    /// `same-origin`/`none`) may publish: only from an origin listed in
    /// `MODELCAST_ALLOWED_ORIGINS` (or `*`). Without this any page a developer visits could
    /// publish to their local hub with a simple cross-origin POST.
    pub(crate) fn browser_may_publish(&self, headers: &HeaderMap) -> Result<(), String> {
        let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let from_browser =
            origin.is_some() || site.is_some_and(|s| s != "same-origin" && s != "none");
        if !from_browser {
            return Ok(());
        }
        let origin = origin.unwrap_or("(no Origin)").trim_end_matches('/');
        if self.origins.iter().any(|o| o == "*" || o == origin) {
            Ok(())
        } else {
            Err(format!(
                "publishing from a browser page needs its origin ({origin}) in \
                 MODELCAST_ALLOWED_ORIGINS; backends send no Origin header"
            ))
        }
    }

    /// Whether a browser `Origin` may open a WebSocket (no header: not a browser, allowed).
    pub(crate) fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        match headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(origin) => {
                self.origins.iter().any(|o| o == "*" || o == origin.trim_end_matches('/'))
            }
        }
    }

    /// A connection's inbound message limiter (a token bucket).
    pub(crate) fn message_limiter(&self) -> Box<governor::DefaultDirectRateLimiter> {
        Box::new(RateLimiter::direct(self.message_quota))
    }

    /// The client's address: `peer`, or, when `peer` is a trusted proxy, the nearest address
    /// in `X-Forwarded-For` (else `Forwarded: for=`) that is not itself a trusted proxy.
    /// Headers from untrusted peers are ignored: anyone can write them.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|c| c.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let forwarded_for = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_owned())
            .collect::<Vec<_>>();
        let chain = if forwarded_for.is_empty() {
            headers
                .get_all("forwarded")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .flat_map(|element| element.split(';'))
                .filter_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("for").then(|| v.trim_matches('"').to_owned())
                })
                .collect()
        } else {
            forwarded_for
        };
        chain
            .iter()
            .rev()
            .filter_map(|s| parse_forwarded_ip(s))
            .find(|ip| !trusted(*ip))
            .unwrap_or(peer)
    }

    /// Whether `ip` is one of `MODELCAST_TRUSTED_PROXIES`.
    pub(crate) fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Counts a connection attempt from `ip`; `false` when it exceeds the per-IP rate.
    pub(crate) fn admit_ip(&self, ip: IpAddr) -> bool {
        self.per_ip.check_key(&ip).is_ok()
    }
}

/// How tokens are verified, when they are required: the key (an HS256 secret, or a PEM
/// public key file read now) and the rules (`exp`, `nbf`, the leeway, a configured audience
/// or issuer required, the subject always).
fn jwt(config: &Config) -> Result<Option<(DecodingKey, Validation)>, String> {
    let (key, mut validation) = match (&config.jwt_secret, &config.jwt_public_key) {
        (Some(secret), _) => {
            (DecodingKey::from_secret(secret.as_bytes()), Validation::new(Algorithm::HS256))
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| {
                format!("MODELCAST_JWT_PUBLIC_KEY: cannot read {}: {e}", path.display())
            })?;
            let (key, alg) = match config.jwt_algorithm {
                JwtAlgorithm::Rs256 => (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256),
                JwtAlgorithm::Es256 => (DecodingKey::from_ec_pem(&pem), Algorithm::ES256),
            };
            let key = key.map_err(|e| {
                format!(
                    "MODELCAST_JWT_PUBLIC_KEY: {} is not a {:?} public key in PEM: {e}",
                    path.display(),
                    config.jwt_algorithm
                )
            })?;
            (key, Validation::new(alg))
        }
        (None, None) => return Ok(None),
    };
    validation.leeway = config.jwt_leeway;
    validation.validate_nbf = true;
    // A configured audience or issuer is required, not only checked when present; the subject
    // always is: it is the connection's identity (whose ids it may replace).
    let mut required = vec!["exp", "sub"];
    match &config.jwt_audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &config.jwt_issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    Ok(Some((key, validation)))
}

/// The credential of `Authorization: Bearer <credential>` (`bearer` in any case of its first
/// letter), trimmed; `None` without one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// `Authorization: Bearer <one of keys>`: `Ok` when `keys` is empty; `Err(true)` when missing,
/// `Err(false)` when wrong. Every key is compared in constant time, and all of them are
/// compared, so timing reveals neither the key nor which one matched.
fn check_bearer(keys: &[Vec<u8>], headers: &HeaderMap) -> Result<(), bool> {
    if keys.is_empty() {
        return Ok(());
    }
    let presented = bearer(headers).ok_or(true)?;
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    if matches_any(&keys, presented) { Ok(()) } else { Err(false) }
}

/// Whether `presented` is one of `keys`. Every key is compared in constant time, and all of
/// them are compared, so timing reveals neither the key nor which one matched.
fn matches_any(keys: &[&[u8]], presented: &str) -> bool {
    let mut matched = subtle::Choice::from(0u8);
    for key in keys {
        matched |= key.ct_eq(presented.as_bytes());
    }
    bool::from(matched)
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `[::1]:80` or `::1`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    s.strip_prefix('[').and_then(|r| r.split(']').next()).and_then(|ip| ip.parse().ok())
}
