//! Push wired into the server: started from its settings (`push_settings.rs`) with the
//! registrations' store (a file under `MODELCAST_DATA_DIR` on one node, Redis on a cluster)
//! and who is online (`presence.rs`); the hub's tap that offers each pushed type's messages
//! (with its rule: a download that finished or failed, an alert of level error or critical,
//! …); and the endpoints `/api/push/…`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use modelcast_hub::{Tap, Tapped};
use modelcast_protocol::{ApiErrorCode, Topic};
use modelcast_push::{Device, FileStore, Message, Pusher, Registration, Registry, Store};
use modelcast_redis::{Kv, RedisEngine};
use serde_json::{Value, json};

use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::presence::Presence;
use crate::response::json_response;
use crate::state::App;

/// Starts push (when its settings are given) and hangs it on the hub.
pub(crate) fn start(
    config: &Config,
    hub: &modelcast_hub::Hub,
    engine: Option<&Arc<RedisEngine>>,
    presence: Arc<Presence>,
) -> Result<Option<Pusher>, String> {
    let Some(settings) = crate::push_settings::settings(config)? else { return Ok(None) };
    let store: Arc<dyn Store> = match engine {
        Some(engine) => Arc::new(RedisStore(engine.kv())),
        None => {
            let dir = crate::push_settings::data_dir(config).join("push");
            Arc::new(FileStore::open(&dir).map_err(|e| format!("MODELCAST_DATA_DIR: {e}"))?)
        }
    };
    // The rule of `Security::may_subscribe`, for a device's roles.
    let topic_roles: HashMap<Topic, Vec<String>> = config.topic_roles.iter().cloned().collect();
    let may_read: modelcast_push::MayRead = Arc::new(move |topic: &str, roles: &[String]| {
        let Ok(topic) = topic.parse::<Topic>() else { return false };
        topic_roles.get(&topic).is_none_or(|allowed| roles.iter().any(|r| allowed.contains(r)))
    });
    let pusher = Pusher::start(settings, store, presence, may_read)?;
    hub.set_tap(Arc::new(PushTap { pusher: pusher.clone() }));
    tracing::info!(types = ?config.push_types, "push is on");
    Ok(Some(pusher))
}

/// Registrations in Redis, shared by a cluster's nodes (one JSON per device).
struct RedisStore(Kv);

impl Store for RedisStore {
    fn put(&self, user: &str, device: Device, max: usize) -> BoxFuture<'_, Result<bool, String>> {
        let (user, id) = (user.to_owned(), device.id.clone());
        Box::pin(async move {
            let json = serde_json::to_string(&device).map_err(|e| e.to_string())?;
            self.0.put_device(&user, &id, &json, max).await.map_err(|e| e.to_string())
        })
    }

    fn remove(&self, user: &str, id: &str) -> BoxFuture<'_, Result<bool, String>> {
        let (user, id) = (user.to_owned(), id.to_owned());
        Box::pin(async move { self.0.remove_device(&user, &id).await.map_err(|e| e.to_string()) })
    }

    fn all(&self) -> BoxFuture<'_, Result<Registry, String>> {
        Box::pin(async move {
            let stored = self.0.devices().await.map_err(|e| e.to_string())?;
            let mut registry = Registry::new();
            for (user, devices) in stored {
                let devices = devices
                    .iter()
                    .filter_map(|(_, json)| serde_json::from_str(json).ok())
                    .collect();
                registry.insert(user, devices);
            }
            Ok(registry)
        })
    }

    fn claim(&self, id: &str) -> BoxFuture<'_, Result<bool, String>> {
        let id = id.to_owned();
        Box::pin(async move { self.0.claim(&id).await.map_err(|e| e.to_string()) })
    }
}

/// Hands push the messages of the pushed types that their rule passes.
struct PushTap {
    pusher: Pusher,
}

impl Tap for PushTap {
    fn sequenced(&self, message: Tapped<'_>) {
        // The type first, without parsing the frame: most messages are not pushed.
        let type_name = message.type_name;
        if !self.pusher.pushes(type_name) || !self.pusher.has_devices() {
            return;
        }
        let Ok(frame) = serde_json::from_str::<Value>(message.frame.as_str()) else { return };
        let Some(high) = worth_pushing(type_name, &frame["data"]) else { return };
        let audience = message.audience.map(|a| {
            let names = |keys: &[std::sync::Arc<str>]| keys.iter().map(|k| k.to_string()).collect();
            (names(a.user_names()), names(a.role_names()))
        });
        self.pusher.offer(Message {
            id: format!("{}:{}:{}", message.topic, message.epoch, message.seq),
            topic: message.topic.to_string(),
            type_name: type_name.to_owned(),
            frame: Bytes::copy_from_slice(message.frame.as_bytes()),
            audience,
            key: message.key.map(str::to_owned),
            high,
        });
    }
}

/// Whether a message of `type_name` with `data` is pushed, and whether urgently: the rules of
/// the default types (MODELCAST_PUSH_TYPES' help); any other type always, not urgently.
fn worth_pushing(type_name: &str, data: &Value) -> Option<bool> {
    let field = |name: &str| data.get(name).and_then(Value::as_str).unwrap_or_default();
    match type_name {
        "download_status_change" => match field("new_status") {
            "completed" => Some(false),
            "failed" => Some(true),
            _ => None,
        },
        "alert" => match field("level") {
            "critical" => Some(true),
            "error" => Some(false),
            _ => None,
        },
        "health_monitoring_alert" => (data.get("is_healthy") == Some(&Value::Bool(false)))
            .then(|| field("health_status") == "critical"),
        "corruption_detection" => Some(matches!(field("severity"), "high" | "critical")),
        "model_availability_change" => match field("new_availability") {
            "available" | "loaded" => Some(false),
            "unavailable" | "corrupted" | "missing" => Some(true),
            _ => None,
        },
        _ => Some(false),
    }
}

/// Which `/api/push/…` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/api/push/vapid-public-key`.
    VapidKey,
    /// `/api/push/subscriptions`.
    Devices,
}

/// `/api/push/…`, readable by pages on the allowed origins (`MODELCAST_ALLOWED_ORIGINS`, any
/// when none is set: a registration needs the user's token, which only the user's page holds),
/// preflights answered.
pub(crate) async fn handle(
    app: &Arc<App>,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> ApiResult {
    let origin = req.headers().get(hyper::header::ORIGIN).cloned();
    if origin.is_some() && !app.security.origin_allowed(req.headers()) {
        let message = "this origin is not in MODELCAST_ALLOWED_ORIGINS";
        return Err(ApiError::new(ApiErrorCode::ForbiddenOrigin, message));
    }
    let resp = match endpoint {
        _ if req.method() == Method::OPTIONS => preflight(endpoint),
        Endpoint::VapidKey => vapid_public_key(app),
        Endpoint::Devices => subscriptions(app, req).await,
    };
    let mut resp = resp.unwrap_or_else(ApiError::into_response);
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(hyper::header::VARY, hyper::header::HeaderValue::from_static("Origin"));
    }
    Ok(resp)
}

/// A CORS preflight's answer: the endpoint's methods, with a token and a JSON body.
fn preflight(endpoint: Endpoint) -> ApiResult {
    use hyper::header::{
        ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_MAX_AGE,
        HeaderValue,
    };
    let methods = match endpoint {
        Endpoint::VapidKey => "GET",
        Endpoint::Devices => "GET, POST, DELETE",
    };
    let mut resp = hyper::Response::new(crate::response::Body::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type, authorization"));
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    Ok(resp)
}

/// `/api/push/vapid-public-key`.
fn vapid_public_key(app: &App) -> ApiResult {
    let key = app.push.as_ref().and_then(Pusher::vapid_public_key).ok_or_else(push_off)?;
    Ok(json_response(StatusCode::OK, &json!({"key": key})))
}

fn push_off() -> ApiError {
    ApiError::new(
        ApiErrorCode::PushOff,
        "push is not configured on this server (MODELCAST_VAPID_PRIVATE_KEY, MODELCAST_FCM_SERVICE_ACCOUNT or MODELCAST_APNS_KEY)",
    )
}

/// `/api/push/subscriptions`: register (POST), list (GET), remove (DELETE) the caller's
/// devices. The caller is a user: a valid JWT as `Authorization: Bearer`.
async fn subscriptions(app: &Arc<App>, req: Request<Incoming>) -> ApiResult {
    let pusher = app.push.clone().ok_or_else(push_off)?;
    let identity = user_of(app, req.headers())?;
    let method = req.method().clone();
    if method == Method::GET {
        let devices = pusher.devices(&identity.subject).await.map_err(store_down)?;
        let devices: Vec<Value> = devices.iter().map(public).collect();
        return Ok(json_response(StatusCode::OK, &json!({"devices": devices})));
    }
    let body = crate::publish::read_body(app, req).await?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(ApiErrorCode::InvalidJson, format!("the body is not JSON: {e}"))
    })?;
    if method == Method::DELETE {
        return remove(&pusher, &identity.subject, &value).await;
    }
    let registration: Registration = serde_json::from_value(value).map_err(|e| {
        ApiError::new(ApiErrorCode::InvalidRegistration, e.to_string())
            .with("errors", json!([{"field": "", "message": e.to_string()}]))
    })?;
    match pusher.register(&identity.subject, identity.roles.clone(), registration).await {
        Ok(device) => Ok(json_response(StatusCode::CREATED, &public(&device))),
        Err(modelcast_push::RegisterError::Invalid(invalid)) => {
            Err(ApiError::new(ApiErrorCode::InvalidRegistration, invalid.to_string())
                .with("errors", json!([{"field": invalid.field, "message": invalid.message}])))
        }
        Err(modelcast_push::RegisterError::TooMany(max)) => Err(ApiError::new(
            ApiErrorCode::TooManyDevices,
            format!(
                "at most {max} devices per user (MODELCAST_PUSH_MAX_DEVICES): remove one first"
            ),
        )),
        Err(modelcast_push::RegisterError::Store(err)) => Err(store_down(err)),
    }
}

/// `DELETE`: the device named by `{id}`, `{endpoint}`, `{fcm_token}` or `{apns_token}`.
async fn remove(pusher: &Pusher, user: &str, body: &Value) -> ApiResult {
    let devices = pusher.devices(user).await.map_err(store_down)?;
    let text = |name: &str| body.get(name).and_then(Value::as_str);
    let found = devices.iter().find(|d| {
        let target = serde_json::to_value(&d.target).unwrap_or_default();
        text("id") == Some(&d.id)
            || (text("endpoint").is_some() && target.get("endpoint").and_then(Value::as_str) == text("endpoint"))
            || (text("fcm_token").is_some() && matches!(&d.target, modelcast_push::Target::Fcm { token } if Some(token.as_str()) == text("fcm_token")))
            || (text("apns_token").is_some() && matches!(&d.target, modelcast_push::Target::Apns { token } if Some(token.as_str()) == text("apns_token").map(str::to_ascii_lowercase).as_deref()))
    });
    let Some(device) = found else {
        return Err(ApiError::new(ApiErrorCode::NotFound, "no such device of yours"));
    };
    pusher.unregister(user, &device.id).await.map_err(store_down)?;
    let mut resp = hyper::Response::new(crate::response::Body::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// What a user may see of a device: no keys.
fn public(device: &Device) -> Value {
    let kind = match &device.target {
        modelcast_push::Target::Web { endpoint, .. } => {
            json!({"kind": "web", "endpoint": endpoint})
        }
        modelcast_push::Target::Fcm { .. } => json!({"kind": "fcm"}),
        modelcast_push::Target::Apns { .. } => json!({"kind": "apns"}),
    };
    let mut out = json!({"id": device.id, "types": device.types, "registered": device.registered});
    if let (Some(out), Some(kind)) = (out.as_object_mut(), kind.as_object()) {
        out.extend(kind.clone());
    }
    out
}

fn store_down(err: String) -> ApiError {
    ApiError::new(ApiErrorCode::Unavailable, format!("the registrations store: {err}"))
        .retry_after(1)
}

/// The user a push request is for: a valid JWT (never a key or an anonymous caller).
fn user_of(app: &App, headers: &hyper::HeaderMap) -> Result<crate::security::Identity, ApiError> {
    let bearer = crate::security::bearer(headers);
    let unauthorized = |why: String| ApiError::unauthorized(why);
    let Some(token) = bearer else {
        return Err(unauthorized(
            "push registrations are a user's: send the user's JWT as Authorization: Bearer".into(),
        ));
    };
    if !app.security.auth_required() {
        return Err(unauthorized(
            "push registrations need users: configure MODELCAST_JWT_SECRET or MODELCAST_JWT_PUBLIC_KEY".into(),
        ));
    }
    app.security.verify(token).map_err(unauthorized)
}
