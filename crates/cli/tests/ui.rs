//! The web UI in a real browser (issue 20): headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm) against the real binary. A person signs in, finds a customer by
//! typing part of the e-mail, opens the 360, moves the time-travel slider to before a trait
//! changed and sees the old value, revokes a consent (then the API's consent check says no, and
//! the timeline and the audit name the person); traits that are HTML render as text; a form
//! post without its token is refused; a reader sees no edit controls and cannot post; an API
//! key signs in too (and, as an admin, invites a person who then signs in, and reads the audit);
//! the live view follows the log; a deal moves on the pipeline board; a filtered list is tagged
//! and exported as CSV; axe-core finds no critical or serious violation on the main pages.
//! Screenshots of the main pages go to `target/ui-screenshots`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const DRIVER: &str = r#"
const { chromium } = require('playwright-core');
const fs = require('fs');
const [base, executablePath, shots, axePath, argsJson] = process.argv.slice(2);
const a = JSON.parse(argsJson);
const report = { steps: [], axe: {} };
const step = async (name, f) => {
  try { const r = await f(); report.steps.push({ name, ok: true, detail: r === undefined ? null : r }); }
  catch (e) { report.steps.push({ name, ok: false, error: String(e && e.stack || e) }); throw e; }
};
const shot = (page, name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
const signIn = async (page, tenant, email, password) => {
  await page.goto(base + '/ui/');
  await page.fill('#tenant', tenant);
  await page.fill('#email', email);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL('**/ui/contacts**'), page.click('#sign-in button[type=submit]')]);
};
(async () => {
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const offLoopback = [], consoleErrors = [], dialogs = [];
  await context.route('**/*', route => {
    const host = new URL(route.request().url()).hostname;
    if (host === '127.0.0.1' || host === 'localhost') return route.continue();
    offLoopback.push(route.request().url());
    return route.abort();
  });
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('dialog', d => { dialogs.push(d.message()); d.dismiss(); });
  try {
    await step('sign in as a person', async () => {
      await page.goto(base + '/ui/contacts');
      if (!page.url().includes('/ui/sign-in')) throw new Error('not sent to sign in: ' + page.url());
      await shot(page, 'sign-in');
      await signIn(page, a.tenant, a.writer.email, a.writer.password);
      await shot(page, 'contacts');
      return page.url();
    });
    await step('find the customer by typing part of the e-mail', async () => {
      const before = await page.locator('#rows tr').count();
      await page.click('#q');
      await page.keyboard.type(a.search, { delay: 30 });
      await page.waitForFunction(q => document.getElementById('rows').getAttribute('data-query') === q, a.search);
      const rows = await page.locator('#rows tr').allInnerTexts();
      if (rows.length !== 1 || !rows[0].includes(a.email)) throw new Error('rows: ' + JSON.stringify(rows));
      return { before, after: rows.length };
    });
    await step('open the 360', async () => {
      await Promise.all([page.waitForURL('**/ui/customers/**'), page.click('#rows a')]);
      const plan = await page.locator('tr[data-trait="plan"] td').innerText();
      if (plan !== 'pro') throw new Error('plan now: ' + plan);
      await shot(page, 'customer-360');
      return plan;
    });
    await step('move the slider to before the trait changed', async () => {
      await page.focus('#as-of-slider');
      await Promise.all([page.waitForURL('**as_of=**'), page.keyboard.press('Home')]);
      const plan = await page.locator('tr[data-trait="plan"] td').innerText();
      const marked = await page.locator('tr[data-trait="plan"]').getAttribute('class');
      const banner = await page.locator('#as-of-banner').isVisible();
      if (plan !== 'free' || marked !== 'changed' || !banner) throw new Error(JSON.stringify({ plan, marked, banner }));
      const edit = await page.locator('#trait-form').count();
      if (edit !== 0) throw new Error('edit controls on a past view');
      await shot(page, 'customer-360-as-of');
      return { plan, url: page.url() };
    });
    await step('back to now', async () => {
      await Promise.all([page.waitForURL(u => !u.toString().includes('as_of')), page.click('#as-of-banner a')]);
      const plan = await page.locator('tr[data-trait="plan"] td').innerText();
      if (plan !== 'pro') throw new Error('plan: ' + plan);
      return plan;
    });
    await step('HTML in traits renders as text', async () => {
      const x1 = await page.locator('tr[data-trait="x1"] td').innerText();
      const x2 = await page.locator('tr[data-trait="x2"] td').innerText();
      const imgs = await page.locator('#traits img').count();
      const xss = await page.evaluate(() => window.__xss === undefined ? null : window.__xss);
      if (x1 !== a.x1 || x2 !== a.x2 || imgs !== 0 || xss !== null) throw new Error(JSON.stringify({ x1, x2, imgs, xss }));
      return { x1, x2 };
    });
    await step('revoke a consent', async () => {
      await page.selectOption('#consent-channel', 'email');
      await page.selectOption('#consent-purpose', 'marketing');
      await Promise.all([page.waitForNavigation(), page.click('#consent-form button[value=revoke]')]);
      const row = await page.locator('tr[data-consent="email/marketing"]').innerText();
      const first = await page.locator('#timeline li').first().innerText();
      if (!row.includes('revoked') || !first.includes('ConsentRevoked') || !first.includes('by ' + a.writer.actor)) {
        throw new Error(JSON.stringify({ row, first }));
      }
      return { row, first };
    });
    await step('a form post without its token is refused', async () => {
      const res = await page.request.post(page.url().split('?')[0] + '/tags', { form: { tag: 'forged' } });
      if (res.status() !== 403) throw new Error('status ' + res.status());
      return res.status();
    });
    await step('the live view follows the log', async () => {
      const live = await context.newPage();
      await live.goto(base + '/ui/live');
      await live.waitForFunction(() => document.getElementById('live-state').textContent.startsWith('Following'));
      const res = await live.request.post(base + '/v1/customers/c-grace/notes', { headers: { Authorization: 'Bearer ' + a.apiKey }, data: { text: 'Called; wants a demo' } });
      if (res.status() !== 200) throw new Error('note: ' + res.status());
      await live.waitForSelector('#live li[data-type="NoteAdded"]', { timeout: 10000 });
      await shot(live, 'live');
      const line = await live.locator('#live li').first().innerText();
      await live.close();
      return line;
    });
    await step('move a deal on the pipeline board', async () => {
      await page.goto(base + '/ui/pipeline');
      const card = page.locator('li.card', { hasText: 'Grace renewal' });
      await card.locator('select').selectOption('proposal');
      await Promise.all([page.waitForNavigation(), card.locator('button').click()]);
      const column = await page.locator('section.column', { has: page.locator('li.card', { hasText: 'Grace renewal' }) }).locator('h2').innerText();
      if (!column.toLowerCase().startsWith('proposal')) throw new Error('column: ' + column);
      await shot(page, 'pipeline');
      return column;
    });
    await step('analytics: the moved deal in pipeline conversion, a funnel with bars, the as-of control', async () => {
      await page.goto(base + '/ui/analytics');
      const q = await page.locator('#stages tr[data-stage="qualification"]').innerText();
      const attribution = await page.locator('#attribution tbody').innerText();
      if (!attribution.includes('No touchpoint yet')) throw new Error('attribution: ' + attribution);
      await page.fill('#steps', 'CustomerRegistered\nCustomerProfileUpdated');
      await page.fill('#window', '30d');
      await Promise.all([page.waitForNavigation(), page.click('#funnel-form button')]);
      const rows = await page.locator('#funnel tbody tr').allInnerTexts();
      const bars = await page.locator('#funnel progress').count();
      await shot(page, 'analytics');
      // As of before anything happened: no deal has entered a stage yet.
      await page.goto(base + '/ui/analytics?as_of=2020-01-01T00:00');
      const then = await page.locator('#stages tr[data-stage="qualification"]').innerText();
      const cells = (t) => t.split('\t').map(s => s.trim());
      // Entered 1, advanced 1 (qualification → proposal, moved on the board); two registered, one updated.
      if (cells(q)[1] !== '1' || cells(q)[2] !== '1' || rows.length !== 2 || !rows[0].includes('2') || !cells(rows[1]).includes('1') || bars !== 2 || cells(then)[1] !== '0') {
        throw new Error(JSON.stringify({ q, rows, bars, then }));
      }
      await page.goto(a.customerUrl);
      return { q, rows };
    });
    await step('the contact list filtered by a segment', async () => {
      await page.goto(base + '/ui/contacts');
      await page.selectOption('#segment', 'pro-plan');
      await Promise.all([page.waitForNavigation(), page.locator('#segment').evaluate(s => s.form.requestSubmit())]);
      const rows = await page.locator('main table tbody').first().innerText();
      if (!page.url().includes('segment=pro-plan') || !rows.includes('Grace') || rows.includes('Alan')) throw new Error(JSON.stringify({ url: page.url(), rows }));
      return rows;
    });
    await step('tag a filtered list and export it as CSV', async () => {
      await page.goto(base + '/ui/contacts?q=grace');
      await page.fill('#bulk-tag-value', 'vip');
      await Promise.all([page.waitForNavigation(), page.click('#bulk-tag button')]);
      const banner = await page.locator('.banner').innerText();
      const href = await page.locator('#csv').getAttribute('href');
      const res = await page.request.get(new URL(href, base).toString());
      const csv = await res.text();
      if (!banner.includes('Changed 1 contacts') || !csv.includes('grace.hopper@example.com') || !csv.includes('vip') || csv.includes('alan')) {
        throw new Error(JSON.stringify({ banner, csv }));
      }
      await page.goto(a.customerUrl);
      return csv.split('\n').length;
    });
    await step('campaigns and dead letters', async () => {
      await page.goto(base + '/ui/campaigns');
      await shot(page, 'campaigns');
      // This tenant runs no campaign and has no failed message: both pages say so.
      const campaigns = await page.locator('#campaigns tbody').innerText();
      const deadLink = await page.locator('a[href="/ui/dead-letters"]').innerText();
      await page.goto(base + '/ui/dead-letters');
      const letters = await page.locator('#dead-letters tbody').innerText();
      await page.goto(a.customerUrl);
      if (!campaigns.includes('No campaign in force') || deadLink !== 'Dead letters (0)' || !letters.includes('No dead letters')) {
        throw new Error(JSON.stringify({ campaigns, deadLink, letters }));
      }
      return { campaigns, letters };
    });
    await step('axe-core on the main pages', async () => {
      // A context that lets the audit's own script in (the pages' CSP admits only Chronicle's).
      const state = await context.storageState();
      const audit = await browser.newContext({ bypassCSP: true, storageState: state });
      const p = await audit.newPage();
      const customer = page.url().split('?')[0];
      const pages = [['contacts', base + '/ui/contacts'], ['customer', customer], ['customer-as-of', customer + '?as_of=' + encodeURIComponent(a.before)],
                     ['pipeline', base + '/ui/pipeline'], ['campaigns', base + '/ui/campaigns'], ['live', base + '/ui/live'],
                     ['analytics', base + '/ui/analytics?steps=CustomerRegistered%0ACustomerProfileUpdated']];
      for (const [name, url] of pages) {
        await p.goto(url);
        await p.addScriptTag({ path: axePath });
        const r = await p.evaluate(() => axe.run(document, { resultTypes: ['violations'] }));
        report.axe[name] = r.violations.map(v => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
      }
      const anon = await browser.newContext({ bypassCSP: true });
      const q = await anon.newPage();
      await q.goto(base + '/ui/sign-in');
      await q.addScriptTag({ path: axePath });
      const r = await q.evaluate(() => axe.run(document, { resultTypes: ['violations'] }));
      report.axe['sign-in'] = r.violations.map(v => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
      await audit.close();
      await anon.close();
    });
    await step('a phone-sized screen', async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      await page.reload();
      await shot(page, 'customer-360-phone');
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      await page.goto(base + '/ui/contacts');
      const list = await page.evaluate(() => document.documentElement.scrollWidth);
      await page.goto(base + '/ui/pipeline');
      const board = await page.evaluate(() => document.documentElement.scrollWidth);
      await page.setViewportSize({ width: 1280, height: 900 });
      await page.goto(a.customerUrl);
      // Nothing wider than the phone's screen (wide tables scroll in their own box).
      if (Math.max(wide, list, board) > 390) throw new Error(JSON.stringify({ wide, list, board }));
      return { wide, list, board };
    });
    await step('sign out', async () => {
      await Promise.all([page.waitForURL('**/ui/sign-in**'), page.click('.who button')]);
      await page.goto(base + '/ui/contacts');
      if (!page.url().includes('/ui/sign-in')) throw new Error('still signed in: ' + page.url());
    });
    await step('a reader sees no edit controls and cannot post', async () => {
      const ctx = await browser.newContext();
      const p = await ctx.newPage();
      await signIn(p, a.tenant, a.reader.email, a.reader.password);
      await p.goto(a.customerUrl);
      const forms = await p.locator('form[method=post]').count();
      const edits = await p.locator('#trait-form, #consent-form, #note-form, #tag-form').count();
      const token = await p.locator('.who input[name=_csrf]').getAttribute('value');
      const res = await p.request.post(a.customerUrl + '/tags', { form: { _csrf: token, tag: 'by-reader' } });
      await ctx.close();
      if (forms !== 1 || edits !== 0 || res.status() !== 403) throw new Error(JSON.stringify({ forms, edits, status: res.status() }));
      return { forms, status: res.status() };
    });
    await step('sign in with an API key; an admin invites a person and reads the audit', async () => {
      const ctx = await browser.newContext();
      const p = await ctx.newPage();
      await p.goto(base + '/ui/sign-in');
      await p.click('.key-sign-in summary');
      await p.fill('#api_key', a.apiKey);
      await Promise.all([p.waitForURL('**/ui/contacts**'), p.click('#sign-in-key button')]);
      const rows = await p.locator('#rows tr').count();
      await p.goto(base + '/ui/admin/people');
      await p.fill('#invite-name', 'Sam Sales');
      await p.fill('#invite-email', 'sam@example.com');
      await p.selectOption('#invite-role', 'writer');
      await Promise.all([p.waitForNavigation(), p.click('#invite-form button')]);
      const password = await p.locator('#first-password').innerText();
      await shot(p, 'admin-people');
      await p.goto(base + '/ui/admin/audit?customer=c-grace');
      const audit = await p.locator('#audit tbody').innerText();
      if (!audit.includes(a.writer.actor)) throw new Error('audit: ' + audit);
      await shot(p, 'admin-audit');
      await ctx.close();
      const sam = await browser.newContext();
      const q = await sam.newPage();
      await signIn(q, a.tenant, 'sam@example.com', password);
      const who = await q.locator('.who').innerText();
      await sam.close();
      if (!who.includes('Sam Sales')) throw new Error('who: ' + who);
      return { rows, who };
    });
  } catch (e) { /* recorded by its step */ }
  report.offLoopback = offLoopback;
  report.consoleErrors = consoleErrors;
  report.dialogs = dialogs;
  console.log(JSON.stringify(report));
  await browser.close();
})().catch(e => { console.log(JSON.stringify({ fatal: String(e) })); process.exit(1); });
"#;

#[test]
fn a_person_finds_a_customer_travels_in_time_and_revokes_a_consent_in_chromium() {
    let Some(clients) = segment_clients() else { return };
    let node_modules = clients.join("node/node_modules");
    let axe = node_modules.join("axe-core/axe.min.js");
    assert!(
        node_modules.join("playwright-core").exists() && axe.exists(),
        "the UI test needs playwright-core and axe-core (scripts/test installs them)"
    );
    let chromium = chromium();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = chronicle(&data, &["tenant", "create", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_owned();
    let password = "correct horse battery staple";
    for (email, name, role) in [("ada@example.com", "Ada Lovelace", "writer"), ("rita@example.com", "Rita Reader", "reader")] {
        let out = std::process::Command::new(BIN)
            .arg("--data")
            .arg(&data)
            .args(["user", "create", "--tenant", "acme", "--email", email, "--name", name, "--role", role])
            .env("CHRONICLE_USER_PASSWORD", password)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (_server, url, _) = start(&data, &["serve"]);
    let agent = agent();
    let (x1, x2) = ("<script>window.__xss=1</script>", r#""><img src=x onerror="window.__xss=2">"#);
    let grace = json!({"id": "c-grace", "email": "grace.hopper@example.com",
        "traits": {"first_name": "Grace", "last_name": "Hopper", "plan": "free", "x1": x1, "x2": x2},
        "consents": [{"channel": "email", "purpose": "marketing", "granted": true, "source": "signup-form"}]});
    for body in [grace, json!({"id": "c-alan", "email": "alan.turing@example.com", "traits": {"first_name": "Alan", "last_name": "Turing"}})] {
        let (status, v) = send(&agent, "POST", &format!("{url}/v1/customers"), &api, &body);
        assert_eq!(status, 201, "{v}");
    }
    let deal = json!({"id": "d-grace", "name": "Grace renewal", "customer_id": "c-grace", "amount": 120000, "currency": "EUR"});
    let (status, v) = send(&agent, "POST", &format!("{url}/v1/deals"), &api, &deal);
    assert_eq!(status, 201, "{v}");
    // The trait changes a while after the customer was made: the slider's first stop is between.
    std::thread::sleep(Duration::from_millis(1500));
    let before = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(1100));
    let (status, v) = send(&agent, "PATCH", &format!("{url}/v1/customers/c-grace"), &api, &json!({"traits": {"plan": "pro"}}));
    assert_eq!(status, 200, "{v}");

    // A segment the engine keeps: Grace is on the pro plan now, Alan has no plan.
    let (status, v) = send(&agent, "PUT", &format!("{url}/v1/segments/pro-plan"), &api, &json!({"conditions": [{"trait": "plan", "equals": "pro"}]}));
    assert_eq!(status, 200, "{v}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while get(&agent, &format!("{url}/v1/segments/pro-plan"), &api).1["members"] != 1 {
        assert!(std::time::Instant::now() < deadline, "grace enters the segment");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The pages carry the security headers.
    let res = agent.get(&format!("{url}/ui/sign-in")).call().unwrap();
    let csp = res.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");

    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let args = json!({
        "tenant": "acme", "email": "grace.hopper@example.com", "search": "grace.ho",
        "writer": {"email": "ada@example.com", "password": password, "actor": "user:ada@example.com"},
        "reader": {"email": "rita@example.com", "password": password},
        "apiKey": api, "x1": x1, "x2": x2, "before": before,
        "customerUrl": format!("{url}/ui/customers/c-grace"),
    });
    let script = dir.path().join("driver.js");
    std::fs::write(&script, DRIVER).unwrap();
    let out = std::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&chromium)
        .arg(&shots)
        .arg(&axe)
        .arg(args.to_string())
        .env("NODE_PATH", &node_modules)
        .output()
        .expect("run node");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("the driver's report: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    let steps = report["steps"].as_array().cloned().unwrap_or_default();
    for s in &steps {
        assert_eq!(s["ok"], true, "step {} failed: {}\n{report:#}", s["name"], s["error"]);
    }
    assert_eq!(steps.len(), 19, "every step ran: {report:#}");
    assert_eq!(report["offLoopback"], json!([]), "{report}");
    assert_eq!(report["consoleErrors"], json!([]), "no script error, no CSP refusal: {report}");
    assert_eq!(report["dialogs"], json!([]), "{report}");
    for (page, violations) in report["axe"].as_object().unwrap() {
        let bad: Vec<&Value> =
            violations.as_array().unwrap().iter().filter(|v| matches!(v["impact"].as_str(), Some("critical" | "serious"))).collect();
        assert!(bad.is_empty(), "axe-core on {page}: {bad:#?}");
    }
    assert_eq!(report["axe"].as_object().unwrap().len(), 8, "{report}");

    // What the UI did is what the API sees: the consent check says no, the revocation names
    // the person, and the audit trail has their look at the 360.
    let (status, v) = get(&agent, &format!("{url}/v1/consent-check?customer=c-grace&channel=email&purpose=marketing"), &api);
    assert_eq!((status, &v["allowed"]), (200, &json!(false)), "{v}");
    let (_, timeline) = get(&agent, &format!("{url}/v1/customers/c-grace/timeline?type=ConsentRevoked"), &api);
    let revoked = &timeline["events"][0];
    assert_eq!(revoked["actor"], "user:ada@example.com", "{timeline}");
    assert_eq!(revoked["data"]["source"], "ui", "{timeline}");
    let (_, profile) = get(&agent, &format!("{url}/v1/customers/c-grace"), &api);
    assert_eq!(profile["tags"], json!(["vip"]), "the bulk tag, and no forged or reader's tag: {profile}");
    std::thread::sleep(Duration::from_millis(400));
    let (status, audit) = get(&agent, &format!("{url}/v1/audit?customer=c-grace"), &api);
    assert_eq!(status, 200, "{audit}");
    let by_ada = audit["entries"].as_array().unwrap().iter().filter(|e| e["actor"] == "user:ada@example.com").count();
    assert!(by_ada >= 3, "the person's reads and change are on the audit trail: {audit}");
}
