//! The fuzz targets (`chronicle_app::fuzzing`) on stable, for a fixed budget: every input of
//! the corpus in `fuzz/corpus/<target>/`, then mutations of them (bit flips, byte changes,
//! cuts, splices, repeated and interesting bytes) until the budget is spent. A panic fails the
//! test and writes the input to `target/fuzz-failures/` for the corpus. The budget is
//! `CHRONICLE_FUZZ_SECONDS` per target (default 2), the seed `CHRONICLE_FUZZ_SEED` (default a
//! fixed one, so a run can be repeated). `cargo fuzz run <target>` on nightly runs the same
//! targets under libFuzzer (`fuzz/`).

use chronicle_app::fuzzing::TARGETS;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\"", b"\\", b"{", b"}", b"[", b"]", b":", b",", b"null", b"true", b"-1", b"1e309", b"\\u0000", b"\\ud800",
    b"\"type\"", b"\"batch\"", b"\"userId\"", b"\"timestamp\"", b"\"2026-13-45T99:99:99Z\"", b"\"specversion\"",
    b"\"steps\"", b"\"wait\"", b"\"enc:v1:AAAA\"", b"\xff", b"\x00",
];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                out.truncate(rng.below(len));
            }
            3 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let at = rng.below(len + 1);
                    let piece = &other[from..(from + 1 + rng.below(32)).min(other.len())];
                    out.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                let tok = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(len + 1);
                out.splice(at..at, tok.iter().copied());
            }
            5 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(16)).min(len);
                let piece = out[from..to].to_vec();
                let times = 1 + rng.below(8);
                for _ in 0..times {
                    out.splice(to..to, piece.iter().copied());
                }
            }
            _ if len > 1 => {
                let a = rng.below(len);
                let b = rng.below(len);
                out.swap(a, b);
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out.truncate(64 * 1024);
    out
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_parsers_and_the_event_decoding_never_panic_on_the_corpus_or_its_mutations() {
    let seconds: f64 = std::env::var("CHRONICLE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let seed: u64 = std::env::var("CHRONICLE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_c0de);
    // A panic is caught and reported with its input; the hook's message would be noise.
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Vec::new();
    for (name, target) in TARGETS {
        let dir = root().join("fuzz/corpus").join(name);
        let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        assert!(!corpus.is_empty(), "the corpus of {name} is empty");
        corpus.sort();
        let mut rng = Rng(seed ^ (name.len() as u64 * 0x9E37_79B9));
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut runs = 0u64;
        let mut i = 0;
        loop {
            let input = if i < corpus.len() {
                corpus[i].clone()
            } else {
                let pick = rng.below(corpus.len());
                mutate(&mut rng, &corpus[pick], &corpus)
            };
            i += 1;
            if std::panic::catch_unwind(|| target(&input)).is_err() {
                let out = root().join("target/fuzz-failures").join(name);
                std::fs::create_dir_all(&out).unwrap();
                let file = out.join(format!("crash-{runs}"));
                std::fs::write(&file, &input).unwrap();
                let _ = std::panic::take_hook();
                panic!("fuzz target {name} panicked on {} (input saved to {})", String::from_utf8_lossy(&input), file.display());
            }
            runs += 1;
            if i >= corpus.len() && Instant::now() >= deadline {
                break;
            }
        }
        report.push(format!("{name}: {runs} inputs"));
    }
    let _ = std::panic::take_hook();
    println!("fuzz budget {seconds} s per target, seed {seed}: {}", report.join(", "));
}
