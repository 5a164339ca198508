//! Client actions: a text frame parsed, validated, authorized and answered.

use modelcast_hub::{Connection, Sequenced, SubscribeOptions};
use modelcast_notifiers::{Outcome, Outgoing};
use modelcast_protocol::{
    AuthRequest, ClientMessage, ErrorCode, ErrorMessage, FrameError, Pong, PublishRequest,
    Published, RequestId, ServerMessage, SubscribeRequest, Topic, UnsubscribeRequest, close,
};

use std::sync::Arc;

use crate::control::Listening;
use crate::security::Identity;
use crate::state::{App, AuthState, Control, Publisher};
use crate::validate::Checked;

pub(crate) fn reply_error(
    app: &App,
    conn: &Connection,
    code: ErrorCode,
    message: String,
    request_id: Option<RequestId>,
) {
    app.metrics.error(&code);
    let _ = conn.send(&ServerMessage::Error(ErrorMessage { code, message, request_id }));
}

/// A token was accepted (first or renewed): the session takes its id within the token's
/// subject, and every subscription the new roles no longer allow ends with a `forbidden`
/// error naming the topic (what was queued of it is dropped, and what the new token's viewer
/// may not receive is taken back from the queue: `Connection::set_viewer`).
///
/// A renewal keeps the user: a token for another `sub` is refused and the connection closed
/// with 4401, so nothing queued or held back for one user is ever written to another.
fn authenticated(app: &App, conn: &Connection, control: &Arc<Control>, identity: Identity) {
    let current = control.auth().identity.as_ref().map(|i| i.subject.clone());
    if let Some(current) = current.filter(|c| *c != identity.subject) {
        let message = format!(
            "a renewed token must be for the same user ({current}), not {}: open a new \
             connection for another user",
            identity.subject
        );
        reply_error(app, conn, ErrorCode::Unauthorized, message, None);
        control.set_close(close::UNAUTHORIZED, "a renewed token for another user");
        control.wake.notify_one();
        return;
    }
    for topic in conn.subscriptions() {
        if !app.security.may_subscribe(Some(&identity), topic) {
            conn.unsubscribe(topic);
            let message = format!(
                "unsubscribed from {topic}: the new token's roles do not include {}",
                app.security.roles_for(topic)
            );
            reply_error(app, conn, ErrorCode::Forbidden, message, None);
        }
    }
    app.register((Some(identity.subject.clone()), control.id.clone()), conn, control);
    app.roster.touch(control.serial);
    // What audiences the connection is in follows the newest token, from now on.
    conn.set_viewer(identity.viewer());
    *control.auth() =
        AuthState { identity: Some(identity), deadline: None, expiry_announced: false };
    control.wake.notify_one();
}

/// How long a recovery waits for the engine to bring this node to the position the client
/// asks for (it got it from another node, which received the message first).
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A subscription this node cannot answer yet: a recovery asked for a position it has not
/// reached, or its copy of the topic is not loaded from the log yet (as right after a start).
/// The engine brings the node up to its log's head (fencing the topic if the client holds a
/// position the log lost), then the subscription starts — notified, not polled. If the node
/// still has not reached the position (one the log never had, within the engine's fence
/// cooldown), the client gets the current state, not recovered: never a replay from numbers
/// the log may hand out again. If the engine cannot answer, a retryable `unavailable` error.
fn subscribe_when_caught_up(app: &App, conn: &Connection, topic: Topic, options: SubscribeOptions) {
    let reached = app.hub.reach(topic, options.since.as_ref());
    let conn = conn.clone();
    let counter = app.metrics.error_counter(&ErrorCode::Unavailable);
    tokio::spawn(async move {
        let request_id = options.request_id.clone();
        let since = options.since.as_ref().map_or(0, |s| s.seq);
        let failed = match tokio::time::timeout(CATCH_UP_WAIT, reached.wait()).await {
            Ok(Ok(())) => {
                let behind =
                    |r: &Result<_, _>| matches!(r, Err(modelcast_hub::Error::Behind { .. }));
                let mut outcome = conn.subscribe(topic, options.clone());
                if behind(&outcome) && options.since.is_some() {
                    outcome = conn.subscribe(topic, options.since(None));
                }
                behind(&outcome).then(|| format!("this node has not loaded {topic} yet"))
            }
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => Some(format!("this node did not reach {topic} seq {since} in time")),
        };
        if let Some(reason) = failed {
            counter.inc();
            let code = ErrorCode::Unavailable;
            let message = format!("cannot subscribe now ({reason}); retry in a moment");
            let _ = conn.send(&ServerMessage::Error(ErrorMessage { code, message, request_id }));
        }
    });
}

/// `publish` frames that arrived together (in order): each checked like `POST /api/publish`,
/// then published through the policy in one call, so that consecutive messages of a topic are
/// fanned out together. Each is answered with `published` when it has an `id`; a refusal is
/// an `error` naming the field, sent in order with the answers.
pub(crate) fn publish_frames(
    app: &App,
    conn: &Connection,
    control: &Control,
    requests: Vec<PublishRequest>,
) {
    if requests.is_empty() {
        return;
    }
    let Some(_publishing) = app.publish_permit() else {
        for request in requests {
            let message = "the server is shutting down; publish to another node".to_owned();
            reply_error(app, conn, ErrorCode::Unavailable, message, request.id);
        }
        return;
    };
    if control.publisher == Publisher::No {
        let message = if app.security.has_publish_keys() {
            "publishing needs a connection opened with `Authorization: Bearer <publish key>`"
        } else {
            "this page's origin may not publish (MODELCAST_ALLOWED_ORIGINS); backends send no Origin header"
        };
        for request in requests {
            reply_error(app, conn, ErrorCode::Forbidden, message.into(), request.id);
        }
        return;
    }
    let mut messages = Vec::with_capacity(requests.len());
    let mut ids = Vec::with_capacity(requests.len());
    for PublishRequest { type_name, data, topic, audience, id } in requests {
        let data = serde_json::Value::Object(data);
        let checked = crate::validate::check_publish(
            &type_name,
            topic.map(Topic::as_str),
            data,
            audience.as_ref(),
        );
        match checked {
            Ok((message, audience)) => {
                // Downloads published by a backend feed the stale watchdog, as over HTTP.
                app.notifiers.downloads().with_audience(audience.clone()).observe(&message);
                messages.push((message, audience));
                ids.push(id);
            }
            Err(problems) => {
                // What came before is published and answered first: answers keep the order.
                publish_checked(app, conn, std::mem::take(&mut messages), std::mem::take(&mut ids));
                let text: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
                reply_error(app, conn, ErrorCode::InvalidMessage, text.join("; "), id);
            }
        }
    }
    publish_checked(app, conn, messages, ids);
}

/// Publishes checked messages in order and answers each that has an id.
fn publish_checked(
    app: &App,
    conn: &Connection,
    messages: Vec<Checked>,
    ids: Vec<Option<RequestId>>,
) {
    if messages.is_empty() {
        return;
    }
    let outgoing =
        messages.into_iter().map(|(message, audience)| Outgoing::new(message).to(audience));
    for (outcome, id) in app.policy.publish(outgoing).into_iter().zip(ids) {
        match outcome {
            // Sequenced by the cluster's engine: answer (or report a failure) when stored.
            Some(Outcome::Appending { topic, pending }) => {
                let conn = conn.clone();
                let counter = app.metrics.error_counter(&ErrorCode::Unavailable);
                tokio::spawn(async move {
                    let reply = match pending.wait().await {
                        Ok(_) if id.is_none() => return,
                        Ok(at) => published("sent", topic, Some(at), id),
                        Err(err) => {
                            counter.inc();
                            let code = ErrorCode::Unavailable;
                            let message = format!("not published: {err}; retry");
                            ServerMessage::Error(ErrorMessage { code, message, request_id: id })
                        }
                    };
                    let _ = conn.send(&reply);
                });
            }
            _ if id.is_none() => {}
            Some(Outcome::Sent { topic, at }) => {
                let _ = conn.send(&published("sent", topic, Some(at), id));
            }
            Some(Outcome::Held { topic }) => {
                let _ = conn.send(&published("held", topic, None, id));
            }
            Some(Outcome::Filtered { topic }) => {
                let _ = conn.send(&published("filtered", topic, None, id));
            }
            _ => {}
        }
    }
}

/// The `published` answer to a request.
fn published(
    status: &str,
    topic: Topic,
    at: Option<Sequenced>,
    request_id: Option<RequestId>,
) -> ServerMessage {
    let (epoch, seq) = at.map(|at| (at.epoch.to_string(), at.seq)).unzip();
    ServerMessage::Published(Published { topic, status: status.into(), seq, epoch, request_id })
}

/// A client frame: parsed, validated, authorized, answered. Bad input gets an `error` with
/// the precise code, and the connection stays.
pub(crate) fn handle_frame(
    app: &App,
    conn: &Connection,
    control: &Arc<Control>,
    parsed: Result<ClientMessage, FrameError>,
) {
    let message = match parsed {
        Ok(m) => m,
        Err(e) => return reply_error(app, conn, e.code, e.message, e.request_id),
    };
    let identity = match message {
        ClientMessage::Publish(request) => {
            return publish_frames(app, conn, control, vec![request]);
        }
        ClientMessage::Auth(a) => return auth(app, conn, control, a),
        _ => control.auth().identity.clone(),
    };
    if app.security.auth_required() && identity.is_none() {
        let text =
            r#"authenticate first: connect with ?token=… or send {"action":"auth","token":…}"#;
        let request_id = message.request_id().cloned();
        return reply_error(app, conn, ErrorCode::Unauthorized, text.into(), request_id);
    }
    match message {
        ClientMessage::Subscribe(s) => {
            subscribe(app, conn, control, identity.as_ref(), s);
            app.roster.touch(control.serial);
        }
        ClientMessage::Unsubscribe(u) => {
            unsubscribe(app, conn, u);
            app.roster.touch(control.serial);
        }
        ClientMessage::Ping(p) => {
            let pong = Pong { request_id: p.id, timestamp: chrono::Utc::now() };
            let _ = conn.send(&ServerMessage::Pong(pong));
        }
        other => {
            let request_id = other.request_id().cloned();
            reply_error(
                app,
                conn,
                ErrorCode::UnknownAction,
                "unsupported action".into(),
                request_id,
            );
        }
    }
}

/// `{"action":"auth"}`: a first token, or a renewal.
fn auth(app: &App, conn: &Connection, control: &Arc<Control>, request: AuthRequest) {
    match app.security.verify(&request.token) {
        Ok(identity) => authenticated(app, conn, control, identity),
        Err(reason) => reply_error(app, conn, ErrorCode::Unauthorized, reason, request.id),
    }
}

/// `{"action":"subscribe"}`: checked against the token's roles and the subscription limit, then
/// started (with the state, a replay or a recovery) — or, on a node not caught up with the
/// position asked for, started once it is.
fn subscribe(
    app: &App,
    conn: &Connection,
    control: &Control,
    identity: Option<&Identity>,
    s: SubscribeRequest,
) {
    let refuse = |code, message| reply_error(app, conn, code, message, s.id.clone());
    if !app.security.may_subscribe(identity, s.topic) {
        let roles = app.security.roles_for(s.topic);
        return refuse(
            ErrorCode::Forbidden,
            format!("{} is open to the roles {roles} only", s.topic),
        );
    }
    let current = conn.subscriptions();
    let max = app.config.max_subscriptions;
    if !current.contains(&s.topic) && current.len() >= max {
        return refuse(
            ErrorCode::TooManySubscriptions,
            format!("at most {max} subscriptions per connection"),
        );
    }
    if s.since.is_some()
        && let Some(reason) = app.hub.unavailable()
    {
        // Recovery needs the cluster's log: no answer made up from this node alone.
        return refuse(
            ErrorCode::Unavailable,
            format!("cannot recover now ({reason}); retry in a moment"),
        );
    }
    let model_ids = s.filter.and_then(|f| f.model_ids);
    let listed = model_ids.as_ref().and_then(|ids| serde_json::to_string(ids).ok());
    control.listen(
        s.topic,
        Listening { model_ids: listed.map(String::into_boxed_str), max_hz: s.max_hz },
    );
    let options = SubscribeOptions::default()
        .request_id(s.id.clone())
        .since(s.since)
        .subjects(model_ids)
        .max_hz(s.max_hz);
    match conn.subscribe(s.topic, options.clone()) {
        Ok(_) | Err(modelcast_hub::Error::Closed(_)) => {}
        Err(modelcast_hub::Error::Behind { topic, .. }) => {
            subscribe_when_caught_up(app, conn, topic, options);
        }
        Err(err @ modelcast_hub::Error::FilterTooLarge { .. }) => {
            refuse(
                ErrorCode::InvalidMessage,
                format!("filter.model_ids: {err} (MODELCAST_MAX_FILTER_IDS)"),
            );
        }
        Err(err) => refuse(ErrorCode::InvalidMessage, err.to_string()),
    }
}

/// `{"action":"unsubscribe"}`.
fn unsubscribe(app: &App, conn: &Connection, u: UnsubscribeRequest) {
    if conn.unsubscribe(u.topic) {
        let done = modelcast_protocol::Unsubscribed { topic: u.topic, request_id: u.id };
        let _ = conn.send(&ServerMessage::Unsubscribed(done));
    } else {
        let message = format!("not subscribed to {}", u.topic);
        reply_error(app, conn, ErrorCode::NotSubscribed, message, u.id);
    }
}
