//! `cargo bench --bench dht`: findValue latency and lookups per second on a 50-node loopback
//! DHT of storeherd's nodes (`storeherd::dht`), with their value trees on tmpfs and on disk.
//!
//! Each node listens on its own loopback address (127.0.0.2, 127.0.0.3, …) so that the
//! per-address store limit applies per node, as between hosts. Node i joins through a random
//! earlier node; then values are published through random nodes (each stored on the k closest
//! nodes), and found through random nodes: one lookup at a time for the latency, then
//! `DHT_BENCH_CONCURRENCY` at once for the rate. Every lookup must find its value: a miss
//! fails the benchmark.
//!
//! Environment: `DHT_BENCH_NODES` (default 50), `DHT_BENCH_VALUES` (200), `DHT_BENCH_LOOKUPS`
//! (2000), `DHT_BENCH_CONCURRENCY` (16), `DHT_BENCH_TMPFS` (default `/dev/shm`),
//! `DHT_BENCH_DISK` (default the temporary directory).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use storeherd::dht::store::TreeValues;
use storeherd::dht::{self, Config, Handle, Id};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Figures {
    join: Duration,
    publish_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    lookups_per_s: f64,
}

async fn start(base: &Path, i: usize) -> Handle {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
    let mut c = Config::new(SocketAddr::new(ip, 0));
    c.lookup_timeout = Duration::from_secs(10);
    let values = Arc::new(TreeValues::new(base.join(format!("node{i}"))).expect("value tree"));
    dht::start(c, values).await.expect("node starts")
}

async fn run(base: &Path, nodes: usize, values: usize, lookups: usize, conc: usize) -> Figures {
    let mut rng = rand::thread_rng();
    let t = Instant::now();
    let mut net: Vec<Handle> = Vec::new();
    for i in 0..nodes {
        let n = start(base, i).await;
        if let Some(seed) = net.get(rng.gen_range(0..net.len().max(1))) {
            n.join(&[seed.local_addr()]).await;
        }
        net.push(n);
    }
    let join = t.elapsed();

    let mut keys: Vec<Id> = Vec::new();
    let t = Instant::now();
    for j in 0..values {
        let k: Id = rand::random();
        let value = format!("Type: data\nvalue {j}\n{}", "x".repeat(1000)).into_bytes();
        let through = &net[rng.gen_range(0..nodes)];
        assert!(
            through.publish(k, value).await > 0,
            "value {j} stored nowhere"
        );
        keys.push(k);
    }
    let publish_per_s = values as f64 / t.elapsed().as_secs_f64();

    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..lookups {
        let k = keys[rng.gen_range(0..keys.len())];
        let n = &net[rng.gen_range(0..nodes)];
        let t = Instant::now();
        assert!(
            n.find_value(k).await.is_some(),
            "a published value not found"
        );
        hist.record(t.elapsed().as_micros() as u64)
            .expect("in range");
    }

    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per_task = lookups / conc;
    for _ in 0..conc {
        let net = net.clone();
        let keys = keys.clone();
        set.spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            for _ in 0..per_task {
                let k = keys[rng.gen_range(0..keys.len())];
                let n = &net[rng.gen_range(0..net.len())];
                assert!(
                    n.find_value(k).await.is_some(),
                    "a published value not found"
                );
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("lookup task");
    }
    let lookups_per_s = (per_task * conc) as f64 / t.elapsed().as_secs_f64();
    for n in &net {
        n.shutdown().await;
    }
    Figures {
        join,
        publish_per_s,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
        lookups_per_s,
    }
}

fn main() {
    let nodes = env_num("DHT_BENCH_NODES", 50).clamp(2, 250);
    let values = env_num("DHT_BENCH_VALUES", 200).max(1);
    let lookups = env_num("DHT_BENCH_LOOKUPS", 2000).max(1);
    let conc = env_num("DHT_BENCH_CONCURRENCY", 16).clamp(1, lookups);
    let tmpfs = std::env::var("DHT_BENCH_TMPFS").unwrap_or_else(|_| "/dev/shm".into());
    let disk = std::env::var("DHT_BENCH_DISK")
        .unwrap_or_else(|_| std::env::temp_dir().to_string_lossy().into_owned());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "{nodes} nodes on loopback, {values} values of ~1 KiB, {lookups} lookups \
         (one at a time, then {conc} at once)"
    );
    println!(
        "{:<8} {:>8} {:>11} {:>9} {:>9} {:>9} {:>11}",
        "trees", "join s", "publish/s", "p50 ms", "p99 ms", "max ms", "lookups/s"
    );
    for (name, dir) in [("tmpfs", tmpfs), ("disk", disk)] {
        let base = tempfile::Builder::new()
            .prefix("dht-bench")
            .tempdir_in(&dir)
            .expect("scratch directory");
        let f = rt.block_on(run(base.path(), nodes, values, lookups, conc));
        println!(
            "{:<8} {:>8.2} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>11.0}",
            name,
            f.join.as_secs_f64(),
            f.publish_per_s,
            f.p50_us as f64 / 1000.0,
            f.p99_us as f64 / 1000.0,
            f.max_us as f64 / 1000.0,
            f.lookups_per_s
        );
    }
}
