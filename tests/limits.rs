//! Every limit is enforced, and hostile input gets the right error or loses only its own
//! connection: kai stays up and its memory stays bounded.

mod common;

use common::{Client, Kai};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn assert_still_serving(kai: &Kai) {
    let mut client = kai.client();
    client.set("alive", b"yes");
    assert_eq!(client.get("alive").as_deref(), Some(&b"yes"[..]));
}

#[test]
fn max_item_size_is_enforced_and_the_data_swallowed() {
    let kai = Kai::start("max_item_size = \"4KiB\"\n");
    let mut client = kai.client();
    client.set("k", &[b'a'; 4096]);
    let mut request = b"set k 0 0 4097\r\n".to_vec();
    request.extend(vec![b'b'; 4097]);
    request.extend(b"\r\nget k\r\nappend k 0 0 5000 noreply\r\n");
    request.extend(vec![b'c'; 5000]);
    request.extend(b"\r\nversion\r\n");
    client.send(&request);
    assert_eq!(client.line(), "SERVER_ERROR object too large for cache\r\n");
    // The failed set removed the old value, as memcached does.
    assert_eq!(client.line(), "END\r\n");
    assert!(client.line().starts_with("VERSION "));
}

#[test]
fn huge_length_claims_are_refused_without_buffering() {
    let kai = Kai::start("");
    let before = kai.rss_kib();
    let mut client = kai.client();
    client.send(b"set k 0 0 1000000000\r\n");
    assert_eq!(client.line(), "SERVER_ERROR object too large for cache\r\n");
    // Stream 64 MiB of the claimed gigabyte: it is discarded as it arrives.
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..64 {
        client.send(&chunk);
    }
    assert_still_serving(&kai);
    let grown = kai.rss_kib().saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "RSS grew by {grown} KiB while swallowing"
    );
    for claim in ["-1", "2147483648", "99999999999999999999", "1e6"] {
        let reply = kai.client().call(&format!("set k 0 0 {claim}\r\n"));
        assert_eq!(reply, "CLIENT_ERROR bad command line format\r\n", "{claim}");
    }
}

#[test]
fn missing_terminators_and_garbage() {
    let kai = Kai::start("");
    let mut client = kai.client();
    client.send(b"set k 0 0 3\r\nabcXYget k\r\n");
    assert_eq!(client.line(), "CLIENT_ERROR bad data chunk\r\n");
    // The block was taken as 3 bytes plus a (wrong) terminator; what follows is a command.
    assert_eq!(client.line(), "END\r\n");

    // Binary garbage with newlines: errors, never a crash.
    let mut garbage = Vec::new();
    let mut state: u32 = 12345;
    for _ in 0..200_000 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        garbage.push((state >> 16) as u8);
    }
    let mut raw = TcpStream::connect(kai.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.write_all(&garbage);
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    assert_still_serving(&kai);

    // A long line without a newline: refused, that connection closed.
    let mut client = kai.client();
    client.send(&vec![b'z'; 5000]);
    assert_eq!(client.read_to_close(), b"CLIENT_ERROR line too long\r\n");
    assert_still_serving(&kai);
}

#[test]
fn max_connections_is_enforced() {
    let kai = Kai::start("max_connections = 5\n");
    let mut open: Vec<Client> = (0..5).map(|_| kai.client()).collect();
    for client in &mut open {
        assert!(client.call("version\r\n").starts_with("VERSION"));
    }
    let mut refused = kai.client();
    assert_eq!(
        refused.read_to_close(),
        b"SERVER_ERROR too many connections\r\n"
    );
    assert_eq!(open[0].stats("stats")["rejected_connections"], "1");
    drop(open.pop());
    // The slot frees once the server notices the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut client = kai.client();
        client.send(b"version\r\n");
        let mut first = [0u8; 7];
        if client.stream.read_exact(&mut first).is_ok() && &first == b"VERSION" {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_timeout_closes_idle_clients_only() {
    let kai = Kai::start("idle_timeout = \"1s\"\n");
    let mut idle = kai.client();
    let mut busy = kai.client();
    let started = Instant::now();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250));
        assert!(busy.call("version\r\n").starts_with("VERSION"));
    }
    assert_eq!(idle.read_to_close(), b"");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn thousands_of_idle_connections_stay_cheap() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    const IDLE: usize = 5000;
    assert!(
        hard as usize > IDLE + 100,
        "RLIMIT_NOFILE hard limit {hard} is too low"
    );
    let kai = Kai::start("max_connections = 6000\n");
    let before = kai.rss_kib();
    let mut clients: Vec<TcpStream> = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        clients.push(TcpStream::connect(kai.addr).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = kai.stats();
        if stats["curr_connections"].parse::<usize>().unwrap() > IDLE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} connections",
            stats["curr_connections"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_still_serving(&kai);
    let grown = kai.rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "{IDLE} idle connections cost {grown} KiB"
    );
}

#[test]
fn memory_limit_evicts_least_recently_used() {
    let kai = Kai::start("[store]\nmemory_limit = \"2MiB\"\n");
    let mut client = kai.client();
    let value = vec![b'v'; 1000];
    let mut pipeline = Vec::new();
    for i in 0..10_000 {
        pipeline.extend(format!("set key{i} 0 0 1000 noreply\r\n").bytes());
        pipeline.extend(&value);
        pipeline.extend(b"\r\n");
    }
    client.send(&pipeline);
    let stats = client.stats("stats");
    let bytes: u64 = stats["bytes"].parse().unwrap();
    let evictions: u64 = stats["evictions"].parse().unwrap();
    assert_eq!(stats["limit_maxbytes"], (2 << 20).to_string());
    assert!(bytes <= 2 << 20, "{bytes}");
    assert!(evictions > 7000, "{evictions}");
    assert_eq!(client.get("key9999").as_deref(), Some(&value[..]));
    assert_eq!(client.get("key0"), None);
}

#[test]
fn deep_pipelines_are_answered_in_order() {
    let kai = Kai::start("");
    let mut client = kai.client();
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20_000 {
        request.extend(
            format!(
                "set p{i} {i} 0 {}\r\n{i}\r\nget p{i}\r\n",
                i.to_string().len()
            )
            .bytes(),
        );
        expected.extend(
            format!(
                "STORED\r\nVALUE p{i} {i} {}\r\n{i}\r\nEND\r\n",
                i.to_string().len()
            )
            .bytes(),
        );
    }
    // Send from another thread: the replies outgrow the socket buffers.
    let mut writer = client.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&request).unwrap());
    let mut received = vec![0u8; expected.len()];
    client.stream.read_exact(&mut received).unwrap();
    sender.join().unwrap();
    assert!(received == expected, "replies out of order");
}

/// memcached answers any multi-get that fits in memory; kai answers any that fits in its
/// 2 MiB retrieval line (docs/design.md, "Client protocol").
#[test]
fn a_multi_get_takes_as_many_keys_as_its_line_holds() {
    let kai = Kai::start("");
    let mut client = kai.client();
    client.set("k", b"v");
    let keys = |n: usize| vec!["k"; n].join(" ");
    // 18,000 keys in a 36 KiB line, then 200,000 in a 400 KiB line.
    for n in [18_000, 200_000] {
        client.send(format!("get {}\r\n", keys(n)).as_bytes());
        let reply = client.read_until(b"END\r\n");
        assert_eq!(
            reply.len(),
            n * "VALUE k 0 1\r\nv\r\n".len() + 5,
            "{n} keys"
        );
    }
    // The connection goes on.
    assert_eq!(client.get("k").as_deref(), Some(&b"v"[..]));
    // Just past the line limit (all of it read, so the close carries the reply).
    let mut client = kai.client();
    client.send(format!("get {}", keys(1_048_580)).as_bytes());
    assert_eq!(client.read_to_close(), b"CLIENT_ERROR line too long\r\n");
}

/// A client that asks for gigabytes of replies and never reads them holds a few socket
/// buffers' worth of memory, not the replies.
#[test]
fn a_client_that_does_not_read_its_replies_is_held_back_not_buffered() {
    let kai = Kai::start("");
    let mut client = kai.client();
    client.set("big", &vec![b'b'; 1 << 20]);
    let before = kai.rss_kib();
    let mut hogs = Vec::new();
    // One line naming a 1 MiB value 5000 times (5 GiB of reply), and 3000 pipelined gets.
    let mut one_line = TcpStream::connect(kai.addr).unwrap();
    one_line
        .write_all(format!("get {}\r\n", vec!["big"; 5000].join(" ")).as_bytes())
        .unwrap();
    hogs.push(one_line);
    let mut pipelined = TcpStream::connect(kai.addr).unwrap();
    pipelined
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // The server stops reading once its replies back up, so this write may not finish.
    let _ = pipelined.write_all("get big\r\n".repeat(3000).as_bytes());
    hogs.push(pipelined);
    std::thread::sleep(Duration::from_secs(2));
    let grown = kai.rss_kib().saturating_sub(before);
    assert!(
        grown < 48 * 1024,
        "RSS grew by {grown} KiB for unread replies"
    );
    assert_still_serving(&kai);
    drop(hogs);
}

/// Slowloris: a request trickled a byte at a time is cut off after request_timeout, while
/// an idle client (nothing half-sent) stays connected.
#[test]
fn a_request_trickled_byte_by_byte_is_cut_off() {
    let kai = Kai::start("request_timeout = \"1s\"\n");
    let mut idle = kai.client();
    let mut slow = TcpStream::connect(kai.addr).unwrap();
    let started = Instant::now();
    let mut cut_after = None;
    for byte in b"set k 0 0 5\r\nhello\r\n".iter().cycle().take(40) {
        std::thread::sleep(Duration::from_millis(200));
        if slow.write_all(&[*byte]).is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        slow.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        match slow.read(&mut buf) {
            Ok(0) => {
                cut_after = Some(started.elapsed());
                break;
            }
            Ok(n) => panic!("a reply to a trickled request: {:?}", &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                cut_after = Some(started.elapsed());
                break;
            }
        }
        slow.set_nonblocking(false).unwrap();
    }
    let cut_after = cut_after.expect("the trickling client was never cut off");
    assert!(
        cut_after < Duration::from_secs(3),
        "cut off after {cut_after:?}"
    );
    // Idle for as long, but with nothing half-sent: still served.
    assert!(idle.call("version\r\n").starts_with("VERSION"));
}

/// Meta set is not served yet, but its data block must be framed, never run: a value of
/// `delete victim` once deleted `victim`.
#[test]
fn a_meta_set_value_never_runs_as_commands() {
    let kai = Kai::start("");
    let mut client = kai.client();
    client.set("victim", b"safe");
    // Accepted, the block is the value; refused, it is swallowed, never run.
    client.send(b"ms other 13 T0\r\ndelete victim\r\n");
    assert_eq!(client.line(), "HD\r\n");
    client.send(b"ms other 13 MZ\r\ndelete victim\r\nms other 13 Fx\r\ndelete victim\r\n");
    assert_eq!(
        client.line(),
        "CLIENT_ERROR invalid mode for ms M token\r\n"
    );
    assert_eq!(client.line(), "CLIENT_ERROR bad command line format\r\n");
    assert_eq!(client.get("victim").as_deref(), Some(&b"safe"[..]));
    assert_eq!(client.get("other").as_deref(), Some(&b"delete victim"[..]));
    // A value beyond the item limit is discarded as it streams, and (memcached's rule)
    // the key's old value dropped, so a stale one cannot be read back.
    let big = vec![b'z'; 3 << 20];
    client.send(format!("ms victim {}\r\n", big.len()).as_bytes());
    client.send(&big);
    client.send(b"\r\nmn\r\n");
    assert_eq!(client.line(), "SERVER_ERROR object too large for cache\r\n");
    assert_eq!(client.line(), "MN\r\n");
    assert_eq!(client.get("victim"), None);
}
