//! A TCP proxy for fault tests, between the gateway and an Iggy server (the real one or the
//! fake): it passes bytes, cuts (closes both sides of every connection and closes new ones on
//! arrival), stalls (keeps the sockets open and holds the bytes) or delays each chunk.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Stall,
    Cut,
}

#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    delay: Duration,
    /// Bumped by every cut: a connection opened before it ends.
    generation: u64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            delay: Duration::ZERO,
            generation: 0,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept(listener, upstream, state.clone(), Arc::clone(&open)));
        Self {
            addr,
            state,
            open,
            task,
        }
    }

    /// Connections open through the proxy now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Closes both sides of every connection, and every new one on arrival, until `pass`.
    pub fn cut(&self) {
        self.state.send_modify(|state| {
            state.mode = Mode::Cut;
            state.generation += 1;
        });
    }

    /// Stops forwarding: sockets stay open, bytes are held (and forwarded after `pass`).
    pub fn stall(&self) {
        self.state.send_modify(|state| state.mode = Mode::Stall);
    }

    /// Holds every chunk this long before forwarding it.
    pub fn delay(&self, delay: Duration) {
        self.state.send_modify(|state| state.delay = delay);
    }

    /// Forwards again, at once.
    pub fn pass(&self) {
        self.state.send_modify(|state| {
            state.mode = Mode::Pass;
            state.delay = Duration::ZERO;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    open: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let now = *state.borrow();
        if now.mode == Mode::Cut {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let open = Arc::clone(&open);
        let state = state.subscribe();
        tokio::spawn(async move {
            open.fetch_add(1, Ordering::SeqCst);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pump(client_read, server_write, state.clone(), now.generation),
                pump(server_read, client_write, state, now.generation),
            );
            // Both halves of both sockets are dropped here: the two peers see them closed.
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Copies one direction until end of file, an error, or a cut.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = cut(&mut state, generation) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Held while stalled; dropped with the connection on a cut.
        let delay = loop {
            let now = *state.borrow_and_update();
            if now.generation != generation {
                return;
            }
            if now.mode == Mode::Pass {
                break now.delay;
            }
            if state.changed().await.is_err() {
                return;
            }
        };
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cut(&mut state, generation) => return,
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Resolves once a cut ends connections of `generation`.
async fn cut(state: &mut watch::Receiver<State>, generation: u64) {
    let _ = state.wait_for(|now| now.generation != generation).await;
}
