//! The running node: the UDP socket, the RPCs it serves, the RPCs it sends, Kademlia's
//! iterative lookups, and the refresh/republish timer.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use super::encoding::Value;
use super::message::{split, Message, Reassembly, Received, MAX_MESSAGE};
use super::routing::{distance, Added, Contact, Table};
use super::state::State;
use super::store::{Meta, Values};
use super::{Config, DhtError, Id, ALPHA, DATA_EXPIRE, K, REFRESH_TIMEOUT, REPLICATE_INTERVAL};

/// Socket buffers the original asks for (`udp_protocol.setBuffer`).
const SOCKET_BUFFER: usize = 256 * 1024;
/// RPCs awaiting a reply, at most.
const MAX_PENDING: usize = 4096;
/// Requests being served at once; more are dropped (the sender retries or times out).
const MAX_SERVING: usize = 256;
/// Split messages being reassembled, and how long one may take.
const MAX_PARTIAL: usize = 64;
const PARTIAL_AGE: Duration = Duration::from_secs(10);
/// Bucket heads being pinged because a newcomer waits for their place.
const MAX_HEAD_PINGS: usize = 64;
/// Contacts of one lookup, RPCs of one lookup, contacts read from one reply.
const MAX_SHORTLIST: usize = 16 * K;
const MAX_LOOKUP_RPCS: usize = 32 * ALPHA;
const MAX_TRIPLES: usize = 4 * K;
/// Peer addresses the store limiter tracks.
const MAX_LIMITED: usize = 4096;
/// Publishes started with [`Handle::publish_detached`] running at once.
const MAX_PUBLISHING: usize = 256;
/// Values republished per refresh, at most.
const MAX_REPUBLISH: usize = 10_000;

/// Why an RPC brought no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("no reply in time")]
    Timeout,
    #[error("too many RPCs in flight")]
    Busy,
    #[error("sending: {0}")]
    Send(String),
    /// The peer's error reply; both strings are printable and short, for the log only.
    #[error("remote error {kind}: {text}")]
    Remote { kind: String, text: String },
}

/// A reply: the responder's node id and its result.
type Reply = Result<(Id, Value), RpcError>;

struct Pending {
    to: SocketAddr,
    reply: oneshot::Sender<Reply>,
}

/// Token buckets per peer IP address.
struct StoreLimiter {
    burst: f64,
    per_second: f64,
    peers: HashMap<IpAddr, (f64, Instant)>,
}

impl StoreLimiter {
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let (burst, rate) = (self.burst, self.per_second);
        let refill = |(tokens, at): (f64, Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() * rate).min(burst)
        };
        if !self.peers.contains_key(&ip) && self.peers.len() >= MAX_LIMITED {
            // Forget the peers whose bucket has refilled: they are owed nothing.
            self.peers.retain(|_, v| refill(*v) < burst);
            if self.peers.len() >= MAX_LIMITED {
                return false;
            }
        }
        let entry = self.peers.entry(ip).or_insert((burst, now));
        let tokens = refill(*entry);
        if tokens < 1.0 {
            *entry = (tokens, now);
            return false;
        }
        *entry = (tokens - 1.0, now);
        true
    }
}

struct Inner {
    id: Id,
    socket: UdpSocket,
    local: SocketAddr,
    config: Config,
    values: Arc<dyn Values>,
    table: Mutex<Table>,
    pending: Mutex<HashMap<Id, Pending>>,
    reassembly: Mutex<Reassembly>,
    limiter: Mutex<StoreLimiter>,
    head_pings: Mutex<HashSet<Id>>,
    serving: Arc<Semaphore>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The runtime the node runs on, for publishes started from other threads.
    rt: tokio::runtime::Handle,
    publishing: Arc<Semaphore>,
}

/// A running node; cheap to clone. Its tasks run on the tokio runtime it was started on.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Printable, short: what a peer's string may become in a log line.
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(120)])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{setsockopt, sockopt};
    let s = std::net::UdpSocket::bind(addr)?;
    // Best effort, as the original: the kernel may cap them.
    let _ = setsockopt(&s, sockopt::RcvBuf, &SOCKET_BUFFER);
    let _ = setsockopt(&s, sockopt::SndBuf, &SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Starts a node on the current tokio runtime: binds its socket, loads its saved id and
/// contacts, and starts serving and its refresh timer. Join the network with
/// [`Handle::join`].
pub async fn start(config: Config, values: Arc<dyn Values>) -> Result<Handle, DhtError> {
    let socket = bind(config.bind).map_err(|source| DhtError::Bind {
        addr: config.bind,
        source,
    })?;
    let local = socket.local_addr().map_err(|source| DhtError::Bind {
        addr: config.bind,
        source,
    })?;
    let saved = match &config.state_path {
        Some(p) => State::load(p)?,
        None => None,
    };
    let (id, contacts) = match saved {
        Some(s) => (s.id, s.contacts),
        None => (rand::thread_rng().gen(), Vec::new()),
    };
    let mut table = Table::new(id);
    for c in contacts {
        table.add(c);
    }
    let inner = Arc::new(Inner {
        id,
        socket,
        local,
        values,
        table: Mutex::new(table),
        pending: Mutex::new(HashMap::new()),
        reassembly: Mutex::new(Reassembly::new(MAX_PARTIAL, PARTIAL_AGE)),
        limiter: Mutex::new(StoreLimiter {
            burst: f64::from(config.store_burst.max(1)),
            per_second: config.store_per_second.max(0.0),
            peers: HashMap::new(),
        }),
        head_pings: Mutex::new(HashSet::new()),
        serving: Arc::new(Semaphore::new(MAX_SERVING)),
        tasks: Mutex::new(Vec::new()),
        rt: tokio::runtime::Handle::current(),
        publishing: Arc::new(Semaphore::new(MAX_PUBLISHING)),
        config,
    });
    let h = Handle { inner };
    let recv = tokio::spawn(h.clone().receive_loop());
    let timer = tokio::spawn(h.clone().refresh_loop());
    h.inner
        .tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend([recv, timer]);
    h.save_state();
    tracing::info!(
        "DHT node {} listening on UDP {local}",
        hex::encode(h.inner.id)
    );
    Ok(h)
}

/// Outcome of an iterative lookup.
enum Found {
    Nodes(Vec<Contact>),
    Value(Vec<u8>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rpc {
    FindNode,
    FindValue,
    Delete,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::FindNode => "findNode",
            Rpc::FindValue => "findValue",
            Rpc::Delete => "delete",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    New,
    Asked,
    Answered,
    Failed,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Contacts in a `findNode`-style reply: `[id, address, port]` triples, bad ones skipped.
fn triples(v: &Value) -> Vec<Contact> {
    let Some(list) = v.as_list() else {
        return Vec::new();
    };
    list.iter()
        .take(MAX_TRIPLES)
        .filter_map(|t| {
            let t = t.as_list()?;
            let [id, ip, port] = t else { return None };
            let id = Id::try_from(id.as_bytes()?).ok()?;
            let ip: IpAddr = std::str::from_utf8(ip.as_bytes()?).ok()?.parse().ok()?;
            let port = u16::try_from(port.as_int()?).ok().filter(|&p| p != 0)?;
            Some(Contact {
                id,
                addr: SocketAddr::new(ip, port),
            })
        })
        .collect()
}

fn triples_value(contacts: &[Contact]) -> Value {
    Value::List(
        contacts
            .iter()
            .map(|c| {
                Value::List(vec![
                    Value::bytes(c.id.to_vec()),
                    Value::bytes(c.addr.ip().to_string()),
                    Value::Int(i64::from(c.addr.port())),
                ])
            })
            .collect(),
    )
}

fn key_arg(args: &[Value]) -> Option<Id> {
    args.first()
        .and_then(Value::as_bytes)
        .and_then(|b| Id::try_from(b).ok())
}

impl Handle {
    pub fn id(&self) -> Id {
        self.inner.id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Contacts in the routing table.
    pub fn contacts(&self) -> usize {
        lock(&self.inner.table).len()
    }

    /// Split messages being reassembled now.
    pub fn partial_messages(&self) -> usize {
        lock(&self.inner.reassembly).in_progress()
    }

    /// Saves the id and contacts (when the node has a state path); errors are logged.
    pub fn save_state(&self) {
        let Some(path) = &self.inner.config.state_path else {
            return;
        };
        let state = State {
            id: self.inner.id,
            contacts: lock(&self.inner.table).all(),
        };
        if let Err(e) = state.save(path) {
            tracing::warn!("saving the DHT node state: {e}");
        }
    }

    /// Stops the node's receiver and timer and saves its state. The socket closes when the
    /// last RPC still running lets go of the node (within [`Config::rpc_timeout`]).
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = lock(&self.inner.tasks).drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        self.save_state();
    }

    /// Joins the network through `seeds` (the `knode` entries): asks each for the nodes
    /// closest to our id, then looks our id up. Returns the contacts known afterwards.
    pub async fn join(&self, seeds: &[SocketAddr]) -> usize {
        let mut set = JoinSet::new();
        for &s in seeds {
            let h = self.clone();
            set.spawn(async move {
                let r = h
                    .rpc(s, "findNode", vec![Value::bytes(h.id().to_vec())])
                    .await;
                (s, r)
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok((_, Ok((_, result)))) => {
                    for c in triples(&result) {
                        self.add_contact(c);
                    }
                }
                Ok((s, Err(e))) => tracing::info!("DHT seed {s}: {e}"),
                Err(_) => {}
            }
        }
        let _ = self.find_node(self.id()).await;
        self.save_state();
        self.contacts()
    }

    /// The k nodes closest to `key` that answered (Kademlia's node lookup).
    pub async fn find_node(&self, key: Id) -> Vec<Contact> {
        match self.lookup_bounded(key, Rpc::FindNode).await {
            Found::Nodes(n) => n,
            Found::Value(_) => Vec::new(),
        }
    }

    /// The value under `key`: from the network, else from this node's own values; `None`
    /// when neither has it within [`Config::lookup_timeout`].
    pub async fn find_value(&self, key: Id) -> Option<Vec<u8>> {
        match self.lookup_bounded(key, Rpc::FindValue).await {
            Found::Value(v) => Some(v),
            Found::Nodes(_) => self.local_get(key).await,
        }
    }

    /// Entangled's iterative store, published by this node now. Returns how many remote
    /// nodes acknowledged it (the value is also kept here when this node is among the k
    /// closest, as the original does).
    pub async fn publish(&self, key: Id, value: Vec<u8>) -> usize {
        self.iterative_store(key, value, self.id(), 0).await
    }

    /// [`Handle::publish`] in the background, callable from any thread (the worker's).
    /// Beyond a bounded number running at once, the publish is dropped with a warning.
    pub fn publish_detached(&self, key: Id, value: Vec<u8>) {
        let Ok(permit) = self.inner.publishing.clone().try_acquire_owned() else {
            tracing::warn!(key = %hex::encode(key), "too many DHT publishes running; dropped");
            return;
        };
        let h = self.clone();
        self.inner.rt.spawn(async move {
            let n = h.publish(key, value).await;
            tracing::debug!(key = %hex::encode(key), "published to {n} DHT nodes");
            drop(permit);
        });
    }

    /// Entangled's iterative delete: asks the nodes close to `key` to delete it and drops
    /// this node's copy. Peers that, like this node, ignore deletes keep theirs.
    pub async fn delete(&self, key: Id) {
        let values = self.inner.values.clone();
        let _ = tokio::task::spawn_blocking(move || values.expire(&key)).await;
        let _ = self.lookup_bounded(key, Rpc::Delete).await;
    }

    /// Pings `addr`; the answering node's id.
    pub async fn ping(&self, addr: SocketAddr) -> Result<Id, RpcError> {
        self.rpc(addr, "ping", Vec::new()).await.map(|(id, _)| id)
    }

    async fn local_get(&self, key: Id) -> Option<Vec<u8>> {
        let values = self.inner.values.clone();
        tokio::task::spawn_blocking(move || values.get(&key))
            .await
            .ok()
            .flatten()
    }

    async fn local_put(&self, key: Id, value: Vec<u8>, meta: Meta) {
        let values = self.inner.values.clone();
        let _ = tokio::task::spawn_blocking(move || values.put(&key, &value, meta)).await;
    }

    async fn iterative_store(&self, key: Id, value: Vec<u8>, publisher: Id, age: i64) -> usize {
        let mut nodes = self.find_node(key).await;
        let now = now_unix();
        let keep_here = nodes.len() < K
            || nodes
                .last()
                .is_some_and(|far| distance(&key, &self.id()) < distance(&key, &far.id));
        if keep_here {
            if nodes.len() >= K {
                nodes.pop();
            }
            let meta = Meta {
                last_published: now,
                originally_published: now - age,
                publisher,
            };
            self.local_put(key, value.clone(), meta).await;
        }
        let mut set = JoinSet::new();
        for c in nodes {
            let h = self.clone();
            let args = vec![
                Value::bytes(key.to_vec()),
                Value::bytes(value.clone()),
                Value::bytes(publisher.to_vec()),
                Value::Int(age),
            ];
            set.spawn(async move { h.rpc(c.addr, "store", args).await });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            if matches!(r, Ok(Ok((_, Value::Bytes(ref b)))) if b == b"OK") {
                ok += 1;
            }
        }
        ok
    }

    async fn lookup_bounded(&self, key: Id, rpc: Rpc) -> Found {
        match tokio::time::timeout(self.inner.config.lookup_timeout, self.lookup(key, rpc)).await {
            Ok(f) => f,
            Err(_) => Found::Nodes(Vec::new()),
        }
    }

    /// Kademlia's iterative lookup: α RPCs in flight, toward the k closest contacts, until
    /// the k closest known have all answered or failed (or a value is found).
    async fn lookup(&self, key: Id, rpc: Rpc) -> Found {
        let start = {
            let mut t = lock(&self.inner.table);
            if key != self.id() {
                t.touch(&key);
            }
            t.closest(&key, K, None)
        };
        let mut list: Vec<(Contact, Probe)> = start.into_iter().map(|c| (c, Probe::New)).collect();
        let mut seen: HashSet<Id> = list.iter().map(|(c, _)| c.id).collect();
        let mut set: JoinSet<(Contact, Reply)> = JoinSet::new();
        let mut sent = 0usize;
        // The closest node that answered without the value: it gets a copy (as the original).
        let mut closest_without: Option<Contact> = None;
        loop {
            list.sort_by_key(|(c, _)| distance(&c.id, &key));
            // Keep every probed contact, drop the farthest unprobed ones past the bound.
            while list.len() > MAX_SHORTLIST {
                match list.iter().rposition(|(_, p)| *p == Probe::New) {
                    Some(i) => {
                        list.remove(i);
                    }
                    None => break,
                }
            }
            let window: Vec<usize> = list
                .iter()
                .enumerate()
                .filter(|(_, (_, p))| *p != Probe::Failed)
                .take(K)
                .map(|(i, _)| i)
                .collect();
            for &i in &window {
                if set.len() >= ALPHA || sent >= MAX_LOOKUP_RPCS {
                    break;
                }
                if list[i].1 == Probe::New {
                    list[i].1 = Probe::Asked;
                    sent += 1;
                    let c = list[i].0;
                    let h = self.clone();
                    set.spawn(async move {
                        let r = h
                            .rpc(c.addr, rpc.name(), vec![Value::bytes(key.to_vec())])
                            .await;
                        (c, r)
                    });
                }
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let Ok((c, reply)) = joined else { continue };
            let Some(entry) = list.iter_mut().find(|(x, _)| x.id == c.id) else {
                continue;
            };
            match reply {
                Ok((_, result)) => {
                    entry.1 = Probe::Answered;
                    if rpc == Rpc::FindValue {
                        if let Some(v) = found_value(&result, &key) {
                            if let Some(cache) = closest_without {
                                let h = self.clone();
                                let v2 = v.clone();
                                tokio::spawn(async move {
                                    let args = vec![Value::bytes(key.to_vec()), Value::bytes(v2)];
                                    let _ = h.rpc(cache.addr, "store", args).await;
                                });
                            }
                            return Found::Value(v);
                        }
                        if closest_without
                            .is_none_or(|x| distance(&c.id, &key) < distance(&x.id, &key))
                        {
                            closest_without = Some(c);
                        }
                    }
                    for t in triples(&result) {
                        if t.id != self.id() && seen.insert(t.id) {
                            list.push((t, Probe::New));
                        }
                    }
                }
                Err(e) => {
                    entry.1 = Probe::Failed;
                    if e == RpcError::Timeout {
                        lock(&self.inner.table).remove(&c.id);
                    }
                }
            }
        }
        list.sort_by_key(|(c, _)| distance(&c.id, &key));
        Found::Nodes(
            list.into_iter()
                .filter(|(_, p)| *p == Probe::Answered)
                .map(|(c, _)| c)
                .take(K)
                .collect(),
        )
    }

    /// Sends one RPC and waits for its reply (at most [`Config::rpc_timeout`]).
    async fn rpc(&self, to: SocketAddr, method: &str, args: Vec<Value>) -> Reply {
        let rpc_id: Id = rand::thread_rng().gen();
        let msg = Message::Request {
            rpc_id,
            node_id: self.id(),
            method: method.as_bytes().to_vec(),
            args,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.inner.pending);
            if p.len() >= MAX_PENDING {
                return Err(RpcError::Busy);
            }
            p.insert(rpc_id, Pending { to, reply: tx });
        }
        if let Err(e) = self.send(&msg, to).await {
            lock(&self.inner.pending).remove(&rpc_id);
            return Err(RpcError::Send(e.to_string()));
        }
        match tokio::time::timeout(self.inner.config.rpc_timeout, rx).await {
            Ok(Ok(r)) => r,
            _ => {
                lock(&self.inner.pending).remove(&rpc_id);
                Err(RpcError::Timeout)
            }
        }
    }

    async fn send(&self, msg: &Message, to: SocketAddr) -> std::io::Result<()> {
        let data = msg.encode();
        if data.len() > MAX_MESSAGE {
            return Err(std::io::Error::other("message too large"));
        }
        for d in split(&data, msg.rpc_id()) {
            self.inner.socket.send_to(&d, to).await?;
        }
        Ok(())
    }

    fn add_contact(&self, c: Contact) {
        let added = lock(&self.inner.table).add(c);
        if let Added::Full { head } = added {
            // The head keeps its place if it still answers (Kademlia's preference for old
            // contacts); one ping per head at a time, and a bounded number overall.
            {
                let mut pings = lock(&self.inner.head_pings);
                if pings.len() >= MAX_HEAD_PINGS || !pings.insert(head.id) {
                    return;
                }
            }
            let h = self.clone();
            tokio::spawn(async move {
                if h.ping(head.addr).await.is_err() {
                    lock(&h.inner.table).remove(&head.id);
                }
                lock(&h.inner.head_pings).remove(&head.id);
            });
        }
    }

    async fn receive_loop(self) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match self.inner.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep going.
                    tracing::debug!("DHT receive: {e}");
                    continue;
                }
            };
            let received = lock(&self.inner.reassembly).receive(from, &buf[..n], Instant::now());
            if let Received::Whole(data) = received {
                self.handle_datagram(&data, from);
            }
        }
    }

    fn handle_datagram(&self, data: &[u8], from: SocketAddr) {
        let msg = match Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("DHT datagram from {from} dropped: {e}");
                return;
            }
        };
        if *msg.node_id() == self.id() {
            return;
        }
        self.add_contact(Contact {
            id: *msg.node_id(),
            addr: from,
        });
        match msg {
            Message::Request {
                rpc_id,
                node_id,
                method,
                args,
            } => {
                let Ok(permit) = self.inner.serving.clone().try_acquire_owned() else {
                    tracing::debug!("DHT request from {from} dropped: too many being served");
                    return;
                };
                let h = self.clone();
                tokio::spawn(async move {
                    let reply = h.serve(from, node_id, &method, args).await;
                    let msg = match reply {
                        Ok(result) => Message::Response {
                            rpc_id,
                            node_id: h.id(),
                            result,
                        },
                        Err((kind, text)) => Message::Error {
                            rpc_id,
                            node_id: h.id(),
                            kind: kind.as_bytes().to_vec(),
                            text: text.into_bytes(),
                        },
                    };
                    if let Err(e) = h.send(&msg, from).await {
                        tracing::debug!("DHT reply to {from}: {e}");
                    }
                    drop(permit);
                });
            }
            Message::Response {
                rpc_id,
                node_id,
                result,
            } => self.settle(rpc_id, from, Ok((node_id, result))),
            Message::Error {
                rpc_id, kind, text, ..
            } => {
                let (kind, text) = (printable(&kind), printable(&text));
                tracing::debug!("DHT error reply from {from}: {kind}: {text}");
                self.settle(rpc_id, from, Err(RpcError::Remote { kind, text }))
            }
        }
    }

    fn settle(&self, rpc_id: Id, from: SocketAddr, reply: Reply) {
        let mut p = lock(&self.inner.pending);
        // A reply counts only from where the request went.
        if p.get(&rpc_id).is_some_and(|x| x.to == from) {
            if let Some(x) = p.remove(&rpc_id) {
                let _ = x.reply.send(reply);
            }
        }
    }

    /// Serves one request; an error is (exception type, message) as the original names them.
    async fn serve(
        &self,
        from: SocketAddr,
        sender: Id,
        method: &[u8],
        args: Vec<Value>,
    ) -> Result<Value, (&'static str, String)> {
        let type_error = |m: &str| ("exceptions.TypeError", m.to_string());
        let close =
            |key: &Id| triples_value(&lock(&self.inner.table).closest(key, K, Some(&sender)));
        match method {
            b"ping" if args.is_empty() => Ok(Value::bytes("pong")),
            b"findNode" | b"delete" if args.len() == 1 => {
                let key = key_arg(&args).ok_or_else(|| type_error("key must be 20 bytes"))?;
                Ok(close(&key))
            }
            b"findValue" if args.len() == 1 => {
                let key = key_arg(&args).ok_or_else(|| type_error("key must be 20 bytes"))?;
                match self.local_get(key).await {
                    Some(v) => Ok(Value::Dict(vec![(
                        Value::bytes(key.to_vec()),
                        Value::Bytes(v),
                    )])),
                    None => Ok(close(&key)),
                }
            }
            b"store" if (2..=4).contains(&args.len()) => {
                let key = key_arg(&args).ok_or_else(|| type_error("key must be 20 bytes"))?;
                let value = args[1]
                    .as_bytes()
                    .ok_or_else(|| type_error("value must be a string"))?
                    .to_vec();
                let publisher = match args.get(2) {
                    None => sender,
                    Some(v) => v
                        .as_bytes()
                        .and_then(|b| Id::try_from(b).ok())
                        .ok_or_else(|| type_error("publisher must be 20 bytes"))?,
                };
                let age = match args.get(3) {
                    None => 0,
                    Some(v) => v
                        .as_int()
                        .ok_or_else(|| type_error("age must be an integer"))?
                        .clamp(0, DATA_EXPIRE),
                };
                if !lock(&self.inner.limiter).allow(from.ip(), Instant::now()) {
                    return Err(("exceptions.ValueError", "store rate limit".into()));
                }
                let now = now_unix();
                let meta = Meta {
                    last_published: now,
                    originally_published: now - age,
                    publisher,
                };
                self.local_put(key, value, meta).await;
                Ok(Value::bytes("OK"))
            }
            b"ping" | b"findNode" | b"delete" | b"findValue" | b"store" => {
                Err(type_error("wrong number of arguments"))
            }
            other => Err((
                "exceptions.AttributeError",
                format!("Invalid method: {}", printable(other).replace('"', "'")),
            )),
        }
    }

    async fn refresh_loop(self) {
        let every = self.inner.config.refresh_interval;
        loop {
            tokio::time::sleep(every).await;
            self.refresh().await;
        }
    }

    /// One refresh: stale buckets looked up, values republished or expired, state saved
    /// (Entangled's `_refreshNode`).
    pub async fn refresh(&self) {
        let ids = lock(&self.inner.table).refresh_ids(REFRESH_TIMEOUT);
        for id in ids {
            let _ = self.find_node(id).await;
        }
        let values = self.inner.values.clone();
        let entries = tokio::task::spawn_blocking(move || values.entries(MAX_REPUBLISH))
            .await
            .unwrap_or_default();
        let now = now_unix();
        for (key, meta) in entries {
            let age = now - meta.originally_published;
            if meta.publisher == self.id() {
                if age >= DATA_EXPIRE {
                    if let Some(v) = self.local_get(key).await {
                        self.publish(key, v).await;
                    }
                }
            } else if age >= DATA_EXPIRE {
                let values = self.inner.values.clone();
                let _ = tokio::task::spawn_blocking(move || values.expire(&key)).await;
            } else if now - meta.last_published >= REPLICATE_INTERVAL {
                if let Some(v) = self.local_get(key).await {
                    self.iterative_store(key, v, meta.publisher, age).await;
                }
            }
        }
        self.save_state();
    }
}

/// The value in a `findValue` reply (`{key: value}`).
fn found_value(result: &Value, key: &Id) -> Option<Vec<u8>> {
    match result {
        Value::Dict(pairs) => pairs
            .iter()
            .find(|(k, _)| k.as_bytes() == Some(&key[..]))
            .and_then(|(_, v)| v.as_bytes().map(<[u8]>::to_vec)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_the_rate() {
        let mut l = StoreLimiter {
            burst: 3.0,
            per_second: 1.0,
            peers: HashMap::new(),
        };
        let ip: IpAddr = [127, 0, 0, 1].into();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow(ip, t0)));
        assert!(!l.allow(ip, t0));
        assert!(l.allow(ip, t0 + Duration::from_millis(1100)));
        assert!(!l.allow(ip, t0 + Duration::from_millis(1100)));
        assert!(l.allow([127, 0, 0, 2].into(), t0));
    }

    #[test]
    fn triples_skip_bad_entries() {
        let good = Value::List(vec![
            Value::bytes(vec![1; 20]),
            Value::bytes("127.0.0.1"),
            Value::Int(4000),
        ]);
        let list = Value::List(vec![
            good.clone(),
            Value::List(vec![
                Value::bytes("short"),
                Value::bytes("1.2.3.4"),
                Value::Int(1),
            ]),
            Value::List(vec![
                Value::bytes(vec![1; 20]),
                Value::bytes("host"),
                Value::Int(1),
            ]),
            Value::List(vec![
                Value::bytes(vec![1; 20]),
                Value::bytes("::1"),
                Value::Int(70000),
            ]),
            Value::Int(3),
        ]);
        let got = triples(&list);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].addr, "127.0.0.1:4000".parse::<SocketAddr>().unwrap());
        assert_eq!(triples_value(&got), Value::List(vec![good]));
    }
}
