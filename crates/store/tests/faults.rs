//! The log's failure paths, as `docs/storage.md` promises them, with failures injected into the
//! file layer under the store ([`Faults`]): a failed write or fsync answers the whole group
//! with an error and cuts the log back to its last durable frame (nothing of the group is ever
//! read, before or after a reopen); a torn write likewise; a failed cut stops the writer (every
//! later append is refused) and the next open cuts the torn tail; a panic in the commit hook
//! is caught and the store goes on.

use chronicle_core::envelope::ExpectedVersion;
use chronicle_store::contract::{batch, event};
use chronicle_store::log::{Faults, LogStore};
use chronicle_store::{AppendError, AppendResult, EventStore};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn on(flag: &AtomicBool) {
    flag.store(true, Ordering::SeqCst);
}

fn off(flag: &AtomicBool) {
    flag.store(false, Ordering::SeqCst);
}

fn storage_error(r: &Result<AppendResult, AppendError>) -> bool {
    matches!(r, Err(AppendError::Storage(_)))
}

/// A group fails (`fault` on), then the store goes on (`fault` off): the failed group left no
/// trace and no gap, live and after a reopen.
async fn a_failed_group_leaves_nothing(fault: fn(&Faults) -> &AtomicBool) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let store = Arc::new(LogStore::open_with_faults(dir.path(), faults.clone()).unwrap());
    store.append("t", "a", ExpectedVersion::NoStream, batch(2)).await.unwrap();
    on(fault(&faults));
    // Several appends at once: they share a group, and each is answered with the error.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append("t", &format!("s{i}"), ExpectedVersion::Any, batch(3)).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(storage_error(&r), "{r:?}");
    }
    assert_eq!(store.head().await.unwrap(), 2);
    assert_eq!(store.stream_version("t", "s0").await.unwrap(), 0);
    off(fault(&faults));
    let next = store.append("t", "a", ExpectedVersion::Exact(2), vec![event(9)]).await.unwrap();
    assert_eq!((next.first_version, next.position), (3, 3), "no gap where the failed group was");
    let before = store.read_all(0, 100).await.unwrap();
    drop(store);
    let reopened = LogStore::open(dir.path()).unwrap();
    assert_eq!(reopened.truncated_on_open(), 0, "the failed group was cut off at once, not at the next open");
    assert_eq!(reopened.read_all(0, 100).await.unwrap(), before);
    assert_eq!(before.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_answers_the_whole_group_and_cuts_the_log_back() {
    a_failed_group_leaves_nothing(|f| &f.fail_writes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_answers_the_whole_group_and_cuts_the_log_back() {
    a_failed_group_leaves_nothing(|f| &f.fail_syncs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_answers_the_whole_group_and_cuts_the_log_back() {
    a_failed_group_leaves_nothing(|f| &f.tear_writes).await;
}

/// A group is torn and cutting it back fails too: the writer stops (every later append is
/// refused, the torn bytes are never read), and the next open cuts the torn tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cut_stops_the_writer_and_the_next_open_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let store = LogStore::open_with_faults(dir.path(), faults.clone()).unwrap();
    store.append("t", "a", ExpectedVersion::NoStream, batch(2)).await.unwrap();
    let kept = store.read_all(0, 100).await.unwrap();
    on(&faults.tear_writes);
    on(&faults.fail_cuts);
    let r = store.append("t", "a", ExpectedVersion::Any, batch(3)).await;
    assert!(matches!(&r, Err(AppendError::Storage(m)) if m.contains("removing the partial group failed")), "{r:?}");
    off(&faults.tear_writes);
    off(&faults.fail_cuts);
    let r = store.append("t", "b", ExpectedVersion::Any, vec![event(7)]).await;
    assert!(matches!(&r, Err(AppendError::Storage(m)) if m.contains("stopped accepting writes")), "{r:?}");
    assert_eq!(store.read_all(0, 100).await.unwrap(), kept, "the torn group is never read");
    drop(store);
    let reopened = LogStore::open(dir.path()).unwrap();
    assert!(reopened.truncated_on_open() > 0, "the torn tail is cut at the next open");
    assert_eq!(reopened.read_all(0, 100).await.unwrap(), kept);
    let next = reopened.append("t", "b", ExpectedVersion::Any, vec![event(7)]).await.unwrap();
    assert_eq!(next.position, 3);
}

/// The commit hook panics (a bug in a view): the append is still answered (it is durable), the
/// store goes on, and the hook is called for the next groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_commit_hook_is_caught_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    store.set_commit_hook(Arc::new(move |_committed| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a view's bug");
        }
    }));
    let first = store.append("t", "a", ExpectedVersion::NoStream, batch(2)).await.unwrap();
    assert_eq!(first.position, 2);
    let second = store.append("t", "a", ExpectedVersion::Exact(2), vec![event(5)]).await.unwrap();
    assert_eq!(second.position, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the hook was called again after its panic");
    assert_eq!(store.head().await.unwrap(), 3);
    drop(store);
    assert_eq!(LogStore::open(dir.path()).unwrap().read_all(0, 10).await.unwrap().len(), 3);
}
