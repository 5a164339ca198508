//! Client actions: a text frame parsed, validated, authorized and answered.

use modelcast_hub::{Connection, Sequenced, SubscribeOptions};
use modelcast_notifiers::Outcome;
use modelcast_protocol::{
    ClientMessage, ErrorCode, ErrorMessage, FrameError, Pong, PublishRequest, Published, RequestId,
    ServerMessage, Topic, close,
};

use std::sync::Arc;

use crate::security::Identity;
use crate::state::{App, AuthState, Control, Publisher};

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
        let checked = crate::publish::check_publish(
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
    messages: Vec<(ServerMessage, Option<Arc<modelcast_hub::Audience>>)>,
    ids: Vec<Option<RequestId>>,
) {
    if messages.is_empty() {
        return;
    }
    let answer = |status: &str, topic: Topic, at: Option<Sequenced>, request_id| {
        let (epoch, seq) = at.map(|at| (at.epoch.to_string(), at.seq)).unzip();
        ServerMessage::Published(Published { topic, status: status.into(), seq, epoch, request_id })
    };
    for (outcome, id) in app.policy.publish_many_to(messages).into_iter().zip(ids) {
        match outcome {
            Some(Outcome::Appending { topic, pending }) => {
                // Sequenced by the cluster's engine: answer (or report a failure) when stored.
                let conn = conn.clone();
                let counter = app.metrics.error_counter(&ErrorCode::Unavailable);
                tokio::spawn(async move {
                    let reply = match pending.wait().await {
                        Ok(_) if id.is_none() => return,
                        Ok(at) => answer("sent", topic, Some(at), id),
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
                let _ = conn.send(&answer("sent", topic, Some(at), id));
            }
            Some(Outcome::Held { topic }) => {
                let _ = conn.send(&answer("held", topic, None, id));
            }
            Some(Outcome::Filtered { topic }) => {
                let _ = conn.send(&answer("filtered", topic, None, id));
            }
            _ => {}
        }
    }
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
    if let ClientMessage::Publish(request) = message {
        return publish_frames(app, conn, control, vec![request]);
    }
    if let ClientMessage::Auth(a) = &message {
        match app.security.verify(&a.token) {
            Ok(identity) => authenticated(app, conn, control, identity),
            Err(reason) => reply_error(app, conn, ErrorCode::Unauthorized, reason, a.id.clone()),
        }
        return;
    }
    let identity = control.auth().identity.clone();
    if app.security.auth_required() && identity.is_none() {
        return reply_error(
            app,
            conn,
            ErrorCode::Unauthorized,
            "authenticate first: connect with ?token=… or send {\"action\":\"auth\",\"token\":…}"
                .into(),
            message.request_id().cloned(),
        );
    }
    match message {
        ClientMessage::Subscribe(s) => {
            if !app.security.may_subscribe(identity.as_ref(), s.topic) {
                return reply_error(
                    app,
                    conn,
                    ErrorCode::Forbidden,
                    format!(
                        "{} is open to the roles {} only",
                        s.topic,
                        app.security.roles_for(s.topic)
                    ),
                    s.id,
                );
            }
            let current = conn.subscriptions();
            if !current.contains(&s.topic) && current.len() >= app.config.max_subscriptions {
                return reply_error(
                    app,
                    conn,
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "at most {} subscriptions per connection",
                        app.config.max_subscriptions
                    ),
                    s.id,
                );
            }
            if s.since.is_some()
                && let Some(reason) = app.hub.unavailable()
            {
                // Recovery needs the cluster's log: no answer made up from this node alone.
                let message = format!("cannot recover now ({reason}); retry in a moment");
                return reply_error(app, conn, ErrorCode::Unavailable, message, s.id);
            }
            let options = SubscribeOptions::default()
                .request_id(s.id.clone())
                .since(s.since)
                .subjects(s.filter.and_then(|f| f.model_ids))
                .max_hz(s.max_hz);
            match conn.subscribe(s.topic, options.clone()) {
                Ok(_) => {}
                Err(err @ modelcast_hub::Error::InvalidMaxHz(_)) => {
                    reply_error(app, conn, ErrorCode::InvalidMessage, err.to_string(), s.id);
                }
                Err(err @ modelcast_hub::Error::FilterTooLarge { .. }) => {
                    let message = format!("filter.model_ids: {err} (MODELCAST_MAX_FILTER_IDS)");
                    reply_error(app, conn, ErrorCode::InvalidMessage, message, s.id);
                }
                Err(modelcast_hub::Error::Behind { topic, .. }) => {
                    subscribe_when_caught_up(app, conn, topic, options);
                }
                Err(_) => {} // closed meanwhile
            }
        }
        ClientMessage::Unsubscribe(u) => {
            if conn.unsubscribe(u.topic) {
                let _ = conn.send(&ServerMessage::Unsubscribed(modelcast_protocol::Unsubscribed {
                    topic: u.topic,
                    request_id: u.id,
                }));
            } else {
                reply_error(
                    app,
                    conn,
                    ErrorCode::NotSubscribed,
                    format!("not subscribed to {}", u.topic),
                    u.id,
                );
            }
        }
        ClientMessage::Ping(p) => {
            let _ = conn.send(&ServerMessage::Pong(Pong {
                request_id: p.id,
                timestamp: chrono::Utc::now(),
            }));
        }
        other => reply_error(
            app,
            conn,
            ErrorCode::UnknownAction,
            "unsupported action".into(),
            other.request_id().cloned(),
        ),
    }
}
