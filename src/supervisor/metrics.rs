//! Builds the `/status` document: instance states from their tasks, connection counters from
//! the proxy, CPU and RSS from sysinfo.

use std::collections::BTreeMap;
use std::time::Instant;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::instance::InstanceInfo;
use crate::control::{InstanceStatus, Status};
use crate::proxy::Pool;
use crate::store::queued_uploads;
use crate::topology::Plan;

/// Samples process CPU and memory; CPU usage needs two samples, so it lives across calls.
pub struct Sampler {
    sys: System,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler { sys: System::new() }
    }
}

impl Sampler {
    pub fn status(
        &mut self,
        plan: &Plan,
        instances: &BTreeMap<u32, InstanceInfo>,
        pool: &Pool,
    ) -> Status {
        let pids: Vec<Pid> = instances
            .values()
            .filter_map(|i| i.pid)
            .map(Pid::from_u32)
            .collect();
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::new().with_cpu().with_memory(),
        );
        let stats = pool.stats();
        let list = instances
            .iter()
            .map(|(&id, info)| {
                let ip = plan.instance(id);
                let proc_ = info.pid.and_then(|p| self.sys.process(Pid::from_u32(p)));
                let s = stats.instances.get(&id).cloned().unwrap_or_default();
                InstanceStatus {
                    id,
                    state: info.state,
                    pid: info.pid,
                    port: ip.port,
                    eport: ip.eport,
                    home: ip.home.display().to_string(),
                    restarts: info.restarts,
                    connections_active: s.active,
                    connections_total: s.total,
                    bytes_in: s.bytes_in,
                    bytes_out: s.bytes_out,
                    connect_failures: s.connect_failures,
                    busy_total: s.busy_total,
                    cpu_percent: proc_.map(|p| p.cpu_usage()).unwrap_or(0.0),
                    rss_bytes: proc_.map(|p| p.memory()).unwrap_or(0),
                    uptime_s: info
                        .started
                        .filter(|_| info.pid.is_some())
                        .map(|t| Instant::now().duration_since(t).as_secs())
                        .unwrap_or(0),
                    queued_blocks: queued_uploads(&ip.home),
                    handoff: pool.handoff_up(id),
                }
            })
            .collect();
        Status {
            site: plan.site.clone(),
            listen: plan.listen.to_string(),
            instances: list,
            rejected_total: stats.rejected_total,
            upkeep: Default::default(),
            connections_active: stats.active,
            proxy_header_accepted_total: stats.header_accepted_total,
            proxy_header_rejected_total: stats.header_rejected_total,
        }
    }
}
