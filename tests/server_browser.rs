//! The seed's JavaScript example, unchanged, in a real browser (headless Chromium) against the
//! server. The DOM is read over the DevTools protocol until it shows the expected state. The
//! browser offers permessage-deflate, so the page reads compressed frames.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use modelcast_tests::server_util::TestServer;
use modelcast_tests::{fixtures, root};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

fn seed(name: &str) -> Value {
    fixtures("seed").into_iter().find(|(n, _)| n == name).expect(name).1
}

/// The backend publishes; the page (the seed's code) connects, sends its two subscribe frames
/// and renders what it receives — first the current state, then live updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_javascript_renders_in_chromium() {
    let server = TestServer::start(&[]).await;
    assert_eq!(server.post("/api/publish", &seed("model_status_update")).await.0, 202);
    tokio::time::sleep(Duration::from_millis(300)).await; // the model-status batch window

    let page = std::fs::read_to_string(root().join("tests/fixtures/seed.html")).unwrap();
    let page = page.replace("ws://localhost:8000", &format!("ws://{}", server.addr));
    let dir = std::env::temp_dir().join(format!("modelcast-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("seed.html");
    std::fs::write(&file, page).unwrap();

    let mut browser = tokio::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg("--remote-debugging-port=0")
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("file://{}", file.display()))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect(
            "headless Chromium is needed: apt-get install chromium (cargo xtask test installs it)",
        );
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
    let mut lines = BufReader::new(browser.stderr.take().unwrap()).lines();
    let devtools = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.to_owned();
            }
        }
        panic!("chromium exited without a DevTools endpoint");
    })
    .await
    .expect("chromium starts");
    let port = devtools.trim_start_matches("ws://").split(['/', ':']).nth(1).unwrap().to_owned();

    let dom = |expr: &'static str| {
        let port = port.clone();
        async move { evaluate(&port, expr).await }
    };
    let status = r##"document.querySelector("#model-t2v-a14b .status").textContent"##;
    assert_eq!(
        poll(|| dom(status), "available").await,
        "available",
        "the current state on subscribe"
    );
    let class = r#"document.getElementById("model-t2v-a14b").className"#;
    assert_eq!(poll(|| dom(class), "available").await, "available");

    // A live update after the page subscribed.
    assert_eq!(server.post("/api/publish", &seed("download_progress_update")).await.0, 202);
    let bar = r#"document.getElementById("progress-t2v-a14b").textContent + " " + document.getElementById("progress-t2v-a14b").style.width"#;
    assert_eq!(poll(|| dom(bar), "45.5% 45.5%").await, "45.5% 45.5%");

    // Chromium offered permessage-deflate, the server agreed, and what the page rendered
    // came compressed.
    let extensions = dom("ws.extensions").await;
    assert!(extensions.starts_with("permessage-deflate"), "negotiated: {extensions:?}");
    let (_, stats) = server.get("/api/stats").await;
    let compression = &serde_json::from_str::<Value>(&stats).unwrap()["compression"];
    assert_eq!(compression["connections"], 1, "{compression}");
    assert!(compression["frames"].as_u64().unwrap() >= 1, "{compression}");
    let _ = browser.kill().await;
}

/// Polls `read` until it returns `want` (or 15 s pass); returns the last value.
async fn poll<F, Fut>(read: F, want: &str) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut last = String::new();
    for _ in 0..150 {
        last = read().await;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// Evaluates `expression` in the first page target over the DevTools protocol.
async fn evaluate(port: &str, expression: &str) -> String {
    let addr = format!("127.0.0.1:{port}");
    let list = {
        let stream = tokio::net::TcpStream::connect(&addr).await.expect("devtools http");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/json/list")
            .header("host", &addr)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let body =
            http_body_util::BodyExt::collect(sender.send_request(req).await.unwrap().into_body())
                .await;
        serde_json::from_slice::<Value>(&body.unwrap().to_bytes()).unwrap()
    };
    let target =
        list.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target");
    let url = target["webSocketDebuggerUrl"].as_str().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("devtools websocket");
    let call = json!({"id": 1, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": true}});
    ws.send(Message::Text(call.to_string().into())).await.unwrap();
    while let Some(Ok(Message::Text(t))) = ws.next().await {
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["id"] == 1 {
            return v["result"]["result"]["value"].as_str().unwrap_or_default().to_owned();
        }
    }
    String::new()
}
