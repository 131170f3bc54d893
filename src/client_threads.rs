//! The threads that serve connections, memcache clients' and peers' rpc sessions alike: one
//! event loop (a single-threaded runtime) per core, each owning the connections handed to
//! it for their whole life, as memcached's worker threads do. On tokio's work-stealing pool
//! a connection's wake-ups moved between threads; owning them served about 15 % more sets
//! and gets per server CPU second on two cores (docs/design.md, "Client threads").
//! Membership, anti-entropy, handoff and housekeeping stay on the shared pool.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub struct ClientThreads {
    threads: Vec<ClientThread>,
    /// Where the search for the least busy thread starts, so ties take turns.
    next: AtomicUsize,
}

struct ClientThread {
    runtime: Handle,
    /// Connections this thread serves now.
    open: Arc<AtomicUsize>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    joined: Mutex<Option<JoinHandle<()>>>,
}

/// Counts a connection out of its thread however its task ends (panics included).
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClientThreads {
    /// Starts `count` threads (at least one), named `kai-client-N`.
    pub fn start(count: usize) -> io::Result<ClientThreads> {
        let threads = (0..count.max(1))
            .map(|index| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = oneshot::channel::<()>();
                // Dropping the runtime on its own thread cancels the connections still open.
                let joined = std::thread::Builder::new()
                    .name(format!("kai-client-{index}"))
                    .spawn(move || {
                        let _ = runtime.block_on(stopped);
                    })?;
                Ok(ClientThread {
                    runtime: handle,
                    open: Arc::new(AtomicUsize::new(0)),
                    stop: Mutex::new(Some(stop)),
                    joined: Mutex::new(Some(joined)),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ClientThreads {
            threads,
            next: AtomicUsize::new(0),
        })
    }

    /// Hands `stream`, accepted on another runtime, to the thread serving the fewest
    /// connections; `client` runs there until the connection ends. A stream that cannot
    /// be handed over is logged and dropped with `client`.
    pub fn serve<F, Fut>(&self, stream: TcpStream, client: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Leaves the accepting runtime's event loop for the serving thread's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => return log::warn!("cannot hand a connection to a client thread: {e}"),
        };
        let thread = &self.threads[self.least_busy()];
        thread.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(Arc::clone(&thread.open));
        thread.runtime.spawn(async move {
            let _open = open;
            // Registered with this thread's event loop, so its readiness is seen here.
            match TcpStream::from_std(stream) {
                Ok(stream) => client(stream).await,
                Err(e) => log::warn!("cannot serve a connection on a client thread: {e}"),
            }
        });
    }

    fn least_busy(&self) -> usize {
        let count = self.threads.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        (start..start + count)
            .map(|index| index % count)
            .min_by_key(|&index| self.threads[index].open.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// True when every thread ran a task within `limit`: one stuck in a request answers
    /// false, which stops the watchdog's petting.
    pub async fn responsive(&self, limit: Duration) -> bool {
        for thread in &self.threads {
            let ran = thread.runtime.spawn(async {});
            if !matches!(tokio::time::timeout(limit, ran).await, Ok(Ok(()))) {
                return false;
            }
        }
        true
    }

    /// Stops every thread, dropping the connections still open, and waits for them.
    pub fn stop(&self) {
        for thread in &self.threads {
            let stop = thread.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
        }
        for thread in &self.threads {
            let joined = thread
                .joined
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(joined) = joined {
                let _ = joined.join();
            }
        }
    }
}

impl Drop for ClientThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    /// The runtime that accepts, as the listeners' is: streams are registered with it
    /// before they are handed over.
    fn accepting() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    /// A connected pair over loopback: the server's end (accepted on `accepting`, to hand
    /// over) and the client's.
    fn pair(
        accepting: &tokio::runtime::Runtime,
        listener: &std::net::TcpListener,
    ) -> (TcpStream, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let _entered = accepting.enter();
        (TcpStream::from_std(server).unwrap(), client)
    }

    /// Serves a connection that reports its thread's name and then holds the connection
    /// open until its client closes.
    fn serve_reporting(threads: &ClientThreads, stream: TcpStream, names: &mpsc::Sender<String>) {
        let names = names.clone();
        threads.serve(stream, move |mut stream| async move {
            let name = std::thread::current().name().unwrap_or("").to_string();
            names.send(name).unwrap();
            let mut byte = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await;
        });
    }

    #[test]
    fn a_connection_goes_to_the_thread_serving_the_fewest() {
        let threads = ClientThreads::start(2).unwrap();
        let (accepting, listener) = (
            accepting(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let (names, named) = mpsc::channel();
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..4 {
            let (server, client) = pair(&accepting, &listener);
            serve_reporting(&threads, server, &names);
            clients.push(client);
            served.push(named.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        let on = |name: &str, served: &[String]| served.iter().filter(|n| *n == name).count();
        assert_eq!(on("kai-client-0", &served), 2, "{served:?}");
        assert_eq!(on("kai-client-1", &served), 2, "{served:?}");

        // Close both of thread 0's clients: the next two connections both go there.
        for (client, name) in clients.iter().zip(&served) {
            if name == "kai-client-0" {
                client.shutdown(std::net::Shutdown::Both).unwrap();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while threads.threads[0].open.load(Ordering::Relaxed) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "closed clients still counted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for _ in 0..2 {
            let (server, client) = pair(&accepting, &listener);
            serve_reporting(&threads, server, &names);
            clients.push(client);
            let name = named.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(name, "kai-client-0");
        }
    }

    #[test]
    fn a_thread_stuck_in_a_request_is_not_responsive() {
        let threads = ClientThreads::start(2).unwrap();
        let probe = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let limit = Duration::from_millis(200);
        assert!(probe.block_on(threads.responsive(limit)));

        let (accepting, listener) = (
            accepting(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let (server, _client) = pair(&accepting, &listener);
        let (release, released) = mpsc::channel::<()>();
        threads.serve(server, move |_stream| async move {
            // Blocks its thread, as a request stuck on a lock would.
            let _ = released.recv();
        });
        assert!(!probe.block_on(threads.responsive(limit)));
        release.send(()).unwrap();
        assert!(probe.block_on(threads.responsive(Duration::from_secs(5))));
    }

    #[test]
    fn stopping_ends_the_connections_still_open() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let threads = ClientThreads::start(1).unwrap();
        let (accepting, listener) = (
            accepting(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let (server, _client) = pair(&accepting, &listener);
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(Arc::clone(&dropped));
        let (started, start) = mpsc::channel();
        threads.serve(server, move |mut stream| async move {
            let _flag = flag;
            started.send(()).unwrap();
            let mut byte = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await;
        });
        start.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!dropped.load(Ordering::SeqCst));
        threads.stop();
        assert!(
            dropped.load(Ordering::SeqCst),
            "the open connection outlived stop"
        );
        assert_eq!(threads.threads[0].open.load(Ordering::Relaxed), 0);
    }
}
