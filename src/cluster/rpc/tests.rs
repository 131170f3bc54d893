//! The rpc client and server over real loopback sockets, with skewed clocks.

use super::auth::{ClientHandshake, Secret};
use super::client::{Pool, RpcError};
use super::frame::FrameCodec;
use super::message::{Message, Request, Response};
use super::server::{self, Handler, Immediate};
use super::RpcSettings;
use crate::client_threads::ClientThreads;
use crate::time::HybridClock;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

const SECOND: i64 = 1_000_000;

struct Echo;

impl Handler for Echo {
    fn immediate(&self, _body: Request) -> Immediate {
        Immediate::Reply(Response::Done("ran".into()))
    }

    async fn request(self: Arc<Self>, _body: Request) -> Response {
        Response::Done("ran".into())
    }

    fn swim(&self, _data: Bytes) {}
}

/// Answers everything at once but `SyncForget`, which it never answers.
struct Stalls;

impl Handler for Stalls {
    fn immediate(&self, body: Request) -> Immediate {
        match body {
            Request::SyncForget { .. } => Immediate::Task(body),
            _ => Immediate::Reply(Response::Done("ran".into())),
        }
    }

    async fn request(self: Arc<Self>, _body: Request) -> Response {
        std::future::pending().await
    }

    fn swim(&self, _data: Bytes) {}
}

fn settings(clock: Arc<HybridClock>) -> Arc<RpcSettings> {
    settings_timing_out(clock, Duration::from_secs(2))
}

fn settings_timing_out(clock: Arc<HybridClock>, timeout: Duration) -> Arc<RpcSettings> {
    Arc::new(RpcSettings {
        secret: Secret::new("s"),
        cluster: "kai".into(),
        node: "127.0.0.1:1".into(),
        timeout,
        max_connections: 16,
        bind: None,
        clock,
        max_clock_skew: Duration::from_secs(1),
        upgrade: Arc::new(crate::cluster::upgrade::Upgrade::in_memory()),
        tls: super::tls::PeerTls::Off,
    })
}

/// A server whose wall clock runs `skew` µs off; returns its address and clock.
async fn server(skew: i64) -> (SocketAddr, Arc<HybridClock>) {
    server_with(Echo, skew).await
}

async fn server_with(handler: impl Handler, skew: i64) -> (SocketAddr, Arc<HybridClock>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = Arc::new(HybridClock::skewed(skew));
    tokio::spawn(server::serve(
        listener,
        settings(Arc::clone(&clock)),
        Arc::new(handler),
        Arc::new(ClientThreads::start(1).unwrap()),
    ));
    (addr, clock)
}

#[tokio::test]
async fn a_call_never_answered_times_out_and_its_connection_serves_on() {
    let timeout = Duration::from_millis(300);
    let pool = Pool::new(settings_timing_out(Arc::new(HybridClock::new()), timeout));
    let (addr, _) = server_with(Stalls, 0).await;
    let done = |reply: Response| matches!(reply, Response::Done(ref text) if text == "ran");
    assert!(done(pool.call(addr, Request::SyncDigests).await.unwrap()));
    let started = std::time::Instant::now();
    let unanswered = Request::SyncForget { keys: Vec::new() };
    let never = Duration::from_secs(5);
    let stalled = tokio::time::timeout(never, pool.call(addr, unanswered));
    let (stalled, answered) = tokio::join!(stalled, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pool.call(addr, Request::SyncDigests).await
    });
    let waited = started.elapsed();
    let stalled = stalled.expect("the unanswered call was never failed");
    assert!(
        matches!(stalled, Err(RpcError::Timeout(a)) if a == addr),
        "{stalled:?}"
    );
    // The timeout, give or take the sweep's period and a clock tick; never much later.
    assert!(
        waited >= timeout - Duration::from_millis(20) && waited < timeout * 2,
        "{waited:?}"
    );
    // A call sent while the other waited was answered, and the connection still serves.
    assert!(done(answered.unwrap()));
    assert!(done(pool.call(addr, Request::SyncDigests).await.unwrap()));
}

#[tokio::test]
async fn peers_30_seconds_off_are_served_and_their_offsets_measured() {
    let pool = Pool::new(settings(Arc::new(HybridClock::new())));
    for skew in [30 * SECOND, -30 * SECOND] {
        let (addr, _) = server(skew).await;
        for _ in 0..3 {
            let reply = pool.call(addr, Request::SyncDigests).await.unwrap();
            assert!(matches!(reply, Response::Done(ref text) if text == "ran"));
        }
        let offset = pool.offsets().get(addr).unwrap();
        assert!(
            (offset.offset_us - skew).abs() < SECOND / 2,
            "measured {offset:?} for a skew of {skew} µs"
        );
    }
    assert_eq!(pool.offsets().all().len(), 2);
}

/// Completes a handshake by hand; returns the framed stream and the server's clock reading.
async fn handshake(addr: SocketAddr) -> (Framed<TcpStream, FrameCodec<Message>>, u64) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::<Message>::default());
    let secret = Secret::new("s");
    let client = ClientHandshake::new(&secret, "kai", super::auth::test_build(3, 4));
    framed.send(client.hello("127.0.0.1:2")).await.unwrap();
    let challenge = framed.next().await.unwrap().unwrap();
    let Message::Challenge { now_us, .. } = challenge else {
        panic!("{challenge:?}")
    };
    framed
        .send(client.challenge(&challenge).unwrap())
        .await
        .unwrap();
    assert!(matches!(framed.next().await, Some(Ok(Message::Welcome))));
    (framed, now_us)
}

async fn answer(
    framed: &mut Framed<TcpStream, FrameCodec<Message>>,
    deadline_us: u64,
    hlc: u64,
) -> Response {
    let request = Message::Request {
        id: 9,
        deadline_us,
        hlc,
        body: Request::SyncDigests,
    };
    framed.send(request).await.unwrap();
    match framed.next().await.unwrap().unwrap() {
        Message::Response { id: 9, body, .. } => body,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn deadlines_are_judged_on_the_receivers_clock() {
    // The server runs 30 s ahead; deadlines are expressed in its clock.
    let (addr, clock) = server(30 * SECOND).await;
    let (mut framed, server_now) = handshake(addr).await;
    // Due in a second on the server's clock (29 s in the past on ours): runs.
    let reply = answer(&mut framed, server_now + SECOND as u64, 0).await;
    assert!(matches!(reply, Response::Done(_)), "{reply:?}");
    // Two seconds overdue on the server's clock (28 s in the future on ours): refused,
    // as a write held up by a partition must be.
    let reply = answer(&mut framed, server_now - 2 * SECOND as u64, 0).await;
    match reply {
        Response::Error(text) => assert!(text.contains("after its deadline"), "{text}"),
        other => panic!("a late request ran: {other:?}"),
    }
    // The sender's hybrid clock pulls the server's forward.
    let ahead = clock.wall_micros() + 60 * SECOND as u64;
    answer(&mut framed, clock.wall_micros() + SECOND as u64, ahead).await;
    assert!(clock.stamp() > ahead);
}

#[tokio::test]
async fn the_failure_detectors_datagrams_are_written_ahead_of_queued_requests() {
    let (requests, queue) = tokio::sync::mpsc::channel(16);
    let (datagrams, urgent) = tokio::sync::mpsc::channel(16);
    for _ in 0..10 {
        requests.send(Message::Welcome).await.unwrap();
    }
    let swim = || Message::Swim {
        hlc: 1,
        data: Bytes::from_static(b"probe"),
    };
    datagrams.send(swim()).await.unwrap();
    datagrams.send(swim()).await.unwrap();
    drop((requests, datagrams));
    let mut written: Vec<Message> = Vec::new();
    super::write_batched(&mut written, queue, Some(urgent)).await;
    let kinds: Vec<bool> = (written.iter())
        .map(|m| matches!(m, Message::Swim { .. }))
        .collect();
    assert_eq!(kinds.len(), 12);
    assert!(kinds[..2].iter().all(|&swim| swim), "{written:?}");
    assert!(!kinds[2..].iter().any(|&swim| swim), "{written:?}");
}
