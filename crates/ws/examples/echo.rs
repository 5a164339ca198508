//! An echo server on modelcast-ws, for the Autobahn TestSuite (`tests/autobahn/suite.py`,
//! run by `cargo xtask test`): every text and binary message comes back as it was sent, compressed
//! when permessage-deflate was negotiated, with the same reader, decoder, compressor and
//! vectored writes the modelcast server uses. Test-only: it has no limits worth a server.
//!
//! ```text
//! cargo run --release -p modelcast-ws --example echo -- 127.0.0.1:9001
//! ```

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{
    HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use modelcast_ws::{
    Decoder, Deflate, Header, Message, OpCode, ReadError, Reader, close_payload, deflate, finish,
    write_frames,
};
use tokio::net::{TcpListener, TcpStream};

/// Autobahn's largest messages are 16 MiB.
const MAX_MESSAGE: usize = 64 << 20;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await?;
    writeln!(std::io::stdout(), "echo listening on ws://{}", listener.local_addr()?)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req| async move { upgrade(req) });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

fn upgrade(
    mut req: Request<hyper::body::Incoming>,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let mut resp = Response::new(Empty::new());
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(resp);
    };
    let deflate = modelcast_ws::negotiate(
        req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS).iter().map(|v| v.as_bytes()),
    );
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else { return };
        echo(parts.io.into_inner(), parts.read_buf, deflate).await;
    });
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = modelcast_ws::accept_key(key.as_bytes());
    headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64"));
    if let Some(deflate) = deflate {
        let value = HeaderValue::from_str(&deflate.response()).expect("ASCII");
        headers.insert(SEC_WEBSOCKET_EXTENSIONS, value);
    }
    Ok(resp)
}

async fn echo(mut stream: TcpStream, already_read: Bytes, deflate: Option<Deflate>) {
    // Autobahn's 9.x cases send messages of up to 16 MiB in 64-byte frames.
    let decoder = Decoder::new(MAX_MESSAGE, deflate.is_some()).max_fragments(usize::MAX);
    let mut reader = Reader::new(decoder, already_read);
    let close = loop {
        let sent = match reader.next(&stream).await {
            Ok(Some(Message::Text(text))) => {
                send(&stream, OpCode::Text, text.as_bytes(), deflate).await
            }
            Ok(Some(Message::Binary(data))) => send(&stream, OpCode::Binary, &data, deflate).await,
            Ok(Some(Message::Ping(payload))) => send(&stream, OpCode::Pong, &payload, None).await,
            Ok(Some(Message::Pong(_))) => Ok(()),
            // The client closes: echo its code.
            Ok(Some(Message::Close(frame))) => {
                break frame.map(|f| close_payload(f.code, &f.reason)).unwrap_or_default();
            }
            // This side fails the connection, with the code the failure names.
            Err(ReadError::Failed(failure)) => break close_payload(failure.code, &failure.reason),
            Ok(None) | Err(ReadError::Io(_)) => return,
        };
        if sent.is_err() {
            return;
        }
    };
    if send(&stream, OpCode::Close, &close, None).await.is_ok() {
        finish(&mut stream, Duration::from_secs(2)).await;
    }
}

async fn send(
    stream: &TcpStream,
    opcode: OpCode,
    payload: &[u8],
    deflate: Option<Deflate>,
) -> std::io::Result<()> {
    let compressed = deflate.filter(|d| d.fits(payload.len())).and_then(|_| self::deflate(payload));
    match &compressed {
        Some(compressed) => {
            write_frames(stream, &[(Header::new(opcode, true, compressed.len()), compressed)]).await
        }
        None => write_frames(stream, &[(Header::new(opcode, false, payload.len()), payload)]).await,
    }
}
