//! TLS: the server's own (`MODELCAST_TLS_CERT`, `MODELCAST_TLS_KEY`: HTTPS and WSS on the one
//! port, re-read on `SIGHUP`) and the files of TLS to Redis (`MODELCAST_REDIS_CA`,
//! `MODELCAST_REDIS_CERT`, `MODELCAST_REDIS_KEY`). Every file is read and checked here, at
//! start-up and by `--check-config`, and a problem names the setting and the file: a missing
//! or unreadable file, PEM without a certificate or key, a key that is not its certificate's.
//! rustls with the ring provider (no OpenSSL).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::Config;

/// The crypto provider every TLS config here uses: ring (aws-lc-rs, rustls's default, would
/// bring a C and CMake build; ring's lack of post-quantum key exchange is why rustls marks
/// this call deprecated).
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `path`, naming `setting` and the file when it cannot.
fn read(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))
}

/// The certificates of a PEM file (at least one).
fn certificates(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(setting, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{setting}: {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting}: {} holds no certificate (PEM)", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn private_key(setting: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{setting}: {} holds no private key (PEM: PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

/// A certificate chain with its key, checked to belong together.
fn certified_key(
    (cert_setting, cert): (&str, &Path),
    (key_setting, key): (&str, &Path),
) -> Result<CertifiedKey, String> {
    let chain = certificates(cert_setting, cert)?;
    let der = private_key(key_setting, key)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{key_setting}: {}: an unusable key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        format!(
            "{key_setting}: {} is not the key of the certificate in {cert_setting} ({})",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

/// The server's TLS config from its certificate and key files: ALPN `http/1.1`.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certified = certified_key(("MODELCAST_TLS_CERT", cert), ("MODELCAST_TLS_KEY", key))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server's certificate, re-read on `SIGHUP`: new connections get the newest one that
/// loaded, open ones keep theirs.
#[derive(Debug)]
pub(crate) struct ServerTls {
    files: (PathBuf, PathBuf),
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// From `MODELCAST_TLS_CERT` and `MODELCAST_TLS_KEY`: `None` when neither is set; an error
    /// when only one is, or a file does not load.
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let (cert, key) = match (&config.tls_cert, &config.tls_key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                return Err("MODELCAST_TLS_CERT and MODELCAST_TLS_KEY go together: set both \
                            (TLS on this port) or neither (plain TCP, TLS at a proxy)"
                    .into());
            }
        };
        let current = RwLock::new(server_config(&cert, &key)?);
        Ok(Some(Self { files: (cert, key), current }))
    }

    /// An acceptor with the certificate loaded now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again; a certificate that does not load leaves the current one in
    /// place (said at warn: the operator's new files are wrong, the server goes on).
    pub(crate) fn reload(&self) {
        match server_config(&self.files.0, &self.files.1) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                tracing::info!(cert = %self.files.0.display(), "TLS certificate reloaded");
            }
            Err(err) => {
                tracing::warn!("TLS certificate not reloaded, the current one stays: {err}")
            }
        }
    }
}

/// TLS to Redis from `MODELCAST_REDIS_CA`, `MODELCAST_REDIS_CERT` and `MODELCAST_REDIS_KEY`:
/// `None` when none is set; every file checked.
pub(crate) fn redis_tls(config: &Config) -> Result<Option<modelcast_redis::RedisTls>, String> {
    let mut tls = modelcast_redis::RedisTls::default();
    let mut any = false;
    if let Some(ca) = &config.redis_ca {
        certificates("MODELCAST_REDIS_CA", ca)?;
        tls = tls.ca(read("MODELCAST_REDIS_CA", ca)?);
        any = true;
    }
    match (&config.redis_cert, &config.redis_key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            certified_key(("MODELCAST_REDIS_CERT", cert), ("MODELCAST_REDIS_KEY", key))?;
            let pem = (read("MODELCAST_REDIS_CERT", cert)?, read("MODELCAST_REDIS_KEY", key)?);
            tls = tls.client_certificate(pem.0, pem.1);
            any = true;
        }
        _ => {
            return Err("MODELCAST_REDIS_CERT and MODELCAST_REDIS_KEY go together (a client \
                        certificate and its key)"
                .into());
        }
    }
    if any && !config.redis_url.as_deref().is_some_and(|u| u.starts_with("rediss://")) {
        return Err("MODELCAST_REDIS_CA / MODELCAST_REDIS_CERT are set, but MODELCAST_REDIS_URL \
                    is not rediss://: TLS to Redis needs a rediss:// URL (refusing plain text)"
            .into());
    }
    Ok(any.then_some(tls))
}

/// What `--check-config` says of TLS: the server's and Redis's, each checked.
pub(crate) fn describe(config: &Config) -> Result<[String; 2], String> {
    let server = match ServerTls::from_config(config)? {
        Some(tls) => format!("tls: on this port (certificate {})", tls.files.0.display()),
        None => "tls: off (plain TCP; TLS at a proxy, if any)".to_owned(),
    };
    let redis_url_tls = config.redis_url.as_deref().is_some_and(|u| u.starts_with("rediss://"));
    let redis = match (redis_tls(config)?, redis_url_tls) {
        (Some(_), _) => "redis tls: on (rediss://, with the CA / client certificate given)",
        (None, true) => "redis tls: on (rediss://, the system's roots)",
        (None, false) => "redis tls: off",
    };
    Ok([server, redis.to_owned()])
}
