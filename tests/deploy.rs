//! The deploy files, tested for real: Debian's nginx runs `deploy/nginx/modelcast.conf` in
//! front of a server; WebSockets pass through it, and per-IP limits see each client's address
//! (from `X-Forwarded-For`, the trusted-proxy setting), not nginx's.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use modelcast_tests::root;
use modelcast_tests::server_util::{Client, TestServer};

/// nginx, started with the committed site config rewritten to this test's addresses; killed
/// on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: PathBuf,
}

impl Drop for Nginx {
    /// Kills nginx's whole process group: its master and the worker, which would otherwise
    /// outlive the test, still listening.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nginx {
    /// Runs the committed config in front of `upstream`, connecting to it from `from`.
    async fn start(upstream: SocketAddr, from: IpAddr) -> Self {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("nginx is needed: apt-get install nginx (cargo xtask test installs it)");
        let port = free_port();
        let site = std::fs::read_to_string(root().join("deploy/nginx/modelcast.conf")).unwrap();
        assert!(site.contains("server 127.0.0.1:8000;") && site.contains("listen 80;"));
        let site = site
            .replace("server 127.0.0.1:8000;", &format!("server {upstream};"))
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        let dir = std::env::temp_dir().join(format!("modelcast-nginx-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modelcast.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               proxy_bind {from};\n  include {d}/modelcast.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(bin)
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &dir.join("nginx.conf").display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, so the worker goes with the master (Drop).
            .process_group(0)
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Self { child, addr, _dir: dir }
    }

    /// A WebSocket through nginx from the local address `from`; the HTTP status if refused.
    async fn ws(&self, from: IpAddr, path: &str) -> Result<Client, u16> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let stream = socket.connect(self.addr).await.expect("connect to nginx");
        let url = format!("ws://{}{path}", self.addr);
        match tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
        {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn nginx_passes_websockets_and_the_server_sees_each_clients_address() {
    let nginx_addr: IpAddr = "127.0.0.2".parse().unwrap();
    // Trust only nginx's address; one connection per second per client, bursts of 10.
    let server =
        TestServer::start(&["--trusted-proxy", "127.0.0.2/32", "--connect-rate", "1"]).await;
    let nginx = Nginx::start(server.addr, nginx_addr).await;

    // A WebSocket through nginx works end to end.
    let alice: IpAddr = "127.0.0.3".parse().unwrap();
    let mut ws = nginx.ws(alice, "/ws/through-nginx").await.expect("upgraded through nginx");
    assert_eq!(ws.next_json().await["type"], "welcome");
    ws.subscribe("alerts").await;
    modelcast_tests::msg::send(&server.hub, modelcast_tests::msg::alert("via-nginx")).unwrap();
    assert_eq!(ws.next_json().await["data"]["alert_id"], "via-nginx");

    // Alice spends her burst; Bob, behind the same nginx, is still let in.
    let mut refused = None;
    for i in 0..12 {
        if let Err(status) = nginx.ws(alice, &format!("/ws/a{i}")).await {
            refused = Some(status);
            break;
        }
    }
    assert_eq!(refused, Some(429), "the per-IP limit applies to Alice's address");
    let bob: IpAddr = "127.0.0.4".parse().unwrap();
    assert!(nginx.ws(bob, "/ws/bob").await.is_ok(), "not to nginx's: Bob still gets in");
    // Server-Sent Events go through, unbuffered: an event arrives as it is published.
    let mut sse =
        modelcast_tests::server_util::Sse::open(nginx.addr, "/sse?topic=alerts", &[]).await;
    assert_eq!(sse.status(), 200, "{}", sse.head);
    sse.until("subscribed").await;
    modelcast_tests::msg::send(&server.hub, modelcast_tests::msg::alert("via-nginx-sse")).unwrap();
    let event = sse.messages(1).await.remove(0);
    assert_eq!(event.data["data"]["alert_id"], "via-nginx-sse");
    assert!(event.id.is_some_and(|id| id.starts_with("1.")), "the id passes through");
    // Plain HTTP goes through too.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::net::TcpStream::connect(nginx.addr).await.unwrap();
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    http.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("\"ok\""), "{reply}");
}

/// A systemd `EnvironmentFile=` as systemd reads it (systemd.exec(5)): `KEY=VALUE` lines,
/// `#` and `;` lines ignored, values in double quotes (with backslash escapes) or single
/// quotes, unquoted values with surrounding whitespace stripped.
pub(crate) fn systemd_environment(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines().map(str::trim_start) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.trim_start();
        let value = if let Some(rest) = value.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        } else if let Some(rest) = value.strip_prefix('\'') {
            rest.split('\'').next().unwrap_or_default().to_owned()
        } else {
            value.trim_end().to_owned()
        };
        vars.insert(key.trim().to_owned(), value);
    }
    vars
}

/// Probe finding 14: `set -a; . ./production.env` read `alerts=admin|ops` as a pipe and
/// dropped the roles without a word. The file must mean the same to a shell and to systemd,
/// and the server must accept every value in it.
#[test]
fn production_env_means_the_same_to_a_shell_and_to_systemd_and_is_valid() {
    let path = root().join("deploy/production.env");
    let text = std::fs::read_to_string(&path).unwrap();
    let systemd = systemd_environment(&text);
    let out = Command::new("bash")
        .args(["-c", r#"set -a; . "$1"; set +a; env -0"#, "_"])
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "the shell complained: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shell: BTreeMap<String, String> = String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| systemd.contains_key(*k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(shell, systemd, "the shell and systemd read different values");
    assert_eq!(systemd["MODELCAST_TOPIC_ROLES"], "analytics_updates=admin,alerts=admin|ops");
    assert!(systemd.contains_key("MODELCAST_TRUSTED_PROXIES"), "the nginx site asks for it");

    // Every value is valid (with the secrets the file leaves to a secret store).
    let dir = std::env::temp_dir().join(format!("modelcast-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl").args(args).stderr(Stdio::null()).status().unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    let private_path = private.display().to_string();
    let public_path = public.display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &private_path,
    ]);
    openssl(&["pkey", "-in", &private_path, "-pubout", "-out", &public_path]);
    // As shipped, the check names every secret still a placeholder, and starts nothing.
    let out = Command::new(modelcast_tests::server_util::binary())
        .arg("--check-config")
        .env_clear()
        .envs(&systemd)
        .env("MODELCAST_JWT_PUBLIC_KEY", &public)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("MODELCAST_METRICS_TOKEN, MODELCAST_PUBLISH_KEYS: still the placeholder"),
        "{said}"
    );
    let out = Command::new(modelcast_tests::server_util::binary())
        .arg("--check-config")
        .env_clear()
        .envs(&systemd)
        .env("MODELCAST_JWT_PUBLIC_KEY", &public)
        .env("MODELCAST_PUBLISH_KEYS", "a-publish-key-of-32-characters--")
        .env("MODELCAST_METRICS_TOKEN", "a-metrics-token-of-32-characters")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("topic roles: analytics_updates=admin,alerts=admin|ops"), "{said}");
    assert!(said.contains("trusted proxies: 127.0.0.1/32,::1/128"), "{said}");
    assert!(said.contains("authentication: JWT required"), "{said}");
    assert!(
        said.contains("/api/state): need a credential: the metrics token, a publish key, a token with role admin"),
        "{said}"
    );
}
