//! What a connection may cost the server: at most `max_connections` at
//! once (a connection beyond is closed as it is accepted), and none stays
//! open `idle_timeout` without a byte either way. Applied to the TCP stream
//! before TLS, so a client that opens connections and sends nothing, or
//! stops half way through a handshake, holds nothing for long. The header
//! read timeout and the request timeout are hyper's and tower-http's
//! (`start.rs`, `app.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// An acceptor that admits a connection only with a free slot, and wraps
/// its stream in [`IdleStream`]; `A` does the rest (TLS, or nothing).
#[derive(Clone)]
pub struct Guarded<A> {
    inner: A,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, max_connections: usize, idle: Duration) -> Self {
        Guarded {
            inner,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            idle,
        }
    }
}

type Accepted<S, V> = Pin<Box<dyn Future<Output = io::Result<(S, V)>> + Send>>;

impl<A, I, S> Accept<I, S> for Guarded<A>
where
    A: Accept<IdleStream<I>, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
    I: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Accepted<A::Stream, A::Service>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Box::pin(
                self.inner
                    .accept(IdleStream::new(stream, self.idle, slot), service),
            ),
            Err(_) => {
                tracing::warn!("connection refused: max_connections reached");
                drop(stream);
                Box::pin(std::future::ready(Err(io::Error::other(
                    "too many connections",
                ))))
            }
        }
    }
}

/// A stream that fails with `TimedOut` once nothing has been read or
/// written for `idle`, and holds its connection slot until dropped.
pub struct IdleStream<I> {
    inner: I,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<I> IdleStream<I> {
    fn new(inner: I, idle: Duration, slot: OwnedSemaphorePermit) -> Self {
        IdleStream {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            _slot: slot,
        }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// While the inner stream waits: the connection ends if it idled too long.
    fn idled(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleStream<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.idled(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleStream<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.idled(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_traffic_times_out_and_traffic_keeps_it() {
        let slots = Arc::new(Semaphore::new(1));
        let (client, server) = tokio::io::duplex(64);
        let mut s = IdleStream::new(
            server,
            Duration::from_secs(10),
            slots.clone().try_acquire_owned().unwrap(),
        );
        let mut client = client;
        // Traffic within the idle time keeps it open.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(8)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
        }
        assert_eq!(slots.available_permits(), 0, "the slot is held");
        let mut b = [0u8; 1];
        let read = tokio::spawn(async move { (s.read(&mut b).await, slots) });
        tokio::time::advance(Duration::from_secs(11)).await;
        let (r, slots) = read.await.unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(slots.available_permits(), 1, "the slot is back");
        drop(client);
    }
}
