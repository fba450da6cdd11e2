//! One file watcher for everything cedargate reloads from disk: policy
//! directories, the revocation list, JWKS files, TLS certificates and keys.
//!
//! The kernel tells us about changes (notify, debounced so an editor's burst of
//! saves or a `git checkout` is one reload), and each source is also re-checked
//! every `BACKSTOP`: a watch can be lost when its directory is replaced, network
//! file systems send no events, and the inotify watch limit can run out. The
//! re-check is cheap, as every source compares what it reads with what it serves
//! before doing any work.
//!
//! Directories are watched, not files: a Kubernetes ConfigMap or Secret volume
//! swaps a `..data` link under files that are links themselves, and editors save
//! by renaming a new file over the old one. Either way an event arrives for the
//! directory, and the source reads through the links again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, Debouncer};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How often every source is re-checked even without an event.
const BACKSTOP: Duration = Duration::from_secs(10);
/// How often sources are re-checked when the kernel cannot watch at all.
const POLL_WITHOUT_EVENTS: Duration = Duration::from_secs(1);

/// Why a source is being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Something changed in its directory.
    Event,
    /// The periodic re-check: reload only if what is on disk looks different.
    Backstop,
}

pub struct FileWatcher {
    /// `None` when the kernel would not give us a watcher; sources are then polled.
    debouncer: Option<Mutex<Debouncer<RecommendedWatcher>>>,
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
}

struct Subscriber {
    dirs: Vec<PathBuf>,
    wake: Arc<Notify>,
}

impl FileWatcher {
    /// A watcher whose events wait for `debounce` of quiet before they are passed on.
    pub fn new(debounce: Duration) -> FileWatcher {
        let subscribers: Arc<Mutex<Vec<Subscriber>>> = Arc::default();
        let routed = Arc::clone(&subscribers);
        let debouncer = new_debouncer(debounce, move |events: DebounceEventResult| match events {
            Ok(events) => {
                let subscribers = routed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                for subscriber in subscribers.iter() {
                    let touched = events.iter().any(|e| {
                        subscriber.dirs.iter().any(|dir| e.path == *dir || e.path.parent() == Some(dir.as_path()))
                    });
                    if touched {
                        subscriber.wake.notify_one();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "file watcher error; sources are still re-checked periodically"),
        });
        let debouncer = match debouncer {
            Ok(debouncer) => Some(Mutex::new(debouncer)),
            Err(e) => {
                tracing::warn!(error = %e, interval = ?POLL_WITHOUT_EVENTS, "cannot watch files; polling them instead");
                None
            }
        };
        FileWatcher { debouncer, subscribers }
    }

    /// Runs `look` (on a blocking thread: reading and parsing is disk and CPU work)
    /// whenever something changes in the directories of `paths` (a path that is a
    /// directory is watched itself), and at least every `BACKSTOP`. Runs until the
    /// task is aborted.
    pub fn spawn(
        &self,
        name: &'static str,
        paths: &[&Path],
        look: impl Fn(Trigger) + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        let dirs: Vec<PathBuf> = paths.iter().map(|p| directory_of(p)).collect();
        let wake = Arc::new(Notify::new());
        let mut backstop = POLL_WITHOUT_EVENTS;
        if let Some(debouncer) = &self.debouncer {
            let mut debouncer = debouncer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let watched = dirs.iter().all(|dir| match debouncer.watcher().watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(source = name, dir = %dir.display(), error = %e, "cannot watch; polling instead");
                    false
                }
            });
            if watched {
                backstop = BACKSTOP;
            }
        }
        let subscriber = Subscriber { dirs, wake: Arc::clone(&wake) };
        self.subscribers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(subscriber);
        let look = Arc::new(look);
        tokio::spawn(async move {
            loop {
                let trigger = tokio::select! {
                    _ = wake.notified() => Trigger::Event,
                    _ = tokio::time::sleep(backstop) => Trigger::Backstop,
                };
                let look = Arc::clone(&look);
                if tokio::task::spawn_blocking(move || look(trigger)).await.is_err() {
                    tracing::error!(source = name, "reloading panicked; the last good state is kept");
                }
            }
        })
    }
}

/// The directory to watch for `path`, made absolute so it compares equal to the
/// paths in events: the path itself if it is a directory, else its parent.
fn directory_of(path: &Path) -> PathBuf {
    let dir = if path.is_dir() {
        path.to_owned()
    } else {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        }
    };
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").field("events", &self.debouncer.is_some()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Waits for `looks` to pass `above` by an event: well before `BACKSTOP`, so a
    /// pass proves the kernel's event, not the periodic re-check, woke the source.
    async fn event_seen(looks: &AtomicUsize, above: usize) {
        let started = Instant::now();
        while looks.load(Ordering::SeqCst) <= above {
            assert!(started.elapsed() < BACKSTOP / 2, "no event within {:?}", BACKSTOP / 2);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn counting(watcher: &FileWatcher, path: &Path) -> (Arc<AtomicUsize>, JoinHandle<()>) {
        let looks = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&looks);
        let task = watcher.spawn("test", &[path], move |trigger| {
            if trigger == Trigger::Event {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        (looks, task)
    }

    #[tokio::test]
    async fn a_save_into_a_watched_directory_wakes_its_source_only() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let watcher = FileWatcher::new(Duration::from_millis(50));
        let (looks_a, task_a) = counting(&watcher, a.path());
        let (looks_b, task_b) = counting(&watcher, &b.path().join("file.txt"));
        std::fs::write(a.path().join("policy.cedar"), "permit(principal, action, resource);").unwrap();
        event_seen(&looks_a, 0).await;
        assert_eq!(looks_b.load(Ordering::SeqCst), 0, "a change elsewhere woke another source");
        // A file is watched through its directory: a rename over it counts.
        std::fs::write(b.path().join("file.txt.new"), "2").unwrap();
        std::fs::rename(b.path().join("file.txt.new"), b.path().join("file.txt")).unwrap();
        event_seen(&looks_b, 0).await;
        task_a.abort();
        task_b.abort();
    }

    #[tokio::test]
    async fn a_kubernetes_volume_swap_wakes_the_source() {
        // A ConfigMap volume: `file -> ..data/file`, `..data -> ..v1`; an update writes
        // `..v2` and renames a new `..data` link over the old one.
        let dir = tempfile::tempdir().unwrap();
        for version in ["..v1", "..v2"] {
            std::fs::create_dir(dir.path().join(version)).unwrap();
            std::fs::write(dir.path().join(version).join("revoked.txt"), version).unwrap();
        }
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/revoked.txt", dir.path().join("revoked.txt")).unwrap();
        let watcher = FileWatcher::new(Duration::from_millis(50));
        let (looks, task) = counting(&watcher, &dir.path().join("revoked.txt"));
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        event_seen(&looks, 0).await;
        assert_eq!(std::fs::read_to_string(dir.path().join("revoked.txt")).unwrap(), "..v2");
        task.abort();
    }
}
