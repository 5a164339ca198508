//! TLS for the tests: a private CA and certificates made with `openssl` for each test (in a
//! temporary directory, removed on drop), and clients that speak TLS to the server: HTTPS
//! requests and `wss://` WebSockets trusting that CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::server_util::Client;

/// A CA and what it signed, as PEM files in a directory of their own.
#[derive(Debug)]
pub struct Pki {
    /// The directory.
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA (`ca.pem`, `ca.key`), a server certificate for `localhost` and `127.0.0.1`
    /// (`server.pem`, `server.key`) and a client certificate (`client.pem`, `client.key`), all
    /// P-256, valid for two days.
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("modelcast-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a pki directory");
        let pki = Pki { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=modelcast test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        pki.issue("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1");
        pki.issue("client", "modelcast-node", "extendedKeyUsage=clientAuth");
        pki
    }

    /// Issues `<name>.pem` / `<name>.key` for `cn` with the extension line `ext`, signed by
    /// this CA (a server certificate again, with another serial: a renewal).
    pub fn issue(&self, name: &str, cn: &str, ext: &str) {
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        let subject = format!("/CN={cn}");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ]);
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).expect("an extension file");
        let extfile = format!("{name}.ext");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs (the Debian package openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A file of this PKI (`ca.pem`, `server.key`, …).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The same path as a string, for arguments.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A TLS client config trusting this CA alone.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        trusting(&self.path("ca.pem"))
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS client config trusting the CA certificates in `ca` alone.
#[allow(deprecated)] // ring: no post-quantum key exchange, which is all rustls warns of
pub fn trusting(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("a CA file") {
        roots.add(cert.expect("a CA certificate")).expect("a usable CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// How a test talks to the server: plain TCP, or TLS trusting a CA.
#[derive(Debug, Clone)]
pub enum Transport {
    /// `http://` and `ws://`.
    Plain,
    /// `https://` and `wss://`.
    Tls(Arc<rustls::ClientConfig>),
}

impl Transport {
    /// `"plain"` or `"tls"`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls(_) => "tls",
        }
    }

    /// A byte stream to the server at `addr`: TCP, or TLS for `localhost`.
    pub async fn dial(&self, addr: SocketAddr) -> Box<dyn crate::server_util::Duplex> {
        let tcp = TcpStream::connect(addr).await.expect("the server listens");
        match self {
            Transport::Plain => Box::new(tcp),
            Transport::Tls(config) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let name = ServerName::try_from("localhost").expect("a name");
                Box::new(connector.connect(name, tcp).await.expect("a TLS handshake"))
            }
        }
    }

    /// An HTTP request: status, headers and body; `None` if the server cannot be reached.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Option<(u16, hyper::HeaderMap, String)> {
        let tls = match self {
            Transport::Plain => {
                return crate::server_util::http_request_full(addr, method, path, headers, body)
                    .await;
            }
            Transport::Tls(config) => config.clone(),
        };
        let tcp = TcpStream::connect(addr).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(tls);
        let stream = connector.connect(ServerName::try_from("localhost").ok()?, tcp).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("localhost:{}", addr.port()))
            .header("content-type", "application/json");
        let req = headers.iter().fold(req, |req, (name, value)| req.header(*name, *value));
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, headers, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// A WebSocket to `path` (e.g. `/ws/me`), past its `welcome`.
    pub async fn ws(&self, addr: SocketAddr, path: &str) -> Client {
        self.ws_with(addr, path, None).await
    }

    /// A WebSocket to `path` with `config` for tokio-tungstenite (e.g. permessage-deflate).
    pub async fn ws_with(
        &self,
        addr: SocketAddr,
        path: &str,
        config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
    ) -> Client {
        let (url, connector) = match self {
            Transport::Plain => (format!("ws://{addr}{path}"), None),
            Transport::Tls(tls) => (
                format!("wss://localhost:{}{path}", addr.port()),
                Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
            ),
        };
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, config, true, connector)
                .await
                .expect("a websocket");
        let mut client = Client { ws };
        assert_eq!(client.next_json().await["type"], "welcome");
        client
    }
}

/// The certificate the server at `addr` presents now (DER), over a TLS handshake trusting
/// `config`'s roots.
pub async fn presented_certificate(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.expect("the server listens");
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("localhost").expect("a name");
    let stream = connector.connect(name, tcp).await.expect("a TLS handshake");
    let (_, session) = stream.get_ref();
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

/// The first certificate of a PEM file (DER).
pub fn certificate_der(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .expect("a PEM file")
        .next()
        .expect("a certificate")
        .expect("a readable certificate")
        .to_vec()
}
