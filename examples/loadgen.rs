//! Load generator for `make bench`: closed-loop memcached-protocol clients spread over one or
//! more servers like a round-robin load balancer (connection i goes to server i mod n), with
//! exact latency percentiles and a count of errors and closed connections.
//!
//! The connections are multiplexed on a few client threads (`--threads`, 2 by default), as
//! memcaslap does: a thread per connection would make 50 client threads compete with the
//! server for the cores, and the latencies would measure the scheduler more than the server.
//!
//! loadgen --servers H:P[,H:P...] --connections N --seconds S --mix get|set|mix|fill
//!         [--keys K] [--value BYTES] [--threads T]
//! Prints: ops/s p50_us p99_us p999_us errors closed client_cpu_us_per_op

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Options {
    servers: Vec<String>,
    connections: usize,
    seconds: u64,
    mix: String,
    keys: u64,
    value: usize,
    threads: usize,
}

fn options() -> Options {
    let mut options = Options {
        servers: vec!["127.0.0.1:11211".into()],
        connections: 50,
        seconds: 10,
        mix: "mix".into(),
        keys: 100_000,
        value: 1024,
        threads: 2,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--servers" => options.servers = value.split(',').map(str::to_string).collect(),
            "--connections" => options.connections = value.parse().expect("--connections"),
            "--seconds" => options.seconds = value.parse().expect("--seconds"),
            "--mix" => options.mix = value,
            "--keys" => options.keys = value.parse().expect("--keys"),
            "--value" => options.value = value.parse().expect("--value"),
            "--threads" => options.threads = value.parse().expect("--threads"),
            other => panic!("unknown option {other}"),
        }
    }
    options.threads = options.threads.clamp(1, options.connections.max(1));
    options
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    closed: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.closed += other.closed;
    }
}

type Reader = BufReader<TcpStream>;

/// One client connection: issues requests until `stop`, reconnecting after a close. With
/// `fill`, connection `seed` sets keys seed-1, seed-1+C, … once each and returns.
async fn client(server: String, seed: u64, options: Arc<Options>, stop: Arc<AtomicBool>) -> Tally {
    let fill = options.mix == "fill";
    let mut next_fill = seed - 1;
    let mut tally = Tally::default();
    let value = vec![b'v'; options.value];
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut connection: Option<Reader> = None;
    let mut line = String::new();
    let mut request = Vec::with_capacity(value.len() + 64);
    while !stop.load(Ordering::Relaxed) {
        let reader = match &mut connection {
            Some(c) => c,
            None => match TcpStream::connect(&server).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    connection.insert(BufReader::new(stream))
                }
                Err(_) => {
                    tally.closed += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // xorshift: cheap, deterministic per connection.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = if fill {
            if next_fill >= options.keys {
                break;
            }
            next_fill += options.connections as u64;
            format!("key:{:012}", next_fill - options.connections as u64)
        } else {
            format!("key:{:012}", rng % options.keys)
        };
        let is_set = match options.mix.as_str() {
            "set" | "fill" => true,
            "get" => false,
            // The high half: the key came from the low bits, and with a key count that is
            // a multiple of 10 the low bits would send every set to a tenth of the keys
            // that no get ever reads.
            _ => (rng >> 32) % 10 == 0,
        };
        request.clear();
        if is_set {
            request.extend_from_slice(format!("set {key} 0 0 {}\r\n", value.len()).as_bytes());
            request.extend_from_slice(&value);
            request.extend_from_slice(b"\r\n");
        } else {
            request.extend_from_slice(format!("get {key}\r\n").as_bytes());
        }
        let started = Instant::now();
        let ok = match reader.get_mut().write_all(&request).await {
            Ok(()) => read_reply(reader, &mut line, is_set).await,
            Err(_) => None,
        };
        match ok {
            Some(true) => {
                let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(micros);
            }
            Some(false) => tally.errors += 1,
            None => {
                tally.closed += 1;
                connection = None;
            }
        }
    }
    tally
}

/// Some(true) for a good reply, Some(false) for an error reply, None when the connection
/// broke.
async fn read_reply(reader: &mut Reader, line: &mut String, is_set: bool) -> Option<bool> {
    line.clear();
    if reader.read_line(line).await.ok()? == 0 {
        return None;
    }
    if is_set {
        return Some(line == "STORED\r\n");
    }
    loop {
        if line == "END\r\n" {
            return Some(true);
        }
        if !line.starts_with("VALUE ") {
            return Some(false);
        }
        let length: usize = line.trim_end().rsplit(' ').next()?.parse().ok()?;
        let mut data = vec![0; length + 2];
        reader.read_exact(&mut data).await.ok()?;
        line.clear();
        if reader.read_line(line).await.ok()? == 0 {
            return None;
        }
    }
}

/// One client thread: its share of the connections on a single-threaded runtime.
fn client_thread(first: usize, options: Arc<Options>, stop: Arc<AtomicBool>) -> Tally {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async {
        let clients: Vec<_> = (first..options.connections)
            .step_by(options.threads)
            .map(|i| {
                let server = options.servers[i % options.servers.len()].clone();
                let (options, stop) = (Arc::clone(&options), Arc::clone(&stop));
                tokio::spawn(client(server, i as u64 + 1, options, stop))
            })
            .collect();
        let mut total = Tally::default();
        for client in clients {
            total.add(client.await.expect("client task"));
        }
        total
    })
}

fn percentile(sorted: &[u32], fraction: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn main() {
    let options = Arc::new(options());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..options.threads)
        .map(|first| {
            let (options, stop) = (Arc::clone(&options), Arc::clone(&stop));
            std::thread::spawn(move || client_thread(first, options, stop))
        })
        .collect();
    let started = Instant::now();
    if options.mix != "fill" {
        std::thread::sleep(Duration::from_secs(options.seconds));
        stop.store(true, Ordering::Relaxed);
    }
    let mut total = Tally::default();
    for thread in threads {
        total.add(thread.join().expect("client thread"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    // The client's own CPU per operation: on a machine the client shares with the servers,
    // (client + servers) CPU per operation times a target rate says how many cores the
    // target needs.
    let cpu_us_per_op = match (own_cpu_seconds(), total.latencies_us.len()) {
        (Some(cpu), ops) if ops > 0 => format!("{:.1}", cpu * 1e6 / ops as f64),
        _ => "n/a".to_string(),
    };
    println!(
        "{:.0} {} {} {} {} {} {}",
        total.latencies_us.len() as f64 / elapsed,
        percentile(&total.latencies_us, 0.5),
        percentile(&total.latencies_us, 0.99),
        percentile(&total.latencies_us, 0.999),
        total.errors,
        total.closed,
        cpu_us_per_op
    );
}

/// This process's user + system CPU time so far (Linux /proc, clock ticks of 1/100 s).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
