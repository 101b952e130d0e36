//! Notices when the configuration file changes, however it changes.
//!
//! The file's directory is watched, not the file: an editor that writes a new file
//! and renames it over the old one, `cp` over the file, and a Kubernetes ConfigMap
//! (where the file is a symlink through `..data`, swapped by renaming a new
//! `..data` symlink into place) all replace the inode a file watch would follow.
//! Events are kept when they name the file or an entry starting with `..`, and
//! bursts are collapsed: `on_change` runs once, [`DEBOUNCE`] after the last event.
//! Opening or reading the file (which the reload itself does) is not a change.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};

/// Quiet time after the last event before `on_change` runs.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Longest delay after the first event of a burst, for a file that never stops changing.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Keeps a directory watch alive; dropping it stops watching (a change already
/// being debounced is then dropped too).
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    path: PathBuf,
}

impl ConfigWatcher {
    /// The configuration file being watched.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Calls `on_change` (on a thread of its own) each time `path` may have changed.
///
/// `on_change` should reload with [`crate::load_if_changed`]: events are a hint, and
/// one that changed nothing (a `touch`, a rewrite with the same content) costs one
/// read of the file.
pub fn watch(path: &Path, on_change: impl Fn() + Send + 'static) -> notify::Result<ConfigWatcher> {
    let file_name = path
        .file_name()
        .ok_or_else(|| notify::Error::generic(&format!("`{}` does not name a file", path.display())))?
        .to_owned();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };

    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
        Ok(event) if is_relevant(&event, &file_name) => {
            // The receiver is gone only while the watcher is being dropped.
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "configuration watch error"),
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;

    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || debounce(&rx, DEBOUNCE, &on_change))
        .map_err(notify::Error::io)?;
    Ok(ConfigWatcher { _watcher: watcher, path: path.to_owned() })
}

/// Runs until the sender is dropped: one `on_change` per burst of events, `quiet`
/// after its last event or `MAX_DELAY` after its first.
fn debounce(rx: &mpsc::Receiver<()>, quiet: Duration, on_change: &dyn Fn()) {
    while rx.recv().is_ok() {
        let deadline = Instant::now() + MAX_DELAY.max(quiet);
        loop {
            let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
            match rx.recv_timeout(wait) {
                Ok(()) if Instant::now() < deadline => continue,
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        on_change();
    }
}

/// Whether `event` may mean the content of `file_name` changed.
fn is_relevant(event: &Event, file_name: &OsStr) -> bool {
    if event.need_rescan() {
        return true;
    }
    let kind_matters = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        _ => true,
    };
    kind_matters
        && event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|name| name == file_name || name.as_encoded_bytes().starts_with(b"..")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use notify::event::{CreateKind, DataChange, MetadataKind, RenameMode};

    use super::*;

    /// How long a test waits for an event that should come.
    const WAIT: Duration = Duration::from_secs(10);

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let name =
                format!("gateway-config-test-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn filters_events_by_kind_and_name() {
        let name = OsStr::new("gateway.toml");
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(is_relevant(&event(data, "/etc/gw/gateway.toml"), name));
        assert!(is_relevant(&event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/etc/gw/gateway.toml"), name));
        assert!(is_relevant(&event(EventKind::Create(CreateKind::Any), "/etc/gw/..data"), name));
        assert!(is_relevant(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)), "/x/gateway.toml"), name));
        assert!(!is_relevant(&event(data, "/etc/gw/other.toml"), name));
        assert!(!is_relevant(&event(data, "/etc/gw/.gateway.toml.swp"), name));
        assert!(!is_relevant(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/x/gateway.toml"), name));
        assert!(!is_relevant(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)), "/x/gateway.toml"), name));
        assert!(!is_relevant(
            &event(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)), "/x/gateway.toml"),
            name
        ));
    }

    #[test]
    fn debounce_collapses_a_burst() {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let thread =
            std::thread::spawn(move || debounce(&rx, Duration::from_millis(50), &|| done_tx.send(()).unwrap()));
        for _ in 0..5 {
            tx.send(()).unwrap();
        }
        done_rx.recv_timeout(WAIT).unwrap();
        drop(tx);
        thread.join().unwrap();
        assert!(done_rx.try_recv().is_err(), "one call per burst");
    }

    fn watched(file: &Path) -> (ConfigWatcher, mpsc::Receiver<Instant>) {
        let (tx, rx) = mpsc::channel();
        let watcher = watch(file, move || {
            let _ = tx.send(Instant::now());
        })
        .unwrap();
        assert_eq!(watcher.path(), file);
        (watcher, rx)
    }

    #[test]
    fn rename_over_the_file_triggers() {
        let dir = TempDir::new();
        let file = dir.0.join("gateway.toml");
        std::fs::write(&file, "# v1\n").unwrap();
        let (_watcher, changes) = watched(&file);

        let tmp = dir.0.join(".gateway.toml.tmp");
        std::fs::write(&tmp, "# v2\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        changes.recv_timeout(WAIT).expect("a change after rename");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# v2\n");
    }

    #[test]
    fn writing_in_place_triggers_and_dropping_stops() {
        let dir = TempDir::new();
        let file = dir.0.join("gateway.toml");
        std::fs::write(&file, "# v1\n").unwrap();
        let (watcher, changes) = watched(&file);
        std::fs::write(&file, "# v2\n").unwrap();
        changes.recv_timeout(WAIT).expect("a change after write");
        drop(watcher);
        // The callback (and with it the sender) is dropped once the watch is gone.
        let deadline = Instant::now() + WAIT;
        loop {
            match changes.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the watcher thread did not stop"),
                Ok(_) => continue,
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn configmap_symlink_swap_triggers() {
        use std::os::unix::fs::symlink;

        let dir = TempDir::new();
        let v1 = dir.0.join("..2024_01_01");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("gateway.toml"), "# v1\n").unwrap();
        symlink("..2024_01_01", dir.0.join("..data")).unwrap();
        let file = dir.0.join("gateway.toml");
        symlink("..data/gateway.toml", &file).unwrap();
        let (_watcher, changes) = watched(&file);

        // What the kubelet does: a new directory, a new `..data_tmp` link, renamed over `..data`.
        let v2 = dir.0.join("..2024_01_02");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("gateway.toml"), "# v2\n").unwrap();
        symlink("..2024_01_02", dir.0.join("..data_tmp")).unwrap();
        std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
        changes.recv_timeout(WAIT).expect("a change after the symlink swap");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# v2\n");
    }
}
