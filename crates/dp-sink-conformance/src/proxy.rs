//! A TCP proxy in front of a real service, to take the service away from a sink and give it
//! back without touching the service itself.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A TCP proxy of the test's own in front of a real service (`Proxy::start("127.0.0.1:3306")`).
///
/// [`Proxy::cut`] resets every connection through it (RST, as a crashed server or a dropped
/// network path does) and refuses new ones until [`Proxy::restore`]. Point the sink under test
/// at `127.0.0.1:<port>` and read the store back directly, not through the proxy.
///
/// Dropping the proxy cuts it and stops listening.
pub struct Proxy {
    /// The local port it listens on (on 127.0.0.1).
    pub port: u16,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

struct State {
    up: bool,
    /// One forwarding task per connection; aborting it drops both sockets, which reset.
    open: Vec<AbortHandle>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `target`
    /// (`host:port`). Must be called within a Tokio runtime.
    pub async fn start(target: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State { up: true, open: Vec::new() }));
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state), target.to_owned()));
        Ok(Self { port, state, accept })
    }

    /// `127.0.0.1:<port>`, the address to give the sink.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Resets every open connection and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.up = false;
        for h in state.open.drain(..) {
            h.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).up = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, target: String) {
    while let Ok((inbound, _)) = listener.accept().await {
        // Linger 0: closing sends RST, so the peer sees a reset, not a clean close. (Tokio
        // deprecates set_linger because a non-zero linger blocks on drop; zero does not.)
        #[allow(deprecated)]
        let _ = inbound.set_linger(Some(Duration::ZERO));
        // Checked and registered under one lock, so a `cut` cannot slip in between and miss
        // the new connection.
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.up {
            drop(inbound);
            continue;
        }
        let task = tokio::spawn(forward(inbound, target.clone()));
        state.open.retain(|h| !h.is_finished());
        state.open.push(task.abort_handle());
    }
}

async fn forward(mut inbound: TcpStream, target: String) {
    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
    #[allow(deprecated)]
    let _ = outbound.set_linger(Some(Duration::ZERO));
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> String {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> io::Result<Vec<u8>> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::other("no answer"))??;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn forwards_resets_refuses_and_restores() {
        let proxy = Proxy::start(&echo().await).await.expect("proxy");
        let mut open = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(round_trip(&mut open).await.expect("through the proxy"), b"ping");

        proxy.cut();
        assert!(round_trip(&mut open).await.is_err(), "an open connection must be reset");
        // The listener still accepts, then resets at once.
        let mut refused = TcpStream::connect(proxy.address()).await.expect("tcp accept");
        assert!(round_trip(&mut refused).await.is_err(), "a new connection must be refused");

        proxy.restore();
        let mut again = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(round_trip(&mut again).await.expect("restored"), b"ping");
    }
}
