//! The `chronicle` binary: parses the command line, resolves configuration, and drives the
//! application service. Commands: serve, demo, tenant create, import, rebuild, verify, history.

/// mimalloc: the rebuild and the API allocate many small strings on one thread and free them on
/// another, where it measured markedly faster than the system allocator (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod commands;
mod config;
mod demo;
mod import;
mod progress;

use clap::{Parser, Subcommand};
use config::StorageArgs;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "chronicle", version, about = "Chronicle: an event-sourced CRM engine")]
struct Cli {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API
    Serve {
        #[command(flatten)]
        serve: config::ServeArgs,
    },
    /// Generate a fresh demo tenant with realistic data, then serve it
    Demo {
        /// Customers to generate
        #[arg(long, default_value_t = 10_000)]
        customers: u64,
        /// Generate, print the summary, and exit instead of serving
        #[arg(long)]
        no_serve: bool,
        #[command(flatten)]
        serve: config::ServeArgs,
    },
    /// Print the effective settings of `serve` (defaults < config file < environment < flags),
    /// secrets hidden, as JSON
    Config {
        #[command(flatten)]
        serve: config::ServeArgs,
    },
    /// Manage tenants
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Import an NDJSON file of Segment messages or CloudEvents, a CSV of contacts, or a CSV of
    /// events through a mapping (safe to rerun)
    Import {
        file: std::path::PathBuf,
        /// The tenant to import into (`chronicle tenant list` shows them)
        #[arg(long)]
        tenant: Option<String>,
        /// ndjson or csv [default: from the file's extension]
        #[arg(long)]
        format: Option<String>,
        /// Write every rejected line, as NDJSON, to this file
        #[arg(long)]
        rejects: Option<std::path::PathBuf>,
        /// Read the CSV as events through this mapping (TOML; see docs/import.md)
        #[arg(long)]
        mapping: Option<std::path::PathBuf>,
    },
    /// Drop every projection and rebuild it from the log
    Rebuild,
    /// Replay the log into fresh projections and compare them with the live ones
    Verify,
    /// Print a customer's events, oldest first, one JSON object per line
    History {
        customer: String,
        #[arg(long, default_value = "demo")]
        tenant: String,
    },
    /// API keys, made offline (for a lost admin key)
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Analytics on the log, as of an instant and as known at a position
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
    /// Audience segments (as PUT/GET /v1/segments/{name})
    Segment {
        #[command(subcommand)]
        command: SegmentCommand,
    },
    /// People who sign in to the web UI
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The contact list
    Customers {
        #[command(subcommand)]
        command: CustomersCommand,
    },
    /// Everything held about a customer, as one JSON document (subject access)
    Export {
        customer: String,
        #[arg(long, default_value = "demo")]
        tenant: String,
    },
    /// Show a tenant's retention policies, or set or remove one
    Retention {
        #[arg(long, default_value = "demo", global = true)]
        tenant: String,
        #[command(subcommand)]
        command: Option<RetentionCommand>,
    },
    /// Apply the retention policies: expired events are removed (a tombstone keeps their place)
    /// and the removal is recorded; run with the server stopped
    Compact {
        /// Report what would expire, change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum CustomersCommand {
    /// List a tenant's customers, one JSON profile per line, with the filters of
    /// GET /v1/customers; when more remain, the cursor of the next page goes to stderr
    List {
        #[arg(long, default_value = "demo")]
        tenant: String,
        /// A prefix of the e-mail address, first name or last name
        #[arg(long)]
        q: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// Members of this segment only
        #[arg(long)]
        segment: Option<String>,
        /// active | deactivated | erased | merged [default: active and deactivated]
        #[arg(long)]
        status: Option<String>,
        /// created | name | activity
        #[arg(long, default_value = "created")]
        sort: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The cursor a previous page printed
        #[arg(long)]
        after: Option<String>,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Keep events of EVENT_TYPE for DAYS days (by event time)
    Set { event_type: String, days: u32 },
    /// Keep events of EVENT_TYPE forever again
    Remove { event_type: String },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints {"tenant","api_key","write_key"} (the keys are shown only once)
    Create { name: String },
    /// The tenants, one JSON object per line: {"tenant","customers"}
    List,
}

#[derive(clap::Subcommand)]
pub(crate) enum SegmentCommand {
    /// Save a segment from a JSON definition file (checked whole)
    Put {
        name: String,
        file: std::path::PathBuf,
        #[arg(long)]
        tenant: String,
    },
    /// A segment's definition and member count
    Show {
        name: String,
        #[arg(long)]
        tenant: String,
    },
    /// A segment's members, now or as of an instant; one JSON object per line
    Members {
        name: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(clap::Subcommand)]
enum AnalyticsCommand {
    /// Run a funnel (a JSON file as POST /v1/analytics/funnels takes); prints the answer
    Funnel {
        file: std::path::PathBuf,
        #[arg(long)]
        tenant: String,
    },
    /// Attribution (a JSON file as POST /v1/analytics/attribution takes); prints the answer
    Attribution {
        file: std::path::PathBuf,
        #[arg(long)]
        tenant: String,
    },
    /// RFM per customer (as GET /v1/analytics/rfm gives it; one JSON page)
    Rfm {
        #[arg(long)]
        tenant: String,
        /// Orders by this instant (RFC 3339) [default: now]
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// As known at this log position or instant of ingest time [default: now]
        #[arg(long)]
        known_at: Option<String>,
        /// Only this group (champions, loyal, …)
        #[arg(long)]
        group: Option<String>,
        /// After this customer id (the previous page's `next`)
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Deal pipeline analytics (as GET /v1/analytics/pipeline gives it)
    Pipeline {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        known_at: Option<String>,
        /// Days in one stage after which an open deal is stuck
        #[arg(long, default_value_t = 30)]
        stuck_days: u32,
    },
    /// Re-engagement candidates (as GET /v1/analytics/reengagement gives it)
    Reengagement {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value_t = 5)]
        min_events: u64,
        #[arg(long, default_value_t = 30)]
        silent_days: u32,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Signup cohorts and their conversion (as GET /v1/analytics/cohorts gives it)
    Cohorts {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        known_at: Option<String>,
        /// week or month
        #[arg(long, default_value = "month")]
        period: String,
        /// The conversion event (an event type or a tracked name)
        #[arg(long, default_value = "Order Completed")]
        event: String,
        /// Which occurrence of the event converts (2: a second order)
        #[arg(long, default_value_t = 1)]
        occurrence: u32,
        #[arg(long, default_value_t = 12)]
        periods: u32,
    },
}

#[derive(clap::Subcommand)]
enum UserCommand {
    /// Make a person's account; prints {"id","tenant","name","email","role"}. The password is
    /// read from --password-file, else CHRONICLE_USER_PASSWORD, else the first line of stdin.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// admin, writer or reader
        #[arg(long, default_value = "reader")]
        role: String,
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
    },
    /// The tenant's people, one JSON object a line
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(clap::Subcommand)]
enum ApiKeyCommand {
    /// Make an API key; prints {"id","tenant","role","name","api_key"} (the key is shown only once)
    Create {
        #[arg(long)]
        tenant: String,
        /// admin, writer, reader or ingest
        #[arg(long)]
        role: String,
        /// A name to recognise it by in the key list
        #[arg(long)]
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    // The config file fills the environment variables the environment leaves unset, before the
    // command line is read (and before any thread starts): file < environment < flags.
    match config::file_settings(&std::env::args().collect::<Vec<_>>()) {
        Ok(settings) => {
            for (var, value) in settings {
                if std::env::var_os(var).is_none() {
                    std::env::set_var(var, value);
                }
            }
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CHRONICLE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Every outbound TLS connection of this process trusts these (PostgreSQL, SMTP, HTTPS).
    if let Err(e) = chronicle_tls::configure(cli.storage.tls_ca_file.as_deref()) {
        eprintln!("Error: --tls-ca-file: {e}");
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve { serve: s } => commands::serve(&cli.storage, s.listen.as_deref(), &s.server, &s.automation).await,
            Command::Demo { customers, no_serve, serve: s } => {
                demo::run(&cli.storage, s.listen.as_deref(), customers, no_serve, &s.server, &s.automation).await
            }
            Command::Config { serve: s } => commands::show_config(&cli.storage, s.listen.as_deref(), &s.server, &s.automation),
            Command::Tenant { command: TenantCommand::List } => commands::tenant_list(&cli.storage).await,
            Command::Tenant { command: TenantCommand::Create { name } } => {
                commands::tenant_create(&cli.storage, &name).await
            }
            Command::User { command: UserCommand::Create { tenant, email, name, role, password_file } } => {
                commands::user_create(&cli.storage, &tenant, &email, &name, &role, password_file.as_deref()).await
            }
            Command::User { command: UserCommand::List { tenant } } => commands::user_list(&cli.storage, &tenant).await,
            Command::Segment { command } => commands::segment(&cli.storage, command).await,
            Command::Analytics { command: AnalyticsCommand::Attribution { file, tenant } } => {
                match std::fs::read_to_string(&file).map_err(anyhow::Error::from).and_then(|t| Ok(serde_json::from_str::<chronicle_analytics::attribution::AttributionSpec>(&t)?)) {
                    Ok(spec) => commands::analytics_answer(&cli.storage, &tenant, |app, t| async move { Ok(serde_json::to_value(app.attribution(&t, &spec).await?)?) }).await,
                    Err(e) => Err(e.context(format!("{} is not an attribution question", file.display()))),
                }
            }
            Command::Analytics { command: AnalyticsCommand::Reengagement { tenant, as_of, min_events, silent_days, limit } } => {
                let q = chronicle_app::analytics::ReengagementQuery { as_of, known_at: None, min_events: Some(min_events), silent_days: Some(silent_days), limit: Some(limit) };
                commands::analytics_answer(&cli.storage, &tenant, |app, t| async move { Ok(serde_json::to_value(app.reengagement(&t, &q).await?)?) }).await
            }
            Command::Analytics { command: AnalyticsCommand::Pipeline { tenant, as_of, known_at, stuck_days } } => {
                let q = chronicle_app::analytics::PipelineQuery { as_of, known_at, stuck_days: Some(stuck_days) };
                commands::analytics_answer(&cli.storage, &tenant, |app, t| async move { Ok(serde_json::to_value(app.pipeline_analytics(&t, &q).await?)?) }).await
            }
            Command::Analytics { command: AnalyticsCommand::Cohorts { tenant, as_of, known_at, period, event, occurrence, periods } } => {
                match serde_json::from_value::<chronicle_analytics::cohorts::Period>(serde_json::json!(period)) {
                    Ok(period) => {
                        let q = chronicle_app::analytics::CohortQuery { as_of, known_at, period: Some(period), event: Some(event), occurrence: Some(occurrence), periods: Some(periods) };
                        commands::analytics_answer(&cli.storage, &tenant, |app, t| async move { Ok(serde_json::to_value(app.cohorts(&t, &q).await?)?) }).await
                    }
                    Err(_) => Err(anyhow::anyhow!("--period is week or month")),
                }
            }
            Command::Analytics { command: AnalyticsCommand::Rfm { tenant, as_of, known_at, group, after, limit } } => {
                let q = chronicle_app::analytics::RfmQuery { as_of, known_at, group, after, limit };
                commands::analytics_answer(&cli.storage, &tenant, |app, t| async move { Ok(serde_json::to_value(app.rfm(&t, &q).await?)?) }).await
            }
            Command::Analytics { command: AnalyticsCommand::Funnel { file, tenant } } => {
                commands::funnel(&cli.storage, &file, &tenant).await
            }
            Command::ApiKey { command: ApiKeyCommand::Create { tenant, role, name } } => {
                commands::api_key_create(&cli.storage, &tenant, &role, name).await
            }
            Command::Import { file, tenant, format, rejects, mapping } => {
                import::run(&cli.storage, &file, tenant.as_deref(), format.as_deref(), rejects.as_deref(), mapping.as_deref()).await
            }
            Command::Rebuild => commands::rebuild(&cli.storage).await,
            Command::Verify => commands::verify(&cli.storage).await,
            Command::History { customer, tenant } => commands::history(&cli.storage, &tenant, &customer).await,
            Command::Export { customer, tenant } => commands::export(&cli.storage, &tenant, &customer).await,
            Command::Customers { command: CustomersCommand::List { tenant, q, email, tag, stage, owner, segment, status, sort, limit, after } } => {
                let sort = sort.parse().map_err(|e: String| anyhow::anyhow!(e));
                match sort {
                    Ok(sort) => {
                        let query = chronicle_projections::contacts::ContactQuery { q, email, tag, stage, owner, segment, status, sort, after, limit: limit.clamp(1, 10_000) };
                        commands::customers_list(&cli.storage, &tenant, &query).await
                    }
                    Err(e) => Err(e),
                }
            }
            Command::Retention { tenant, command } => {
                let change = command.map(|c| match c {
                    RetentionCommand::Set { event_type, days } => (event_type, Some(days)),
                    RetentionCommand::Remove { event_type } => (event_type, None),
                });
                commands::retention(&cli.storage, &tenant, change).await
            }
            Command::Compact { dry_run } => commands::compact(&cli.storage, dry_run).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
