//! Outgoing rpc: authenticated, pipelined connections per peer, opened on first use and
//! re-opened after they break. Every call carries an id and is bounded by `rpc.timeout`:
//! each connection sweeps its calls past their deadline, instead of each call arming a
//! timer of its own (three clock reads and a timer-wheel entry per call).
//!
//! Calls from the multi-threaded runtime share one connection per peer. A thread running a
//! runtime of its own (a client thread) gets its own lane: connections whose reader and
//! writer run on that thread, so a call and its reply wake no other thread. Through a
//! connection of another thread, each hop was a wake-up, and a 3-node cluster's gets at 10
//! client connections fell by a quarter.

use super::auth::{ClientHandshake, HandshakeError};
use super::frame::FrameCodec;
use super::message::{Message, Request, Response};
use super::offsets::{ClockOffset, ClockOffsets};
use super::tls::{self, Dialled, PeerStream};
use super::RpcSettings;
use crate::cluster::fast_map::FastMap;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}: timed out")]
    Timeout(SocketAddr),
    #[error("{0}: {1}")]
    Unreachable(SocketAddr, String),
    #[error("{0}: connection lost")]
    Lost(SocketAddr),
    #[error("{0}: {1}")]
    Older(SocketAddr, super::v3::Inexpressible),
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
}

impl ConnectError {
    /// The peer and this node disagree (secret, cluster, certificates): worth a log line.
    fn is_refusal(&self) -> bool {
        match self {
            ConnectError::Io(_) => false,
            ConnectError::Handshake(err) => err.is_authentication(),
            ConnectError::Tls(err) => crate::tls::is_tls_refusal(err),
        }
    }
}

/// After a failed connect, calls to that peer fail at once for this long instead of each
/// waiting for its own connect to fail.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// Lanes for threads with a runtime of their own, per peer (beyond that, they share):
/// bounds the connections a peer's `rpc.max_connections` has to admit from this node.
const THREAD_LANES: usize = 8;
/// How often a connection's replies feed the peer's clock-offset estimate.
const OFFSET_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// Requests queued per peer connection before callers wait.
const SEND_QUEUE: usize = 4096;
/// SWIM datagrams queued per peer connection; more are dropped, as a lost datagram is.
const URGENT_QUEUE: usize = 256;

/// A call awaiting its reply.
struct Waiting {
    reply: oneshot::Sender<Result<Response, RpcError>>,
    /// When the request left (our wall clock, µs) if its reply is to be the connection's
    /// next clock-offset sample, else 0.
    sent_us: u64,
    /// When the sweep fails the call (coarse monotonic ms).
    deadline_ms: u64,
}

/// Calls awaiting a reply, by id.
type Pending = Arc<Mutex<FastMap<u64, Waiting>>>;

fn coarse_ms() -> u64 {
    crate::time::coarse_monotonic().as_millis() as u64
}

struct Connection {
    outgoing: mpsc::Sender<Message>,
    /// Failure-detector datagrams, written ahead of `outgoing`.
    urgent: mpsc::Sender<Message>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    /// Added to a deadline to put it on the peer's clock: the measured offset plus half
    /// its round trip (µs), refreshed with each sample, read without a lock per call.
    deadline_shift_us: Arc<AtomicI64>,
    /// The peer protocol the connection speaks.
    protocol: u32,
    /// When (coarse monotonic ms) the next call is to carry a clock-offset sample.
    next_sample_ms: AtomicU64,
}

impl Connection {
    /// Whether this call's reply is the next clock-offset sample: one per interval, so
    /// the other calls read no precise clock (60-80 ns each on the test VM).
    fn sample_due(&self) -> bool {
        let now_ms = coarse_ms();
        let due = self.next_sample_ms.load(Ordering::Relaxed);
        let next = now_ms + OFFSET_SAMPLE_INTERVAL.as_millis() as u64;
        now_ms >= due
            && (self.next_sample_ms)
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

fn deadline_shift(offset: Option<ClockOffset>) -> i64 {
    offset.map_or(0, |o| o.offset_us + (o.rtt_us / 2) as i64)
}

/// The calling thread's lane: 0 on the multi-threaded runtime, else one of 1..=THREAD_LANES,
/// fixed for the thread's life.
fn lane() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: std::cell::OnceCell<usize> = const { std::cell::OnceCell::new() };
    }
    LANE.with(|lane| {
        *lane.get_or_init(|| match tokio::runtime::Handle::try_current() {
            Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::CurrentThread => {
                1 + NEXT.fetch_add(1, Ordering::Relaxed) % THREAD_LANES
            }
            _ => 0,
        })
    })
}

type SharedSlot = Arc<tokio::sync::Mutex<PeerSlot>>;

/// A peer and lane's connection as last opened, read without waiting (`live`), and the
/// slot whose lock serializes opening the next.
#[derive(Default)]
struct Lane {
    live: Option<Arc<Connection>>,
    slot: SharedSlot,
}

#[derive(Default)]
struct PeerSlot {
    connection: Option<Arc<Connection>>,
    retry_after: Option<Instant>,
}

pub struct Pool {
    transport: Arc<RpcSettings>,
    offsets: Arc<ClockOffsets>,
    /// By peer and lane (0: the multi-threaded runtime's).
    peers: Mutex<FastMap<(SocketAddr, usize), Lane>>,
    next_id: AtomicU64,
    /// Peers whose refusal was logged already (once per peer).
    refused: Mutex<HashSet<SocketAddr>>,
}

impl Pool {
    pub fn new(transport: Arc<RpcSettings>) -> Self {
        Pool {
            offsets: Arc::new(ClockOffsets::new(transport.max_clock_skew)),
            transport,
            peers: Mutex::default(),
            next_id: AtomicU64::new(1),
            refused: Mutex::new(HashSet::new()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.transport.timeout
    }

    /// Each peer's clock offset as last measured.
    pub fn offsets(&self) -> &ClockOffsets {
        &self.offsets
    }

    /// Sends `body` to `peer` and waits for its reply, all within `rpc.timeout` (and the
    /// connection's sweep interval).
    pub async fn call(&self, peer: SocketAddr, body: Request) -> Result<Response, RpcError> {
        let clock = &self.transport.clock;
        let timeout = self.transport.timeout;
        let started_ms = coarse_ms();
        let started_us = clock.coarse_wall_micros();
        let left = || timeout.saturating_sub(Duration::from_millis(coarse_ms() - started_ms));
        let connection = match self.live(peer) {
            Some(connection) => connection,
            // Boxed: the common path's future stays small, and is moved more than once.
            None => match Box::pin(tokio::time::timeout(timeout, self.connection(peer))).await {
                Ok(connection) => connection?,
                Err(_) => return Err(RpcError::Timeout(peer)),
            },
        };
        if connection.protocol <= super::v3::PROTOCOL {
            super::v3::expressible(&body).map_err(|err| RpcError::Older(peer, err))?;
        }
        // The deadline on the peer's clock, widened by the offset's uncertainty.
        let shift = connection.deadline_shift_us.load(Ordering::Relaxed);
        let deadline_us =
            (started_us + self.transport.timeout.as_micros() as u64).saturating_add_signed(shift);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let sent_us = if connection.sample_due() {
            clock.wall_micros()
        } else {
            0
        };
        let waiting = Waiting {
            reply,
            sent_us,
            deadline_ms: started_ms + timeout.as_millis() as u64,
        };
        lock(&connection.pending).insert(id, waiting);
        // Forget the id however this call ends (reply, timeout, or the caller going away).
        let _forget = Forget(&connection.pending, id);
        let request = Message::Request {
            id,
            deadline_us,
            hlc: clock.peek(),
            body,
        };
        match connection.outgoing.try_send(request) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(RpcError::Lost(peer)),
            // A full queue: wait for room within what is left of the timeout.
            Err(mpsc::error::TrySendError::Full(request)) => {
                let send = connection.outgoing.send(request);
                match Box::pin(tokio::time::timeout(left(), send)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(RpcError::Lost(peer)),
                    Err(_) => return Err(RpcError::Timeout(peer)),
                }
            }
        }
        answer.await.unwrap_or(Err(RpcError::Lost(peer)))
    }

    /// The peer's live connection on this thread's lane, if one is open: no lock to wait
    /// for, no timer.
    fn live(&self, peer: SocketAddr) -> Option<Arc<Connection>> {
        let peers = lock(&self.peers);
        let live = peers.get(&(peer, lane()))?.live.as_ref()?;
        live.alive.load(Ordering::Acquire).then(|| Arc::clone(live))
    }

    /// Fire-and-forget (SWIM): dropped if the peer cannot be reached right now.
    pub fn send(self: &Arc<Self>, peer: SocketAddr, data: Bytes) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let timeout = pool.transport.timeout;
            let _ = tokio::time::timeout(timeout, async {
                if let Ok(connection) = pool.connection(peer).await {
                    let hlc = pool.transport.clock.peek();
                    let _ = connection.urgent.try_send(Message::Swim { hlc, data });
                }
            })
            .await;
        });
    }

    async fn connection(&self, peer: SocketAddr) -> Result<Arc<Connection>, RpcError> {
        let lane = lane();
        let slot = {
            let mut peers = lock(&self.peers);
            Arc::clone(&peers.entry((peer, lane)).or_default().slot)
        };
        // One connect per peer and lane at a time; other callers wait for its result.
        let mut slot = slot.lock().await;
        if let Some(connection) = &slot.connection {
            if connection.alive.load(Ordering::Acquire) {
                return Ok(Arc::clone(connection));
            }
        }
        if slot.retry_after.is_some_and(|t| Instant::now() < t) {
            return Err(RpcError::Unreachable(peer, "recently failed".into()));
        }
        match self.connect(peer).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                slot.connection = Some(Arc::clone(&connection));
                if let Some(entry) = lock(&self.peers).get_mut(&(peer, lane)) {
                    entry.live = Some(Arc::clone(&connection));
                }
                slot.retry_after = None;
                lock(&self.refused).remove(&peer);
                Ok(connection)
            }
            Err(reason) => {
                slot.connection = None;
                slot.retry_after = Some(Instant::now() + RECONNECT_BACKOFF);
                Err(RpcError::Unreachable(peer, reason.to_string()))
            }
        }
    }

    async fn connect(&self, peer: SocketAddr) -> Result<Connection, ConnectError> {
        let stream = self.dial(peer).await?;
        let connected = match tls::dial(stream, peer, &self.transport.tls).await {
            Ok(Dialled::Plain(stream)) => self.start(stream, peer).await,
            Ok(Dialled::Tls(stream)) => self.start(*stream, peer).await,
            Ok(Dialled::SpeaksPlaintext) => {
                log::debug!("rpc: {peer} does not speak TLS yet; dialling it in plaintext");
                let stream = self.dial(peer).await?;
                self.start(stream, peer).await
            }
            Err(err) => Err(ConnectError::Tls(err)),
        };
        if let Err(err) = &connected {
            if err.is_refusal() && lock(&self.refused).insert(peer) {
                log::warn!("rpc: cannot join peer {peer}: {err}");
            }
        }
        connected
    }

    async fn dial(&self, peer: SocketAddr) -> std::io::Result<TcpStream> {
        let fresh = || match peer {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        let mut socket = fresh()?;
        if let Some(ip) = self
            .transport
            .bind
            .filter(|ip| ip.is_ipv4() == peer.is_ipv4())
        {
            // A hostname that is not a local address (NAT): let the kernel choose.
            if socket.bind(SocketAddr::new(ip, 0)).is_err() {
                socket = fresh()?;
            }
        }
        let stream = socket.connect(peer).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Runs the cluster handshake on a fresh stream and starts its reader and writer.
    async fn start<S: PeerStream>(
        &self,
        stream: S,
        peer: SocketAddr,
    ) -> Result<Connection, ConnectError> {
        let mut framed = Framed::new(stream, FrameCodec::<Message>::default());
        let protocol = self.handshake(&mut framed, peer).await?;
        framed.codec_mut().protocol = protocol;
        let (sink, mut stream) = framed.split();
        let (outgoing, queue) = mpsc::channel::<Message>(SEND_QUEUE);
        let (urgent, urgent_queue) = mpsc::channel::<Message>(URGENT_QUEUE);
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(super::write_batched(sink, queue, Some(urgent_queue)));
        tokio::spawn(sweep_expired(
            Arc::clone(&pending),
            Arc::clone(&alive),
            peer,
            self.transport.timeout,
        ));
        let (reader_pending, reader_alive) = (Arc::clone(&pending), Arc::clone(&alive));
        let (clock, offsets) = (Arc::clone(&self.transport.clock), Arc::clone(&self.offsets));
        let deadline_shift_us = Arc::new(AtomicI64::new(deadline_shift(self.offsets.get(peer))));
        let shift = Arc::clone(&deadline_shift_us);
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Response {
                    id,
                    now_us,
                    hlc,
                    body,
                } = message
                {
                    clock.observe(hlc);
                    let Some(waiting) = lock(&reader_pending).remove(&id) else {
                        continue;
                    };
                    // One offset sample per interval is plenty; the shared table stays
                    // off the per-reply path.
                    if waiting.sent_us != 0 {
                        offsets.sample(peer, waiting.sent_us, now_us, clock.wall_micros());
                        let best = deadline_shift(offsets.get(peer));
                        shift.store(best, Ordering::Relaxed);
                    }
                    let _ = waiting.reply.send(Ok(body));
                }
            }
            // Broken: later calls reconnect, waiting ones fail now.
            reader_alive.store(false, Ordering::Release);
            lock(&reader_pending).clear();
        });
        Ok(Connection {
            outgoing,
            urgent,
            pending,
            alive,
            deadline_shift_us,
            protocol,
            next_sample_ms: AtomicU64::new(0),
        })
    }

    async fn handshake<S: PeerStream>(
        &self,
        framed: &mut Framed<S, FrameCodec<Message>>,
        peer: SocketAddr,
    ) -> Result<u32, HandshakeError> {
        let transport = &self.transport;
        let local = transport.upgrade.local_build();
        let handshake = ClientHandshake::new(&transport.secret, &transport.cluster, local);
        let sent_us = transport.clock.wall_micros();
        framed.send(handshake.hello(&transport.node)).await?;
        let challenge = framed.next().await.ok_or(HandshakeError::Closed)??;
        let received_us = transport.clock.wall_micros();
        let proof = handshake.challenge(&challenge)?;
        let Message::Challenge {
            now_us,
            protocol,
            build,
            ..
        } = challenge
        else {
            unreachable!("challenge() accepts only a Challenge");
        };
        self.offsets.sample(peer, sent_us, now_us, received_us);
        framed.send(proof).await?;
        match framed.next().await.ok_or(HandshakeError::Closed)?? {
            Message::Welcome => {
                transport.upgrade.record_peer(peer, protocol, build);
                Ok(protocol)
            }
            Message::Refused { reason } => Err(HandshakeError::Refused(reason)),
            _ => Err(HandshakeError::Rejected(
                "unexpected handshake message".into(),
            )),
        }
    }
}

/// Fails a connection's calls past their deadline with `Timeout`, a few times per
/// `timeout`, until the connection breaks (its reader fails the rest as lost).
async fn sweep_expired(
    pending: Pending,
    alive: Arc<AtomicBool>,
    peer: SocketAddr,
    timeout: Duration,
) {
    let period = (timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !alive.load(Ordering::Acquire) {
            return;
        }
        let now_ms = coarse_ms();
        let mut pending = lock(&pending);
        let expired: Vec<u64> = (pending.iter())
            .filter(|(_, waiting)| waiting.deadline_ms <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(waiting) = pending.remove(&id) {
                let _ = waiting.reply.send(Err(RpcError::Timeout(peer)));
            }
        }
    }
}

struct Forget<'a>(&'a Pending, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod lane_tests {
    use super::lane;

    #[test]
    fn threads_with_a_runtime_of_their_own_get_distinct_lanes_and_the_pool_shares_one() {
        let on_own_runtime = || {
            std::thread::spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(async { (lane(), lane()) })
            })
            .join()
            .unwrap()
        };
        let (first, again) = on_own_runtime();
        let (second, _) = on_own_runtime();
        assert_eq!(first, again, "a thread's lane changed");
        assert!(
            first != 0 && second != 0 && first != second,
            "{first} {second}"
        );

        let pool = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let lanes: Vec<usize> = (0..8)
            .map(|_| pool.block_on(pool.spawn(async { lane() })).unwrap())
            .collect();
        assert_eq!(lanes, [0; 8]);
    }
}
