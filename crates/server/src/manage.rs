//! The operator's hold on who is connected: `GET /api/connections` (pages of the sessions of
//! every node), `GET /api/presence` (counts per topic and model), `POST /api/disconnect`
//! (close a user's or a connection's sessions on every node), `POST /api/revoke` (refuse a
//! user's older tokens on every node until they expire) and `POST`/`DELETE
//! /api/subscriptions` (subscribe sessions server-side, as if they had asked). Every action is
//! a [`Command`], applied here and sent to the other nodes, which apply it as they read the
//! stream ([`follow`]). Each needs an operator credential
//! (a publish key, the metrics token, or a token with one of `MODELCAST_OPERATOR_ROLES`) on
//! any server that has a credential at all — stricter than the figures of `/api/stats`, which
//! a server without tokens or a metrics token shows to anyone: these name users and end their
//! sessions.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use modelcast_protocol::{ApiErrorCode, Topic};
use serde_json::{Value, json};

use crate::admit::refuse_token;
use crate::error::{ApiError, ApiResult};
use crate::inspect::{caller, query_param};
use crate::response::json_response;
use crate::revoke::Revoked;
use crate::roster::{Command, DISCONNECTED_REASON, Entry, REVOKED_REASON, Target, TopicPresence};
use crate::security::Caller;
use crate::state::App;

/// The most connections one page holds, and the default.
const PAGE_MAX: usize = 1_000;
const PAGE_DEFAULT: usize = 100;

/// The management endpoints' check: an operator credential, unless the server has none of any
/// kind (the loopback default, where everything is open).
fn operator(app: &App, req: &Request<Incoming>) -> ApiResult<()> {
    match caller(app, req)? {
        Caller::Operator => Ok(()),
        Caller::Anonymous => Err(refuse_token(
            app,
            "an operator credential is needed: Authorization: Bearer <publish key, metrics \
             token, or a token with an operator role>",
        )),
        Caller::Viewer(_) => Err(ApiError::new(
            ApiErrorCode::Forbidden,
            "this token's roles include no operator role (MODELCAST_OPERATOR_ROLES)",
        )),
    }
}

/// A field of the request is missing or wrong.
fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ApiErrorCode::InvalidRequest, message).with("field", field)
}

/// Redis could not answer: the cluster's view cannot be given.
fn store_down(err: impl std::fmt::Display) -> ApiError {
    let message = format!("the cluster's store (Redis) cannot answer now: {err}; retry");
    ApiError::new(ApiErrorCode::Unavailable, message).retry_after(1)
}

/// What `GET /api/connections` asks for.
struct Query {
    user: Option<String>,
    topic: Option<Topic>,
    limit: usize,
    /// The node and session serial the previous page ended at.
    after: Option<(String, u64)>,
}

impl Query {
    fn of(query: Option<&str>) -> ApiResult<Self> {
        let topic = match query_param(query, "topic") {
            None => None,
            Some(topic) => {
                Some(topic.parse().map_err(|err: modelcast_protocol::ParseTopicError| {
                    ApiError::new(ApiErrorCode::UnknownTopic, err.to_string())
                        .with("field", "topic")
                })?)
            }
        };
        let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
            None => PAGE_DEFAULT,
            Some(Ok(n)) if (1..=PAGE_MAX).contains(&n) => n,
            Some(_) => {
                let message = format!("limit is a whole number from 1 to {PAGE_MAX}");
                return Err(
                    ApiError::new(ApiErrorCode::InvalidLimit, message).with("field", "limit")
                );
            }
        };
        let after = match query_param(query, "after") {
            None => None,
            Some(cursor) => Some(parse_cursor(&cursor).ok_or_else(|| {
                let message = "after is the `next` of the previous page";
                ApiError::new(ApiErrorCode::InvalidCursor, message).with("field", "after")
            })?),
        };
        Ok(Self { user: query_param(query, "user"), topic, limit, after })
    }

    fn keeps(&self, entry: &Entry) -> bool {
        self.user.as_ref().is_none_or(|u| entry.user.as_ref() == Some(u))
            && self.topic.is_none_or(|t| entry.topics.iter().any(|s| s.topic == t))
    }
}

/// A cursor: `<node>/<serial>`.
fn parse_cursor(cursor: &str) -> Option<(String, u64)> {
    let (node, serial) = cursor.rsplit_once('/')?;
    Some((node.to_owned(), serial.parse().ok()?))
}

/// `GET /api/connections?user=…&topic=…&limit=…&after=…`: a page of the open sessions of
/// every node, ordered by node and then by when they opened; `next` is the cursor of the
/// following page (`null` after the last).
pub(crate) async fn connections(app: &Arc<App>, req: &Request<Incoming>) -> ApiResult {
    operator(app, req)?;
    let query = Query::of(req.uri().query())?;
    let mut page = Vec::with_capacity(query.limit.min(64));
    let mut next = None;
    let keep = |entry: &Entry| query.keeps(entry);
    for node in app.roster.nodes().await.map_err(store_down)? {
        let after = match &query.after {
            Some((from, _)) if node < *from => continue,
            Some((from, serial)) if node == *from => *serial,
            _ => 0,
        };
        let (entries, more) = app
            .roster
            .node_page(&node, after, query.limit - page.len(), &keep)
            .await
            .map_err(store_down)?;
        page.extend(entries);
        if let Some(serial) = more {
            next = Some(format!("{node}/{serial}"));
            break;
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"connections": page, "next": next})))
}

/// `GET /api/presence?topic=…`: the connections subscribed to the topic (every connection,
/// without one), their distinct users, and per `model_id` the connections whose filter names
/// it (`unfiltered`: those with no filter), on every node.
pub(crate) async fn presence(app: &Arc<App>, req: &Request<Incoming>) -> ApiResult {
    operator(app, req)?;
    let query = Query::of(req.uri().query())?;
    let mut counts = TopicPresence::of(query.topic);
    let keep = |entry: &Entry| query.keeps(entry);
    let each = &mut |entry: &Entry| counts.count(entry);
    let nodes = app.roster.each_entry(&keep, each).await.map_err(store_down)?;
    let mut answer = serde_json::to_value(&counts).unwrap_or_default();
    answer["nodes"] = json!(nodes);
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /api/demand`: per model, its watchers now (subscriptions whose filter names it, every
/// node, plus users with its audience-scoped downloads or tasks in progress), since when, and
/// the peak of the last hour — as of the last count (every second).
pub(crate) fn demand(app: &Arc<App>, req: &Request<Incoming>) -> ApiResult {
    operator(app, req)?;
    let models = app.demand.snapshot();
    Ok(json_response(StatusCode::OK, &json!({"models": models})))
}

/// The body of a management request: a JSON object.
async fn body(app: &App, req: Request<Incoming>) -> ApiResult<serde_json::Map<String, Value>> {
    let bytes = crate::publish::read_body(app, req).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(invalid("", "the body is a JSON object")),
        Err(err) => Err(ApiError::new(ApiErrorCode::InvalidJson, format!("not JSON: {err}"))),
    }
}

/// A string field, if present (refused when it is not a non-empty string).
fn text(body: &serde_json::Map<String, Value>, field: &str) -> ApiResult<Option<String>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, format!("{field} is a non-empty string"))),
    }
}

/// `POST /api/disconnect {"user"}` or `{"connection_id"}`: closes every matching session on
/// every node (WebSocket: close code 4403, "do not reconnect with this token"; event stream:
/// a `revoked` error, then the end).
pub(crate) async fn disconnect(app: &Arc<App>, req: Request<Incoming>) -> ApiResult {
    operator(app, &req)?;
    let body = body(app, req).await?;
    let command = Command::Disconnect { target: target(&body)? };
    let closed = apply(app, command.clone());
    let cluster = app.roster.clustered().is_some();
    app.roster.broadcast(&command).await.map_err(store_down)?;
    let answer = json!({"closed": closed, "node": app.roster.node(), "other_nodes_told": cluster});
    Ok(json_response(StatusCode::OK, &answer))
}

/// `POST /api/revoke {"user", "issued_before"?, "expires_at"?}`: refuses the user's tokens
/// issued before `issued_before` (default: now) on every node until `expires_at` (default:
/// `issued_before` + `MODELCAST_REVOKE_FOR`), and closes the sessions that hold one.
pub(crate) async fn revoke(app: &Arc<App>, req: Request<Incoming>) -> ApiResult {
    operator(app, &req)?;
    let body = body(app, req).await?;
    let user = text(&body, "user")?.ok_or_else(|| invalid("user", "name the user"))?;
    let now = crate::roster::unix_seconds();
    let issued_before = time(&body, "issued_before")?.unwrap_or(now);
    let default_until = issued_before.saturating_add(app.config.revoke_for.as_secs());
    let until = time(&body, "expires_at")?.unwrap_or(default_until);
    if until <= now {
        return Err(invalid("expires_at", "expires_at is in the past: nothing to revoke"));
    }
    let revoked = Revoked { issued_before, until };
    let expired = app.security.revocations.insert(&user, revoked, now).map_err(|_| {
        let max = app.config.max_revocations;
        let message = format!("{max} revocations are held (MODELCAST_MAX_REVOCATIONS)");
        ApiError::new(ApiErrorCode::RevocationsFull, message)
    })?;
    let closed =
        app.roster.close(&Target::IssuedBefore(user.clone(), issued_before), REVOKED_REASON);
    app.roster.revoke_everywhere(&user, revoked, &expired).await.map_err(store_down)?;
    let answer = json!({"user": user, "issued_before": rfc3339(issued_before),
        "expires_at": rfc3339(until), "closed": closed});
    Ok(json_response(StatusCode::OK, &answer))
}

/// A time field: RFC 3339 or seconds since the Unix epoch.
fn time(body: &serde_json::Map<String, Value>, field: &str) -> ApiResult<Option<u64>> {
    let bad = || invalid(field, format!("{field} is an RFC 3339 time or seconds since 1970"));
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) => {
            let at = DateTime::parse_from_rfc3339(s).map_err(|_| bad())?;
            u64::try_from(at.timestamp()).map(Some).map_err(|_| bad())
        }
        Some(_) => Err(bad()),
    }
}

fn rfc3339(seconds: u64) -> String {
    DateTime::<Utc>::from_timestamp(i64::try_from(seconds).unwrap_or(i64::MAX), 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// The sessions a body names: `{"user"}` or `{"connection_id"}`, exactly one.
fn target(body: &serde_json::Map<String, Value>) -> ApiResult<Target> {
    match (text(body, "user")?, text(body, "connection_id")?) {
        (Some(user), None) => Ok(Target::User(user)),
        (None, Some(id)) => Ok(Target::ConnectionId(id)),
        _ => Err(invalid("user", "name exactly one of `user` and `connection_id`")),
    }
}

/// The body's `topic`, required.
fn topic(body: &serde_json::Map<String, Value>) -> ApiResult<Topic> {
    let name = text(body, "topic")?.ok_or_else(|| invalid("topic", "name the topic"))?;
    name.parse().map_err(|err: modelcast_protocol::ParseTopicError| {
        ApiError::new(ApiErrorCode::UnknownTopic, err.to_string()).with("field", "topic")
    })
}

/// `POST /api/subscriptions {"user" or "connection_id", "topic", "filter"?, "max_hz"?}`:
/// every matching session on every node subscribes as if it had sent the `subscribe` (it gets
/// `subscribed` and the state; its roles and limits apply, a refusal is an `error` to it).
/// `DELETE` with `{"user" or "connection_id", "topic"}` unsubscribes those subscribed
/// (`unsubscribed`).
pub(crate) async fn subscriptions(app: &Arc<App>, req: Request<Incoming>) -> ApiResult {
    operator(app, &req)?;
    let delete = req.method() == hyper::Method::DELETE;
    let body = body(app, req).await?;
    let target = target(&body)?;
    let topic = topic(&body)?;
    let command = if delete {
        Command::Unsubscribe { target, topic }
    } else {
        Command::Subscribe { target, request: subscribe_request(app, &body, topic)? }
    };
    let sessions = apply(app, command.clone());
    app.roster.broadcast(&command).await.map_err(store_down)?;
    let answer = json!({"sessions": sessions, "node": app.roster.node(),
        "other_nodes_told": app.roster.clustered().is_some()});
    Ok(json_response(StatusCode::OK, &answer))
}

/// The `subscribe` a `POST /api/subscriptions` stands for: its `filter` and `max_hz` checked
/// as the server checks a client's.
fn subscribe_request(
    app: &App,
    body: &serde_json::Map<String, Value>,
    topic: Topic,
) -> ApiResult<modelcast_protocol::SubscribeRequest> {
    let mut request = modelcast_protocol::SubscribeRequest::new(topic);
    if let Some(filter) = body.get("filter").filter(|f| !f.is_null()) {
        let filter: modelcast_protocol::SubscriptionFilter = serde_json::from_value(filter.clone())
            .map_err(|e| invalid("filter", format!("filter is {{\"model_ids\": [\"…\"]}}: {e}")))?;
        let ids = filter.model_ids.as_ref().map_or(0, Vec::len);
        if ids > app.config.max_filter_ids {
            let max = app.config.max_filter_ids;
            return Err(invalid(
                "filter.model_ids",
                format!("at most {max} ids (MODELCAST_MAX_FILTER_IDS)"),
            ));
        }
        request.filter = Some(filter);
    }
    match body.get("max_hz") {
        None | Some(Value::Null) => {}
        Some(hz) => {
            match hz.as_f64().filter(|hz| hz.is_finite() && *hz >= modelcast_hub::MIN_MAX_HZ) {
                Some(hz) => request.max_hz = Some(hz),
                None => {
                    let message = format!("max_hz is a number from {}", modelcast_hub::MIN_MAX_HZ);
                    return Err(invalid("max_hz", message));
                }
            }
        }
    }
    Ok(request)
}

/// Applies `command` to this node's sessions (and revocations); how many sessions it touched.
fn apply(app: &App, command: Command) -> usize {
    match command {
        Command::Disconnect { target } => app.roster.close(&target, DISCONNECTED_REASON),
        Command::Revoke { user, revoked } => {
            app.security.revocations.apply(&user, revoked, crate::roster::unix_seconds());
            app.roster.close(&Target::IssuedBefore(user, revoked.issued_before), REVOKED_REASON)
        }
        Command::Subscribe { target, request } => {
            let sessions = app.roster.sessions(&target);
            for (conn, control) in &sessions {
                let frame = modelcast_protocol::ClientMessage::Subscribe(request.clone());
                crate::actions::handle_frame(app, conn, control, Ok(frame));
            }
            sessions.len()
        }
        Command::Unsubscribe { target, topic } => {
            let sessions = app.roster.sessions(&target);
            let subscribed =
                sessions.iter().filter(|(conn, _)| conn.subscriptions().contains(&topic));
            let mut count = 0;
            for (conn, control) in subscribed {
                let frame = modelcast_protocol::ClientMessage::Unsubscribe(
                    modelcast_protocol::UnsubscribeRequest { topic, id: None },
                );
                crate::actions::handle_frame(app, conn, control, Ok(frame));
                count += 1;
            }
            count
        }
    }
}

/// On a cluster: loads the revocations stored before this node started, then applies the
/// commands other nodes send, every [`crate::roster::TICK`], while the server lives.
pub(crate) fn follow(app: &Arc<App>) {
    let Some(kv) = app.roster.clustered().cloned() else { return };
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut from = loop {
            match kv.last_command().await {
                Ok(id) => break id,
                Err(err) => tracing::debug!("commands not readable yet: {err}"),
            }
            tokio::time::sleep(crate::roster::TICK).await;
            if app.strong_count() == 0 {
                return;
            }
        };
        if let Some(app) = app.upgrade() {
            load_revocations(&app, &kv).await;
        }
        loop {
            tokio::time::sleep(crate::roster::TICK).await;
            let Some(app) = app.upgrade() else { return };
            from = read_commands(&app, &kv, from).await;
        }
    });
}

/// Reads the revocations stored before this node started.
async fn load_revocations(app: &App, kv: &modelcast_redis::Kv) {
    let stored = match kv.revocations().await {
        Ok(stored) => stored,
        Err(err) => return tracing::warn!("revocations not loaded from Redis: {err}"),
    };
    let now = crate::roster::unix_seconds();
    for (user, json) in stored {
        if let Ok(revoked) = serde_json::from_str::<Revoked>(&json) {
            app.security.revocations.apply(&user, revoked, now);
        }
    }
}

/// Applies the commands after `from` that other nodes sent; where to read from next.
async fn read_commands(app: &App, kv: &modelcast_redis::Kv, mut from: String) -> String {
    let commands = match kv.commands_after(&from).await {
        Ok(commands) => commands,
        Err(err) => {
            tracing::debug!("commands not read: {err}");
            return from;
        }
    };
    for (id, origin, json) in commands {
        from = id;
        if origin == app.roster.node() {
            continue;
        }
        match serde_json::from_str::<Command>(&json) {
            Ok(command) => {
                apply(app, command);
            }
            Err(err) => tracing::warn!(%origin, "a command not understood: {err}"),
        }
    }
    from
}
