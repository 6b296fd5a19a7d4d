//! One instance of the plan: its home, ports, `config.txt` lines and command line.

use std::path::PathBuf;

use serde::Serialize;

use super::{Plan, ServerCommand};

/// Everything about instance `id` that follows from the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstancePlan {
    pub id: u32,
    pub home: PathBuf,
    pub port: u16,
    pub eport: u16,
    /// Every `config.txt` line, in order. The `repl_authkey` value is a placeholder
    /// naming the key file ([`InstancePlan::config_text`] puts the key in), so that printing
    /// a plan never shows a secret.
    pub config: Vec<(String, String)>,
    /// The command, placeholders substituted. Built-in: `[server.program, store, --homedir, home, --handoff]`.
    pub argv: Vec<String>,
}

/// Header of every `config.txt` storeherd writes (`#` lines are comments to the servers).
pub const CONFIG_HEADER: &str =
    "# Written by storeherd from the topology; edits here are replaced. Use server.config.\n";

impl InstancePlan {
    /// The `config.txt` text; `repl_key` replaces the `repl_authkey` placeholder.
    pub fn config_text(&self, repl_key: Option<&str>) -> String {
        let mut text = String::from(CONFIG_HEADER);
        for (k, v) in &self.config {
            let v = match (k.as_str(), repl_key) {
                ("repl_authkey", Some(key)) => key,
                _ => v.as_str(),
            };
            text.push_str(k);
            text.push_str(": ");
            text.push_str(v);
            text.push('\n');
        }
        text
    }

    /// `replpeer` of this instance, if it has one.
    pub fn replpeer(&self) -> Option<&str> {
        self.config
            .iter()
            .find(|(k, _)| k == "replpeer")
            .map(|(_, v)| v.as_str())
    }
}

impl Plan {
    /// `listen_address` of every instance: loopback (only the proxy connects) unless a peer
    /// site must reach the instances at `host`; a host given by name binds every interface,
    /// since `listen_address` must be an IP address (the original always binds them all).
    pub fn listen_address(&self) -> String {
        match &self.host {
            None => "127.0.0.1".to_string(),
            Some(h) if h.parse::<std::net::IpAddr>().is_ok() => h.clone(),
            Some(_) => "0.0.0.0".to_string(),
        }
    }

    /// Instance `id` (1-based); ids above `instances` work too, for live scale-up up to
    /// [`Plan::max_instances`].
    pub fn instance(&self, id: u32) -> InstancePlan {
        let home = self.home(id);
        let port = self.server_port(id);
        let eport = self.entangled_port(id);
        let mut config = vec![
            ("sport".to_string(), port.to_string()),
            ("eport".to_string(), eport.to_string()),
            (
                "alt_localstore".to_string(),
                self.store.display().to_string(),
            ),
            ("listen_address".to_string(), self.listen_address()),
        ];
        if let Some(r) = &self.replication {
            config.push(("replpeer".into(), r.peer_addr(id)));
            config.push((
                "repl_authkey".into(),
                format!("<contents of {}>", r.authkey_file.display()),
            ));
            if let Some(pin) = &r.peer_cert_sha1 {
                config.push(("repl_cert".into(), pin.clone()));
            }
        }
        config.extend(self.server.config.iter().cloned());
        let home_text = home.display().to_string();
        let argv = match &self.server.command {
            ServerCommand::Builtin => {
                // The proxy hands clients to built-in instances (`crate::handoff`).
                vec![
                    self.server.program.display().to_string(),
                    "store".into(),
                    "--homedir".into(),
                    home_text,
                    "--handoff".into(),
                ]
            }
            ServerCommand::Argv(args) => args
                .iter()
                .map(|a| {
                    a.replace("{home}", &home_text)
                        .replace("{id}", &id.to_string())
                        .replace("{port}", &port.to_string())
                        .replace("{eport}", &eport.to_string())
                })
                .collect(),
        };
        InstancePlan {
            id,
            home,
            port,
            eport,
            config,
            argv,
        }
    }
}
