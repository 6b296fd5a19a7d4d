//! Is the store on a file system that keeps its rules? The store relies on locks that
//! exclude across hosts, on a block written through one host being visible through another
//! at once, and on writes that are never silently dropped. Read from `/proc/self/mountinfo`:
//!
//! - NFS below 4.1 (v3 locks go through NLM/statd, v4.0 has no sessions): refused;
//! - `soft` (or `softerr`): an I/O timeout returns an error in the middle of a write: refused;
//! - without `lookupcache=positive` (or `none`) the client caches *missing* names, so a block
//!   stored through one host stays NOT FOUND through another for up to ~30 s: refused;
//! - JuiceFS (`fuse.juicefs`) with its attribute, entry, directory-entry or open cache on:
//!   locked updates are lost: refused. Its cache settings are read from the mount's `.config`
//!   (root only), else from the mounting process's command line; when neither is readable
//!   this is a warning.

use std::path::{Path, PathBuf};

/// One line of mountinfo: the mount point, its file system type and source, and the mount
/// options together with the file system's own (NFS puts `vers=`, `hard` … in the latter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

impl Mount {
    fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find_map(|o| match o.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if o == name => Some(""),
            _ => None,
        })
    }
}

/// What is wrong with one path's file system, and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountProblem {
    pub path: PathBuf,
    pub mount: PathBuf,
    pub fstype: String,
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for MountProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is on {} ({} at {}): {}; {}",
            self.path.display(),
            self.fstype,
            self.fstype,
            self.mount.display(),
            self.problem,
            self.fix
        )
    }
}

/// Mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of a mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let source = unescape(right.next()?);
            let super_opts = right.next().unwrap_or("");
            let point = unescape(left.get(4)?);
            let mount_opts = left.get(5)?;
            let options = mount_opts
                .split(',')
                .chain(super_opts.split(','))
                .filter(|o| !o.is_empty())
                .map(str::to_string)
                .collect();
            Some(Mount {
                point: PathBuf::from(point),
                fstype,
                source,
                options,
            })
        })
        .collect()
}

/// The mount holding `path`: the last-mounted one whose point is the longest prefix of the
/// path resolved (or of its nearest existing ancestor, for a store not made yet).
pub fn mount_of<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    let mut p = path.to_path_buf();
    let resolved = loop {
        if let Ok(r) = std::fs::canonicalize(&p) {
            break r;
        }
        if !p.pop() {
            return None;
        }
    };
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| resolved.starts_with(&m.point))
        .max_by_key(|(i, m)| (m.point.components().count(), *i))
        .map(|(_, m)| m)
}

/// JuiceFS's caches that must be off for the store, in seconds: attribute, entry,
/// directory-entry and open cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JuiceCaches([f64; 4]);

/// The mount flags of [`JuiceCaches`], in order, with JuiceFS's defaults.
const JUICE_FLAGS: [(&str, f64); 4] = [
    ("attr-cache", 1.0),
    ("entry-cache", 1.0),
    ("dir-entry-cache", 1.0),
    ("open-cache", 0.0),
];

impl JuiceCaches {
    /// From a `juicefs mount` command line (`--attr-cache=0` or `--attr-cache 0`); a flag
    /// left out has its default, one that cannot be read counts as on.
    pub fn from_args(args: &[String]) -> JuiceCaches {
        JuiceCaches(JUICE_FLAGS.map(|(name, default)| {
            let (long, eq) = (format!("--{name}"), format!("--{name}="));
            let value = args.iter().enumerate().find_map(|(i, a)| {
                if let Some(v) = a.strip_prefix(&eq) {
                    Some(v)
                } else if *a == long {
                    args.get(i + 1).map(String::as_str)
                } else {
                    None
                }
            });
            value.map_or(default, |v| {
                v.trim_end_matches('s').parse().unwrap_or(f64::INFINITY)
            })
        }))
    }

    /// From the mount's `.config` (JSON the mount process serves at its root, readable by
    /// root; durations in nanoseconds), which also works across PID namespaces.
    pub fn from_config(json: &[u8]) -> Option<JuiceCaches> {
        let v: serde_json::Value = serde_json::from_slice(json).ok()?;
        let ns = |v: &serde_json::Value| v.as_f64().map(|n| n / 1e9);
        Some(JuiceCaches([
            ns(v.get("AttrTimeout")?)?,
            ns(v.get("EntryTimeout")?)?,
            ns(v.get("DirEntryTimeout")?)?,
            ns(v.get("Meta")?.get("OpenCache")?)?,
        ]))
    }

    /// The flags of the caches that are on.
    fn on(&self) -> Vec<&'static str> {
        JUICE_FLAGS
            .iter()
            .zip(self.0)
            .filter(|(_, secs)| secs.is_nan() || *secs > 0.0)
            .map(|((name, _), _)| *name)
            .collect()
    }
}

/// The cache settings of the JuiceFS mount at `point`: from its `.config`, else from the
/// command line of the process that mounted it, if visible.
fn juicefs_caches(point: &Path) -> Option<JuiceCaches> {
    if let Some(c) = std::fs::read(point.join(".config"))
        .ok()
        .and_then(|j| JuiceCaches::from_config(&j))
    {
        return Some(c);
    }
    let point = point.to_string_lossy();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // JuiceFS rewrites its command line into one space-joined string.
        let args: Vec<String> = String::from_utf8_lossy(&cmd)
            .split(['\0', ' '])
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        let is_juicefs = args.first().is_some_and(|a| a.ends_with("juicefs"));
        if is_juicefs && args.iter().any(|a| a == "mount") && args.iter().any(|a| *a == point) {
            return Some(JuiceCaches::from_args(&args));
        }
    }
    None
}

/// The problems of `m` for a store; `juicefs` is the JuiceFS mount's caches when known.
/// `Err` is a warning: the settings could not be checked.
pub fn judge(m: &Mount, juicefs: Option<JuiceCaches>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    if m.fstype == "nfs" || m.fstype == "nfs4" {
        let vers = m.option("vers").or_else(|| m.option("nfsvers"));
        let v: Vec<u32> = vers
            .unwrap_or(if m.fstype == "nfs4" { "4" } else { "3" })
            .split('.')
            .filter_map(|p| p.parse().ok())
            .collect();
        if v < vec![4, 1] {
            out.push((
                format!("NFS version {}", vers.unwrap_or("3")),
                "mount it with nfsvers=4.2 (4.1 at least: sessions, and locks without NLM)".into(),
            ));
        }
        if m.option("soft").is_some() || m.option("softerr").is_some() {
            out.push((
                "a soft mount (a timeout fails a write halfway)".into(),
                "mount it with hard".into(),
            ));
        }
        if !matches!(m.option("lookupcache"), Some("pos" | "positive" | "none")) {
            out.push((
                "lookupcache=all (a block stored through another host stays NOT FOUND here for up to ~30 s)".into(),
                "mount it with lookupcache=positive".into(),
            ));
        }
    } else if m.fstype == "fuse.juicefs" {
        let Some(caches) = juicefs else {
            return Err(format!(
                "{} is JuiceFS and neither its .config nor its mount process is readable here: \
                 make sure it runs with --attr-cache=0 --entry-cache=0 --dir-entry-cache=0 \
                 --open-cache=0",
                m.point.display()
            ));
        };
        let on = caches.on();
        if !on.is_empty() {
            out.push((
                format!(
                    "JuiceFS caches on ({}): locked updates are lost",
                    on.join(", ")
                ),
                format!(
                    "mount it with {}",
                    on.iter()
                        .map(|n| format!("--{n}=0"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ));
        }
    }
    Ok(out)
}

/// The problems and warnings of the file systems holding `paths` (this host's mounts).
pub fn check(paths: &[PathBuf]) -> (Vec<MountProblem>, Vec<String>) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return (Vec::new(), Vec::new());
    };
    let mounts = parse_mountinfo(&text);
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for path in paths {
        let Some(m) = mount_of(&mounts, path) else {
            continue;
        };
        let caches = (m.fstype == "fuse.juicefs")
            .then(|| juicefs_caches(&m.point))
            .flatten();
        match judge(m, caches) {
            Ok(list) => problems.extend(list.into_iter().map(|(problem, fix)| MountProblem {
                path: path.clone(),
                mount: m.point.clone(),
                fstype: m.fstype.clone(),
                problem,
                fix,
            })),
            Err(w) if !warnings.contains(&w) => warnings.push(w),
            Err(_) => {}
        }
    }
    (problems, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /srv/good rw,relatime shared:7 - nfs4 nas:/export rw,vers=4.2,rsize=1048576,hard,proto=tcp,lookupcache=pos,timeo=600
31 22 0:41 / /srv/v3 rw,relatime shared:8 - nfs nas:/old rw,vers=3,hard,lookupcache=positive
32 22 0:42 / /srv/soft rw,relatime shared:9 - nfs4 nas:/s rw,vers=4.1,soft,lookupcache=none
33 22 0:43 / /srv/default rw,relatime shared:10 - nfs4 nas:/d rw,vers=4.2,hard
34 22 0:44 / /srv/jfs rw,relatime shared:11 - fuse.juicefs JuiceFS:vol rw,user_id=0
35 22 0:45 / /srv/with\\040space rw - tmpfs tmpfs rw
bad line
";

    fn mount(point: &str) -> Mount {
        parse_mountinfo(INFO)
            .into_iter()
            .find(|m| m.point == Path::new(point))
            .unwrap()
    }

    fn problems(point: &str, juicefs: Option<JuiceCaches>) -> Vec<String> {
        judge(&mount(point), juicefs)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn mountinfo_lines_are_read() {
        let all = parse_mountinfo(INFO);
        assert_eq!(all.len(), 7);
        let m = mount("/srv/good");
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("nfs4", "nas:/export")
        );
        assert_eq!(m.option("vers"), Some("4.2"));
        assert_eq!(m.option("hard"), Some(""));
        assert_eq!(mount("/srv/with space").fstype, "tmpfs");
    }

    #[test]
    fn nfs_settings_are_judged() {
        assert!(problems("/srv/good", None).is_empty());
        let v3 = problems("/srv/v3", None);
        assert_eq!(v3.len(), 1, "{v3:?}");
        assert!(v3[0].contains("version 3"));
        let soft = problems("/srv/soft", None);
        assert_eq!(soft.len(), 1, "{soft:?}");
        assert!(soft[0].contains("soft"));
        let default = problems("/srv/default", None);
        assert_eq!(default.len(), 1, "{default:?}");
        assert!(default[0].contains("lookupcache=all"));
        assert!(problems("/", None).is_empty());
    }

    #[test]
    fn juicefs_caches_are_judged_from_its_command_line_or_config() {
        let args = |s: &str| {
            let a: Vec<String> = s.split(' ').map(str::to_string).collect();
            Some(JuiceCaches::from_args(&a))
        };
        assert!(judge(&mount("/srv/jfs"), None).is_err());
        let default = problems("/srv/jfs", args("juicefs mount redis://x /srv/jfs"));
        assert_eq!(default.len(), 1);
        assert!(default[0].contains("attr-cache, entry-cache, dir-entry-cache"));
        let off = args(
            "juicefs mount --attr-cache=0 --entry-cache 0 --dir-entry-cache=0 redis://x /srv/jfs",
        );
        assert!(problems("/srv/jfs", off).is_empty());
        let open = args("juicefs mount --attr-cache=0 --entry-cache=0 --dir-entry-cache=0 --open-cache=1s r /srv/jfs");
        assert_eq!(problems("/srv/jfs", open).len(), 1);
        // The shape of a JuiceFS 1.4 mount's .config (other keys left out).
        let config = |attr: u64, open: u64| {
            let j = format!(
                r#"{{"Meta":{{"OpenCache":{open}}},"AttrTimeout":{attr},"EntryTimeout":0,"DirEntryTimeout":0}}"#
            );
            JuiceCaches::from_config(j.as_bytes())
        };
        assert!(problems("/srv/jfs", config(0, 0)).is_empty());
        let attr = problems("/srv/jfs", config(1_000_000_000, 0));
        assert!(
            attr.len() == 1 && attr[0].contains("(attr-cache)"),
            "{attr:?}"
        );
        assert!(problems("/srv/jfs", config(0, 500_000_000))[0].contains("(open-cache)"));
        assert_eq!(JuiceCaches::from_config(b"{}"), None);
    }

    #[test]
    fn the_longest_mount_point_holds_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let mounts = vec![
            Mount {
                point: "/".into(),
                fstype: "ext4".into(),
                source: "a".into(),
                options: vec![],
            },
            Mount {
                point: root.clone(),
                fstype: "nfs4".into(),
                source: "b".into(),
                options: vec![],
            },
        ];
        // Not made yet: its nearest existing ancestor decides.
        let m = mount_of(&mounts, &root.join("store/not/yet")).unwrap();
        assert_eq!(m.fstype, "nfs4");
        assert_eq!(mount_of(&mounts, Path::new("/usr")).unwrap().fstype, "ext4");
    }
}
