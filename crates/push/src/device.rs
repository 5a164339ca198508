//! A user's registered devices: what a registration request says (a browser's
//! `PushSubscription`, an FCM registration token or an APNs device token), checked, and the
//! record kept of it. A leaf.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::webpush::UaKeys;

/// Where a device is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A browser: its push service's endpoint and its keys (base64url).
    Web {
        /// The push service URL the browser gave (`https://`).
        endpoint: String,
        /// The browser's P-256 public key.
        p256dh: String,
        /// The browser's auth secret.
        auth: String,
    },
    /// An Android (or other FCM) app: its registration token.
    Fcm {
        /// The FCM registration token.
        token: String,
    },
    /// An iOS app: its APNs device token (hex).
    Apns {
        /// The APNs device token.
        token: String,
    },
}

/// One registered device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// A stable id: a digest of where it is reached (the same browser registering again is
    /// the same device).
    pub id: String,
    /// Where it is reached.
    #[serde(flatten)]
    pub target: Target,
    /// Only these message types (`None`: every type push sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// The user's roles when it registered (what role audiences it may receive).
    #[serde(default)]
    pub roles: Vec<String>,
    /// When it registered (Unix seconds).
    pub registered: i64,
}

/// A registration request: one of `endpoint`+`keys`, `fcm_token`, `apns_token`, and
/// optionally the types wanted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// A browser's push endpoint.
    pub endpoint: Option<String>,
    /// A browser's keys.
    pub keys: Option<Keys>,
    /// The browser's `expirationTime` (ignored: the push service says when it is gone).
    #[serde(rename = "expirationTime")]
    pub expiration_time: Option<serde_json::Value>,
    /// An FCM registration token.
    pub fcm_token: Option<String>,
    /// An APNs device token.
    pub apns_token: Option<String>,
    /// Only these message types.
    pub types: Option<Vec<String>>,
}

/// A browser's subscription keys.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Keys {
    /// Its P-256 public key (base64url).
    pub p256dh: String,
    /// Its auth secret (base64url).
    pub auth: String,
}

/// What is wrong with a registration: the field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field (`endpoint`, `keys.p256dh`, …).
    pub field: String,
    /// Why.
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid { field: field.to_owned(), message: message.into() }
}

/// What a registration may name, given the server's settings.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    /// `http://` endpoints on loopback are allowed (tests only).
    pub insecure_endpoints: bool,
    /// The message types push sends (a device may narrow them, not widen).
    pub types: &'a [String],
    /// Web Push is configured (VAPID keys).
    pub web: bool,
    /// FCM is configured.
    pub fcm: bool,
    /// APNs is configured.
    pub apns: bool,
}

impl Registration {
    /// The device this registration names, for a user holding `roles`, or the first problem.
    pub fn device(
        self,
        rules: &Rules<'_>,
        roles: Vec<String>,
        now: i64,
    ) -> Result<Device, Invalid> {
        let target = match (&self.endpoint, &self.fcm_token, &self.apns_token) {
            (Some(endpoint), None, None) => web_target(endpoint, self.keys.as_ref(), rules)?,
            (None, Some(token), None) => {
                if !rules.fcm {
                    return Err(invalid(
                        "fcm_token",
                        "FCM is not configured on this server (MODELCAST_FCM_SERVICE_ACCOUNT)",
                    ));
                }
                check_token("fcm_token", token, |c| c.is_ascii_graphic())?;
                Target::Fcm { token: token.clone() }
            }
            (None, None, Some(token)) => {
                if !rules.apns {
                    return Err(invalid(
                        "apns_token",
                        "APNs is not configured on this server (MODELCAST_APNS_KEY)",
                    ));
                }
                check_token("apns_token", token, |c| c.is_ascii_hexdigit())?;
                Target::Apns { token: token.to_ascii_lowercase() }
            }
            _ => {
                return Err(invalid(
                    "endpoint",
                    "give exactly one of: a browser's PushSubscription (endpoint and keys), fcm_token, apns_token",
                ));
            }
        };
        let unknown = self.types.iter().flatten().find(|t| !rules.types.contains(t));
        if let Some(unknown) = unknown {
            return Err(invalid(
                "types",
                format!(
                    "`{unknown}` is not pushed here; MODELCAST_PUSH_TYPES: {}",
                    rules.types.join(", ")
                ),
            ));
        }
        Ok(Device { id: device_id(&target), target, types: self.types, roles, registered: now })
    }
}

fn web_target(endpoint: &str, keys: Option<&Keys>, rules: &Rules<'_>) -> Result<Target, Invalid> {
    if !rules.web {
        return Err(invalid(
            "endpoint",
            "Web Push is not configured on this server (MODELCAST_VAPID_PRIVATE_KEY)",
        ));
    }
    if endpoint.len() > 2048 {
        return Err(invalid("endpoint", "longer than 2,048 characters"));
    }
    let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"];
    let allowed = endpoint.starts_with("https://")
        || (rules.insecure_endpoints && loopback.iter().any(|p| endpoint.starts_with(p)));
    if !allowed || hyper::Uri::try_from(endpoint).is_err() {
        return Err(invalid("endpoint", "must be an https:// URL (a push service's)"));
    }
    let keys = keys
        .ok_or_else(|| invalid("keys", "a browser subscription has keys.p256dh and keys.auth"))?;
    UaKeys::parse(&keys.p256dh, &keys.auth).map_err(|e| {
        let text = e.to_string();
        let (field, message) = text.split_once(": ").unwrap_or(("keys", &text));
        invalid(field, message)
    })?;
    Ok(Target::Web {
        endpoint: endpoint.to_owned(),
        p256dh: keys.p256dh.clone(),
        auth: keys.auth.clone(),
    })
}

fn check_token(field: &str, token: &str, ok: impl Fn(char) -> bool) -> Result<(), Invalid> {
    if token.is_empty() || token.len() > 4096 || !token.chars().all(ok) {
        return Err(invalid(field, "not a device token"));
    }
    Ok(())
}

/// A device's id: 16 bytes of SHA-256 of where it is reached, base64url.
fn device_id(target: &Target) -> String {
    let key = match target {
        Target::Web { endpoint, .. } => format!("web {endpoint}"),
        Target::Fcm { token } => format!("fcm {token}"),
        Target::Apns { token } => format!("apns {token}"),
    };
    URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(key.as_bytes())[..16])
}
