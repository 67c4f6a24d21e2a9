//! `chronicle import FILE`: the bulk import with a progress bar, rejected lines reported on
//! stderr (and, with `--rejects`, all of them as NDJSON in a file), a JSON summary on stdout.
//! Exits 0 when every line was imported, 1 when some were rejected (the others are in; running
//! it again after fixing them is safe).

use crate::config::{Config, StorageArgs};
use crate::progress::Progress;
use chronicle_app::storage;
use anyhow::{bail, Context};
use chronicle_app::import::{self, Format, Observer, Rejected};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ExitCode;

/// Rejected lines printed on stderr before only counting the rest.
const PRINT_AT_MOST: u64 = 1000;

pub async fn run(
    args: &StorageArgs,
    file: &Path,
    tenant: Option<&str>,
    format: Option<&str>,
    rejects: Option<&Path>,
    mapping: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let mapping: Option<import::mapping::Mapping> = match mapping {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(toml::from_str(&text).with_context(|| format!("the mapping {}", p.display()))?)
        }
        None => None,
    };
    if mapping.is_some() && format.is_some_and(|f| f != "csv") {
        bail!("a mapping reads a CSV; drop --format or pass --format csv");
    }
    let format = match format {
        Some("ndjson" | "jsonl") => Format::Ndjson,
        Some("csv") => Format::Csv,
        Some(other) => bail!("unknown format {other:?}; use ndjson or csv"),
        None if mapping.is_some() => Format::Csv,
        None => Format::of_path(file).with_context(|| {
            format!("can't tell the format of {} from its extension; pass --format ndjson|csv", file.display())
        })?,
    };
    let total = count_lines(file).with_context(|| format!("reading {}", file.display()))?;
    let input = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    // Into a tenant that exists, named: a typo would otherwise make a tenant nobody can reach.
    let tenant = crate::commands::existing_tenant(&app, tenant)?;
    let rejects = match rejects {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    // A CSV's header is not a row.
    let total = if format == Format::Csv { total.saturating_sub(1) } else { total };
    let mut out = Cli { progress: Progress::new("import", Some(total)), printed: 0, rejects };
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let result = match &mapping {
        Some(m) => import::mapping::import(&app, tenant, m, input, &mut out).await,
        None => import::import(&app, tenant, format, input, &name, &mut out).await,
    };
    let (_, secs, _) = out.progress.finish();
    if let Some(mut w) = out.rejects.take() {
        w.flush().context("writing the rejects file")?;
    }
    // What was written stays written (and is in the log either way): checkpoint the views.
    app.final_checkpoint().context("writing the checkpoint")?;
    let report = result.context("import failed")?;
    if report.rejected > out.printed {
        eprintln!("… and {} more rejected lines", report.rejected - out.printed);
    }
    println!(
        "{}",
        json!({
            "file": file.display().to_string(), "tenant": tenant, "lines": report.lines,
            "imported": report.imported, "rejected": report.rejected, "new_events": report.new_events,
            "skipped": report.skipped, "events": report.events,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "lines_per_sec": (report.lines as f64 / secs.max(1e-9)).round(),
            "new_events_per_sec": (report.new_events as f64 / secs.max(1e-9)).round(),
        })
    );
    Ok(if report.rejected == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

struct Cli {
    progress: Progress,
    printed: u64,
    rejects: Option<std::io::BufWriter<std::fs::File>>,
}

impl Observer for Cli {
    fn progress(&mut self, lines: u64) {
        self.progress.add(lines);
    }

    fn rejected(&mut self, r: Rejected) {
        if self.printed < PRINT_AT_MOST {
            self.printed += 1;
            eprintln!("line {}: {}: {}", r.line, r.code, r.message);
        }
        if let Some(w) = &mut self.rejects {
            let _ = writeln!(w, "{}", json!(r));
        }
    }
}

/// Lines in the file (for the progress bar's total): a last line without a newline counts.
fn count_lines(path: &Path) -> std::io::Result<u64> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let (mut n, mut last) = (0u64, b'\n');
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        n += buf.iter().filter(|b| **b == b'\n').count() as u64;
        last = buf[buf.len() - 1];
        let len = buf.len();
        r.consume(len);
    }
    Ok(n + u64::from(last != b'\n'))
}
