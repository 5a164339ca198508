//! The async edges over a TCP socket: [`Reader`], which waits for readiness before it takes a
//! buffer (an idle connection holds none), and [`write_frames`], which writes frames as
//! header and payload slices, many per `writev`, never copying a payload.

use std::future::Future;
use std::io::{self, IoSlice};

use bytes::{Bytes, BytesMut};

use crate::decode::{Decoder, Message};
use crate::failure::Failure;
use crate::frame::Header;

/// A socket frames are read from (tokio's TCP stream and its halves).
pub trait ReadSocket {
    /// Waits until the socket may have bytes to read.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads what is there without waiting (`WouldBlock` if nothing is).
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
}

/// A socket frames are written to (tokio's TCP stream and its halves).
pub trait WriteSocket {
    /// Waits until the socket may take bytes.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Writes what the socket takes now, from several buffers (`WouldBlock` if none).
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

macro_rules! sockets {
    (read: $($read:ty),*; write: $($write:ty),*) => {
        $(impl ReadSocket for $read {
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$read>::readable(self)
            }
            fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
                <$read>::try_read_buf(self, buf)
            }
        })*
        $(impl WriteSocket for $write {
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$write>::writable(self)
            }
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                <$write>::try_write_vectored(self, bufs)
            }
        })*
    };
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
            socket.readable().await?;
            let wanted = self.decoder.wanted().saturating_sub(self.buf.len());
            self.buf.reserve(wanted.max(READ_CHUNK));
            match socket.try_read_buf(&mut self.buf) {
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
        match socket.try_write_vectored(&remaining[..batch]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut remaining, written),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Ends a connection whose close frame was sent: shuts the write side (the server closes the
/// TCP connection first, RFC 6455 §7.1.1) and reads, discarding, until the client closes its
/// side or `wait` passes. Unread bytes at close would turn the close into a reset, which may
/// destroy the close frame before the client reads it.
pub async fn finish(stream: &mut tokio::net::TcpStream, wait: std::time::Duration) {
    use tokio::io::AsyncWriteExt as _;
    if stream.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(wait, async {
        let mut scratch = [0u8; 1024];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}
