//! A site over several hosts (`hosts`) as one host sees it: every host's name and admin
//! address, and the bearer token they share; and the `GET /site/status` document.

use serde::{Deserialize, Serialize};

use super::Status;
use crate::topology::Plan;

/// One host of the site and where its admin API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    /// `<address>:<admin port>` (the address may be a name).
    pub admin: String,
}

/// The hosts of this site, for the admin API's `/site/status` and the accounts' forwarding.
#[derive(Clone)]
pub struct SiteHosts {
    /// This host's name.
    pub me: String,
    /// Every host, this one included, in the topology's order.
    pub hosts: Vec<HostLink>,
    /// The admin bearer token: the same on every host (`admin.token_file`).
    pub token: Option<String>,
}

// The token stays out of logs.
impl std::fmt::Debug for SiteHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteHosts")
            .field("me", &self.me)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl SiteHosts {
    /// The plan's hosts; `None` for a site on one machine.
    pub fn of(plan: &Plan, token: Option<String>) -> Option<SiteHosts> {
        let me = plan.this_host()?.name.clone();
        Some(SiteHosts {
            me,
            hosts: plan
                .hosts
                .iter()
                .map(|h| HostLink {
                    name: h.name.clone(),
                    admin: h.admin.clone(),
                })
                .collect(),
            token,
        })
    }

    /// Every host but this one.
    pub fn others(&self) -> impl Iterator<Item = &HostLink> {
        self.hosts.iter().filter(|h| h.name != self.me)
    }

    /// A host's place in the list (earlier wins a tie of two claims), if it is one of them.
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }
}

/// `GET /site/status`: every host's `/status`, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteStatus {
    pub site: Option<String>,
    pub hosts: Vec<HostStatus>,
}

/// One host in [`SiteStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// `None` for a site on one machine (no `hosts`).
    pub name: Option<String>,
    /// Its admin API.
    pub admin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Why its status is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
