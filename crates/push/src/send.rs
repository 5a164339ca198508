//! Sending one push: Web Push (an encrypted body and a VAPID header to the browser's push
//! service), FCM HTTP v1 (an OAuth2 access token from the service account, cached until it
//! expires) and APNs (an ES256 provider token, HTTP/2 over TLS) — each answer read as an
//! [`Outcome`]. One HTTPS client (rustls, the public roots plus `MODELCAST_PUSH_CA`) for all.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use p256::ecdsa::SigningKey;
use serde::Deserialize;

use crate::device::Target;
use crate::webpush::{UaKeys, Vapid, encrypt, es256_jwt};

/// What a push service said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Accepted.
    Sent,
    /// The device is gone (404/410, FCM `UNREGISTERED`, APNs `Unregistered`): forget it.
    Gone,
    /// Try again later (429, 5xx, no connection), after the service's `Retry-After` if given.
    Retry(Option<Duration>, String),
    /// Refused for good (another 4xx: a payload too large, a bad token); the reason.
    Failed(String),
}

/// Firebase Cloud Messaging: the service account and where its endpoints are.
#[derive(Debug, Clone, Deserialize)]
pub struct FcmAccount {
    /// The project that owns the app.
    pub project_id: String,
    /// The service account's e-mail (the JWT's issuer).
    pub client_email: String,
    /// The service account's RSA private key (PEM).
    pub private_key: String,
    /// Where access tokens come from.
    #[serde(default = "google_token_uri")]
    pub token_uri: String,
}

fn google_token_uri() -> String {
    "https://oauth2.googleapis.com/token".to_owned()
}

/// Apple Push Notification service, token-based.
#[derive(Clone)]
pub struct Apns {
    /// The `.p8` key, parsed.
    pub(crate) key: SigningKey,
    /// Its key id (the JWT's `kid`).
    pub key_id: String,
    /// The developer team (the JWT's `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com` (or the sandbox, or a stand-in).
    pub url: String,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns").field("key_id", &self.key_id).field("topic", &self.topic).finish()
    }
}

impl Apns {
    /// From the `.p8` key (PEM PKCS#8 P-256) and the identifiers.
    pub fn new(
        p8: &str,
        key_id: &str,
        team_id: &str,
        topic: &str,
        url: &str,
    ) -> Result<Self, String> {
        use p256::pkcs8::DecodePrivateKey as _;
        let key = SigningKey::from_pkcs8_pem(p8)
            .map_err(|_| "not a PEM PKCS#8 P-256 key (.p8)".to_owned())?;
        Ok(Self {
            key,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            topic: topic.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
        })
    }
}

/// One push to send.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// The frame (JSON), as the WebSocket carries it.
    pub(crate) payload: Bytes,
    /// Seconds the service may hold it for an unreachable device.
    pub(crate) ttl: u64,
    /// `high` for failures and critical alerts, else `normal`.
    pub(crate) high: bool,
    /// One per state key: a device shows the newest of a download, not twenty.
    pub(crate) collapse: Option<String>,
    /// A line for native notifications (APNs alert).
    pub(crate) title: String,
}

/// A bearer token and when it stops being reused, once fetched or made.
type Cached = Mutex<Option<(String, Instant)>>;

/// The HTTPS client and the credentials of every configured service.
pub(crate) struct Sender {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub(crate) vapid: Option<Vapid>,
    fcm: Option<(FcmAccount, String, Cached)>,
    apns: Option<(Apns, Cached)>,
}

impl Sender {
    /// A client trusting the public roots and `extra_ca` (PEM), for every service given.
    /// `fcm_base` is FCM's API base (`https://fcm.googleapis.com`).
    #[allow(deprecated)] // ring lacks post-quantum key exchange, which is all rustls warns of
    pub(crate) fn new(
        vapid: Option<Vapid>,
        fcm: Option<(FcmAccount, String)>,
        apns: Option<Apns>,
        extra_ca: Option<&[u8]>,
    ) -> Result<Self, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore { roots: webpki_roots_list() };
        if let Some(pem) = extra_ca {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("MODELCAST_PUSH_CA: {e}"))?;
                roots.add(cert).map_err(|e| format!("MODELCAST_PUSH_CA: {e}"))?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(Self {
            client,
            vapid,
            fcm: fcm.map(|(account, base)| (account, base, Mutex::new(None))),
            apns: apns.map(|apns| (apns, Mutex::new(None))),
        })
    }

    /// Sends `job` to `target` within 30 seconds.
    pub(crate) async fn send(&self, target: &Target, job: &Job) -> Outcome {
        let sending = async {
            match target {
                Target::Web { endpoint, p256dh, auth } => {
                    self.web(endpoint, p256dh, auth, job).await
                }
                Target::Fcm { token } => self.fcm(token, job).await,
                Target::Apns { token } => self.apns(token, job).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), sending).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry(None, "no answer within 30 s".into()),
        }
    }

    async fn web(&self, endpoint: &str, p256dh: &str, auth: &str, job: &Job) -> Outcome {
        let Some(vapid) = &self.vapid else {
            return Outcome::Failed("Web Push is not configured".into());
        };
        let body = match UaKeys::parse(p256dh, auth).and_then(|keys| encrypt(&keys, &job.payload)) {
            Ok(body) => body,
            Err(err) => return Outcome::Failed(err.to_string()),
        };
        let Some(origin) = origin(endpoint) else { return Outcome::Gone };
        let mut request = hyper::Request::post(endpoint)
            .header("ttl", job.ttl.to_string())
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("urgency", if job.high { "high" } else { "normal" })
            .header("authorization", vapid.authorization(&origin, unix_now()));
        if let Some(topic) = &job.collapse {
            request = request.header("topic", topic.as_str());
        }
        self.exchange(request, Bytes::from(body), |status, _| match status {
            404 | 410 => Some(Outcome::Gone),
            _ => None,
        })
        .await
    }

    async fn fcm(&self, token: &str, job: &Job) -> Outcome {
        let Some((account, base, cache)) = &self.fcm else {
            return Outcome::Failed("FCM is not configured".into());
        };
        let access = match self.fcm_token(account, cache).await {
            Ok(access) => access,
            Err(outcome) => return outcome,
        };
        let frame = String::from_utf8_lossy(&job.payload).into_owned();
        let mut android = serde_json::json!({
            "priority": if job.high { "high" } else { "normal" },
            "ttl": format!("{}s", job.ttl),
        });
        if let Some(collapse) = &job.collapse {
            android["collapse_key"] = collapse.clone().into();
        }
        let body = serde_json::json!({"message": {"token": token, "data": {"frame": frame}, "android": android}});
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            base.trim_end_matches('/'),
            account.project_id
        );
        let request = hyper::Request::post(url)
            .header("authorization", format!("Bearer {access}"))
            .header("content-type", "application/json");
        self.exchange(request, Bytes::from(body.to_string()), |status, body| {
            let unregistered = body.contains("UNREGISTERED") || body.contains("NOT_FOUND");
            match status {
                404 | 410 => Some(Outcome::Gone),
                400 if unregistered => Some(Outcome::Gone),
                401 => {
                    // The access token was refused: fetch another next time.
                    *cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    Some(Outcome::Retry(None, "FCM refused the access token".into()))
                }
                _ => None,
            }
        })
        .await
    }

    /// FCM's access token: the cached one, or a new one for a JWT-bearer assertion signed
    /// with the service account's key (RS256).
    async fn fcm_token(&self, account: &FcmAccount, cache: &Cached) -> Result<String, Outcome> {
        if let Some((token, until)) = cache.lock().unwrap_or_else(|e| e.into_inner()).clone()
            && Instant::now() < until
        {
            return Ok(token);
        }
        let now = unix_now();
        let claims = serde_json::json!({
            "iss": account.client_email,
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
            "aud": account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| Outcome::Failed(format!("the FCM service account's key: {e}")))?;
        let assertion = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .map_err(|e| Outcome::Failed(format!("signing the FCM assertion: {e}")))?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let request = hyper::Request::post(&account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Outcome::Failed(e.to_string()))?;
        let (status, body) = self.round_trip(request).await.map_err(|e| Outcome::Retry(None, e))?;
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            expires_in: u64,
        }
        let token: Token = match (status, serde_json::from_str(&body)) {
            (200, Ok(token)) => token,
            (status, _) if status >= 500 || status == 429 => {
                return Err(Outcome::Retry(
                    None,
                    format!("FCM's token endpoint answered {status}"),
                ));
            }
            (status, _) => {
                return Err(Outcome::Failed(format!(
                    "FCM's token endpoint answered {status}: {body}"
                )));
            }
        };
        let until = Instant::now() + Duration::from_secs(token.expires_in.saturating_sub(60));
        *cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((token.access_token.clone(), until));
        Ok(token.access_token)
    }

    async fn apns(&self, token: &str, job: &Job) -> Outcome {
        let Some((apns, cache)) = &self.apns else {
            return Outcome::Failed("APNs is not configured".into());
        };
        let bearer = {
            let mut cached = cache.lock().unwrap_or_else(|e| e.into_inner());
            match cached.clone() {
                Some((jwt, until)) if Instant::now() < until => jwt,
                _ => {
                    let header = serde_json::json!({"alg": "ES256", "kid": apns.key_id});
                    let claims = serde_json::json!({"iss": apns.team_id, "iat": unix_now()});
                    let jwt = es256_jwt(&apns.key, &header, &claims);
                    // Apple refuses tokens older than an hour and renewed more often than
                    // every twenty minutes.
                    *cached = Some((jwt.clone(), Instant::now() + Duration::from_secs(50 * 60)));
                    jwt
                }
            }
        };
        let frame: serde_json::Value = serde_json::from_slice(&job.payload).unwrap_or_default();
        let body = serde_json::json!({"aps": {"alert": {"title": job.title}, "sound": "default"}, "frame": frame});
        let expiration = unix_now() + job.ttl;
        let mut request = hyper::Request::post(format!("{}/3/device/{token}", apns.url))
            .version(hyper::Version::HTTP_2)
            .header("authorization", format!("bearer {bearer}"))
            .header("apns-topic", apns.topic.as_str())
            .header("apns-push-type", "alert")
            .header("apns-priority", if job.high { "10" } else { "5" })
            .header("apns-expiration", expiration.to_string());
        if let Some(collapse) = &job.collapse {
            request = request.header("apns-collapse-id", collapse.as_str());
        }
        self.exchange(request, Bytes::from(body.to_string()), |status, body| match status {
            410 => Some(Outcome::Gone),
            400 if body.contains("BadDeviceToken") => Some(Outcome::Gone),
            403 if body.contains("ExpiredProviderToken") => {
                *cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Some(Outcome::Retry(None, "APNs: the provider token expired".into()))
            }
            _ => None,
        })
        .await
    }

    /// Sends `request` with `body`; the service's answer as an outcome (`special` first, then
    /// 2xx sent, 429/5xx retry with `Retry-After`, other 4xx failed).
    async fn exchange(
        &self,
        request: hyper::http::request::Builder,
        body: Bytes,
        special: impl Fn(u16, &str) -> Option<Outcome>,
    ) -> Outcome {
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(err) => return Outcome::Failed(err.to_string()),
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(err) => return Outcome::Retry(None, format!("no connection: {err}")),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match response.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        if let Some(outcome) = special(status, &text) {
            return outcome;
        }
        match status {
            200..=299 => Outcome::Sent,
            429 | 500..=599 => Outcome::Retry(retry_after, format!("{status}")),
            _ => {
                Outcome::Failed(format!("{status} {}", text.chars().take(200).collect::<String>()))
            }
        }
    }

    async fn round_trip(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(u16, String), String> {
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The public roots (webpki-roots).
fn webpki_roots_list() -> Vec<rustls::pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.to_vec()
}

/// `scheme://host[:port]` of `url` (VAPID's audience).
fn origin(url: &str) -> Option<String> {
    let uri = hyper::Uri::try_from(url).ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?.as_str()))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
