//! The contract suite on the append-only log backend, plus what only a durable log has:
//! reopening (the indexes are rebuilt from the file), torn-tail recovery, and refusing to open a
//! log that is damaged before its end.

use chronicle_core::envelope::ExpectedVersion;
use chronicle_store::contract::{batch, event};
use chronicle_store::log::{LogOpenError, LogStore, FORMAT_VERSION, LOG_FILE};
use chronicle_store::{AppendResult, EventStore};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

fn fresh() -> (Arc<dyn EventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LogStore::open(dir.path()).expect("open store");
    (Arc::new(store), dir)
}

chronicle_store::contract_tests!(fresh());

fn file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG_FILE)).unwrap().len()
}

fn append_bytes(dir: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.join(LOG_FILE)).unwrap();
    f.write_all(bytes).unwrap();
}

fn flip_byte(dir: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(dir.join(LOG_FILE)).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], offset).unwrap();
}

/// Three groups of 2, 3 and 4 events on one stream; returns the log's length after each group.
async fn three_groups(dir: &Path) -> [u64; 3] {
    let store = LogStore::open(dir).unwrap();
    let mut ends = [0; 3];
    for (i, n) in [2u64, 3, 4].into_iter().enumerate() {
        store.append("t1", "s", ExpectedVersion::Any, batch(n)).await.unwrap();
        ends[i] = store.committed_len();
    }
    drop(store);
    assert_eq!(file_len(dir), ends[2], "a clean shutdown trims the zeroed space");
    ends
}

/// What `truncated_on_open` reports for cutting `tail`: its bytes up to the last non-zero one
/// (trailing zeros look like the writer's preallocated space).
fn torn_len(tail: &[u8]) -> u64 {
    tail.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything_and_continues_positions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    let before = {
        let store = LogStore::open(&data).unwrap();
        store.append("t1", "a", ExpectedVersion::NoStream, batch(3)).await.unwrap();
        store.append("t2", "a", ExpectedVersion::NoStream, batch(2)).await.unwrap();
        store.append("t1", "b", ExpectedVersion::Any, batch(1)).await.unwrap();
        store.read_all(0, usize::MAX).await.unwrap()
    };
    assert!(data.join(LOG_FILE).exists());
    assert!(!data.join(format!("{LOG_FILE}.tmp")).exists());

    let store = LogStore::open(&data).unwrap();
    assert_eq!(store.truncated_on_open(), 0, "a clean shutdown leaves no torn tail");
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), before);
    assert_eq!(store.read_all_raw(0, usize::MAX).await.unwrap().len(), before.len());
    assert_eq!(store.head().await.unwrap(), 6);
    assert_eq!(*store.head_watch().borrow(), 6);
    assert_eq!(store.stream_version("t1", "a").await.unwrap(), 3);
    assert_eq!(store.stream_version("t2", "a").await.unwrap(), 2);
    assert_eq!(store.read_stream("t1", "a", 2, 10).await.unwrap(), before[1..3]);
    // The version check and idempotency still hold against what the earlier process wrote:
    // the id index was rebuilt from the file.
    let conflict = store.append("t1", "a", ExpectedVersion::NoStream, batch(1)).await;
    assert!(conflict.is_err());
    let mut replay = event(0);
    replay.id = before[5].id;
    assert_eq!(
        store.append("t1", "b", ExpectedVersion::Any, vec![replay.clone()]).await,
        Ok(AppendResult { first_version: 1, last_version: 1, position: 6 })
    );
    assert!(store.append("t1", "c", ExpectedVersion::Any, vec![replay]).await.is_err());
    assert_eq!(
        store.append("t1", "a", ExpectedVersion::Exact(3), batch(2)).await,
        Ok(AppendResult { first_version: 4, last_version: 5, position: 8 })
    );
    drop(store);
    let store = LogStore::open(&data).unwrap();
    assert_eq!(store.head().await.unwrap(), 8);
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap()[..6], before[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_of_every_size_survive_a_reopen() {
    // Enough data to cross the scanner's and the readers' buffer sizes.
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..60u64 {
                    let n = 1 + (i * 7 + t) % 90;
                    store.append("t1", &format!("s{}", i % 5), ExpectedVersion::Any, batch(n)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.read_all(0, usize::MAX).await.unwrap()
    };
    assert!(before.len() > 20_000, "{}", before.len());
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), before);
    for s in 0..5 {
        let stream = format!("s{s}");
        let want: Vec<_> = before.iter().filter(|e| e.stream == stream).cloned().collect();
        assert_eq!(store.read_stream("t1", &stream, 1, usize::MAX).await.unwrap(), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let ends = three_groups(dir.path()).await;
    let whole = {
        let store = LogStore::open(dir.path()).unwrap();
        store.read_all(0, usize::MAX).await.unwrap()
    };

    // Garbage after the last frame (e.g. a write of a group that never got its frame header
    // out): cut off.
    append_bytes(dir.path(), b"\x00\x07garbage that is not a frame at all");
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.truncated_on_open(), 36);
    assert_eq!(file_len(dir.path()), ends[2]);
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), whole);
    drop(store);

    // A group cut in the middle of a record: the whole group goes, the earlier ones stay.
    let bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    let cut = ends[1] + (ends[2] - ends[1]) / 2;
    let f = std::fs::OpenOptions::new().write(true).open(dir.path().join(LOG_FILE)).unwrap();
    f.set_len(cut).unwrap();
    drop(f);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.truncated_on_open(), torn_len(&bytes[ends[1] as usize..cut as usize]));
    assert_eq!(store.head().await.unwrap(), 5);
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), whole[..5]);
    // The store works on from there, and the lost group's ids are free again.
    let lost: Vec<_> = whole[5..].iter().map(|e| e.id).collect();
    let mut again = batch(4);
    for (e, id) in again.iter_mut().zip(&lost) {
        e.id = *id;
    }
    assert_eq!(
        store.append("t1", "s", ExpectedVersion::Exact(5), again).await,
        Ok(AppendResult { first_version: 6, last_version: 9, position: 9 })
    );
    drop(store);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.truncated_on_open(), 0);
    assert_eq!(store.head().await.unwrap(), 9);
    drop(store);

    // The last frame complete in length but with a damaged record (a power cut that lost one
    // page of the group): indistinguishable from a torn write, so cut off too.
    let len = file_len(dir.path());
    flip_byte(dir.path(), len - 20);
    let bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.truncated_on_open(), torn_len(&bytes[ends[1] as usize..]));
    assert_eq!(store.head().await.unwrap(), 5);

    // Only a frame header's worth: cut off.
    drop(store);
    append_bytes(dir.path(), &[0xFF, b'G', b'R']);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.truncated_on_open(), 3);
    assert_eq!(store.head().await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_end_is_an_error_not_a_silent_loss() {
    // A bad record checksum in the first of three groups.
    let dir = tempfile::tempdir().unwrap();
    let ends = three_groups(dir.path()).await;
    let in_first_record = 16 + 32 + 8 + 40;
    flip_byte(dir.path(), in_first_record);
    match LogStore::open(dir.path()) {
        Err(LogOpenError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, 16 + 32, "the damaged record");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
    // Nothing was cut off: the file is left for the operator.
    assert_eq!(file_len(dir.path()), ends[2]);

    // A damaged frame header in the middle (the second group's).
    let dir = tempfile::tempdir().unwrap();
    let ends = three_groups(dir.path()).await;
    flip_byte(dir.path(), ends[0] + 10);
    match LogStore::open(dir.path()) {
        Err(LogOpenError::Corrupt { offset, .. }) => assert_eq!(offset, ends[0]),
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }

    // A damaged commit marker in the middle.
    let dir = tempfile::tempdir().unwrap();
    let ends = three_groups(dir.path()).await;
    flip_byte(dir.path(), ends[1] - 2);
    let err = LogStore::open(dir.path()).err().expect("refused");
    assert!(matches!(&err, LogOpenError::Corrupt { reason, .. } if reason.contains("commit marker")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_fails_the_read_instead_of_returning_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    store.append("t1", "s", ExpectedVersion::Any, batch(3)).await.unwrap();
    // Bit rot under a running store (the reads go to the file, through the page cache).
    flip_byte(dir.path(), 16 + 32 + 8 + 40);
    let err = store.read_all(0, 10).await.unwrap_err();
    assert!(err.to_string().contains("position 1"), "{err}");
    assert!(store.read_all_raw(0, 10).await.is_err());
    assert!(store.read_stream("t1", "s", 1, 10).await.is_err());
    // The other records are intact.
    assert_eq!(store.read_all(1, 10).await.unwrap().len(), 2);
}

#[test]
fn a_foreign_file_or_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LOG_FILE), b"SQLite format 3\0 and so on").unwrap();
    let err = LogStore::open(dir.path()).err().expect("refused");
    assert!(matches!(err, LogOpenError::NotALog { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    drop(LogStore::open(dir.path()).unwrap());
    let header = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    assert_eq!(header.len(), 16);
    assert_eq!(&header[..8], b"CHRONLOG");
    assert_eq!(header[8..12], FORMAT_VERSION.to_le_bytes());
    let f = std::fs::OpenOptions::new().write(true).open(dir.path().join(LOG_FILE)).unwrap();
    f.write_all_at(&99u32.to_le_bytes(), 8).unwrap();
    drop(f);
    let err = LogStore::open(dir.path()).err().expect("refused");
    assert!(matches!(err, LogOpenError::UnsupportedFormat { found: 99, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_past_the_head() {
    // Readers running flat out while writers append: every read_all page ends at or before
    // the head read just after it, and is gap-free.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    store.append("t1", &format!("w{w}"), ExpectedVersion::Any, batch(3)).await.unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut checks = 0;
            while store.head().await.unwrap() < 2400 {
                let page = store.read_all(0, usize::MAX).await.unwrap();
                let head = store.head().await.unwrap();
                assert!(page.len() as u64 <= head);
                assert!(page.iter().enumerate().all(|(i, e)| e.position == i as u64 + 1));
                let v = store.stream_version("t1", "w0").await.unwrap();
                let stream = store.read_stream("t1", "w0", 1, usize::MAX).await.unwrap();
                assert!(stream.len() as u64 >= v);
                checks += 1;
                tokio::task::yield_now().await;
            }
            checks
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    assert!(reader.await.unwrap() > 0);
}

/// A small log of groups of 1, 3 and 2 events; returns its bytes, the end of each group and the
/// events.
async fn small_log() -> (Vec<u8>, Vec<u64>, Vec<chronicle_core::envelope::EventEnvelope>) {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let mut ends = vec![16];
    for (i, n) in [1u64, 3, 2].into_iter().enumerate() {
        store.append("t1", &format!("s{i}"), ExpectedVersion::Any, batch(n)).await.unwrap();
        ends.push(store.committed_len());
    }
    let events = store.read_all(0, usize::MAX).await.unwrap();
    drop(store);
    (std::fs::read(dir.path().join(LOG_FILE)).unwrap(), ends, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_at_any_byte_keeps_exactly_the_whole_groups_before_it() {
    // A write torn at any point: the open keeps every group that ends at or before the cut and
    // drops the rest, never a part of a group.
    let (bytes, ends, events) = small_log().await;
    let counts = [0usize, 1, 4, 6];
    for cut in 16..=bytes.len() as u64 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), &bytes[..cut as usize]).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let whole = ends.iter().rposition(|&e| e <= cut).unwrap();
        assert_eq!(store.truncated_on_open(), torn_len(&bytes[ends[whole] as usize..cut as usize]), "cut at {cut}");
        assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), events[..counts[whole]], "cut at {cut}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_damaged_byte_is_detected() {
    // One flipped bit anywhere in a frame: before the last frame the open refuses (acknowledged
    // events would be lost); in the last frame it is treated as a torn write and cut off.
    let (bytes, ends, events) = small_log().await;
    let last = ends[ends.len() - 2];
    for at in 16..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x20;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), &damaged).unwrap();
        match LogStore::open(dir.path()) {
            Ok(store) => {
                assert!(at as u64 >= last, "damage at {at} went unnoticed");
                assert_eq!(store.truncated_on_open(), torn_len(&damaged[last as usize..]));
                assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), events[..4]);
            }
            Err(LogOpenError::Corrupt { offset, .. }) => {
                assert!((at as u64) < last, "damage at {at} in the last frame");
                assert!(offset <= at as u64, "damage at {at} reported at {offset}");
            }
            Err(e) => panic!("damage at {at}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zeroed_space_after_a_crash_is_not_a_torn_tail() {
    // A crash between commits leaves the writer's zeroed space behind: the next open drops it
    // without calling it torn, and keeps every event.
    let dir = tempfile::tempdir().unwrap();
    let (events, end) = {
        let store = LogStore::open(dir.path()).unwrap();
        store.append("t1", "s", ExpectedVersion::Any, batch(3)).await.unwrap();
        assert!(file_len(dir.path()) > store.committed_len());
        let events = store.read_all(0, usize::MAX).await.unwrap();
        (events, store.committed_len())
    };
    // What a kill -9 would have left: the clean shutdown trimmed it, so put it back.
    append_bytes(dir.path(), &vec![0u8; 1 << 20]);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.truncated_on_open(), 0);
    assert_eq!(file_len(dir.path()), end);
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), events);
    // And a torn group inside zeroed space: only the group's bytes count as torn.
    drop(store);
    append_bytes(dir.path(), &[0xFF, b'G', b'R', b'P', 1, 0, 0, 0, 4]);
    append_bytes(dir.path(), &vec![0u8; 4096]);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.truncated_on_open(), 9);
    assert_eq!(store.head().await.unwrap(), 3);
}
