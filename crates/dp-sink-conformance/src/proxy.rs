//! A TCP proxy in front of a real service, to take the service away from a sink and give it
//! back without touching the service itself.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A TCP proxy of the test's own in front of a real service (`Proxy::start("127.0.0.1:3306")`).
///
/// [`Proxy::cut`] resets every connection through it (RST, as a crashed server or a dropped
/// network path does) and refuses new ones until [`Proxy::restore`]. [`Proxy::silence`] makes
/// the path go silent instead — no data, no FIN, no RST, the failure TCP does not report — and
/// closes the server's side some seconds later, as a server that notices a dead client does.
/// Point the sink under test at `127.0.0.1:<port>` and read the store back directly, not
/// through the proxy.
///
/// Dropping the proxy cuts it and stops listening.
pub struct Proxy {
    /// The local port it listens on (on 127.0.0.1).
    pub port: u16,
    state: Arc<Mutex<State>>,
    /// Tells every forwarding task when the path goes silent, and when the server side closes.
    silent: tokio::sync::watch::Sender<Option<Duration>>,
    trap: Arc<Trap>,
    accept: JoinHandle<()>,
}

/// A one-shot silence of the one connection whose client sends given bytes
/// ([`Proxy::silence_after`]).
#[derive(Default)]
struct Trap {
    armed: Mutex<Option<(Vec<u8>, Duration)>>,
    sprung: AtomicUsize,
}

impl Trap {
    /// Takes the trap if `seen` (what a client sent lately) holds its bytes.
    fn spring(&self, seen: &[u8]) -> Option<Duration> {
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let (marker, after) = armed.as_ref()?;
        if marker.is_empty() || !seen.windows(marker.len()).any(|w| w == marker.as_slice()) {
            return None;
        }
        let after = *after;
        *armed = None;
        self.sprung.fetch_add(1, Ordering::AcqRel);
        Some(after)
    }

    /// Longest marker length, for how much of a stream to keep for matching across reads.
    fn marker_len(&self) -> usize {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map_or(0, |(m, _)| m.len())
    }
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
        let (silent, silence) = tokio::sync::watch::channel(None);
        let trap = Arc::new(Trap::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&state),
            target.to_owned(),
            silence,
            Arc::clone(&trap),
        ));
        Ok(Self { port, state, silent, trap, accept })
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

    /// Goes silent: every open connection stops carrying data in both directions while both of
    /// its sockets stay open, so the client sees neither an error nor a close; the server's side
    /// is closed `server_closes_after` later. New connections are accepted and then hear
    /// nothing (the server is never contacted), until [`restore`](Self::restore). A connection
    /// that went silent stays silent: the client has to give up on it.
    pub fn silence(&self, server_closes_after: Duration) {
        self.silent.send_replace(Some(server_closes_after));
    }

    /// Arms a one-shot trap: the first connection whose client sends `marker` (say, a MySQL
    /// `COMMIT` packet) has those bytes forwarded, then goes silent as with
    /// [`silence`](Self::silence) — the server acts on them, the client never hears back. Other
    /// connections, and new ones, are not affected. [`sprung`](Self::sprung) counts the traps
    /// taken.
    pub fn silence_after(&self, marker: &[u8], server_closes_after: Duration) {
        *self.trap.armed.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((marker.to_vec(), server_closes_after));
    }

    /// How many [`silence_after`](Self::silence_after) traps connections have sprung.
    pub fn sprung(&self) -> usize {
        self.trap.sprung.load(Ordering::Acquire)
    }

    /// Accepts and forwards connections again (after [`cut`](Self::cut) or
    /// [`silence`](Self::silence)).
    pub fn restore(&self) {
        self.silent.send_replace(None);
        self.state.lock().unwrap_or_else(PoisonError::into_inner).up = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    target: String,
    silence: tokio::sync::watch::Receiver<Option<Duration>>,
    trap: Arc<Trap>,
) {
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
        let task = tokio::spawn(forward(inbound, target.clone(), silence.clone(), Arc::clone(&trap)));
        state.open.retain(|h| !h.is_finished());
        state.open.push(task.abort_handle());
    }
}

async fn forward(
    mut inbound: TcpStream,
    target: String,
    mut silence: tokio::sync::watch::Receiver<Option<Duration>>,
    trap: Arc<Trap>,
) {
    if silence.borrow_and_update().is_some() {
        // A silent path: the client connected, and nothing will ever answer.
        std::future::pending::<()>().await;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
    #[allow(deprecated)]
    let _ = outbound.set_linger(Some(Duration::ZERO));
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    let server_closes_after = {
        let (mut client_in, mut client_out) = inbound.split();
        let (mut server_in, mut server_out) = outbound.split();
        let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        // The last bytes the client sent, so a trap's marker split across reads still matches.
        let mut seen: Vec<u8> = Vec::new();
        loop {
            tokio::select! {
                read = client_in.read(&mut up) => {
                    let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                    if server_out.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                    let keep = trap.marker_len();
                    if keep > 0 {
                        seen.extend_from_slice(&up[..n]);
                        if let Some(after) = trap.spring(&seen) {
                            break after;
                        }
                        let excess = seen.len().saturating_sub(keep);
                        seen.drain(..excess);
                    }
                }
                read = server_in.read(&mut down) => {
                    let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                    if client_out.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
                silent = went_silent(&mut silence) => match silent {
                    Some(after) => break after,
                    None => return, // the proxy is gone
                },
            }
        }
    };
    // Bytes in flight are lost, as on a dead path. The client keeps an open, silent socket; the
    // server notices after a while and closes its side (this task is aborted by `cut` or drop).
    tokio::time::sleep(server_closes_after).await;
    drop(outbound);
    let _held_open = inbound;
    std::future::pending::<()>().await;
}

/// Waits until the proxy goes silent; how long until the server side closes (`None` when the
/// proxy is gone).
async fn went_silent(silence: &mut tokio::sync::watch::Receiver<Option<Duration>>) -> Option<Duration> {
    silence.wait_for(Option::is_some).await.ok().map(|after| after.unwrap_or_default())
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

    #[tokio::test]
    async fn a_trap_silences_the_one_connection_that_sends_its_bytes_after_forwarding_them() {
        let proxy = Proxy::start(&echo().await).await.expect("proxy");
        let mut other = TcpStream::connect(proxy.address()).await.expect("connect");
        let mut victim = TcpStream::connect(proxy.address()).await.expect("connect");
        proxy.silence_after(b"COMMIT", Duration::from_millis(100));
        assert_eq!(round_trip(&mut victim).await.expect("no marker yet"), b"ping");
        let mut buf = [0u8; 6];
        victim.write_all(b"COMM").await.expect("write");
        victim.read_exact(&mut buf[..4]).await.expect("half the marker: still forwarded both ways");
        victim.write_all(b"IT").await.expect("write");
        let read = tokio::time::timeout(Duration::from_millis(700), victim.read(&mut buf)).await;
        assert!(read.is_err(), "the marker went through, the answer did not: {read:?}");
        assert_eq!(proxy.sprung(), 1);
        other.write_all(b"COMMIT").await.expect("write");
        other.read_exact(&mut buf).await.expect("one-shot: other connections are not affected");
        assert_eq!(&buf, b"COMMIT");
        assert_eq!(proxy.sprung(), 1);
    }

    #[tokio::test]
    async fn a_silent_path_carries_nothing_and_reports_nothing_until_restored() {
        let proxy = Proxy::start(&echo().await).await.expect("proxy");
        let mut open = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(round_trip(&mut open).await.expect("through the proxy"), b"ping");

        proxy.silence(Duration::from_millis(100));
        open.write_all(b"ping").await.expect("a silent path accepts writes");
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_millis(700), open.read(&mut buf)).await;
        assert!(read.is_err(), "no answer, no close, no reset: {read:?}");
        let mut new = TcpStream::connect(proxy.address()).await.expect("connects");
        let read = tokio::time::timeout(Duration::from_millis(300), new.read(&mut buf)).await;
        assert!(read.is_err(), "a new connection hears nothing either: {read:?}");

        proxy.restore();
        let mut again = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(round_trip(&mut again).await.expect("restored"), b"ping");
        let read = tokio::time::timeout(Duration::from_millis(300), open.read(&mut buf)).await;
        assert!(read.is_err(), "a connection that went silent stays silent: {read:?}");
    }
}
