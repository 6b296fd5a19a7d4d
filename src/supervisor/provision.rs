//! Provisioning (docs/design.md "Instance lifecycle → Provisioning"): the data directory, the
//! shared store and identity before any instance starts, then each instance's home.
//! Nothing here ever deletes data: homes, queues and ledger lines only grow or get rewritten
//! in place (config.txt, which storeherd owns).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::server::identity::{Identity, IdentityError, FFDHE2048_PEM};
use crate::topology::Plan;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("TLS identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("{path}: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadIdentity { path: PathBuf, reason: String },
    /// Not a `#[source]`: the message already holds the whole explanation, once.
    #[error("not starting any instance: {0}")]
    Shards(crate::store::shards::ShardError),
}

impl From<crate::store::shards::ShardError> for ProvisionError {
    fn from(e: crate::store::shards::ShardError) -> Self {
        ProvisionError::Shards(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What every home is provisioned from: made once per run by [`prepare_data`].
#[derive(Clone)]
pub struct Prepared {
    /// The one TLS identity installed in every home.
    pub identity: Identity,
    /// The administrator's key (`<data>/admin.key` or `accounts.admin_key_file`).
    pub admin_key: String,
    /// The shared replication key, with `sites`.
    pub replication_key: Option<String>,
    /// The accounts ledger, `<data>/accounts.txt` (auth.txt format).
    pub ledger: PathBuf,
}

// Keys and the private key stay out of logs and panics.
impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("identity", &"<redacted>")
            .field("admin_key", &"<redacted>")
            .field(
                "replication_key",
                &self.replication_key.as_ref().map(|_| "<redacted>"),
            )
            .field("ledger", &self.ledger)
            .finish()
    }
}

/// Header of a new ledger (a comment to every auth.txt reader).
const LEDGER_HEADER: &str =
    "# storeherd accounts ledger (auth.txt format: USER KEY DATE); later lines win\n";

/// Makes the data directory, the store (and shard links), the TLS identity, the key files
/// and the ledger. Runs before any instance starts: the original crashes when two instances
/// race to create the store folder.
pub fn prepare_data(plan: &Plan) -> Result<Prepared, ProvisionError> {
    for dir in [&plan.data, &plan.homes(), &plan.store, &entangled_dir(plan)] {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    link_shards(plan)?;
    let identity = identity(plan)?;
    let admin_key = read_or_create_key(&plan.admin_key_file)?;
    let replication_key = match &plan.replication {
        Some(r) => {
            let existed = r.authkey_file.exists();
            let key = read_or_create_key(&r.authkey_file)?;
            if !existed {
                tracing::warn!(
                    file = %r.authkey_file.display(),
                    peer_site = %r.peer_site,
                    "generated the replication key: copy this file to site {} (both sites must use the same key)",
                    r.peer_site
                );
            }
            Some(key)
        }
        None => None,
    };
    let ledger = plan.ledger();
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&ledger)
    {
        Ok(mut f) => {
            f.write_all(LEDGER_HEADER.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(io_err(&ledger))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(&ledger)(e)),
    }
    Ok(Prepared {
        identity,
        admin_key,
        replication_key,
        ledger,
    })
}

/// Refuses to start when a first-level store folder holds data somewhere else than the
/// shards say; otherwise creates the missing links `<store>/XX -> <path>/XX` (and replaces
/// folders without files by their link). Moving data is `storeherd shards apply --move`'s job.
fn link_shards(plan: &Plan) -> Result<(), ProvisionError> {
    let made = crate::store::shards::Layout::new(&plan.store, &plan.shards).prepare()?;
    if made > 0 {
        tracing::info!(links = made, "created shard links");
    }
    Ok(())
}

/// The shared identity: from `server.tls` (generated there once if absent), or generated
/// once into `<data>/ssl/` and reused on later runs.
fn identity(plan: &Plan) -> Result<Identity, ProvisionError> {
    let cn = plan.host.clone().unwrap_or_else(|| "storeherd".to_string());
    let tls = &plan.server.tls;
    let (cert, key, dh) = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), tls.dhparams.clone()),
        _ => {
            let ssl = plan.data.join("ssl");
            (
                ssl.join("server.crt"),
                ssl.join("server.key"),
                Some(ssl.join("dhparams.pem")),
            )
        }
    };
    let dhparams_pem = match &dh {
        Some(p) if p.exists() => fs::read_to_string(p).map_err(io_err(p))?,
        Some(p) => {
            write_atomic(p, FFDHE2048_PEM.as_bytes(), 0o644)?;
            FFDHE2048_PEM.to_string()
        }
        None => FFDHE2048_PEM.to_string(),
    };
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let cert_pem = fs::read_to_string(&cert).map_err(io_err(&cert))?;
            let key_pem = fs::read_to_string(&key).map_err(io_err(&key))?;
            for (path, text, what) in [
                (&cert, &cert_pem, "CERTIFICATE"),
                (&key, &key_pem, "PRIVATE KEY"),
            ] {
                if !text.contains(what) {
                    return Err(ProvisionError::BadIdentity {
                        path: path.clone(),
                        reason: format!("expected a PEM {what}"),
                    });
                }
            }
            Ok(Identity {
                cert_pem,
                key_pem,
                dhparams_pem,
            })
        }
        (false, false) => {
            let mut id = Identity::generate(&cn)?;
            id.dhparams_pem = dhparams_pem;
            write_atomic(&cert, id.cert_pem.as_bytes(), 0o644)?;
            write_atomic(&key, id.key_pem.as_bytes(), 0o600)?;
            tracing::info!(cert = %cert.display(), "generated the TLS identity");
            Ok(id)
        }
        (c, _) => Err(ProvisionError::BadIdentity {
            path: if c { key } else { cert },
            reason: "missing while its pair exists: expected both server certificate and key, \
                     or neither (to generate them)"
                .into(),
        }),
    }
}

/// Reads a key file (the key alone on its first line), or creates it with a new random key
/// (40 upper-case hex digits, mode 600). A key file is never overwritten.
pub fn read_or_create_key(path: &Path) -> Result<String, ProvisionError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = text.lines().next().unwrap_or("").trim().to_string();
            let valid =
                (8..=40).contains(&key.len()) && key.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid {
                return Err(ProvisionError::BadKeyFile {
                    path: path.to_path_buf(),
                    reason: "expected a key of 8 to 40 letters and digits alone on the first line"
                        .into(),
                });
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = crate::protocol::auth::new_key();
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            let tmp = crate::store::temp_name(path);
            crate::store::write_synced(&tmp, format!("{key}\n").as_bytes(), 0o600)
                .map_err(io_err(&tmp))?;
            // hard_link refuses to replace: if another process made the key first, use theirs.
            let linked = fs::hard_link(&tmp, path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    sync_dir(path)?;
                    tracing::info!(file = %path.display(), "generated a key file");
                    Ok(key)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_or_create_key(path),
                Err(e) => Err(io_err(path)(e)),
            }
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The entangled tree every instance shares, `<data>/entangled` (docs/protocol.md §11).
pub fn entangled_dir(plan: &Plan) -> PathBuf {
    plan.data.join("entangled")
}

/// Makes or refreshes the home of instance `id`: `config.txt` (rewritten when it differs),
/// `auth.txt` seeded from the ledger, `ssl/`, `gpgtemp/` (700), `inputqueue/`,
/// `sendqueue/`, and `entangled` as a link to the shared tree (files of an older real
/// folder moved into it). Existing queues, stores and log lines are kept.
pub fn provision_home(plan: &Plan, prepared: &Prepared, id: u32) -> Result<(), ProvisionError> {
    let inst = plan.instance(id);
    let home = &inst.home;
    fs::create_dir_all(home).map_err(io_err(home))?;
    for dir in ["inputqueue", "sendqueue"] {
        let p = home.join(dir);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let link = home.join("entangled");
    let shared = entangled_dir(plan);
    fs::create_dir_all(&shared).map_err(io_err(&shared))?;
    crate::supervisor::shared_tree::link_home(&shared, &link).map_err(io_err(&link))?;
    let gpg = home.join("gpgtemp");
    fs::create_dir_all(&gpg).map_err(io_err(&gpg))?;
    fs::set_permissions(&gpg, fs::Permissions::from_mode(0o700)).map_err(io_err(&gpg))?;

    // config.txt may hold the replication key: owner-only.
    let config = inst.config_text(prepared.replication_key.as_deref());
    let config_path = home.join("config.txt");
    if fs::read_to_string(&config_path).ok().as_deref() != Some(config.as_str()) {
        write_atomic(&config_path, config.as_bytes(), 0o600)?;
    }

    seed_auth(&home.join("auth.txt"), &desired_accounts(prepared)?)?;

    let ssl = home.join("ssl");
    let id_now = Identity::load(&ssl).ok();
    let same = id_now.is_some_and(|i| {
        i.cert_pem == prepared.identity.cert_pem
            && i.key_pem == prepared.identity.key_pem
            && i.dhparams_pem == prepared.identity.dhparams_pem
    });
    if !same {
        prepared.identity.install(&ssl)?;
    }
    Ok(())
}

/// One account line: user, key, and the rest of the line (its date).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    user: String,
    key: String,
    rest: Option<String>,
}

/// The lines of auth.txt-format text with both a user and a key, in order.
fn parse_accounts(text: &str) -> Vec<Account> {
    text.lines()
        .filter_map(crate::protocol::auth::entry)
        .map(|e| Account {
            user: e.user.to_string(),
            key: e.key.to_string(),
            rest: e.rest.map(str::to_string),
        })
        .collect()
}

/// The accounts every home must have: the ledger's final mapping (first-seen order), then
/// the administrator and replication keys, which win over any ledger line.
fn desired_accounts(prepared: &Prepared) -> Result<Vec<Account>, ProvisionError> {
    let text = fs::read_to_string(&prepared.ledger).map_err(io_err(&prepared.ledger))?;
    let mut order: Vec<String> = Vec::new();
    let mut last: HashMap<String, Account> = HashMap::new();
    for a in parse_accounts(&text) {
        if !last.contains_key(&a.key) {
            order.push(a.key.clone());
        }
        last.insert(a.key.clone(), a);
    }
    let mut out: Vec<Account> = order.into_iter().filter_map(|k| last.remove(&k)).collect();
    out.push(Account {
        user: "administrator".into(),
        key: prepared.admin_key.clone(),
        rest: None,
    });
    if let Some(k) = &prepared.replication_key {
        out.push(Account {
            user: "replication".into(),
            key: k.clone(),
            rest: None,
        });
    }
    Ok(out)
}

/// Appends to `auth.txt` the lines whose current mapping differs (it is an append-only log
/// where later lines win). A key already claimed by a user in this home is not turned back
/// into `undefined`: the claim is newer than the ledger.
fn seed_auth(path: &Path, desired: &[Account]) -> Result<(), ProvisionError> {
    let mut text = String::new();
    match fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_string(&mut text).map_err(io_err(path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let mut current: HashMap<String, String> = parse_accounts(&text)
        .into_iter()
        .map(|a| (a.key, a.user))
        .collect();
    let now = crate::protocol::dt::format_dt(chrono::Utc::now());
    let mut append = String::new();
    for a in desired {
        let cur = current.get(&a.key);
        if cur == Some(&a.user) {
            continue;
        }
        let claimed = cur.is_some_and(|u| {
            !u.eq_ignore_ascii_case("undefined") && !u.eq_ignore_ascii_case("disabled")
        });
        if a.user.eq_ignore_ascii_case("undefined") && claimed {
            continue;
        }
        append.push_str(&format!(
            "{} {} {}\n",
            a.user,
            a.key,
            a.rest.as_deref().unwrap_or(&now)
        ));
        current.insert(a.key.clone(), a.user.clone());
    }
    if append.is_empty() && path.exists() {
        return Ok(());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        append.insert(0, '\n');
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(append.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_err(path))
}

/// Temp file + rename in the same directory: readers see the old or the new file, never half.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ProvisionError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    crate::store::replace_file(path, bytes, mode).map_err(io_err(path))
}

/// Makes the entry `path` durable in its folder.
fn sync_dir(path: &Path) -> Result<(), ProvisionError> {
    match path.parent() {
        Some(dir) => crate::store::sync_dir(dir).map_err(|e| ProvisionError::Io {
            path: e.path,
            source: e.source,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Overrides;

    fn plan_in(dir: &Path, text: &str, site: Option<&str>) -> Plan {
        let o = Overrides {
            data: Some(dir.join("data")),
            ..Overrides::default()
        };
        Plan::from_str(text, "t.yaml", site, &o).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn prepare_creates_everything_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_in(dir.path(), "instances: 2\n", None);
        let a = prepare_data(&plan).unwrap();
        assert!(plan.store.is_dir());
        assert!(plan.data.join("homes").is_dir());
        assert_eq!(a.admin_key.len(), 40);
        assert!(a
            .admin_key
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        let key_text = fs::read_to_string(&plan.admin_key_file).unwrap();
        assert_eq!(key_text, format!("{}\n", a.admin_key));
        assert_eq!(mode(&plan.admin_key_file), 0o600);
        assert_eq!(mode(&plan.data.join("ssl/server.key")), 0o600);
        assert!(fs::read_to_string(&a.ledger).unwrap().starts_with('#'));
        // Nothing is regenerated on the next run.
        fs::write(&a.ledger, "undefined ABCDEFGH12 2026-01-01T00:00:00Z\n").unwrap();
        let b = prepare_data(&plan).unwrap();
        assert_eq!(b.admin_key, a.admin_key);
        assert_eq!(b.identity.cert_pem, a.identity.cert_pem);
        assert_eq!(b.identity.key_pem, a.identity.key_pem);
        assert!(fs::read_to_string(&b.ledger)
            .unwrap()
            .starts_with("undefined ABCDEFGH12"));
        assert!(b.replication_key.is_none());
    }

    #[test]
    fn home_is_provisioned_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_in(
            dir.path(),
            "instances: 2\nserver: { config: { timeout: 30, retry_schedule: [0, 5, 30] } }\n",
            None,
        );
        let prepared = prepare_data(&plan).unwrap();
        provision_home(&plan, &prepared, 2).unwrap();
        let home = plan.home(2);
        for d in ["inputqueue", "sendqueue", "entangled", "gpgtemp", "ssl"] {
            assert!(home.join(d).is_dir(), "{d}");
        }
        assert_eq!(mode(&home.join("gpgtemp")), 0o700);
        assert_eq!(
            fs::read_link(home.join("entangled")).unwrap(),
            entangled_dir(&plan),
            "every home shares one entangled tree"
        );
        for f in ["server.crt", "server.key", "dhparams.pem"] {
            assert!(home.join("ssl").join(f).is_file(), "{f}");
        }
        let config = fs::read_to_string(home.join("config.txt")).unwrap();
        let want = format!(
            "sport: 18102\neport: 18202\nalt_localstore: {}\nlisten_address: 127.0.0.1\ntimeout: 30\nretry_schedule: 0,5,30\n",
            plan.store.display()
        );
        assert!(config.ends_with(&want), "{config}");
        let auth = fs::read_to_string(home.join("auth.txt")).unwrap();
        assert!(
            auth.starts_with(&format!("administrator {} ", prepared.admin_key)),
            "{auth}"
        );
        assert_eq!(auth.lines().count(), 1);

        // Data in the home survives a re-provisioning; auth.txt gains nothing new.
        let queued = home.join("inputqueue").join("A".repeat(40));
        fs::write(&queued, "block").unwrap();
        fs::write(home.join("config.txt"), "sport: 1\n").unwrap();
        provision_home(&plan, &prepared, 2).unwrap();
        assert_eq!(fs::read_to_string(&queued).unwrap(), "block");
        assert!(fs::read_to_string(home.join("config.txt"))
            .unwrap()
            .ends_with(&want));
        assert_eq!(fs::read_to_string(home.join("auth.txt")).unwrap(), auth);
    }

    #[test]
    fn auth_seeding_appends_only_differences() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_in(dir.path(), "instances: 1\n", None);
        let prepared = prepare_data(&plan).unwrap();
        let user = "00112233445566778899AABBCCDDEEFF00112233";
        fs::write(
            &prepared.ledger,
            format!(
                "# ledger\nundefined KEYONE1234 2026-01-01T00:00:00Z\nundefined KEYTWO1234 2026-01-01T00:00:00Z\n\
                 {user} KEYONE1234 2026-01-02T00:00:00Z\ndisabled KEYTHREE12 2026-01-03T00:00:00Z\n"
            ),
        )
        .unwrap();
        let auth_path = plan.home(1).join("auth.txt");
        fs::create_dir_all(plan.home(1)).unwrap();
        // The home already knows KEYTWO as claimed by a user (a claim the ledger has not
        // seen yet), and its last line has no newline.
        fs::write(
            &auth_path,
            format!("{user} KEYTWO1234 2026-01-05T00:00:00Z"),
        )
        .unwrap();
        provision_home(&plan, &prepared, 1).unwrap();
        let auth = fs::read_to_string(&auth_path).unwrap();
        let lines: Vec<&str> = auth.lines().collect();
        assert_eq!(lines[0], format!("{user} KEYTWO1234 2026-01-05T00:00:00Z"));
        assert_eq!(lines[1], format!("{user} KEYONE1234 2026-01-02T00:00:00Z"));
        assert_eq!(lines[2], "disabled KEYTHREE12 2026-01-03T00:00:00Z");
        assert!(lines[3].starts_with(&format!("administrator {} ", prepared.admin_key)));
        assert_eq!(lines.len(), 4, "{auth}");
        // The same ledger again: nothing to add.
        provision_home(&plan, &prepared, 1).unwrap();
        assert_eq!(fs::read_to_string(&auth_path).unwrap(), auth);
        // A key rotated in the ledger is appended, later lines win.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&prepared.ledger)
            .unwrap();
        f.write_all(b"disabled KEYONE1234 2026-02-01T00:00:00Z\n")
            .unwrap();
        provision_home(&plan, &prepared, 1).unwrap();
        let after = fs::read_to_string(&auth_path).unwrap();
        assert_eq!(
            after.strip_prefix(auth.as_str()),
            Some("disabled KEYONE1234 2026-02-01T00:00:00Z\n")
        );
    }

    #[test]
    fn sites_get_a_replication_key_and_peer() {
        let dir = tempfile::tempdir().unwrap();
        let keyfile = dir.path().join("etc/replication.key");
        let text = format!(
            "instances: 2\nsites:\n  a: {{ host: 10.0.0.1 }}\n  b: {{ host: 10.0.0.2 }}\nreplication: {{ authkey_file: {} }}\n",
            keyfile.display()
        );
        let plan = plan_in(dir.path(), &text, Some("b"));
        let prepared = prepare_data(&plan).unwrap();
        let key = prepared.replication_key.clone().unwrap();
        assert_eq!(fs::read_to_string(&keyfile).unwrap(), format!("{key}\n"));
        assert_eq!(mode(&keyfile), 0o600);
        provision_home(&plan, &prepared, 2).unwrap();
        let home = plan.home(2);
        let config = fs::read_to_string(home.join("config.txt")).unwrap();
        assert!(config.contains("\nlisten_address: 10.0.0.2\nreplpeer: 10.0.0.1:18102\n"));
        assert!(config.contains(&format!("\nrepl_authkey: {key}\n")));
        assert_eq!(mode(&home.join("config.txt")), 0o600);
        let auth = fs::read_to_string(home.join("auth.txt")).unwrap();
        assert!(auth.contains(&format!("\nreplication {key} ")), "{auth}");
        // The key persists.
        assert_eq!(prepare_data(&plan).unwrap().replication_key, Some(key));
    }

    #[test]
    fn configured_tls_paths_are_generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let text = format!(
            "instances: 1\nserver: {{ tls: {{ cert: {0}/c.pem, key: {0}/k.pem }} }}\n",
            tls.display()
        );
        let plan = plan_in(dir.path(), &text, None);
        let a = prepare_data(&plan).unwrap();
        assert!(tls.join("c.pem").is_file());
        assert_eq!(mode(&tls.join("k.pem")), 0o600);
        assert!(!plan.data.join("ssl").exists());
        let b = prepare_data(&plan).unwrap();
        assert_eq!(a.identity.cert_pem, b.identity.cert_pem);
        provision_home(&plan, &b, 1).unwrap();
        let installed = Identity::load(&plan.home(1).join("ssl")).unwrap();
        assert_eq!(installed.cert_pem, a.identity.cert_pem);
        // Half an identity is refused rather than silently replaced.
        fs::remove_file(tls.join("k.pem")).unwrap();
        let e = prepare_data(&plan).unwrap_err().to_string();
        assert!(
            e.contains("k.pem") && e.contains("missing while its pair exists"),
            "{e}"
        );
    }

    #[test]
    fn bad_key_files_are_refused_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_in(dir.path(), "instances: 1\n", None);
        fs::create_dir_all(&plan.data).unwrap();
        fs::write(&plan.admin_key_file, "not a key!\n").unwrap();
        let e = prepare_data(&plan).unwrap_err().to_string();
        assert!(
            e.contains("admin.key") && e.contains("expected a key of 8 to 40"),
            "{e}"
        );
        assert_eq!(
            fs::read_to_string(&plan.admin_key_file).unwrap(),
            "not a key!\n"
        );
    }

    #[test]
    fn shard_links_are_made_before_instances() {
        let dir = tempfile::tempdir().unwrap();
        let d1 = dir.path().join("d1");
        let text = format!(
            "instances: 1\nshards: [{{ range: 00-02, path: {} }}]\n",
            d1.display()
        );
        let plan = plan_in(dir.path(), &text, None);
        // 01 is a store folder without files (only a leaf and its LOCKFILE): it becomes a link.
        fs::create_dir_all(plan.store.join("01/AB")).unwrap();
        fs::write(plan.store.join("01/AB/LOCKFILE"), "").unwrap();
        prepare_data(&plan).unwrap();
        for p in ["00", "01", "02"] {
            assert_eq!(fs::read_link(plan.store.join(p)).unwrap(), d1.join(p));
            assert!(d1.join(p).is_dir());
        }
    }

    #[test]
    fn data_outside_its_shard_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let d1 = dir.path().join("d1");
        let text = format!(
            "instances: 1\nshards: [{{ range: 00-01, path: {} }}]\n",
            d1.display()
        );
        let plan = plan_in(dir.path(), &text, None);
        let block = plan
            .store
            .join("01/AB")
            .join(format!("01AB{}", "0".repeat(36)));
        fs::create_dir_all(block.parent().unwrap()).unwrap();
        fs::write(&block, "data").unwrap();
        let e = prepare_data(&plan).unwrap_err().to_string();
        assert!(e.contains("01 is a folder holding 1 file(s)"), "{e}");
        assert!(e.contains("storeherd shards apply --move"), "{e}");
        // Nothing changed: no link made, the data where it was.
        assert!(fs::symlink_metadata(plan.store.join("00")).is_err());
        assert_eq!(fs::read_to_string(&block).unwrap(), "data");
    }

    #[test]
    fn check_reports_nothing_left_to_do_after_provisioning() {
        let dir = tempfile::tempdir().unwrap();
        let d1 = dir.path().join("d1");
        let text = format!(
            "instances: 2\nsites:\n  a: {{ host: 127.0.0.1 }}\n  b: {{ host: 10.0.0.2 }}\n\
             replication: {{ authkey_file: {0}/repl.key }}\nshards: [{{ range: 00-03, path: {1} }}]\n",
            dir.path().display(),
            d1.display()
        );
        let plan = plan_in(dir.path(), &text, Some("a"));
        assert_eq!(
            plan.report().changes.len(),
            10,
            "{:?}",
            plan.report().changes
        );
        let prepared = prepare_data(&plan).unwrap();
        for id in 1..=plan.instances {
            provision_home(&plan, &prepared, id).unwrap();
        }
        let report = plan.report();
        assert!(report.changes.is_empty(), "{:?}", report.changes);
        assert!(report.shard_links.iter().all(|l| l.state == "link"));
    }
}
