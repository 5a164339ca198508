//! The async edges over a socket: [`Reader`], which on TCP waits for readiness before it
//! takes a buffer (an idle connection holds none), and [`write_frames`], which writes frames
//! as header and payload slices, many per `writev`, never copying a payload. TCP streams are
//! used through readiness (`readable`, `try_read`, `writable`, `try_write_vectored`); any other
//! tokio stream — a TLS stream's halves — through [`Streamed`].

use std::future::Future;
use std::io::{self, IoSlice};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::decode::{Decoder, Message};
use crate::failure::Failure;
use crate::frame::Header;

/// A socket frames are read from (tokio's TCP stream and its halves, or [`Streamed`]).
pub trait ReadSocket {
    /// Waits until the socket may have bytes to read (a socket that cannot tell: at once).
    fn ready(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads into `buf`: 0 when the peer closed; `WouldBlock` if nothing was there after all.
    fn read_buf<'a>(
        &'a self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

/// A socket frames are written to (tokio's TCP stream and its halves, or [`Streamed`]).
pub trait WriteSocket {
    /// Writes what the socket takes from several buffers, waiting until it takes something.
    fn write_vectored<'a>(
        &'a self,
        bufs: &'a [IoSlice<'a>],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
    /// Sends on what the socket holds back (a TLS record being built); nothing for TCP.
    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send;
}

macro_rules! sockets {
    (read: $($read:ty),*; write: $($write:ty),*) => {
        $(impl ReadSocket for $read {
            fn ready(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$read>::readable(self)
            }
            fn read_buf<'a>(
                &'a self,
                buf: &'a mut BytesMut,
            ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
                std::future::ready(<$read>::try_read_buf(self, buf))
            }
        })*
        $(impl WriteSocket for $write {
            async fn write_vectored<'a>(&'a self, bufs: &'a [IoSlice<'a>]) -> io::Result<usize> {
                loop {
                    match <$write>::try_write_vectored(self, bufs) {
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            <$write>::writable(self).await?
                        }
                        written => return written,
                    }
                }
            }
            fn flush(&self) -> impl Future<Output = io::Result<()>> + Send {
                std::future::ready(Ok(()))
            }
        })*
    };
}

/// Any tokio stream (or half of one) as a [`ReadSocket`] or [`WriteSocket`]: a TLS stream's
/// halves. It has no readiness to wait for, so a waiting read holds its buffer; its writes
/// are flushed after each batch of frames.
#[derive(Debug)]
pub struct Streamed<T>(tokio::sync::Mutex<T>);

impl<T> Streamed<T> {
    /// `stream`, read or written by one task at a time.
    pub fn new(stream: T) -> Self {
        Self(tokio::sync::Mutex::new(stream))
    }

    /// The stream back.
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

impl<T: AsyncRead + Unpin + Send> ReadSocket for Streamed<T> {
    fn ready(&self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    async fn read_buf<'a>(&'a self, buf: &'a mut BytesMut) -> io::Result<usize> {
        self.0.lock().await.read_buf(buf).await
    }
}

impl<T: AsyncWrite + Unpin + Send> WriteSocket for Streamed<T> {
    async fn write_vectored<'a>(&'a self, bufs: &'a [IoSlice<'a>]) -> io::Result<usize> {
        self.0.lock().await.write_vectored(bufs).await
    }

    async fn flush(&self) -> io::Result<()> {
        self.0.lock().await.flush().await
    }
}

sockets!(
    read: tokio::net::TcpStream, tokio::net::tcp::ReadHalf<'_>, tokio::net::tcp::OwnedReadHalf;
    write: tokio::net::TcpStream, tokio::net::tcp::WriteHalf<'_>, tokio::net::tcp::OwnedWriteHalf
);

/// Bytes read at least per read call.
const READ_CHUNK: usize = 4096;

/// What ends reading: a frame that fails the connection (send its close code), or the socket.
#[derive(Debug)]
pub enum ReadError {
    /// The client broke the protocol or a limit.
    Failed(Failure),
    /// The socket failed (a reset, for one).
    Io(io::Error),
}

impl From<Failure> for ReadError {
    fn from(failure: Failure) -> Self {
        ReadError::Failed(failure)
    }
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        ReadError::Io(err)
    }
}

/// Reads a client's messages from a socket.
///
/// Between reads the buffer is given back when it is empty, so a connection waiting for its
/// client's next frame holds no read buffer at all.
#[derive(Debug)]
pub struct Reader {
    buf: BytesMut,
    decoder: Decoder,
}

impl Reader {
    /// A reader decoding with `decoder`; `already_read` is what the HTTP layer read past the
    /// upgrade request (a client may send frames right behind it).
    pub fn new(decoder: Decoder, already_read: Bytes) -> Self {
        Self { buf: BytesMut::from(&already_read[..]), decoder }
    }

    /// The next message, or `None` when the client closed the TCP connection. Cancel-safe:
    /// what was read stays in the reader.
    pub async fn next(&mut self, socket: &impl ReadSocket) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(message));
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
            socket.ready().await?;
            let wanted = self.decoder.wanted().saturating_sub(self.buf.len());
            self.buf.reserve(wanted.max(READ_CHUNK));
            match socket.read_buf(&mut self.buf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
}

/// The most buffers one `writev` takes (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// Writes frames, each a [`Header`] and a payload, as slices of where they lie: as many per
/// `writev` as the socket takes, none copied. Returns once everything is written; an error if
/// the socket fails. Not cancel-safe in the middle of a frame: a caller that gives up on a
/// write (a timeout) must close the connection.
pub async fn write_frames(socket: &impl WriteSocket, frames: &[(Header, &[u8])]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
    for (header, payload) in frames {
        slices.push(IoSlice::new(header.as_bytes()));
        if !payload.is_empty() {
            slices.push(IoSlice::new(payload));
        }
    }
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    while !remaining.is_empty() {
        let batch = remaining.len().min(MAX_IOVECS);
        match socket.write_vectored(&remaining[..batch]).await {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut remaining, written),
            Err(err) => return Err(err),
        }
    }
    socket.flush().await
}

/// Ends a connection whose close frame was sent: shuts the write side (the server closes the
/// TCP connection first, RFC 6455 §7.1.1) and reads, discarding, until the client closes its
/// side or `wait` passes. Unread bytes at close would turn the close into a reset, which may
/// destroy the close frame before the client reads it.
pub async fn finish<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, wait: std::time::Duration) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(wait, async {
        let mut scratch = [0u8; 1024];
        while let Ok(1..) = stream.read(&mut scratch).await {}
    })
    .await;
}
