//! Push's stand-ins for the tests: the Web Push service (`tests/push/webpush_service.py`, an
//! independent implementation in Python that verifies VAPID and decrypts), an FCM token and
//! send endpoint, and an APNs endpoint (HTTP/2 over TLS) — each checking what the real one
//! checks and recording what it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::cluster_util::free_port;
use crate::server_util::PATIENCE;

/// The Python with the stand-in's packages: `MODELCAST_PUSH_PYTHON`, or the venv `cargo xtask
/// test` makes (`target/push-venv`).
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MODELCAST_PUSH_PYTHON") {
        return python.into();
    }
    let venv = crate::root().join("target/push-venv/bin/python");
    assert!(
        venv.exists(),
        "the Web Push stand-in needs Python with tests/push/requirements.txt: run `cargo xtask \
         test` (it makes target/push-venv), or set MODELCAST_PUSH_PYTHON"
    );
    venv
}

/// The Web Push stand-in, on a free port.
#[derive(Debug)]
pub struct WebPushService {
    /// Its origin (`http://127.0.0.1:<port>`).
    pub origin: String,
    child: Child,
}

impl WebPushService {
    /// Starts it and waits until it listens.
    pub fn start() -> Self {
        let port = free_port();
        let mut child = Command::new(python())
            .arg(crate::root().join("tests/push/webpush_service.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the Web Push stand-in starts");
        let mut line = String::new();
        use std::io::BufRead as _;
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the stand-in says it is ready");
        assert_eq!(line.trim(), "ready");
        Self { origin: format!("http://127.0.0.1:{port}"), child }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let addr: SocketAddr = self.origin.trim_start_matches("http://").parse().unwrap();
        let (status, _, text) = crate::server_util::http_request_full(
            addr,
            method,
            path,
            &[],
            body.map(|b| b.to_string()),
        )
        .await
        .expect("the stand-in answers");
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// A new browser named `name`: its `PushSubscription` JSON.
    pub async fn browser(&self, name: &str) -> Value {
        self.call("POST", &format!("/subscribe/{name}"), Some(json!({}))).await
    }

    /// What the browser `name` received (decrypted payloads with headers; `error` entries
    /// for pushes the service refused, `answered` for scripted answers).
    pub async fn received(&self, name: &str) -> Vec<Value> {
        self.call("GET", &format!("/received/{name}"), None).await.as_array().cloned().unwrap()
    }

    /// The next `times` pushes to `name` are answered `status` (with `Retry-After`).
    pub async fn behave(&self, name: &str, status: u16, retry_after: Option<u64>, times: u32) {
        let mut script = json!({"status": status, "times": times});
        if let Some(after) = retry_after {
            script["retry_after"] = after.into();
        }
        self.call("POST", &format!("/behave/{name}"), Some(script)).await;
    }

    /// Waits until `name` received `n` pushes (decrypted or refused); what it received.
    pub async fn wait_for(&self, name: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let received = self.received(name).await;
            if received.len() >= n {
                for r in &received {
                    assert!(r.get("error").is_none(), "the service refused a push: {r}");
                }
                return received;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} received {received:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WebPushService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an HTTP stand-in recorded: the requests it accepted.
pub type Recorded = Arc<Mutex<Vec<Value>>>;

/// FCM's OAuth token endpoint and send endpoint on one port: the assertion (RS256, verified
/// with the service account's public key: issuer, scope, audience) gets an access token; a send
/// with that token is recorded, one for another token is 401.
pub async fn fcm_stand_in(public_pem: Vec<u8>, email: String) -> (SocketAddr, Recorded) {
    let recorded: Recorded = Arc::default();
    let record = recorded.clone();
    let addr = serve_http1(move |path, headers, body| {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public_pem).unwrap();
        let (record, email) = (record.clone(), email.clone());
        async move {
            if path == "/token" {
                let form: Vec<(String, String)> = form_pairs(&body);
                let assertion = form.iter().find(|(k, _)| k == "assertion").map(|(_, v)| v.clone());
                let grant = form.iter().find(|(k, _)| k == "grant_type").map(|(_, v)| v.as_str());
                if grant != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
                    return (400, json!({"error": "unsupported_grant_type"}));
                }
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
                validation.set_audience(&[format!("http://{}/token", headers.1)]);
                validation.set_issuer(&[email]);
                return match jsonwebtoken::decode::<Value>(&assertion.unwrap_or_default(), &key, &validation) {
                    Ok(t) if t.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging" => {
                        (200, json!({"access_token": "at-1", "expires_in": 3600, "token_type": "Bearer"}))
                    }
                    other => (401, json!({"error": format!("bad assertion: {other:?}")})),
                };
            }
            if headers.0.as_deref() != Some("Bearer at-1") {
                return (401, json!({"error": {"status": "UNAUTHENTICATED"}}));
            }
            let message: Value = serde_json::from_slice(&body).unwrap_or_default();
            record.lock().unwrap().push(json!({"path": path, "message": message["message"]}));
            (200, json!({"name": "projects/p/messages/1"}))
        }
    })
    .await;
    (addr, recorded)
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((percent_decode(k), percent_decode(v)))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/1.1 server on a free port answering with `handler(path, (authorization, host),
/// body) → (status, JSON)`.
async fn serve_http1<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(String, (Option<String>, String), Bytes) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (u16, Value)> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (status, body) = answer(req, handler).await;
                        Ok::<_, Infallible>(response(status, body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn answer<F, Fut>(req: hyper::Request<hyper::body::Incoming>, handler: F) -> (u16, Value)
where
    F: Fn(String, (Option<String>, String), Bytes) -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let path = req.uri().path().to_owned();
    let header =
        |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let auth = header("authorization");
    let host = header("host").unwrap_or_default();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    handler(path, (auth, host), body).await
}

fn response(status: u16, body: Value) -> hyper::Response<Full<Bytes>> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp
}

/// APNs: HTTP/2 over TLS (the PKI's server certificate) on a free port. A request with a
/// provider token that verifies (ES256 with the key's public half, `kid` and `iss` as given)
/// and an `apns-topic` is recorded; a device token in `gone` is answered 410.
pub async fn apns_stand_in(
    tls: Arc<rustls::ServerConfig>,
    public_pem: Vec<u8>,
    key_id: String,
    team: String,
    gone: Vec<String>,
) -> (SocketAddr, Recorded) {
    let recorded: Recorded = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let record = recorded.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let Ok(stream) = acceptor.accept(stream).await else { continue };
            let (record, public_pem, key_id, team, gone) =
                (record.clone(), public_pem.clone(), key_id.clone(), team.clone(), gone.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (record, public_pem, key_id, team, gone) = (
                        record.clone(),
                        public_pem.clone(),
                        key_id.clone(),
                        team.clone(),
                        gone.clone(),
                    );
                    async move {
                        let version = req.version();
                        let header = |name: &str| {
                            req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
                        };
                        let (auth, topic, priority) = (
                            header("authorization"),
                            header("apns-topic"),
                            header("apns-priority"),
                        );
                        let collapse = header("apns-collapse-id");
                        let token = req.uri().path().trim_start_matches("/3/device/").to_owned();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let jwt = auth
                            .as_deref()
                            .and_then(|a| a.strip_prefix("bearer "))
                            .unwrap_or_default();
                        let key = jsonwebtoken::DecodingKey::from_ec_pem(&public_pem).unwrap();
                        let mut validation =
                            jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                        validation.required_spec_claims.clear();
                        validation.validate_exp = false;
                        validation.set_issuer(&[team]);
                        let verified = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
                            .ok()
                            .filter(|t| t.header.kid.as_deref() == Some(key_id.as_str()));
                        let (status, answer) = match verified {
                            _ if version != hyper::Version::HTTP_2 => {
                                (505, json!({"reason": "NotHTTP2"}))
                            }
                            None => (403, json!({"reason": "InvalidProviderToken"})),
                            Some(_) if topic.is_none() => (400, json!({"reason": "MissingTopic"})),
                            Some(_) if gone.contains(&token) => {
                                (410, json!({"reason": "Unregistered"}))
                            }
                            Some(_) => {
                                let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                                record.lock().unwrap().push(json!({
                                    "token": token, "topic": topic, "priority": priority,
                                    "collapse": collapse, "body": body,
                                }));
                                (200, Value::Null)
                            }
                        };
                        Ok::<_, Infallible>(response(status, answer))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, recorded)
}

/// Waits until `recorded` holds `n` requests; them.
pub async fn wait_recorded(recorded: &Recorded, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = recorded.lock().unwrap().clone();
        if now.len() >= n {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "recorded {now:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
