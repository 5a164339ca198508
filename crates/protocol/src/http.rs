//! [`ApiErrorCode`]: why an HTTP request was refused — the `error.code` of every error answer
//! of the HTTP API (`{"error": {"code", "message", …}}`), with its status. Declared once here:
//! the server answers with these, and the OpenAPI document lists them (`schema::openapi`), so
//! a client can match on a code it read in the spec.

macro_rules! api_error_codes {
    ($( $(#[doc = $doc:literal])+ $variant:ident = ($code:literal, $status:literal), )+) => {
        /// Why an HTTP request was refused: the `error.code` of an error answer.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ApiErrorCode {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl ApiErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ApiErrorCode] = &[$(ApiErrorCode::$variant),+];

            /// The code as it appears in `error.code`.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)+ }
            }

            /// The HTTP status it is answered with.
            pub fn status(self) -> u16 {
                match self { $(Self::$variant => $status,)+ }
            }

            /// What it means and what to do, for people (the OpenAPI description).
            pub fn description(self) -> &'static str {
                match self { $(Self::$variant => concat!($($doc),+),)+ }
            }
        }
    };
}

api_error_codes! {
    /// The body is not JSON.
    InvalidJson = ("invalid_json", 400),
    /// A message (or its audience) has problems: `errors` lists every one, with its field.
    InvalidMessage = ("invalid_message", 400),
    /// The request names no topic.
    MissingTopic = ("missing_topic", 400),
    /// No topic has that name.
    UnknownTopic = ("unknown_topic", 400),
    /// `limit` is not a whole number in range.
    InvalidLimit = ("invalid_limit", 400),
    /// `after` is not a page's `next`.
    InvalidCursor = ("invalid_cursor", 400),
    /// The path does not name what the route needs (e.g. a topic and a key).
    InvalidPath = ("invalid_path", 400),
    /// The `user`/`role` parameters are not a valid audience.
    InvalidAudience = ("invalid_audience", 400),
    /// `Idempotency-Key` is not 1 to 200 printable ASCII characters.
    InvalidIdempotencyKey = ("invalid_idempotency_key", 400),
    /// Reading the body failed.
    BadBody = ("bad_body", 400),
    /// A field of the request (its body or query) is missing or wrong: `field` names it.
    InvalidRequest = ("invalid_request", 400),
    /// An `OPTIONS` request without an `Origin`: not a CORS preflight.
    NotAPreflight = ("not_a_preflight", 400),
    /// A WebSocket connection id is not 1 to 128 of `[A-Za-z0-9._-]`.
    InvalidConnectionId = ("invalid_connection_id", 400),
    /// `Sec-WebSocket-Key` is missing, repeated or not 16 bytes in base64.
    InvalidWebsocketKey = ("invalid_websocket_key", 400),
    /// `Sec-WebSocket-Version` is missing or repeated.
    InvalidWebsocketVersion = ("invalid_websocket_version", 400),
    /// A credential is needed (`WWW-Authenticate: Bearer`), or the token sent is not valid
    /// (expired, another audience or issuer, a bad signature): get a new one.
    Unauthorized = ("unauthorized", 401),
    /// The credential is valid but does not allow this (a wrong key, a role it lacks).
    Forbidden = ("forbidden", 403),
    /// A browser page from an origin that may not publish (`MODELCAST_ALLOWED_ORIGINS`).
    ForbiddenOrigin = ("forbidden_origin", 403),
    /// A browser page from an origin that may not connect (`MODELCAST_ALLOWED_ORIGINS`).
    OriginNotAllowed = ("origin_not_allowed", 403),
    /// No route for that path.
    NotFound = ("not_found", 404),
    /// No state for that key.
    NoState = ("no_state", 404),
    /// Push is not configured on this server (no `MODELCAST_VAPID_PRIVATE_KEY`,
    /// `MODELCAST_FCM_SERVICE_ACCOUNT` or `MODELCAST_APNS_KEY`), or not for this kind of device.
    PushOff = ("push_off", 404),
    /// The device registration names a bad field (`errors` says which and why).
    InvalidRegistration = ("invalid_registration", 400),
    /// The route does not take that method (`Allow` lists the ones it does).
    MethodNotAllowed = ("method_not_allowed", 405),
    /// The body did not arrive within `MODELCAST_BODY_TIMEOUT`.
    BodyTimeout = ("body_timeout", 408),
    /// The `Idempotency-Key` names another request (another body) within its 10 minutes:
    /// nothing was published. Use a new key for a new request.
    IdempotencyKeyReused = ("idempotency_key_reused", 409),
    /// The user has `MODELCAST_PUSH_MAX_DEVICES` devices already: remove one first.
    TooManyDevices = ("too_many_devices", 409),
    /// The body (or its declared `Content-Length`) is larger than
    /// `MODELCAST_MAX_PUBLISH_BYTES`.
    PayloadTooLarge = ("payload_too_large", 413),
    /// The WebSocket endpoint answers WebSocket upgrades only.
    WebsocketRequired = ("websocket_required", 426),
    /// A WebSocket version other than 13 (`Sec-WebSocket-Version: 13` names the one spoken).
    UnsupportedWebsocketVersion = ("unsupported_websocket_version", 426),
    /// Too many connection attempts from this address: retry after `Retry-After`.
    RateLimited = ("rate_limited", 429),
    /// Too many HTTP connections at once (`MODELCAST_MAX_HTTP_CONNECTIONS`): retry after
    /// `Retry-After`.
    ServerBusy = ("server_busy", 503),
    /// The server holds `WEBSOCKET_MAX_CONNECTIONS` connections: retry after `Retry-After`.
    TooManyConnections = ("too_many_connections", 503),
    /// This address holds its share of connections (`MODELCAST_MAX_CONNECTIONS_PER_IP`, or
    /// `MODELCAST_MAX_HTTP_CONNECTIONS_PER_IP`): retry after `Retry-After`.
    TooManyConnectionsFromAddress = ("too_many_connections_from_address", 503),
    /// The server is shutting down: use another node, or retry after `Retry-After`.
    ShuttingDown = ("shutting_down", 503),
    /// The message store (Redis, in a cluster) cannot take messages now; nothing was
    /// sequenced locally. Retry after `Retry-After`, with the same `Idempotency-Key`.
    Unavailable = ("unavailable", 503),
    /// The server holds `MODELCAST_IDEMPOTENCY_KEYS` unexpired idempotency keys; nothing was
    /// published. Retry after `Retry-After`.
    IdempotencyKeysFull = ("idempotency_keys_full", 503),
    /// The server holds `MODELCAST_MAX_REVOCATIONS` unexpired revocations; nothing was
    /// revoked. Retry once some expire, or raise the limit.
    RevocationsFull = ("revocations_full", 503),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_have_an_error_status() {
        let mut seen = std::collections::HashSet::new();
        for code in ApiErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            assert!(code.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!((400..600).contains(&code.status()), "{code:?}");
            assert!(!code.description().is_empty());
        }
    }
}
