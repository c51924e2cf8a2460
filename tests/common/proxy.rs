//! A TCP proxy the tests put between a process and a service, to cut or
//! stall the network between them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

struct State {
    target: String,
    stalled: AtomicBool,
    cut: watch::Sender<u64>,
    /// Connections closed by `cut`.
    cut_connections: AtomicU64,
}

impl Proxy {
    /// Listens on 127.0.0.1:`port` and forwards every connection to `target`
    /// (`host:port`).
    pub async fn start(port: u16, target: &str) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let state = Arc::new(State {
            target: target.to_owned(),
            stalled: AtomicBool::new(false),
            cut: watch::channel(0).0,
            cut_connections: AtomicU64::new(0),
        });
        let accept = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(serve(client, Arc::clone(&state)));
                }
            }
        });
        Proxy { port, state, accept }
    }

    /// Closes every open connection (the peers see them drop).
    pub fn cut(&self) {
        self.state.cut.send_modify(|g| *g += 1);
    }

    /// While stalled nothing flows either way and new connections hang, as
    /// when packets are dropped; unstalled, held data flows again.
    pub fn stall(&self, on: bool) {
        self.state.stalled.store(on, Ordering::SeqCst);
    }

    /// Connections `cut` closed so far.
    pub fn cut_connections(&self) -> u64 {
        self.state.cut_connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn serve(client: TcpStream, state: Arc<State>) {
    let mut cut = state.cut.subscribe();
    while state.stalled.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Ok(server) = TcpStream::connect(state.target.as_str()).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let pumps = async { tokio::join!(pump(cr, sw, &state), pump(sr, cw, &state)) };
    tokio::select! {
        _ = pumps => {}
        _ = cut.changed() => {
            state.cut_connections.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, state: &State) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while state.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
