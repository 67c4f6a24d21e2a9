// throwaway: raw SQLite ceiling for group commits of N single-event inserts on random streams
use rusqlite::{params, Connection};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let group: usize = a.first().map_or(64, |s| s.parse().unwrap());
    let page: i64 = a.get(1).map_or(4096, |s| s.parse().unwrap());
    let sync: String = a.get(2).cloned().unwrap_or("FULL".into());
    let ckpt: i64 = a.get(3).map_or(1000, |s| s.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let c = Connection::open(dir.path().join("e.sqlite")).unwrap();
    c.pragma_update(None, "page_size", page).unwrap();
    let _: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    c.pragma_update(None, "synchronous", &sync).unwrap();
    c.pragma_update(None, "wal_autocheckpoint", ckpt).unwrap();
    c.pragma_update(None, "cache_size", -65536).unwrap();
    c.execute_batch("CREATE TABLE events (position INTEGER PRIMARY KEY, id BLOB NOT NULL, tenant TEXT NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL) STRICT; CREATE UNIQUE INDEX events_id ON events(id); ").unwrap();
    if std::env::var_os("NO_STREAM_IDX").is_none() { c.execute_batch("CREATE UNIQUE INDEX events_stream ON events(tenant, stream, version);").unwrap(); }
    let data = "x".repeat(300);
    let mut versions = vec![0i64; 100_000];
    let mut rng = 88172645463325252u64;
    let (mut t_ins, mut t_com) = (0f64, 0f64);
    let start = Instant::now();
    let mut pos = 0i64; let mut n = 0u64;
    while start.elapsed().as_secs_f64() < 5.0 {
        let t0 = Instant::now();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        { let mut st = c.prepare_cached("INSERT INTO events VALUES (?1,?2,?3,?4,?5,?6)").unwrap();
        for _ in 0..group {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            let s = (rng % 100_000) as usize; versions[s] += 1; pos += 1;
            st.execute(params![pos, &uuid::Uuid::now_v7().as_bytes()[..], "bench", format!("customer-{s}"), versions[s], data]).unwrap();
            n += 1;
        } }
        let t1 = Instant::now();
        c.execute_batch("COMMIT").unwrap();
        t_ins += (t1 - t0).as_secs_f64(); t_com += t1.elapsed().as_secs_f64();
    }
    let el = start.elapsed().as_secs_f64();
    let groups = n as f64 / group as f64;
    println!("group={group} page={page} sync={sync} ckpt={ckpt}: {:.0} ev/s, insert {:.1} us/ev, commit {:.0} us/group", n as f64 / el, t_ins / n as f64 * 1e6, t_com / groups * 1e6);
}
