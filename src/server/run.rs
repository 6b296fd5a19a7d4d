//! Start-up and the accept loop of `storeherd store --homedir DIR`.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{mpsc, Arc};

use crate::server::auth::{AuthError, AuthTable};
use crate::server::config::{Config, ConfigError};
use crate::server::dht_values::ServerValues;
use crate::server::dns::Dns;
use crate::server::entangled::{self, Entangled};
use crate::server::ingest::Ingest;
use crate::server::leaves::Preparer;
use crate::server::notify::Notifier;
use crate::server::sender::{self, Liveness};
use crate::server::tls::{self, TlsError};
use crate::server::worker::{Job, Outputs, Worker, INFLIGHT};
use crate::server::{session, Shared};
use crate::store::journal::{self, Journal, Kind};
use crate::store::queue::Queue;
use crate::store::tree::Tree;
use crate::store::{ensure_dir, StoreError};

/// The DHT node's id and contacts, in the home (`dht::state`).
pub const DHT_STATE: &str = "dht.state";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("home directory {0} does not exist")]
    NoHome(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// Errors in what the operator wrote (config.txt, ssl/ files): exit status 2.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ServerError::Config(_) | ServerError::Tls(_) | ServerError::NoHome(_)
        )
    }
}

/// How the command line asks the server to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// `-logtraffic`: log every line received and sent.
    pub log_traffic: bool,
    /// `--handoff`: take client sockets from the supervisor's proxy on
    /// `<home>/handoff.sock`.
    pub handoff: bool,
}

/// How long a stopping server waits for its sessions to finish the command they are in.
const SESSION_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The server's listening sockets, bound before it starts.
pub struct Listeners(Vec<std::net::TcpListener>);

impl Listeners {
    /// Binds what `<home>/config.txt` names: `listen_address` and `sport`; with
    /// `enable_ipv6`, 0.0.0.0 becomes one dual-stack [::] socket and 127.0.0.1 gains [::1].
    pub fn bind(home: &Path) -> Result<Listeners, ServerError> {
        let config = load_config(home)?.config;
        let mut addrs = vec![SocketAddr::new(config.listen_address, config.sport)];
        if config.enable_ipv6 {
            if let IpAddr::V4(v4) = config.listen_address {
                if v4.is_unspecified() {
                    addrs = vec![SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), config.sport)];
                } else if v4.is_loopback() {
                    addrs.push(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), config.sport));
                }
            }
        }
        let mut sockets = Vec::new();
        for addr in addrs {
            sockets.push(listen(addr).map_err(|source| ServerError::Bind { addr, source })?);
        }
        Ok(Listeners(sockets))
    }

    /// Sockets bound elsewhere (a test's ephemeral ports).
    pub fn from_std(sockets: Vec<std::net::TcpListener>) -> Listeners {
        Listeners(sockets)
    }
}

fn load_config(home: &Path) -> Result<crate::server::config::Loaded, ServerError> {
    if !home.is_dir() {
        return Err(ServerError::NoHome(home.to_path_buf()));
    }
    Ok(Config::load(&home.join("config.txt"))?)
}

/// Runs the server on `listeners` until SHUTDOWN or until `shutdown` resolves (with an
/// error, the server stops and returns it); sessions then finish the command they are in
/// and are joined (for at most [`SESSION_GRACE`]).
pub fn run(
    home: &Path,
    opts: RunOptions,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), ServerError> {
    let loaded = load_config(home)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = loaded.config;
    let (acceptor, server_key) = tls::load(&home.join("ssl"))?;
    for d in [
        "gpgtemp",
        "localstore",
        "inputqueue",
        "sendqueue",
        "entangled",
    ] {
        ensure_dir(&home.join(d))?;
    }
    let store_root = match &config.alt_localstore {
        Some(p) => {
            ensure_dir(p)?;
            p.clone()
        }
        None => home.join("localstore"),
    };
    let (auth, warnings) = AuthTable::load(&home.join("auth.txt"))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }

    let tree = Tree::new(store_root);
    let queue = Queue::new(home.join("inputqueue"));
    let sendqueue = Queue::new(home.join("sendqueue"));
    let liveness = Liveness::new(config.run_queue_interval);
    let (journal, recovered) = Journal::open(&home.join(journal::DIR_NAME))?;
    // `entangled/` may be a link to a tree shared by several instances (`storeherd up`).
    let entangled = Entangled::new(home.join("entangled"));
    let (notifier, notifier_thread) = Notifier::start(home)?;
    let worker = Worker::new(
        tree.clone(),
        queue.clone(),
        journal.clone(),
        config.limits,
        home.join(INFLIGHT),
        liveness.clone(),
        Outputs {
            sendqueue: sendqueue.clone(),
            entangled: entangled.clone(),
            notifier,
        },
    );
    worker.recover()?;
    // A queue file torn by a crash mid-write (never acknowledged) must go before clients can
    // send the same block again: the committer would take the torn file for a durable copy.
    let leftovers = verified_leftovers(&queue)?;
    let (job_tx, job_rx) = mpsc::channel();
    // Leftover uploads first: queue files in directory order (docs/protocol.md §6.4), then the
    // journal entries a crash left unsettled, oldest first.
    if !leftovers.is_empty() || !recovered.is_empty() {
        tracing::info!(
            "{} queued blocks left from the last run",
            leftovers.len() + recovered.len()
        );
    }
    journal.add_pending(leftovers.iter().map(String::as_str));
    for name in leftovers {
        let _ = job_tx.send(Job::Block(name, None, None));
    }
    for r in recovered {
        let job = match r.kind {
            Kind::Input => Job::Block(r.name, Some(r.content), Some(r.slot)),
            Kind::Send => Job::Send(r.name, Some(r.content), r.slot),
        };
        let _ = job_tx.send(job);
    }
    let (preparer, leaves_thread) = Preparer::start(tree.clone(), worker.leaves())?;
    let worker_thread = worker.start(job_rx)?;
    let (ingest, ingest_thread) =
        Ingest::start(journal, sendqueue.clone(), job_tx.clone(), preparer)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listeners = {
        let _in_rt = rt.enter();
        listeners
            .0
            .into_iter()
            .map(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .collect::<std::io::Result<Vec<_>>>()?
    };
    let dns = {
        // The resolver's connections belong to this runtime.
        let _in_rt = rt.enter();
        Dns::new(
            config.dns_resolver,
            std::time::Duration::from_secs(config.dns_timeout),
        )
    };
    // The DHT node on UDP `eport` (docs/protocol.md §11), with this home's id and contacts.
    let dht_bind = SocketAddr::new(config.listen_address, config.eport);
    let values = Arc::new(ServerValues::new(
        entangled.tree().clone(),
        ingest.clone(),
        rt.handle().clone(),
    ));
    let knode = config
        .knode
        .iter()
        .map(|k| (k.host.clone(), k.port))
        .collect();
    // Without its UDP port the server still serves the line protocol, GET ENTANGLED from
    // its tree (docs/protocol.md §11 implementer note); the original would not start at all.
    let node = match rt.block_on(entangled::start_node(
        dht_bind,
        home.join(DHT_STATE),
        knode,
        values.clone(),
    )) {
        Ok(node) => {
            entangled.attach(node.clone());
            Some(node)
        }
        Err(e) => {
            tracing::error!("no DHT node: {e}");
            None
        }
    };
    let shared = Rc::new(Shared {
        config,
        tree,
        entangled,
        dns,
        log_traffic: opts.log_traffic,
        auth: RefCell::new(auth),
        server_key,
        tls: acceptor,
        ingest,
        sendqueue,
        sender_kick: tokio::sync::Notify::new(),
        liveness,
        worker: job_tx.clone(),
        conns: Cell::new(0),
        idle: tokio::sync::Notify::new(),
        stop: tokio::sync::watch::Sender::new(false),
    });
    let local = tokio::task::LocalSet::new();
    let handoff = opts.handoff.then(|| crate::handoff::socket_path(home));
    let result = local.block_on(
        &rt,
        serve(shared.clone(), listeners, handoff.as_deref(), shutdown),
    );
    if let Some(path) = &handoff {
        let _ = std::fs::remove_file(path);
    }
    // Sessions still open past the grace are dropped with the runtime; anything they had
    // acknowledged is durable in the input journal already.
    drop(local);
    if let Some(node) = &node {
        rt.block_on(node.shutdown());
    }
    // The node's values hold an ingest handle; the committer stops once every one is gone.
    values.close();
    drop(rt);
    drop(shared);
    let _ = ingest_thread.join();
    let _ = leaves_thread.join();
    // Blocks already handed to the worker are processed first; later ones stay queued.
    let _ = job_tx.send(Job::Stop);
    let _ = worker_thread.join();
    // The worker held the last handle: the notifier sends what it has, then stops; a slow
    // or dead SMTP server must not hold up the stop, so it gets a moment, not a wait.
    let grace = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !notifier_thread.is_finished() && std::time::Instant::now() < grace {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if notifier_thread.is_finished() {
        let _ = notifier_thread.join();
    } else {
        tracing::warn!("SMTP server slow or down: new-mail notices still queued are not sent");
    }
    tracing::info!("stopped");
    result
}

async fn serve(
    shared: Rc<Shared>,
    listeners: Vec<tokio::net::TcpListener>,
    handoff: Option<&Path>,
    shutdown: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), ServerError> {
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel(64);
    for l in listeners {
        if let Ok(a) = l.local_addr() {
            tracing::info!("listening on {a}");
        }
        let tx = conn_tx.clone();
        tokio::task::spawn_local(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        if tx.send(s).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait a little instead of spinning.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    drop(conn_tx);
    tokio::task::spawn_local(sender::run(shared.clone()));
    // Session ids, shared with the sessions handed over by the proxy.
    let ids = Rc::new(Cell::new(0u64));
    if let Some(path) = handoff {
        // Without its channel the server still serves its port: the proxy then relays.
        match crate::handoff::Listener::bind(path) {
            Ok(l) => {
                tracing::info!("taking handed-off clients on {}", path.display());
                tokio::task::spawn_local(crate::server::adopt::listen(
                    shared.clone(),
                    l,
                    ids.clone(),
                ));
            }
            Err(e) => tracing::error!("no hand-off channel at {}: {e}", path.display()),
        }
    }
    tokio::pin!(shutdown);
    let mut result = Ok(());
    loop {
        tokio::select! {
            Some(stream) = conn_rx.recv() => {
                let id = ids.get() + 1;
                ids.set(id);
                tokio::task::spawn_local(session::serve(shared.clone(), stream, id));
            }
            _ = shared.stopping() => break,
            r = &mut shutdown => {
                result = r.map_err(ServerError::Io);
                break;
            }
        }
    }
    // From here the proxy's hand-offs are refused (it places those clients elsewhere) and
    // sessions close once their current command is answered.
    shared.begin_shutdown();
    drop(conn_rx);
    let joined = tokio::time::timeout(SESSION_GRACE, async {
        while shared.conns.get() > 0 {
            shared.idle.notified().await;
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(
            "{} session(s) still in a command after {SESSION_GRACE:?}; closing them",
            shared.conns.get()
        );
    }
    result
}

/// A listening socket with the deepest accept queue the system allows (`somaxconn`, 4096 by
/// default), so that a burst of connections waits in the kernel instead of timing out on
/// SYN-ACK retransmits (std's backlog is 128).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    // std sets SO_REUSEADDR on Unix; a second listen() on a listening socket only deepens
    // its queue.
    let l = std::net::TcpListener::bind(addr)?;
    nix::sys::socket::listen(&l, nix::sys::socket::Backlog::MAXALLOWABLE)
        .map_err(std::io::Error::from)?;
    Ok(l)
}

/// The queue files left from the last run whose content matches their name; others are
/// deleted.
fn verified_leftovers(queue: &Queue) -> Result<Vec<String>, StoreError> {
    let mut good = Vec::new();
    for name in queue.list()? {
        match queue.read(&name)? {
            Some(c) if crate::store::queue::name_of(&c) == name => good.push(name),
            Some(_) => {
                tracing::warn!(
                    "queue file {name} was torn by a crash (never acknowledged); deleted"
                );
                queue.delete(&name)?;
            }
            None => {}
        }
    }
    Ok(good)
}
