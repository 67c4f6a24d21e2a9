//! `chronicle demo`: a fresh data folder with a `demo` tenant holding a realistic synthetic
//! population — sign-ups with consents (and their proof), page and product views, carts,
//! orders through payment and delivery, deals moving stage, profile changes, revocations —
//! generated through the real domain (`decide`) and appended through the real store, then
//! served. Deterministic: the same seed gives the same population.

use crate::config::{Config, StorageArgs};
use crate::progress::Progress;
use crate::commands;
use anyhow::{bail, Context};
use chronicle_core::customer::{
    self, Channel, ConsentInput, Customer, CustomerCommand, LifecycleStage, NoEmails, Purpose,
};
use chronicle_core::deal::{self, Deal, DealCommand};
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_core::order::{self, Order, OrderCommand};
use chronicle_app::App;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use std::process::ExitCode;
use std::sync::Arc;

const FIRST: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances", "Dennis", "Radia", "John",
    "Hedy", "Tim", "Sophie", "Linus", "Karen", "Niklaus", "Joan", "Leslie",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Thompson",
    "Allen",
    "Ritchie",
    "Perlman",
    "Backus",
    "Lamarr",
    "Berners-Lee",
    "Wilson",
    "Torvalds",
    "Sparck Jones",
    "Wirth",
    "Clarke",
    "Lamport",
];
const CITIES: &[(&str, &str)] = &[
    ("Lisbon", "PT"),
    ("London", "GB"),
    ("Berlin", "DE"),
    ("Paris", "FR"),
    ("Madrid", "ES"),
    ("Dublin", "IE"),
    ("Amsterdam", "NL"),
    ("Porto", "PT"),
];
const PAGES: &[&str] =
    &["/", "/pricing", "/features", "/blog/event-sourcing", "/docs", "/about", "/careers", "/blog/consent"];
const PRODUCTS: &[(&str, &str, i64)] = &[
    ("sku-101", "Walnut desk", 34900),
    ("sku-102", "Oak shelf", 8900),
    ("sku-103", "Linen lamp", 4500),
    ("sku-104", "Wool rug", 12900),
    ("sku-105", "Ceramic mug", 1500),
    ("sku-106", "Desk chair", 21900),
];
/// The customer whose plan changes three days before generation, for the `as_of` example.
pub const SHOWCASE: &str = "c00042";

/// splitmix64: a tiny deterministic generator (quality is ample for synthetic data).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// One stream's worth of generated events.
struct StreamBatch {
    stream: String,
    events: Vec<NewEvent>,
}

/// Apply a command to a state and collect its events with a time; panics on a refused
/// command, since the generator only issues valid ones.
struct Gen {
    rng: Rng,
    now: DateTime<Utc>,
}

fn ev(ty: String, data: Value, at: DateTime<Utc>, rng: &mut Rng) -> NewEvent {
    // Deterministic ids (from the seed), so a regenerated demo has the same events.
    let id = uuid::Uuid::from_u64_pair(rng.next(), rng.next());
    NewEvent::new(id, ty, data, at).with_source("demo").with_actor("demo-generator")
}

impl Gen {
    fn customer_cmd(&mut self, c: &mut Customer, cmd: CustomerCommand, at: DateTime<Utc>, out: &mut Vec<NewEvent>) {
        let events = c.decide(cmd, &NoEmails).expect("generated commands are valid");
        for e in events {
            c.apply(&e, c.version + 1, at);
            let (ty, data) = e.to_parts();
            out.push(ev(ty, data, at, &mut self.rng));
        }
    }

    fn activity(
        &mut self,
        kind: &str,
        name: &str,
        props: Value,
        at: DateTime<Utc>,
        c: &mut Customer,
        out: &mut Vec<NewEvent>,
    ) {
        c.version += 1;
        out.push(ev(
            "ActivityTracked".into(),
            json!({"kind": kind, "event": name, "properties": props}),
            at,
            &mut self.rng,
        ));
    }

    /// Generate one customer's streams.
    fn customer(&mut self, i: u64) -> Vec<StreamBatch> {
        let id = format!("c{i:05}");
        let r = &mut self.rng;
        let (first, last) = (*r.pick(FIRST), *r.pick(LAST));
        let (city, country) = *r.pick(CITIES);
        let start = self.now - Duration::days(120) + Duration::minutes(r.below(100 * 24 * 60) as i64);
        let mut t = start;
        let mut c = Customer::new(id.clone());
        let mut out = Vec::new();
        let mut traits = Map::new();
        traits.insert("first_name".into(), json!(first));
        traits.insert("last_name".into(), json!(last));
        traits.insert("city".into(), json!(city));
        traits.insert("country".into(), json!(country));
        traits.insert("plan".into(), json!(if r.chance(0.3) { "pro" } else { "free" }));
        let ip = format!("198.51.100.{}", r.below(250) + 1);
        let mut consents = vec![ConsentInput {
            channel: Channel::Email,
            purpose: Purpose::Transactional,
            granted: true,
            source: Some("signup-form".into()),
            legal_basis: Some("contract".into()),
            proof: Some(json!({"form": "signup", "ip": ip})),
        }];
        for (channel, purpose, p) in [
            (Channel::Email, Purpose::Marketing, 0.6),
            (Channel::Sms, Purpose::Marketing, 0.2),
            (Channel::InApp, Purpose::Analytics, 0.5),
        ] {
            if r.chance(p) {
                consents.push(ConsentInput {
                    channel,
                    purpose,
                    granted: true,
                    source: Some("signup-form".into()),
                    legal_basis: Some("consent".into()),
                    proof: Some(json!({"form": "signup", "ip": ip, "text_version": "2026-01"})),
                });
            }
        }
        let email = format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase().replace(' ', "-"), i);
        let phone = format!("+3519{:08}", i);
        self.customer_cmd(
            &mut c,
            CustomerCommand::Register { email: Some(email), phone: Some(phone), traits, consents },
            t,
            &mut out,
        );
        self.customer_cmd(&mut c, CustomerCommand::ChangeStage { to: LifecycleStage::Lead }, t, &mut out);

        let mut orders = Vec::new();
        let mut deals = Vec::new();
        let views = 80 + self.rng.below(60);
        let step = Duration::seconds(((self.now - start).num_seconds() / (views as i64 + 5)).max(60) - 300);
        for k in 0..views {
            t += step + Duration::seconds(self.rng.below(600) as i64);
            if t > self.now {
                break;
            }
            let roll = self.rng.below(100);
            if roll < 60 {
                let page = *self.rng.pick(PAGES);
                self.activity(
                    "page",
                    "Page Viewed",
                    json!({"path": page, "referrer": "https://search.example/"}),
                    t,
                    &mut c,
                    &mut out,
                );
            } else if roll < 85 {
                let (sku, name, price) = *self.rng.pick(PRODUCTS);
                self.activity(
                    "track",
                    "Product Viewed",
                    json!({"product_id": sku, "name": name, "price": price}),
                    t,
                    &mut c,
                    &mut out,
                );
            } else if roll < 95 {
                let (sku, name, price) = *self.rng.pick(PRODUCTS);
                self.activity(
                    "track",
                    "Product Added",
                    json!({"product_id": sku, "name": name, "price": price, "quantity": 1}),
                    t,
                    &mut c,
                    &mut out,
                );
            } else if roll < 97 && orders.len() < 3 {
                let n = orders.len();
                let order_id = format!("{id}-o{n}");
                let (sku, name, price) = *self.rng.pick(PRODUCTS);
                self.activity(
                    "track",
                    "Checkout Started",
                    json!({"order_id": order_id, "value": price}),
                    t,
                    &mut c,
                    &mut out,
                );
                orders.push(self.order(&order_id, &id, sku, name, price, t));
                self.activity(
                    "track",
                    "Order Completed",
                    json!({"order_id": order_id, "total": price, "currency": "EUR"}),
                    t,
                    &mut c,
                    &mut out,
                );
                if c.lifecycle_stage < Some(LifecycleStage::Customer) {
                    self.customer_cmd(
                        &mut c,
                        CustomerCommand::ChangeStage { to: LifecycleStage::Customer },
                        t,
                        &mut out,
                    );
                }
            } else if k % 20 == 7 && c.lifecycle_stage < Some(LifecycleStage::Mql) {
                self.customer_cmd(&mut c, CustomerCommand::ChangeStage { to: LifecycleStage::Mql }, t, &mut out);
                if self.rng.chance(0.35) && deals.is_empty() {
                    deals.push(self.deal(&format!("{id}-d0"), &id, t));
                }
            } else if self.rng.chance(0.1) {
                let tag = *self.rng.pick(&["newsletter", "webinar-2026", "beta", "vip"]);
                self.customer_cmd(&mut c, CustomerCommand::Tag { tag: tag.into() }, t, &mut out);
            } else {
                self.activity("screen", "Dashboard", json!({"app_version": "4.2.0"}), t, &mut c, &mut out);
            }
        }
        if self.rng.chance(0.05) {
            let at = t.min(self.now - Duration::hours(1));
            let revoke = ConsentInput {
                channel: Channel::Email,
                purpose: Purpose::Marketing,
                granted: false,
                source: Some("unsubscribe-link".into()),
                legal_basis: None,
                proof: Some(json!({"ip": ip})),
            };
            self.customer_cmd(&mut c, CustomerCommand::SetConsent(revoke), at, &mut out);
        }
        if id == SHOWCASE {
            // A plan change three days ago: `as_of` a week ago still shows the old plan.
            let plan = if c.traits.get("plan") == Some(&json!("pro")) { "enterprise" } else { "pro" };
            let mut traits = Map::new();
            traits.insert("plan".into(), json!(plan));
            let at = self.now - Duration::days(3);
            self.customer_cmd(
                &mut c,
                CustomerCommand::UpdateProfile { email: None, phone: None, traits },
                at,
                &mut out,
            );
        }
        let mut batches = vec![StreamBatch { stream: customer::stream_of(&id), events: out }];
        batches.extend(orders);
        batches.extend(deals);
        batches
    }

    fn order(
        &mut self,
        order_id: &str,
        customer_id: &str,
        sku: &str,
        name: &str,
        price: i64,
        at: DateTime<Utc>,
    ) -> StreamBatch {
        let mut o = Order::new(order_id);
        let mut out = Vec::new();
        let mut t = at;
        let mut cmds = vec![OrderCommand::Place {
            customer_id: customer_id.into(),
            items: vec![json!({"product_id": sku, "name": name, "price": price, "quantity": 1})],
            total: price,
            currency: "EUR".into(),
        }];
        if self.rng.chance(0.08) {
            cmds.push(OrderCommand::FailPayment { reason: Some("card_declined".into()) });
        }
        cmds.extend([
            OrderCommand::AuthorizePayment,
            OrderCommand::MarkPaid,
            OrderCommand::Ship { carrier: Some("CTT".into()) },
        ]);
        if self.rng.chance(0.9) {
            cmds.push(OrderCommand::Deliver);
            if self.rng.chance(0.05) {
                cmds.push(OrderCommand::Refund { amount: price });
            }
        }
        for cmd in cmds {
            t += Duration::hours(1 + self.rng.below(30) as i64);
            for e in o.decide(cmd).expect("generated order commands are valid") {
                o.apply(&e, o.version + 1);
                let (ty, data) = e.to_parts();
                out.push(ev(ty, data, t.min(self.now), &mut self.rng));
            }
        }
        StreamBatch { stream: order::stream_of(order_id), events: out }
    }

    fn deal(&mut self, deal_id: &str, customer_id: &str, at: DateTime<Utc>) -> StreamBatch {
        let mut d = Deal::new(deal_id);
        let mut out = Vec::new();
        let amount = (5 + self.rng.below(200) as i64) * 10_000;
        let mut cmds = vec![DealCommand::Create {
            name: format!("Deal with {customer_id}"),
            customer_id: Some(customer_id.into()),
            owner: Some((*self.rng.pick(&["sam", "alex", "kim"])).into()),
            stage: None,
            amount: None,
            currency: Some("EUR".into()),
        }];
        let depth = self.rng.below(4) as usize;
        for stage in &deal::STAGES[1..=depth.min(deal::STAGES.len() - 1)] {
            cmds.push(DealCommand::ChangeStage { to: (*stage).into() });
        }
        if depth >= 2 {
            cmds.push(DealCommand::ChangeAmount { amount });
        }
        if depth == 3 {
            cmds.push(if self.rng.chance(0.6) {
                DealCommand::Win
            } else {
                DealCommand::Lose { reason: Some("budget".into()) }
            });
        }
        let mut t = at;
        for cmd in cmds {
            t += Duration::days(1 + self.rng.below(6) as i64);
            for e in d.decide(cmd).expect("generated deal commands are valid") {
                d.apply(&e, d.version + 1);
                let (ty, data) = e.to_parts();
                out.push(ev(ty, data, t.min(self.now), &mut self.rng));
            }
        }
        StreamBatch { stream: deal::stream_of(deal_id), events: out }
    }
}

/// Generate `customers` customers into `app`'s `demo` tenant; returns the events appended.
pub async fn generate(app: &Arc<App>, tenant: &str, customers: u64, now: DateTime<Utc>) -> anyhow::Result<u64> {
    // About 100 events per customer: the bar's total is an estimate until the end.
    let mut progress = Progress::estimated("demo events", customers * 100);
    let workers = 32u64;
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let app = app.clone();
        let tenant = tenant.to_owned();
        let counter = counter.clone();
        tasks.spawn(async move {
            let mut appended = 0u64;
            let mut i = w;
            while i < customers {
                let mut g = Gen { rng: Rng(0xC0FFEE ^ i.wrapping_mul(0x9E37_79B9)), now };
                for b in g.customer(i) {
                    let n = b.events.len() as u64;
                    app.append(&tenant, &b.stream, ExpectedVersion::NoStream, b.events)
                        .await
                        .with_context(|| format!("appending {}", b.stream))?;
                    appended += n;
                    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                i += workers;
            }
            anyhow::Ok(appended)
        });
    }
    let mut total = 0;
    let mut shown = 0;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(r) => total += r.context("generator task")??,
                None => break,
            },
            _ = tick.tick() => {
                let now_done = counter.load(std::sync::atomic::Ordering::Relaxed);
                progress.add(now_done - shown);
                shown = now_done;
            }
        }
    }
    progress.add(total - shown);
    progress.finish();
    Ok(total)
}

/// The example campaigns and templates (`examples/automation/demo`), loaded into the demo
/// tenant once its history is generated (so only what happens next triggers them).
macro_rules! example {
    ($kind:literal, $name:literal) => {
        ($name, include_str!(concat!("../../../examples/automation/demo/", $kind, "/", $name, ".json")))
    };
}
const TEMPLATES: &[(&str, &str)] = &[
    example!("templates", "welcome"),
    example!("templates", "cart-reminder"),
    example!("templates", "review-request"),
    example!("templates", "payment-failed"),
    example!("templates", "payment-reminder"),
    example!("templates", "we-miss-you"),
];
const CAMPAIGNS: &[(&str, &str)] = &[
    example!("campaigns", "welcome"),
    example!("campaigns", "abandoned-cart"),
    example!("campaigns", "review-request"),
    example!("campaigns", "payment-failed"),
    example!("campaigns", "re-engagement"),
    example!("campaigns", "stuck-deal"),
];

async fn load_examples(app: &App, tenant: &str) -> anyhow::Result<usize> {
    let parse = |set: &[(&str, &str)]| -> anyhow::Result<Vec<(String, Value)>> {
        set.iter().map(|(n, t)| Ok((n.to_string(), serde_json::from_str(t).with_context(|| format!("example {n}"))?))).collect()
    };
    let n = chronicle_app::automation::definitions::load(app, tenant, &parse(TEMPLATES)?, &parse(CAMPAIGNS)?, "demo").await?;
    Ok(n)
}

pub async fn run(
    args: &StorageArgs,
    listen: Option<&str>,
    customers: u64,
    no_serve: bool,
    server: &crate::config::ServerArgs,
    automation: &crate::config::AutomationArgs,
) -> anyhow::Result<ExitCode> {
    let mut args = args.clone();
    if args.data.is_none() {
        args.data = Some("./chronicle-demo-data".into());
    }
    let cfg = Config::resolve(&args, listen)?;
    if cfg.storage.data.exists() {
        // A fresh tenant every time: only a folder that holds a Chronicle store is wiped.
        let is_store = cfg.storage.data.join(chronicle_store::sqlite::DB_FILE).exists()
            || cfg.storage.data.join(chronicle_store::log::LOG_FILE).exists();
        let is_empty = std::fs::read_dir(&cfg.storage.data)?.next().is_none();
        if !is_store && !is_empty {
            bail!("{} exists and is not a Chronicle data folder; choose another --data", cfg.storage.data.display());
        }
        std::fs::remove_dir_all(&cfg.storage.data).with_context(|| format!("clearing {}", cfg.storage.data.display()))?;
    }
    // Served: the running system is built first (storage, views, engine, listener) and the
    // data prepared on its application; --no-serve opens the storage alone, as a one-off
    // command does.
    let (application, st) = if no_serve {
        (None, Some(chronicle_app::storage::open(&chronicle_app::storage::StorageConfig { create: true, ..cfg.storage() })?))
    } else {
        // The demo runs on one host, and its stuck-deal example alerts a relay on loopback: its
        // tenants' webhooks may reach internal addresses (a server refuses them unless
        // --allow-private-webhooks).
        let config = chronicle_server::application::Config {
            webhook_targets: chronicle_app::targets::WebhookTargets::AllowPrivate,
            ..cfg.application(server, automation)?
        };
        (Some(chronicle_server::application::Application::build(config).await?), None)
    };
    let app = match (&application, &st) {
        (Some(a), _) => a.app().clone(),
        (None, Some(st)) => st.app().await?,
        (None, None) => unreachable!("one of the two is made above"),
    };
    let (api_key, write_key) = app.create_tenant("demo").await?;
    // A person to sign in to the web UI as (its password is made here and shown once).
    let password = chronicle_app::keys::mint("pw")[3..23].to_owned();
    app.create_user("demo", "Demo Admin", DEMO_ADMIN, chronicle_projections::Role::Admin, &password, "demo").await?;
    eprintln!("generating {customers} customers (about 100 events each)…");
    let started = std::time::Instant::now();
    let now = Utc::now();
    let events = generate(&app, "demo", customers, now).await?;
    let secs = started.elapsed().as_secs_f64();
    app.set_webhook_targets(chronicle_app::targets::WebhookTargets::AllowPrivate);
    let campaigns = load_examples(&app, "demo").await?;
    app.checkpoint()?;
    let summary = json!({"ui_user": DEMO_ADMIN, "ui_password": password, "tenant": "demo", "customers": customers, "events": events, "seconds": (secs * 10.0).round() / 10.0, "campaigns_and_templates": campaigns, "events_per_sec": (events as f64 / secs).round(), "api_key": api_key, "write_key": write_key});
    let Some(application) = application else {
        println!("{summary}");
        return Ok(ExitCode::SUCCESS);
    };
    drop(app);
    let week_ago = (now - Duration::days(7)).format("%Y-%m-%dT%H:%M:%SZ");
    commands::run(application, &cfg, |addr| {
        let base = format!("{}://{addr}", if server.tls_cert.is_some() { "https" } else { "http" });
        println!(
            "\nChronicle demo is ready: {customers} customers, {events} events generated in {secs:.1} s ({:.0} events/s).\n\n  Web UI:     {base}/ui/  (workspace demo, e-mail {DEMO_ADMIN}, password {password}; or the API key)\n  API:        {base}\n  API key:    {api_key}\n  Write key:  {write_key}\n\nTry:\n  export KEY={api_key}\n  # a customer's profile and timeline\n  curl -s -H \"Authorization: Bearer $KEY\" {base}/v1/customers/{SHOWCASE}\n  curl -s -H \"Authorization: Bearer $KEY\" '{base}/v1/customers/{SHOWCASE}/timeline?limit=5'\n  # may we e-mail them marketing?\n  curl -s -H \"Authorization: Bearer $KEY\" '{base}/v1/consent-check?customer={SHOWCASE}&channel=email&purpose=marketing'\n  # the same profile as it was a week ago (the plan changed three days ago)\n  curl -s -H \"Authorization: Bearer $KEY\" '{base}/v1/customers/{SHOWCASE}?as_of={week_ago}'\n  # the deal pipeline, the example campaigns at work, and the live event stream\n  curl -s -H \"Authorization: Bearer $KEY\" {base}/v1/pipeline\n  curl -s -H \"Authorization: Bearer $KEY\" {base}/v1/campaigns\n  curl -N -H \"Authorization: Bearer $KEY\" {base}/v1/events/stream\n\nCtrl-C stops the server.",
            events as f64 / secs
        );
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The demo's person, an admin of tenant `demo`.
const DEMO_ADMIN: &str = "admin@demo.example";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_valid() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let a: Vec<_> = (0..50).flat_map(|i| Gen { rng: Rng(i), now }.customer(i)).collect();
        let b: Vec<_> = (0..50).flat_map(|i| Gen { rng: Rng(i), now }.customer(i)).collect();
        assert_eq!(a.len(), b.len());
        let events: usize = a.iter().map(|s| s.events.len()).sum();
        assert!(events > 50 * 60, "about 100 events per customer, got {events}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.stream, y.stream);
            assert_eq!(x.events, y.events);
            assert!(x.events.iter().all(|e| e.event_time <= now));
        }
    }
}
