//! Throughput and history-read latency of a history store.
//!
//! Writes `--messages` messages into `--rooms` rooms at once (each room keeps `--window` calls
//! in flight, `--per-call` messages per call, acks awaited in order, as a room owner does), and
//! reports persisted (acknowledged) messages/s and ack latency. Then it measures `latest(50)`
//! ("history on join") with `--readers` concurrent readers, idle and while writers keep going.
//!
//! ```sh
//! scripts/cassandra.sh start
//! cargo run --release -p history --example cql_bench -- --store cql --write-mode batch
//! cargo run --release -p history --example cql_bench -- --store cql --write-mode individual
//! cargo run --release -p history --example cql_bench -- --store embedded
//! ```
//!
//! The CQL run uses a fresh keyspace `parley_bench_<unix time>` and drops it at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use cluster_proto::{ChatMessage, RoomId, UserId};
use hdrhistogram::Histogram;
use history::scylla::{ScyllaConfig, ScyllaStore, WriteMode};
use history::{EmbeddedStore, HistoryStore, WriteOp};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StoreKind {
    Embedded,
    Cql,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Batch,
    Individual,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "cql")]
    store: StoreKind,
    /// CQL contact point.
    #[arg(long, default_value = "127.0.0.1:9042")]
    contact: String,
    #[arg(long, value_enum, default_value = "batch")]
    write_mode: Mode,
    /// Rooms written concurrently.
    #[arg(long, default_value_t = 64)]
    rooms: u64,
    /// Messages written in total.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Calls in flight per room.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Messages per call.
    #[arg(long, default_value_t = 1)]
    per_call: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 120)]
    text_bytes: usize,
    /// latest(50) calls per read phase.
    #[arg(long, default_value_t = 5_000)]
    reads: u64,
    /// Concurrent readers.
    #[arg(long, default_value_t = 8)]
    readers: u64,
    /// CQL write requests in flight (ScyllaConfig::write_concurrency).
    #[arg(long, default_value_t = 64)]
    write_concurrency: usize,
    /// Write rate (msgs/s) kept up while reads are measured under load; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    load_rate: u64,
    /// Send messages without a client message id (no dedupe rows).
    #[arg(long)]
    no_client_ids: bool,
}

fn msg(room: &RoomId, seq: u64, text: &str, client_id: bool) -> ChatMessage {
    ChatMessage {
        id: ChatMessage::make_id(room, seq),
        room_id: room.clone(),
        seq,
        user_id: UserId::new(&format!("user{}", seq % 7)).expect("user id"),
        username: "Bench User".into(),
        text: text.to_owned(),
        attachments: "[]".into(),
        timestamp: seq as i64,
        client_msg_id: client_id.then(|| format!("cm-{seq}")),
    }
}

fn room_id(i: u64) -> RoomId {
    RoomId::new(&format!("bench-room-{i}")).expect("room id")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Records an acknowledged call; a failed one is reported and counts as nothing persisted.
fn settle(
    r: Result<(), history::StoreError>,
    n: u64,
    t0: Instant,
    hist: &Mutex<Histogram<u64>>,
) -> u64 {
    match r {
        Ok(()) => {
            let _ = hist
                .lock()
                .map(|mut h| h.record(t0.elapsed().as_micros() as u64));
            n
        }
        Err(e) => {
            eprintln!("write failed: {e}");
            0
        }
    }
}

/// Writes until `stop` or `total` messages; returns (messages acked, elapsed, ack histogram µs).
async fn write_load(
    store: Arc<dyn HistoryStore>,
    args: &Args,
    start_seq: Arc<Vec<AtomicU64>>,
    total: u64,
    stop: Arc<AtomicBool>,
    rate: u64,
) -> (u64, Duration, Histogram<u64>) {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let text: String = "x".repeat(args.text_bytes);
    let per_room = total.div_ceil(args.rooms);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.rooms {
        let (store, hist, text, seqs, stop) = (
            store.clone(),
            hist.clone(),
            text.clone(),
            start_seq.clone(),
            stop.clone(),
        );
        let (window, per_call, ids) = (args.window, args.per_call, !args.no_client_ids);
        let rooms = args.rooms;
        tasks.push(tokio::spawn(async move {
            let room = room_id(i);
            let mut inflight = std::collections::VecDeque::new();
            let mut done = 0u64;
            let mut sent = 0u64;
            while sent < per_room && !stop.load(Ordering::Relaxed) {
                if rate > 0 {
                    // Pace this room to its share of the rate.
                    let due =
                        started + Duration::from_secs_f64(sent as f64 * rooms as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let first = seqs[i as usize].load(Ordering::Relaxed) + 1;
                let n = per_call.min(per_room - sent);
                let ops = (first..first + n).map(|s| WriteOp::Message(msg(&room, s, &text, ids)));
                inflight.push_back((Instant::now(), n, store.submit(ops.collect())));
                seqs[i as usize].store(first + n - 1, Ordering::Relaxed);
                sent += n;
                if inflight.len() >= window {
                    if let Some((t0, n, ticket)) = inflight.pop_front() {
                        done += settle(ticket.await, n, t0, &hist);
                    }
                }
            }
            while let Some((t0, n, ticket)) = inflight.pop_front() {
                done += settle(ticket.await, n, t0, &hist);
            }
            done
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("writer task");
    }
    let elapsed = started.elapsed();
    let h = hist.lock().map(|h| h.clone()).expect("histogram lock");
    (acked, elapsed, h)
}

async fn read_load(store: Arc<dyn HistoryStore>, args: &Args) -> Histogram<u64> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let per_reader = args.reads / args.readers.max(1);
    let mut tasks = Vec::new();
    for r in 0..args.readers {
        let (store, hist, rooms) = (store.clone(), hist.clone(), args.rooms);
        tasks.push(tokio::spawn(async move {
            let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (r + 1);
            for _ in 0..per_reader {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let room = room_id(x % rooms);
                let t0 = Instant::now();
                match store.latest(&room, 50).await {
                    Ok(_) => {
                        let us = t0.elapsed().as_micros() as u64;
                        let _ = hist.lock().map(|mut h| h.record(us));
                    }
                    Err(e) => eprintln!("latest failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("reader task");
    }
    let h = hist.lock().map(|h| h.clone()).expect("histogram lock");
    h
}

fn report_reads(label: &str, h: &Histogram<u64>) {
    println!(
        "latest(50) {label}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        h.len(),
        ms(h, 0.5),
        ms(h, 0.99),
        h.max() as f64 / 1000.0
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let cfg = ScyllaConfig {
        contact_points: vec![args.contact.clone()],
        keyspace: format!("parley_bench_{unix}"),
        write_mode: match args.write_mode {
            Mode::Batch => WriteMode::Batch,
            Mode::Individual => WriteMode::Individual,
        },
        write_concurrency: args.write_concurrency,
        request_timeout: Duration::from_secs(10),
        ..ScyllaConfig::default()
    };
    let store: Arc<dyn HistoryStore> = match args.store {
        StoreKind::Embedded => EmbeddedStore::open(tmp.path())?,
        StoreKind::Cql => ScyllaStore::connect(&cfg).await?,
    };
    println!(
        "store={:?} mode={:?} rooms={} messages={} window={} per_call={} text={} B",
        args.store,
        args.write_mode,
        args.rooms,
        args.messages,
        args.window,
        args.per_call,
        args.text_bytes
    );
    let seqs: Arc<Vec<AtomicU64>> = Arc::new((0..args.rooms).map(|_| AtomicU64::new(0)).collect());
    // Every room is claimed first, as the room actor does when it loads a room.
    for i in 0..args.rooms {
        store.claim(&room_id(i)).await?;
    }

    let never = Arc::new(AtomicBool::new(false));
    let (acked, elapsed, h) =
        write_load(store.clone(), &args, seqs.clone(), args.messages, never, 0).await;
    println!(
        "writes: {acked} msgs in {:.2} s = {:.0} msgs/s persisted; ack p50={:.2} ms p99={:.2} ms",
        elapsed.as_secs_f64(),
        acked as f64 / elapsed.as_secs_f64(),
        ms(&h, 0.5),
        ms(&h, 0.99)
    );

    report_reads("idle", &read_load(store.clone(), &args).await);

    // Reads while writers run flat out.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop, seqs) = (store.clone(), stop.clone(), seqs.clone());
        let args = Args::parse();
        let rate = args.load_rate;
        tokio::spawn(async move { write_load(store, &args, seqs, u64::MAX / 2, stop, rate).await })
    };
    let reads = read_load(store.clone(), &args).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, elapsed, _) = writer.await?;
    let label = match args.load_rate {
        0 => "under write load (flat out)".to_string(),
        r => format!("under write load ({r} msgs/s offered)"),
    };
    report_reads(&label, &reads);
    println!(
        "  (concurrent writes: {:.0} msgs/s)",
        acked as f64 / elapsed.as_secs_f64()
    );

    store.shutdown().await;
    drop(store);
    if let StoreKind::Cql = args.store {
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(&args.contact)
            .build()
            .await?;
        let mut drop_ks =
            scylla::statement::Statement::new(format!("DROP KEYSPACE IF EXISTS {}", cfg.keyspace));
        drop_ks.set_request_timeout(Some(Duration::from_secs(60)));
        session.query_unpaged(drop_ks, &[]).await?;
    }
    Ok(())
}
