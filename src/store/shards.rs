//! Shards (docs/design.md topology `shards`): first-level store folders that live on other devices,
//! reached through symlinks `<store>/XX -> <path>/XX`.
//!
//! [`Layout::conflicts`] finds first-level entries whose data is somewhere else than the plan
//! says (`up` and `check` refuse to start on them), [`Layout::link`] makes the links that can
//! be made without moving data, and [`Layout::apply_move`] moves data into place.
//!
//! The move is resumable and loses nothing: each file is copied to a temporary name in the
//! destination leaf, made durable, renamed, the leaf directory is fsynced, and only then is
//! the source removed. A file present at both ends with equal content (a move interrupted
//! after the rename) is just removed at the source; one with different content is left at
//! both ends and reported. Links change only once their old location holds no file, and a
//! folder that goes back into the store from a link is filled under a staging name
//! (`.XX.local`) first, so that an interrupted run finds every byte again. Copying (never
//! renaming across directories) keeps it correct when the shard is another file system.
//!
//! Choices where the design is silent:
//! - a store folder holding no file (only folders and `LOCKFILE`s) where a link belongs is
//!   replaced by the link at `up`, as if it were missing: there is nothing to move;
//! - a link that resolves to the planned folder (relative, or through other links) counts as
//!   the planned link;
//! - `check` exits 1 when `up` would refuse, listing each folder and what to do;
//! - moved files, folders and `LOCKFILE`s take the owner of their source (the move usually
//!   runs as root, the servers do not); eight first-level folders move at a time.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::lock::LeafLock;
use super::mounts::MountProblem;
use super::tree::LOCKFILE;
use super::{sync_dir, StoreError};
use serde::Serialize;

/// First-level store folders `first..=last` live under `path` (through symlinks
/// `<store>/XX -> <path>/XX`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardPlan {
    pub first: u8,
    pub last: u8,
    pub path: PathBuf,
}

impl ShardPlan {
    /// The range as written: `00-3F`.
    pub fn range(&self) -> String {
        format!("{:02X}-{:02X}", self.first, self.last)
    }

    /// Every link of this shard: (`<store>/XX`, `<path>/XX`).
    pub fn links(&self, store: &Path) -> Vec<(PathBuf, PathBuf)> {
        (self.first..=self.last)
            .map(|b| {
                let name = format!("{b:02X}");
                (store.join(&name), self.path.join(&name))
            })
            .collect()
    }
}

/// Copies made durable and renamed together (within one leaf).
const BATCH: usize = 64;

/// Suffix of a file being copied into its destination leaf.
const MOVE_SUFFIX: &str = ".move";

/// At most this many problems are listed in one error message.
const LIST_AT_MOST: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Io(#[from] StoreError),
    #[error("{}", render_conflicts(.0))]
    Conflicts(Vec<Conflict>),
    #[error("{}", render_mounts(.0))]
    UnsafeMounts(Vec<MountProblem>),
}

fn render_mounts(list: &[MountProblem]) -> String {
    let mut out = format!(
        "{} problem(s) with the file systems of the store (they lose or hide blocks between hosts):",
        list.len()
    );
    for p in list {
        out.push_str(&format!("\n  {p}"));
    }
    out
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError {
        path: path.to_path_buf(),
        source,
    }
}

/// The store and where each first-level folder belongs.
#[derive(Debug, Clone)]
pub struct Layout {
    store: PathBuf,
    /// Index = first-level folder; `Some((range, path))` when a shard covers it.
    targets: Vec<Option<(String, PathBuf)>>,
}

/// A first-level entry whose data is not where the plan says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub entry: PathBuf,
    pub kind: ConflictKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictKind {
    /// A real directory holding files where a link to `target` should be.
    DataInStore {
        files: u64,
        range: String,
        target: PathBuf,
    },
    /// A link to somewhere else than `target`.
    WrongLink {
        points_to: PathBuf,
        range: String,
        target: PathBuf,
    },
    /// A link for a folder that no shard covers (it must be a local directory).
    LinkForLocal { points_to: PathBuf },
    /// Neither a directory nor a link to one.
    NotADirectory,
    /// A staging folder left by an interrupted move.
    UnfinishedMove { staging: PathBuf },
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.entry.display();
        match &self.kind {
            ConflictKind::DataInStore {
                files,
                range,
                target,
            } => write!(
                f,
                "{e} is a folder holding {files} file(s), but shard {range} puts it at {}: \
                 stop storeherd and run `storeherd shards apply --move` (with the same -f/--site) to move it there",
                target.display()
            ),
            ConflictKind::WrongLink {
                points_to,
                range,
                target,
            } => write!(
                f,
                "{e} links to {}, but shard {range} puts it at {}: run `storeherd shards apply --move` \
                 to move its data there and relink it, or fix the link by hand (move the files, then `ln -sfn {} {e}`)",
                points_to.display(),
                target.display(),
                target.display()
            ),
            ConflictKind::LinkForLocal { points_to } => write!(
                f,
                "{e} links to {}, but no shard covers it, so it must be a folder of the store: \
                 run `storeherd shards apply --move` to bring its data back, or add a shard for it to the topology",
                points_to.display()
            ),
            ConflictKind::NotADirectory => write!(
                f,
                "{e} is neither a folder nor a link to one: move it out of the store by hand"
            ),
            ConflictKind::UnfinishedMove { staging } => write!(
                f,
                "{} is left from an interrupted `storeherd shards apply --move`: run it again to finish",
                staging.display()
            ),
        }
    }
}

fn render_conflicts(list: &[Conflict]) -> String {
    let mut out = format!(
        "{} first-level store folder(s) hold data somewhere else than the shards of the topology say:",
        list.len()
    );
    for c in list.iter().take(LIST_AT_MOST) {
        out.push_str("\n  - ");
        out.push_str(&c.to_string());
    }
    if list.len() > LIST_AT_MOST {
        out.push_str(&format!("\n  - … and {} more", list.len() - LIST_AT_MOST));
    }
    out
}

/// What one first-level entry `<store>/XX` is, compared with the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// Nothing there: a missing link is created by `up`; a local folder on demand.
    Missing,
    /// A local folder, and no shard covers it.
    Local,
    /// The planned link.
    Linked,
    /// A real directory without files (only folders and `LOCKFILE`s) where a link should be:
    /// replaced by the link without moving anything.
    Placeholder,
    Conflict(ConflictKind),
}

impl EntryState {
    /// Short name for reports: `missing`, `local`, `link`, `empty-directory`, `directory`,
    /// `wrong-link`, `link-for-local`, `not-a-directory`, `unfinished-move`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryState::Missing => "missing",
            EntryState::Local => "local",
            EntryState::Linked => "link",
            EntryState::Placeholder => "empty-directory",
            EntryState::Conflict(ConflictKind::DataInStore { .. }) => "directory",
            EntryState::Conflict(ConflictKind::WrongLink { .. }) => "wrong-link",
            EntryState::Conflict(ConflictKind::LinkForLocal { .. }) => "link-for-local",
            EntryState::Conflict(ConflictKind::NotADirectory) => "not-a-directory",
            EntryState::Conflict(ConflictKind::UnfinishedMove { .. }) => "unfinished-move",
        }
    }
}

/// Progress of [`Layout::apply_move`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Sent once, before anything moves: what is to be moved.
    Total { files: u64, bytes: u64 },
    /// One file done (moved, or found at the destination already).
    File { bytes: u64 },
}

/// Options of [`Layout::apply_move`].
#[derive(Debug, Clone, Copy)]
pub struct MoveOptions {
    /// Stop after this many files have been copied into place (and before their sources are
    /// removed): the state an interruption leaves. For tests and for moving in steps.
    pub limit: Option<u64>,
    /// First-level folders moved at the same time.
    pub threads: usize,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            limit: None,
            threads: 8,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveReport {
    /// Files copied into their shard (or back into the store).
    pub files_moved: u64,
    pub bytes_moved: u64,
    /// Files found at both ends with equal content: removed at the source only.
    pub duplicates_removed: u64,
    pub links_created: u64,
    /// (source, destination) pairs with different content: both kept, to be compared by hand.
    pub differing: Vec<(PathBuf, PathBuf)>,
    /// Entries still not as planned (with `differing`, or not a directory).
    pub unresolved: Vec<Conflict>,
    /// The run stopped at [`MoveOptions::limit`]; running again finishes it.
    pub interrupted: bool,
}

/// A move job: the files under `from` go to the same relative paths under `to`.
#[derive(Debug)]
struct Job {
    from: PathBuf,
    to: PathBuf,
}

/// Stop signal of the limit.
struct Stop;

impl Layout {
    pub fn new(store: impl Into<PathBuf>, shards: &[ShardPlan]) -> Layout {
        let mut targets = vec![None; 256];
        for s in shards {
            for b in s.first..=s.last {
                targets[usize::from(b)] = Some((s.range(), s.path.join(format!("{b:02X}"))));
            }
        }
        Layout {
            store: store.into(),
            targets,
        }
    }

    pub fn store(&self) -> &Path {
        &self.store
    }

    /// `<store>/XX`.
    pub fn entry(&self, prefix: u8) -> PathBuf {
        self.store.join(format!("{prefix:02X}"))
    }

    /// `(range, <path>/XX)` when a shard covers the folder.
    pub fn target(&self, prefix: u8) -> Option<(&str, &Path)> {
        self.targets[usize::from(prefix)]
            .as_ref()
            .map(|(r, p)| (r.as_str(), p.as_path()))
    }

    fn staging(&self, prefix: u8) -> PathBuf {
        self.store.join(format!(".{prefix:02X}.local"))
    }

    fn link_temp(&self, prefix: u8) -> PathBuf {
        self.store.join(format!(".{prefix:02X}.link"))
    }

    /// Where the link at `entry` leads (relative links are relative to the store).
    fn resolve_link(&self, entry: &Path) -> Result<PathBuf, StoreError> {
        let to = fs::read_link(entry).map_err(io_at(entry))?;
        Ok(if to.is_absolute() {
            to
        } else {
            self.store.join(to)
        })
    }

    /// What `<store>/XX` is, compared with the plan. Reads only.
    pub fn state(&self, prefix: u8) -> Result<EntryState, StoreError> {
        let entry = self.entry(prefix);
        let staging = self.staging(prefix);
        let meta = match fs::symlink_metadata(&entry) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_at(&entry)(e)),
        };
        if fs::symlink_metadata(&staging).is_ok() {
            return Ok(EntryState::Conflict(ConflictKind::UnfinishedMove {
                staging,
            }));
        }
        let Some(meta) = meta else {
            return Ok(EntryState::Missing);
        };
        let target = self.target(prefix);
        if meta.file_type().is_symlink() {
            let points_to = self.resolve_link(&entry)?;
            return Ok(match target {
                Some((_, target)) if same_place(&points_to, target) => EntryState::Linked,
                Some((range, target)) => EntryState::Conflict(ConflictKind::WrongLink {
                    points_to,
                    range: range.to_string(),
                    target: target.to_path_buf(),
                }),
                None => EntryState::Conflict(ConflictKind::LinkForLocal { points_to }),
            });
        }
        if !meta.is_dir() {
            return Ok(EntryState::Conflict(ConflictKind::NotADirectory));
        }
        match target {
            None => Ok(EntryState::Local),
            Some((range, target)) => {
                let files = count_files(&entry)?.0;
                Ok(if files == 0 {
                    EntryState::Placeholder
                } else {
                    EntryState::Conflict(ConflictKind::DataInStore {
                        files,
                        range: range.to_string(),
                        target: target.to_path_buf(),
                    })
                })
            }
        }
    }

    /// Every first-level entry that holds data somewhere else than the plan says.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        let mut out = Vec::new();
        for prefix in 0..=255u8 {
            if let EntryState::Conflict(kind) = self.state(prefix)? {
                out.push(Conflict {
                    entry: self.entry(prefix),
                    kind,
                });
            }
        }
        Ok(out)
    }

    /// `up`'s step: refuses (with every conflict) when data is somewhere else than planned;
    /// otherwise creates every missing link (and its target folder) and replaces folders
    /// without files by their link. Returns how many links it created.
    pub fn prepare(&self) -> Result<u64, ShardError> {
        let conflicts = self.conflicts()?;
        if !conflicts.is_empty() {
            return Err(ShardError::Conflicts(conflicts));
        }
        let (problems, warnings) = self.mounts();
        for w in warnings {
            tracing::warn!("{w}");
        }
        if !problems.is_empty() {
            return Err(ShardError::UnsafeMounts(problems));
        }
        Ok(self.link()?)
    }

    /// The problems (and unverifiable settings) of the file systems holding the store and
    /// every shard ([`super::mounts`]).
    pub fn mounts(&self) -> (Vec<MountProblem>, Vec<String>) {
        let mut paths = vec![self.store.clone()];
        for (_, target) in self.targets.iter().flatten() {
            let shard = target.parent().unwrap_or(target).to_path_buf();
            if !paths.contains(&shard) {
                paths.push(shard);
            }
        }
        super::mounts::check(&paths)
    }

    /// Creates the links that need no data moved: missing ones, and those replacing a folder
    /// that holds no file. Makes the target folders of all links. Leaves conflicts alone.
    pub fn link(&self) -> Result<u64, StoreError> {
        let mut made = 0;
        for prefix in 0..=255u8 {
            let Some((_, target)) = self.target(prefix) else {
                continue;
            };
            let state = self.state(prefix)?;
            if matches!(
                state,
                EntryState::Missing | EntryState::Linked | EntryState::Placeholder
            ) {
                make_dirs(target, &self.store)?;
            }
            match state {
                EntryState::Missing => {
                    self.make_link(prefix, target)?;
                    made += 1;
                }
                EntryState::Placeholder => {
                    let entry = self.entry(prefix);
                    if remove_empty_tree(&entry)? {
                        self.make_link(prefix, target)?;
                        made += 1;
                        tracing::info!(entry = %entry.display(), "replaced an empty store folder with its shard link");
                    }
                }
                _ => {}
            }
        }
        Ok(made)
    }

    /// Points `<store>/XX` at `target`, atomically replacing whatever link is there.
    fn make_link(&self, prefix: u8, target: &Path) -> Result<(), StoreError> {
        let entry = self.entry(prefix);
        let tmp = self.link_temp(prefix);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&tmp)(e)),
        }
        symlink(target, &tmp).map_err(io_at(&tmp))?;
        adopt_owner(&tmp, &self.store);
        fs::rename(&tmp, &entry).map_err(io_at(&entry))?;
        sync_dir(&self.store)
    }

    /// Moves every first-level folder's data to where the plan says, then links (or, for a
    /// folder no shard covers, puts back) each one. Safe to run again after an interruption.
    /// Instances must be stopped (the caller checks).
    pub fn apply_move(
        &self,
        options: MoveOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<MoveReport, StoreError> {
        fs::create_dir_all(&self.store).map_err(io_at(&self.store))?;
        let mut report = MoveReport::default();
        let mut jobs = Vec::new();
        let mut not_dirs = Vec::new();
        for prefix in 0..=255u8 {
            match self.jobs_for(prefix)? {
                Some(mut j) => jobs.append(&mut j),
                None => not_dirs.push(prefix),
            }
        }
        let (mut files, mut bytes) = (0, 0);
        for j in &jobs {
            let (f, b) = count_files(&j.from)?;
            files += f;
            bytes += b;
        }
        progress(Progress::Total { files, bytes });
        let progress = Mutex::new(progress);
        let budget = options.limit.map(AtomicU64::new);
        let next = AtomicUsize::new(0);
        let halt = AtomicBool::new(false);
        let workers = options.threads.clamp(1, jobs.len().max(1));
        // Several first-level folders at once: each file waits for its fsync, so overlapping
        // them (local disk or NFS) is where the time goes, not the CPU.
        let results: Vec<Result<(MoveReport, bool), StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut report = MoveReport::default();
                        let mut stopped = false;
                        while !halt.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = jobs.get(i) else { break };
                            let mut mover = Mover {
                                report: &mut report,
                                progress: &progress,
                                budget: budget.as_ref(),
                            };
                            match mover.move_dir(&job.from, &job.to, 1) {
                                Ok(Ok(())) => {}
                                Ok(Err(Stop)) => {
                                    stopped = true;
                                    halt.store(true, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    halt.store(true, Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                        }
                        Ok((report, stopped))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for r in results {
            let (part, stopped) = r?;
            report.files_moved += part.files_moved;
            report.bytes_moved += part.bytes_moved;
            report.duplicates_removed += part.duplicates_removed;
            report.differing.extend(part.differing);
            report.interrupted |= stopped;
        }
        if report.interrupted {
            return Ok(report);
        }
        // Every job's source is empty unless some file differed: now switch the entries.
        for prefix in 0..=255u8 {
            if !not_dirs.contains(&prefix) {
                self.finish(prefix, &mut report)?;
            }
        }
        for prefix in not_dirs {
            report.unresolved.push(Conflict {
                entry: self.entry(prefix),
                kind: ConflictKind::NotADirectory,
            });
        }
        Ok(report)
    }

    /// What has to move for one folder; `None` when the entry is not a directory at all.
    fn jobs_for(&self, prefix: u8) -> Result<Option<Vec<Job>>, StoreError> {
        let entry = self.entry(prefix);
        let staging = self.staging(prefix);
        let has_staging = staging.is_dir();
        let meta = match fs::symlink_metadata(&entry) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_at(&entry)(e)),
        };
        let is_link = meta.as_ref().is_some_and(|m| m.file_type().is_symlink());
        let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
        if meta.is_some() && !is_link && !is_dir {
            return Ok(None);
        }
        let job = |from: PathBuf, to: PathBuf| Job { from, to };
        let mut jobs = Vec::new();
        match self.target(prefix) {
            Some((_, target)) => {
                if has_staging {
                    jobs.push(job(staging, target.to_path_buf()));
                }
                if is_dir {
                    jobs.push(job(entry, target.to_path_buf()));
                } else if is_link {
                    let from = self.resolve_link(&entry)?;
                    if !same_place(&from, target) && from.is_dir() {
                        jobs.push(job(from, target.to_path_buf()));
                    }
                }
            }
            None => {
                if is_link {
                    let from = self.resolve_link(&entry)?;
                    if from.is_dir() {
                        jobs.push(job(from, staging));
                    }
                } else if is_dir && has_staging {
                    jobs.push(job(staging, entry));
                }
            }
        }
        Ok(Some(jobs))
    }

    /// After the data moved: remove emptied sources and put the entry in its planned form.
    fn finish(&self, prefix: u8, report: &mut MoveReport) -> Result<(), StoreError> {
        let entry = self.entry(prefix);
        let staging = self.staging(prefix);
        let meta = fs::symlink_metadata(&entry).ok();
        let is_link = meta.as_ref().is_some_and(|m| m.file_type().is_symlink());
        let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
        let left_over = |report: &mut MoveReport, kind: ConflictKind| {
            report.unresolved.push(Conflict {
                entry: entry.clone(),
                kind,
            })
        };
        match self.target(prefix) {
            Some((range, target)) => {
                if staging.exists() && !remove_empty_tree(&staging)? {
                    left_over(
                        report,
                        ConflictKind::UnfinishedMove {
                            staging: staging.clone(),
                        },
                    );
                    return Ok(());
                }
                make_dirs(target, &self.store)?;
                if is_dir {
                    if !remove_empty_tree(&entry)? {
                        let files = count_files(&entry)?.0;
                        left_over(
                            report,
                            ConflictKind::DataInStore {
                                files,
                                range: range.to_string(),
                                target: target.to_path_buf(),
                            },
                        );
                        return Ok(());
                    }
                    self.make_link(prefix, target)?;
                    report.links_created += 1;
                } else if is_link {
                    let from = self.resolve_link(&entry)?;
                    if same_place(&from, target) {
                        return Ok(());
                    }
                    if from.is_dir() && count_files(&from)?.0 > 0 {
                        left_over(
                            report,
                            ConflictKind::WrongLink {
                                points_to: from,
                                range: range.to_string(),
                                target: target.to_path_buf(),
                            },
                        );
                        return Ok(());
                    }
                    self.make_link(prefix, target)?;
                    report.links_created += 1;
                    if from.is_dir() {
                        remove_empty_tree(&from)?;
                    }
                } else {
                    self.make_link(prefix, target)?;
                    report.links_created += 1;
                }
            }
            None => {
                if is_link {
                    let from = self.resolve_link(&entry)?;
                    if from.is_dir() && count_files(&from)?.0 > 0 {
                        left_over(report, ConflictKind::LinkForLocal { points_to: from });
                        return Ok(());
                    }
                    fs::remove_file(&entry).map_err(io_at(&entry))?;
                    sync_dir(&self.store)?;
                    if from.is_dir() {
                        remove_empty_tree(&from)?;
                    }
                }
                if staging.is_dir() {
                    if entry.exists() {
                        // The entry is a local folder already: the staging copy moved into it.
                        if !remove_empty_tree(&staging)? {
                            left_over(report, ConflictKind::UnfinishedMove { staging });
                        }
                    } else {
                        fs::rename(&staging, &entry).map_err(io_at(&entry))?;
                        sync_dir(&self.store)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Copies files one by one, counting against the limit.
struct Mover<'a, 'p> {
    report: &'a mut MoveReport,
    progress: &'a Mutex<&'p mut (dyn FnMut(Progress) + Send)>,
    /// Files still allowed to be copied ([`MoveOptions::limit`]).
    budget: Option<&'a AtomicU64>,
}

impl Mover<'_, '_> {
    fn tick(&self, bytes: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        (*p)(Progress::File { bytes });
    }

    /// Takes one file from the budget; false when it is spent.
    fn take_budget(&self) -> bool {
        self.budget.is_none_or(|b| {
            b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        })
    }
}

impl Mover<'_, '_> {
    /// Moves the files under `from` to `to` (created as needed); `depth` 1 is a first-level
    /// folder, 2 a leaf, whose destination `LOCKFILE` is held while its files move.
    fn move_dir(
        &mut self,
        from: &Path,
        to: &Path,
        depth: u32,
    ) -> Result<Result<(), Stop>, StoreError> {
        let mut names: Vec<_> = fs::read_dir(from)
            .map_err(io_at(from))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_at(from))?;
        names.sort();
        if !to.is_dir() {
            make_dirs(to, from)?;
            if let Some(parent) = to.parent() {
                sync_dir(parent)?;
            }
        }
        let lock = if depth == 2 {
            let lockfile = to.join(LOCKFILE);
            let lock = LeafLock::acquire(&lockfile)?;
            // Store servers open it for append: it must be theirs, not root's.
            adopt_owner(&lockfile, from);
            Some(lock)
        } else {
            None
        };
        let mut done = Vec::new();
        let mut batch = Vec::new();
        let mut stopped = false;
        for name in names {
            let src = from.join(&name);
            let meta = fs::symlink_metadata(&src).map_err(io_at(&src))?;
            if meta.is_dir() {
                if self.move_dir(&src, &to.join(&name), depth + 1)?.is_err() {
                    stopped = true;
                    break;
                }
                continue;
            }
            let name_str = name.to_string_lossy();
            if name_str == LOCKFILE || super::is_nfs_placeholder(&name) {
                continue;
            }
            if name_str.ends_with(MOVE_SUFFIX) {
                // An incomplete copy from an earlier run: its original still exists elsewhere.
                self.tick(meta.len());
                done.push(src);
                continue;
            }
            if !meta.is_file() {
                // A link or special file inside the tree: not ours to copy.
                self.report.differing.push((src, to.join(&name)));
                continue;
            }
            let dst = to.join(&name);
            if !dst.exists() && !self.take_budget() {
                stopped = true;
                break;
            }
            match stage(&src, &dst, meta.len())? {
                Staged::Copied(tmp) => {
                    self.report.files_moved += 1;
                    self.report.bytes_moved += meta.len();
                    batch.push((tmp, dst));
                    if batch.len() >= BATCH {
                        publish_locked(lock.as_ref(), &mut batch)?;
                    }
                }
                Staged::Duplicate => self.report.duplicates_removed += 1,
                Staged::Differs => {
                    self.report.differing.push((src, dst));
                    continue;
                }
            }
            self.tick(meta.len());
            done.push(src);
        }
        publish_locked(lock.as_ref(), &mut batch)?;
        // The renames are durable before any source goes.
        sync_dir(to)?;
        if stopped {
            return Ok(Err(Stop));
        }
        for src in &done {
            match fs::remove_file(src) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(src)(e)),
            }
        }
        if !done.is_empty() {
            sync_dir(from)?;
        }
        if depth > 1 {
            remove_empty_tree(from)?;
        }
        Ok(Ok(()))
    }
}

/// [`publish`], after checking that the leaf lock (when the batch is under one) is still
/// held: on a shared file system it can be lost, and a rename then races a store server.
fn publish_locked(
    lock: Option<&LeafLock>,
    batch: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    if let Err(e) = lock.map_or(Ok(()), LeafLock::verify) {
        for (tmp, _) in batch.drain(..) {
            let _ = fs::remove_file(tmp);
        }
        return Err(e.into());
    }
    publish(batch)
}

enum Staged {
    /// Copied to this temporary name, not yet durable nor renamed.
    Copied(PathBuf),
    Duplicate,
    Differs,
}

/// Copies `src` to a temporary name beside `dst`, unless `dst` exists already: then equal
/// content means done, different content is a conflict. [`publish`] finishes the copy.
fn stage(src: &Path, dst: &Path, len: u64) -> Result<Staged, StoreError> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_file() => {
            return Ok(if m.len() == len && same_content(src, dst)? {
                Staged::Duplicate
            } else {
                Staged::Differs
            });
        }
        Ok(_) => return Ok(Staged::Differs),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_at(dst)(e)),
    }
    let tmp = temp_name(dst);
    // fs::copy truncates a stale temp file of an interrupted run and keeps the permissions;
    // it copies the bytes, never renames, so a shard on another file system works.
    fs::copy(src, &tmp).map_err(io_at(&tmp))?;
    adopt_owner(&tmp, src);
    Ok(Staged::Copied(tmp))
}

/// Makes each staged copy durable, then renames it over its name (the caller fsyncs the
/// folder before removing any source). Syncing a batch after copying it lets the file
/// system write the copies together rather than one commit per file.
fn publish(batch: &mut Vec<(PathBuf, PathBuf)>) -> Result<(), StoreError> {
    for (tmp, _) in batch.iter() {
        fs::File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_at(tmp))?;
    }
    for (tmp, dst) in batch.drain(..) {
        fs::rename(&tmp, &dst).map_err(io_at(&dst))?;
    }
    Ok(())
}

/// `mkdir -p dir`, each folder it creates owned like `like`.
fn make_dirs(dir: &Path, like: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while fs::symlink_metadata(at).is_err() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    for d in missing.iter().rev() {
        adopt_owner(d, like);
    }
    Ok(())
}

/// Gives `path` the owner and group of `like`, so that store servers running as the store's
/// user can still write where `shards apply` (often run as root) created or copied things.
/// Best effort: without the right to change owners, what we create is ours already.
fn adopt_owner(path: &Path, like: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(want), Ok(have)) = (fs::metadata(like), fs::symlink_metadata(path)) else {
        return;
    };
    if (want.uid(), want.gid()) == (have.uid(), have.gid()) {
        return;
    }
    if let Err(e) = std::os::unix::fs::lchown(path, Some(want.uid()), Some(want.gid())) {
        tracing::debug!(path = %path.display(), "cannot take the store's owner: {e}");
    }
}

/// `<name>.move`: never 40 characters long, and it starts with the key's first digits, so a
/// storutil walk neither takes it for a block nor locks another leaf for it.
fn temp_name(dst: &Path) -> PathBuf {
    let mut name = dst
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(MOVE_SUFFIX);
    if name.len() == 40 {
        name.push("x");
    }
    dst.with_file_name(name)
}

fn same_content(a: &Path, b: &Path) -> Result<bool, StoreError> {
    let mut fa = fs::File::open(a).map_err(io_at(a))?;
    let mut fb = fs::File::open(b).map_err(io_at(b))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(io_at(a))?;
        let nb = read_full(&mut fb, &mut bb).map_err(io_at(b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Files (not folders, not `LOCKFILE`s, not NFS placeholders) under `dir` and their total
/// size; 0 when absent.
pub fn count_files(dir: &Path) -> Result<(u64, u64), StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io_at(dir)(e)),
    };
    let (mut files, mut bytes) = (0, 0);
    for e in rd {
        let e = e.map_err(io_at(dir))?;
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
        if meta.is_dir() {
            let (f, b) = count_files(&path)?;
            files += f;
            bytes += b;
        } else if e.file_name() != LOCKFILE && !super::is_nfs_placeholder(&e.file_name()) {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// Removes `dir` when it holds only folders and `LOCKFILE`s (removing those too); true when
/// it is gone. Anything else stays, with the folders leading to it.
fn remove_empty_tree(dir: &Path) -> Result<bool, StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(io_at(dir)(e)),
    };
    let mut empty = true;
    let mut lockfile = false;
    for e in rd {
        let e = e.map_err(io_at(dir))?;
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
        if meta.is_dir() {
            empty &= remove_empty_tree(&path)?;
        } else if e.file_name() == LOCKFILE {
            lockfile = true;
        } else {
            empty = false;
        }
    }
    if !empty {
        return Ok(false);
    }
    if lockfile {
        let lf = dir.join(LOCKFILE);
        match fs::remove_file(&lf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&lf)(e)),
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_at(dir)(e)),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(true)
}

/// The same folder, compared as written or, when both exist, as resolved.
fn same_place(a: &Path, b: &Path) -> bool {
    a == b || matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(first: u8, last: u8, path: &Path) -> ShardPlan {
        ShardPlan {
            first,
            last,
            path: path.to_path_buf(),
        }
    }

    /// Writes a block file `<root>/XX/YY/<key>` (and its LOCKFILE) with `content`.
    fn put(root: &Path, key: &str, content: &[u8]) -> PathBuf {
        let leaf = root.join(&key[0..2]).join(&key[2..4]);
        fs::create_dir_all(&leaf).unwrap();
        fs::write(leaf.join(LOCKFILE), "").unwrap();
        let p = leaf.join(key);
        fs::write(&p, content).unwrap();
        p
    }

    fn key(i: u32) -> String {
        // Spread over first-level folders 00..03 and a few leaves each.
        format!("{:02X}{:02X}{:036X}", i % 4, (i / 4) % 3, i)
    }

    fn read_all(root: &Path, n: u32) -> Vec<Option<Vec<u8>>> {
        (0..n)
            .map(|i| {
                let k = key(i);
                fs::read(root.join(&k[0..2]).join(&k[2..4]).join(&k)).ok()
            })
            .collect()
    }

    #[test]
    fn states_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let d1 = dir.path().join("d1");
        let other = dir.path().join("other");
        fs::create_dir_all(&store).unwrap();
        let layout = Layout::new(&store, &[shard(0x00, 0x0F, &d1)]);
        // 00 missing, 01 correct link, 02 empty folder, 03 data, 04 wrong link,
        // 20 local folder, 21 link for a local folder, 05 a plain file.
        symlink(d1.join("01"), store.join("01")).unwrap();
        fs::create_dir_all(store.join("02/AA")).unwrap();
        fs::write(store.join("02/AA/LOCKFILE"), "").unwrap();
        // An NFS client's placeholder of a replaced file is not data.
        fs::write(store.join("02/AA/.nfs000000000a1b2c0000000001"), "old").unwrap();
        put(&store, &format!("03AA{}", "1".repeat(36)), b"x");
        symlink(other.join("04"), store.join("04")).unwrap();
        fs::write(store.join("05"), "junk").unwrap();
        fs::create_dir_all(store.join("20")).unwrap();
        symlink(other.join("21"), store.join("21")).unwrap();
        let st = |p| layout.state(p).unwrap().as_str();
        assert_eq!(st(0x00), "missing");
        assert_eq!(st(0x01), "link");
        assert_eq!(st(0x02), "empty-directory");
        assert_eq!(st(0x03), "directory");
        assert_eq!(st(0x04), "wrong-link");
        assert_eq!(st(0x05), "not-a-directory");
        assert_eq!(st(0x20), "local");
        assert_eq!(st(0x21), "link-for-local");
        let conflicts = layout.conflicts().unwrap();
        let entries: Vec<_> = conflicts.iter().map(|c| c.entry.clone()).collect();
        assert_eq!(
            entries,
            ["03", "04", "05", "21"].map(|p| store.join(p)).to_vec()
        );
        let text = ShardError::Conflicts(conflicts).to_string();
        assert!(text.contains("03 is a folder holding 1 file(s)"), "{text}");
        assert!(text.contains("ln -sfn"), "{text}");
        assert!(text.contains("no shard covers it"), "{text}");
        // `up`'s step refuses and changes nothing.
        assert!(matches!(layout.prepare(), Err(ShardError::Conflicts(_))));
        assert!(fs::symlink_metadata(store.join("00")).is_err());
        // `link` makes what needs no move and leaves the rest.
        // 02 waits until the NFS client has removed its placeholder.
        assert_eq!(layout.link().unwrap(), 11);
        assert_eq!(st(0x02), "empty-directory");
        fs::remove_file(store.join("02/AA/.nfs000000000a1b2c0000000001")).unwrap();
        assert_eq!(layout.link().unwrap(), 1);
        assert_eq!(st(0x00), "link");
        assert_eq!(st(0x02), "link");
        assert_eq!(st(0x03), "directory");
        assert!(d1.join("0F").is_dir());
    }

    #[test]
    fn move_is_resumable_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let d = [dir.path().join("d0"), dir.path().join("d1")];
        let n = 60;
        for i in 0..n {
            put(&store, &key(i), format!("block {i}").as_bytes());
        }
        let before = read_all(&store, n);
        let layout = Layout::new(
            &store,
            &[shard(0x00, 0x01, &d[0]), shard(0x02, 0x02, &d[1])],
        );
        // A stale temp file of an earlier interrupted copy, at the destination.
        let k0 = key(0);
        fs::create_dir_all(d[0].join("00").join(&k0[2..4])).unwrap();
        fs::write(
            d[0].join("00").join(&k0[2..4]).join(format!("{k0}.move")),
            "half",
        )
        .unwrap();
        let mut total = None;
        let mut seen = 0;
        let r = layout
            .apply_move(
                MoveOptions {
                    limit: Some(17),
                    ..MoveOptions::default()
                },
                &mut |p| match p {
                    Progress::Total { files, .. } => total = Some(files),
                    Progress::File { .. } => seen += 1,
                },
            )
            .unwrap();
        assert!(r.interrupted);
        assert_eq!(r.files_moved, 17);
        assert_eq!(total, Some(45), "prefixes 00-02 of 60 keys spread over 4");
        // Every block is somewhere; the store folders are still folders.
        assert!((0..3).any(|p| layout.state(p).unwrap().as_str() == "directory"));
        for i in 0..n {
            let k = key(i);
            let rel = Path::new(&k[0..2]).join(&k[2..4]).join(&k);
            let at = [store.join(&rel), d[0].join(&rel), d[1].join(&rel)];
            assert!(at.iter().any(|p| p.exists()), "block {i} lost");
        }
        let r = layout
            .apply_move(MoveOptions::default(), &mut |_| {})
            .unwrap();
        assert!(!r.interrupted);
        assert!(r.differing.is_empty() && r.unresolved.is_empty(), "{r:?}");
        assert_eq!(
            r.files_moved + r.duplicates_removed + 17,
            45 + r.duplicates_removed
        );
        assert_eq!(r.links_created, 3);
        assert_eq!(read_all(&store, n), before, "readable through the links");
        for p in [0x00, 0x01, 0x02] {
            assert_eq!(layout.state(p).unwrap(), EntryState::Linked);
        }
        assert_eq!(layout.state(0x03).unwrap(), EntryState::Local);
        // LOCKFILEs at the destination; no temp file left anywhere.
        assert!(d[0].join("00").join(&k0[2..4]).join(LOCKFILE).is_file());
        assert_eq!(
            count_files(&d[0]).unwrap().0 + count_files(&d[1]).unwrap().0,
            45
        );
        // Running again changes nothing.
        let r = layout
            .apply_move(MoveOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(r, MoveReport::default());
    }

    #[test]
    fn differing_copies_are_both_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let d0 = dir.path().join("d0");
        let k = key(0);
        let src = put(&store, &k, b"one");
        let dst = put(&d0, &k, b"two");
        let layout = Layout::new(&store, &[shard(0x00, 0x00, &d0)]);
        let r = layout
            .apply_move(MoveOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(r.differing, vec![(src.clone(), dst.clone())]);
        assert_eq!(r.unresolved.len(), 1);
        assert_eq!(fs::read(&src).unwrap(), b"one");
        assert_eq!(fs::read(&dst).unwrap(), b"two");
        assert_eq!(layout.state(0).unwrap().as_str(), "directory");
    }

    #[test]
    fn wrong_links_and_links_of_local_folders_are_moved_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let old = dir.path().join("old");
        let d0 = dir.path().join("d0");
        let n = 40;
        for i in 0..n {
            put(&old, &key(i), format!("b{i}").as_bytes());
        }
        fs::create_dir_all(&store).unwrap();
        for p in ["00", "01", "02", "03"] {
            symlink(old.join(p), store.join(p)).unwrap();
        }
        let before = read_all(&store, n);
        // 00-01 go to d0; 02-03 are no longer sharded and come back into the store.
        let layout = Layout::new(&store, &[shard(0x00, 0x01, &d0)]);
        let r = layout
            .apply_move(
                MoveOptions {
                    limit: Some(25),
                    ..MoveOptions::default()
                },
                &mut |_| {},
            )
            .unwrap();
        assert!(r.interrupted);
        let r = layout
            .apply_move(MoveOptions::default(), &mut |_| {})
            .unwrap();
        assert!(r.differing.is_empty() && r.unresolved.is_empty(), "{r:?}");
        assert_eq!(read_all(&store, n), before);
        assert_eq!(layout.state(0x00).unwrap(), EntryState::Linked);
        assert_eq!(layout.state(0x02).unwrap(), EntryState::Local);
        assert!(!store.join(".02.local").exists());
        assert!(layout.conflicts().unwrap().is_empty());
        assert_eq!(count_files(&old).unwrap().0, 0);
    }

    #[test]
    fn moved_data_keeps_the_store_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        if std::os::unix::fs::chown(dir.path(), Some(4321), None).is_err() {
            eprintln!("cannot give files another owner (not root): skipping the ownership check");
            return;
        }
        let store = dir.path().join("store");
        let d0 = dir.path().join("shard/d0");
        let k = key(0);
        let block = put(&store, &k, b"owned");
        for p in [
            store.clone(),
            store.join("00"),
            block.parent().unwrap().to_path_buf(),
            block.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(4321), Some(4322)).unwrap();
        }
        let layout = Layout::new(&store, &[shard(0x00, 0x01, &d0)]);
        layout
            .apply_move(MoveOptions::default(), &mut |_| {})
            .unwrap();
        let leaf = d0.join("00").join(&k[2..4]);
        for p in [
            d0.clone(),
            d0.join("00"),
            d0.join("01"),
            leaf.clone(),
            leaf.join(LOCKFILE),
            leaf.join(&k),
        ] {
            let m = fs::symlink_metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (4321, 4322), "{}", p.display());
        }
        let link = fs::symlink_metadata(store.join("00")).unwrap();
        assert_eq!(link.uid(), 4321);
    }

    #[test]
    fn a_batch_whose_leaf_lock_was_lost_is_not_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let lockfile = dir.path().join(LOCKFILE);
        let lock = LeafLock::acquire(&lockfile).unwrap();
        let (tmp, dst) = (dir.path().join("block.move"), dir.path().join("block"));
        fs::write(&tmp, "copy").unwrap();
        let mut batch = vec![(tmp.clone(), dst.clone())];
        // The lock file replaced under us: our lock excludes nobody any more.
        fs::write(dir.path().join("other"), "").unwrap();
        fs::rename(dir.path().join("other"), &lockfile).unwrap();
        assert!(publish_locked(Some(&lock), &mut batch).is_err());
        assert!(!dst.exists() && !tmp.exists() && batch.is_empty());
        // Under a held lock the same batch is published.
        let lock = LeafLock::acquire(&lockfile).unwrap();
        fs::write(&tmp, "copy").unwrap();
        let mut batch = vec![(tmp.clone(), dst.clone())];
        publish_locked(Some(&lock), &mut batch).unwrap();
        assert_eq!(fs::read_to_string(&dst).unwrap(), "copy");
    }
}
