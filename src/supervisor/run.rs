//! The supervisor's reconcile loop: owns the instance set, keeps the proxy's ready set in
//! step with instance health, carries out control requests, reloads the topology, and drains
//! everything when told to stop.
//!
//! [`run`] takes its listeners and its outside commands from the caller: `cli/up.rs` binds
//! the plan's addresses and turns signals into [`Outside`] commands; tests drive it in-process
//! the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::instance::{Ctl, Event, InstanceInfo, RestartError, RestartReply, Runner};
use super::metrics::Sampler;
use super::provision::{self, Prepared};
use super::upkeep::Upkeep;
use super::watcher;
use crate::accounts::{self, Accounts};
use crate::admin::server as admin_server;
use crate::control::site::SiteHosts;
use crate::control::{Answer, ControlError, Handle, InstanceState, Request, Status};
use crate::proxy::{self, Pool, ProxyLimits};
use crate::topology::{Overrides, Plan};

/// How often `/status` is refreshed; CPU percentages are averaged over this interval.
const STATUS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("admin API: {0}")]
    Admin(#[from] admin_server::AdminError),
    #[error("reading the admin token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Accounts(#[from] crate::accounts::AccountsError),
}

/// One instance as the supervisor sees it.
struct Slot {
    ctl: mpsc::Sender<Ctl>,
    info: InstanceInfo,
    /// Out of rotation because the supervisor is removing or restarting it.
    draining: bool,
    removing: bool,
}

/// Requests from the supervisor's own helper tasks (the rolling restart).
enum Internal {
    RestartOne { id: u32, reply: RestartReply },
}

struct Supervisor {
    plan_tx: watch::Sender<Arc<Plan>>,
    overrides: Overrides,
    prepared: Arc<Prepared>,
    pool: Pool,
    slots: BTreeMap<u32, Slot>,
    events_tx: mpsc::UnboundedSender<Event>,
    internal_tx: mpsc::Sender<Internal>,
    ready_set: Vec<(u32, SocketAddr)>,
    rolling: Option<tokio::task::JoinHandle<()>>,
    shutting_down: bool,
    /// The accounts ledger's owner: told about every instance change, answers `accounts`.
    accounts: Accounts,
    /// The site's scheduled prune.
    upkeep: Upkeep,
}

fn limits(plan: &Plan) -> ProxyLimits {
    // Sessions must not take the descriptors that the admin API and health checks need.
    let budget = crate::proxy::fds::session_budget();
    if plan.proxy.max_connections > budget {
        tracing::warn!(
            max_connections = plan.proxy.max_connections,
            budget,
            "proxy.max_connections is over what the open-files limit carries (two per session); using {budget}"
        );
    }
    ProxyLimits {
        max_connections: plan.proxy.max_connections.min(budget),
        connect_timeout: plan.proxy.connect_timeout,
        idle_timeout: plan.proxy.idle_timeout,
        balance: plan.proxy.balance,
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, SupervisorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SupervisorError::Listen { addr, what, source })
}

/// The supervisor's two listening sockets, bound by its caller.
pub struct Listeners {
    /// Where clients connect (the proxy).
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the plan's public and admin addresses.
    pub async fn bind(plan: &Plan) -> Result<Self, SupervisorError> {
        Ok(Listeners {
            public: bind(plan.listen, "public proxy port").await?,
            admin: bind(plan.admin.listen, "admin API").await?,
        })
    }
}

/// What the supervisor's owner asks of it from outside the control API: `cli/up.rs` sends
/// `Reload` on SIGHUP and `Stop` on SIGTERM/SIGINT. A closed channel means `Stop`, so an
/// owner that goes away never leaves instances running unattended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outside {
    Reload,
    Stop,
}

/// Runs the supervisor until [`Outside::Stop`] (or `outside` closes), then drains and stops
/// every instance. Built-in instances run `plan.server.program`.
pub async fn run(
    plan: Plan,
    overrides: Overrides,
    listeners: Listeners,
    mut outside: mpsc::Receiver<Outside>,
) -> Result<(), SupervisorError> {
    let token = match &plan.admin.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| SupervisorError::Token {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    admin_server::check_listen(plan.admin.listen, token.as_deref())?;
    // The store (and shard links) exist before any instance starts: the original crashes
    // when two instances race to create it.
    let prepared = Arc::new(provision::prepare_data(&plan)?);
    let accounts = Accounts::start(accounts::Setup {
        ledger: prepared.ledger.clone(),
        admin_key: prepared.admin_key.clone(),
        replication_key: prepared.replication_key.clone(),
        site: SiteHosts::of(&plan, token.clone()),
    })?;
    let Listeners {
        public: proxy_listener,
        admin: admin_listener,
    } = listeners;

    let pool = Pool::new(limits(&plan));
    pool.set_accept_proxy(plan.proxy.accept_proxy.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let proxy_task = tokio::spawn(proxy::serve(
        proxy_listener,
        pool.clone(),
        shutdown_rx.clone(),
    ));
    let (status_tx, status_rx) = watch::channel(Status {
        site: plan.site.clone(),
        listen: plan.listen.to_string(),
        instances: Vec::new(),
        rejected_total: 0,
        upkeep: Default::default(),
        connections_active: 0,
        proxy_header_accepted_total: 0,
        proxy_header_rejected_total: 0,
    });
    let (req_tx, mut req_rx) = mpsc::channel::<(Request, oneshot::Sender<Answer>)>(64);
    let handle = Handle {
        status: status_rx,
        requests: req_tx,
    };
    info!(
        listen = %plan.listen,
        admin = %plan.admin.listen,
        instances = plan.instances,
        data = %plan.data.display(),
        "storeherd up"
    );

    let (file_watch, mut file_rx) = match &plan.source {
        Some(path) => match watcher::watch(path) {
            Ok((w, rx)) => (Some(w), Some(rx)),
            Err(e) => {
                warn!(
                    "not watching {}: {e}; SIGHUP still reloads it",
                    path.display()
                );
                (None, None)
            }
        },
        None => (None, None),
    };

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (internal_tx, mut internal_rx) = mpsc::channel(8);
    let want = plan.instances;
    let (plan_tx, _) = watch::channel(Arc::new(plan));
    let upkeep = Upkeep::spawn(plan_tx.subscribe());
    let mut sup = Supervisor {
        plan_tx,
        overrides,
        prepared,
        pool,
        slots: BTreeMap::new(),
        events_tx,
        internal_tx,
        ready_set: Vec::new(),
        rolling: None,
        shutting_down: false,
        accounts,
        upkeep,
    };
    sup.scale_to(want);

    let mut sampler = Sampler::default();
    // The admin API starts serving once /status lists the instances, so that no reader sees
    // an empty set that is only a start-up artefact.
    sup.publish(&mut sampler, &status_tx);
    let site = SiteHosts::of(&sup.plan(), token.clone());
    let admin_task = tokio::spawn(admin_server::serve_site(
        admin_listener,
        handle,
        token,
        site,
        shutdown_rx.clone(),
    ));
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let mut announced = false;
    loop {
        tokio::select! {
            Some(ev) = events_rx.recv() => {
                sup.on_event(ev);
                if !announced && sup.all_ready() {
                    announced = true;
                    info!("{}", where_to_look(&sup.plan(), sup.slots.len()));
                }
            }
            Some((req, reply)) = req_rx.recv() => {
                let answer = sup.on_request(req);
                let _ = reply.send(answer);
            }
            Some(Internal::RestartOne { id, reply }) = internal_rx.recv() => sup.restart_one(id, true, reply),
            Some(()) = async { match file_rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                if let Err(e) = sup.reload() {
                    warn!("topology change not applied: {e}");
                }
            }
            cmd = outside.recv() => match cmd {
                Some(Outside::Reload) => {
                    if let Err(e) = sup.reload() {
                        warn!("topology change not applied: {e}");
                    }
                }
                Some(Outside::Stop) | None => break,
            },
            _ = status_tick.tick() => sup.publish(&mut sampler, &status_tx),
        }
    }

    // Shutdown: stop accepting, drain every instance in parallel, stop them, exit.
    drop(file_watch);
    sup.upkeep.stop();
    sup.shutting_down = true;
    if let Some(r) = sup.rolling.take() {
        r.abort();
    }
    let _ = shutdown_tx.send(true);
    sup.pool.set_backends(Vec::new());
    for slot in sup.slots.values() {
        let _ = slot.ctl.send(Ctl::Shutdown).await;
    }
    while !sup.slots.is_empty() {
        match events_rx.recv().await {
            Some(Event::Gone { id }) => {
                sup.slots.remove(&id);
            }
            Some(Event::Info { id, info }) => {
                if let Some(s) = sup.slots.get_mut(&id) {
                    s.info = info;
                }
            }
            None => break,
        }
    }
    let _ = proxy_task.await;
    let _ = admin_task.await;
    info!("all instances stopped; bye");
    Ok(())
}

/// What an operator needs once `up` is ready: where clients connect, where the status page
/// is, where the administrator key and the data are.
fn where_to_look(plan: &Plan, instances: usize) -> String {
    let admin = plan.admin.listen;
    // A wildcard listener is reached on loopback from this machine.
    let page = if admin.ip().is_unspecified() {
        format!(
            "http://127.0.0.1:{}/ (listening on every address)",
            admin.port()
        )
    } else {
        format!("http://{admin}/")
    };
    let token = match &plan.admin.token_file {
        Some(t) => format!(", bearer token in {}", t.display()),
        None => String::new(),
    };
    format!(
        "every instance is ready ({instances}):\n  clients connect to  {}\n  status page         {page}{token}\n  administrator key   {} (LOGIN administrator <key>)\n  data                {}",
        plan.listen,
        plan.admin_key_file.display(),
        plan.data.display()
    )
}

impl Supervisor {
    /// True when the wanted number of instances run and every one is ready.
    fn all_ready(&self) -> bool {
        let want = self.plan().instances as usize;
        self.slots.len() == want
            && self
                .slots
                .values()
                .all(|s| s.info.state == InstanceState::Ready)
    }

    fn plan(&self) -> Arc<Plan> {
        self.plan_tx.borrow().clone()
    }

    /// Refreshes the `/status` document.
    fn publish(&self, sampler: &mut Sampler, status_tx: &watch::Sender<Status>) {
        let plan = self.plan();
        let infos: BTreeMap<u32, InstanceInfo> = self
            .slots
            .iter()
            .map(|(id, s)| (*id, s.info.clone()))
            .collect();
        let mut status = sampler.status(&plan, &infos, &self.pool);
        status.upkeep = self.upkeep.snapshot();
        status_tx.send_replace(status);
    }

    /// Ids of instances that count toward the wanted number (not being removed).
    fn live_ids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter(|(_, s)| !s.removing)
            .map(|(id, _)| *id)
            .collect()
    }

    fn spawn_instance(&mut self, id: u32) {
        let plan = self.plan();
        let (ctl_tx, ctl_rx) = mpsc::channel(4);
        let runner = Runner {
            id,
            plan: self.plan_tx.subscribe(),
            prepared: self.prepared.clone(),
            pool: self.pool.clone(),
            events: self.events_tx.clone(),
            ctl: ctl_rx,
        };
        let ip = plan.instance(id);
        self.slots.insert(
            id,
            Slot {
                ctl: ctl_tx,
                info: InstanceInfo {
                    state: InstanceState::Provisioning,
                    pid: None,
                    restarts: 0,
                    started: None,
                    addr: super::instance::instance_addr(&ip),
                },
                draining: false,
                removing: false,
            },
        );
        tokio::spawn(runner.run());
    }

    /// Adds the lowest free ids or removes the highest ones until `n` instances remain.
    fn scale_to(&mut self, n: u32) {
        let live = self.live_ids();
        if (live.len() as u32) < n {
            // With `hosts`, this host's ids start after the earlier hosts' ones.
            let mut id = self.plan().first_id();
            let mut missing = n - live.len() as u32;
            while missing > 0 {
                if !self.slots.contains_key(&id) {
                    info!(instance = id, "adding");
                    self.spawn_instance(id);
                    missing -= 1;
                }
                id += 1;
            }
        } else {
            for id in live.iter().rev().take(live.len() - n as usize) {
                self.remove(*id, false);
            }
        }
    }

    fn remove(&mut self, id: u32, now: bool) {
        if let Some(slot) = self.slots.get_mut(&id) {
            info!(instance = id, now, "removing (draining first)");
            slot.draining = true;
            slot.removing = true;
            let _ = slot.ctl.try_send(Ctl::Remove { now });
        }
        self.update_pool();
    }

    /// Takes the instance out of rotation, then asks its task to restart it.
    fn restart_one(&mut self, id: u32, drain: bool, reply: RestartReply) {
        match self.slots.get_mut(&id) {
            Some(slot) if !slot.removing => {
                slot.draining = true;
                if slot
                    .ctl
                    .try_send(Ctl::Restart {
                        drain,
                        ready: reply,
                    })
                    .is_err()
                {
                    warn!(instance = id, "restart request not delivered");
                }
            }
            _ => {
                let _ = reply.send(Err(RestartError::NoSuchInstance(id)));
            }
        }
        self.update_pool();
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Info { id, info } => {
                if let Some(slot) = self.slots.get_mut(&id) {
                    // A restarted instance re-enters rotation once it is starting afresh.
                    if slot.draining
                        && !slot.removing
                        && matches!(info.state, InstanceState::Starting)
                    {
                        slot.draining = false;
                    }
                    let home = self.plan_tx.borrow().instance(id).home;
                    self.accounts.instance(id, info.addr, home, info.state);
                    slot.info = info;
                }
            }
            Event::Gone { id } => {
                info!(instance = id, "gone");
                let removed = self.slots.remove(&id).is_some_and(|s| s.removing);
                self.accounts.gone(id);
                if removed {
                    self.hand_off_proxy_files(id);
                }
            }
        }
        self.update_pool();
    }

    /// After a removal: the removed instance's queued proxy files go to a running instance,
    /// whose sender delivers them (`handoff`).
    fn hand_off_proxy_files(&self, removed: u32) {
        let plan = self.plan();
        let from = plan.instance(removed).home;
        let to = self
            .slots
            .iter()
            .find(|(_, s)| !s.removing && s.info.state == InstanceState::Ready)
            .map(|(id, _)| (*id, plan.instance(*id).home));
        let Some((to_id, to)) = to else {
            warn!(
                instance = removed,
                "no running instance to take its queued proxy files; they stay in {}",
                from.join("sendqueue").display()
            );
            return;
        };
        tokio::task::spawn_blocking(move || {
            match super::handoff::proxy_files(&from, &to) {
                Ok(0) => {}
                Ok(n) => info!(
                    instance = removed,
                    "handed {n} queued proxy file(s) to instance {to_id}"
                ),
                Err(e) => error!(
                    instance = removed,
                    "handing its queued proxy files to instance {to_id}: {e}; the rest stay in its home"
                ),
            }
        });
    }

    /// Pushes the ready set to the proxy when it changed.
    fn update_pool(&mut self) {
        let ready: Vec<(u32, SocketAddr)> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.draining && s.info.state == InstanceState::Ready)
            .map(|(id, s)| (*id, s.info.addr))
            .collect();
        if ready != self.ready_set && !self.shutting_down {
            self.ready_set = ready.clone();
            self.pool.set_backends(ready);
        }
    }

    fn on_request(&mut self, req: Request) -> Answer {
        if self.shutting_down {
            return Err(ControlError::ShuttingDown);
        }
        let plan = self.plan();
        match req {
            Request::Scale(n) => {
                if n == 0 || n > plan.max_instances() {
                    return Err(ControlError::InstancesOutOfRange {
                        max: plan.max_instances(),
                    });
                }
                let before = self.live_ids().len();
                self.scale_to(n);
                Ok(format!("scaling from {before} to {n} instances"))
            }
            Request::Add(count) => {
                let n = self.live_ids().len() as u32 + count.max(1);
                if n > plan.max_instances() {
                    return Err(ControlError::TooManyInstances {
                        max: plan.max_instances(),
                    });
                }
                let before: Vec<u32> = self.live_ids();
                self.scale_to(n);
                let added: Vec<String> = self
                    .live_ids()
                    .into_iter()
                    .filter(|id| !before.contains(id))
                    .map(|id| id.to_string())
                    .collect();
                Ok(format!("added instance(s) {}", added.join(", ")))
            }
            Request::Remove { id, now } => match self.slots.get(&id) {
                Some(s) if !s.removing => {
                    self.remove(id, now);
                    Ok(format!(
                        "instance {id} draining; it stops once its input queue is empty"
                    ))
                }
                Some(_) => Ok(format!("instance {id} is already being removed")),
                None => Err(ControlError::NoSuchInstance(id)),
            },
            Request::Restart(id) => {
                if !self.slots.contains_key(&id) {
                    return Err(ControlError::NoSuchInstance(id));
                }
                let (tx, rx) = oneshot::channel();
                self.restart_one(id, true, tx);
                tokio::spawn(async move {
                    match rx.await {
                        Ok(Ok(())) => info!(instance = id, "restarted and ready"),
                        Ok(Err(e)) => warn!(instance = id, "restart: {e}"),
                        Err(_) => {}
                    }
                });
                Ok(format!("instance {id} restarting"))
            }
            Request::RollingRestart => {
                if self.rolling.as_ref().is_some_and(|r| !r.is_finished()) {
                    return Err(ControlError::RollingRestartRunning);
                }
                let ids = self.live_ids();
                let internal = self.internal_tx.clone();
                let count = ids.len();
                self.rolling = Some(tokio::spawn(async move {
                    for id in ids {
                        let (tx, rx) = oneshot::channel();
                        if internal
                            .send(Internal::RestartOne { id, reply: tx })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        match rx.await {
                            Ok(Ok(())) => info!(instance = id, "rolling restart: ready again"),
                            Ok(Err(e)) => {
                                error!(instance = id, "rolling restart stopped: {e}");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                    info!("rolling restart complete");
                }));
                Ok(format!("rolling restart of {count} instances started"))
            }
            Request::Reload => self.reload(),
            // The accounts actor answers on the request's own channel, with a full report.
            Request::Accounts { cmd, reply } => {
                self.accounts.submit(cmd, reply);
                Ok("handed to the accounts ledger".into())
            }
        }
    }

    /// Re-reads the topology file. Invalid files and changes that need a restart are refused
    /// whole, keeping the running state; everything else applies live.
    fn reload(&mut self) -> Answer {
        let old = self.plan();
        let Some(source) = old.source.clone() else {
            return Err(ControlError::NoTopologyFile);
        };
        let mut new = Plan::load(Some(&source), old.site.as_deref(), &self.overrides)
            .map_err(|e| ControlError::BadTopology(Arc::new(e)))?;
        // The program is the one this supervisor started with, not re-derived.
        new.server.program = old.server.program.clone();
        old.restart_needed(&new)
            .map_err(ControlError::RestartNeeded)?;
        let want = new.instances;
        self.pool.set_limits(limits(&new));
        self.pool.set_accept_proxy(new.proxy.accept_proxy.clone());
        self.plan_tx.send_replace(Arc::new(new));
        let before = self.live_ids().len() as u32;
        self.scale_to(want);
        info!(from = before, to = want, "topology reloaded");
        Ok(format!("topology reloaded; {want} instances"))
    }
}
