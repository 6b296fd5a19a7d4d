//! Watches the topology file (notify) and reports changes, debounced. The parent directory is
//! watched, not the file, because editors and config tools replace files by renaming.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// Changes closer together than this become one reload.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Keeps the watcher alive; dropping it stops watching.
pub struct FileWatcher {
    _watcher: RecommendedWatcher,
}

/// Starts watching `file`; one `()` arrives on the returned channel per (debounced) change.
pub fn watch(file: &Path) -> notify::Result<(FileWatcher, mpsc::Receiver<()>)> {
    let file: PathBuf = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let target = file.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(ev) if ev.paths.iter().any(|p| p == &target) => {
                let _ = raw_tx.send(());
            }
            Ok(_) => {}
            Err(e) => warn!("watching the topology file: {e}"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Let a burst of writes finish before reading the file.
            tokio::time::sleep(DEBOUNCE).await;
            while raw_rx.try_recv().is_ok() {}
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    Ok((FileWatcher { _watcher: watcher }, rx))
}
