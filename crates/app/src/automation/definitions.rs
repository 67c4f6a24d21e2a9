//! Saving and deleting campaigns and templates: each is an event on its own stream
//! (`campaign-{name}`, `template-{name}`), checked whole before it is written.

use crate::app::App;
use crate::error::AppError;
use chronicle_automation::events::{campaign_stream, template_stream, AutomationEvent};
use chronicle_automation::Campaign;
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_projections::automation::Template;
use serde_json::Value;
use uuid::Uuid;

fn check_name(name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(AppError::BadRequest("a name is 1-64 characters of a-z, 0-9, - and _".into()))
    }
}

async fn record(app: &App, tenant: &str, stream: &str, e: AutomationEvent, actor: &str) -> Result<(), AppError> {
    let (ty, data) = e.to_parts();
    let ev = NewEvent::new(Uuid::now_v7(), ty, data, app.now()).with_actor(actor);
    app.append(tenant, stream, ExpectedVersion::Any, vec![ev]).await?;
    Ok(())
}

/// Save a campaign (create or replace). Enrolments already running keep the version they
/// began with. Saving the same definition again writes nothing. Returns whether it changed.
pub async fn save_campaign(app: &App, tenant: &str, name: &str, definition: Value, actor: &str) -> Result<bool, AppError> {
    check_name(name)?;
    let campaign = Campaign::parse(&definition).map_err(|e| AppError::BadRequest(e.0))?;
    for url in campaign.webhook_urls() {
        crate::targets::check_saved(url, app.webhook_targets())
            .map_err(|e| AppError::Rule { code: "webhook_target_refused", message: e.to_string() })?;
    }
    {
        let v = app.views();
        let auto = v.tenant(tenant).map(|t| &t.automation);
        if let Some(missing) = campaign.templates().find(|t| !auto.is_some_and(|a| a.templates.contains_key(*t))) {
            return Err(AppError::Rule {
                code: "unknown_template",
                message: format!("the campaign sends template {missing:?}, which does not exist; PUT /v1/templates/{missing} first"),
            });
        }
        let current = auto.and_then(|a| a.campaigns.get(name).and_then(|ver| a.definition(name, *ver)));
        if current.is_some_and(|c| c.definition == definition) {
            return Ok(false);
        }
    }
    record(app, tenant, &campaign_stream(name), AutomationEvent::CampaignSaved { name: name.into(), definition }, actor).await?;
    Ok(true)
}

pub async fn delete_campaign(app: &App, tenant: &str, name: &str, actor: &str) -> Result<(), AppError> {
    if campaign(app, tenant, name).is_none() {
        return Err(AppError::NotFound("campaign"));
    }
    record(app, tenant, &campaign_stream(name), AutomationEvent::CampaignDeleted { name: name.into() }, actor).await
}

/// The definition in force, as it was given.
pub fn campaign(app: &App, tenant: &str, name: &str) -> Option<Value> {
    let v = app.views();
    let a = &v.tenant(tenant)?.automation;
    a.definition(name, *a.campaigns.get(name)?).map(|c| c.definition.clone())
}

/// The campaigns in force, by name: each with its trigger in words and its counters.
pub fn campaigns(app: &App, tenant: &str) -> Vec<(String, String, chronicle_projections::automation::CampaignStats)> {
    let v = app.views();
    let Some(t) = v.tenant(tenant) else { return Vec::new() };
    let mut out: Vec<_> = t
        .automation
        .live_campaigns()
        .map(|(name, _, c)| (name.to_owned(), c.trigger.describe(), t.automation.stats.get(name).cloned().unwrap_or_default()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A campaign's counters (`None`: no such campaign ever ran here).
pub fn stats(app: &App, tenant: &str, name: &str) -> Option<chronicle_projections::automation::CampaignStats> {
    app.views().tenant(tenant).and_then(|t| t.automation.stats.get(name).cloned())
}

/// The dead-letter queue, oldest first.
pub fn dead_letters(app: &App, tenant: &str) -> Vec<chronicle_projections::automation::OutboxEntry> {
    let v = app.views();
    let mut out: Vec<_> = v.tenant(tenant).map(|t| t.automation.dead_letters.values().cloned().collect()).unwrap_or_default();
    out.sort_by_key(|m: &chronicle_projections::automation::OutboxEntry| m.queued_at);
    out
}

pub async fn save_template(app: &App, tenant: &str, name: &str, body: &Value, actor: &str) -> Result<bool, AppError> {
    check_name(name)?;
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(subject), Some(text)) = (field("subject"), field("body")) else {
        return Err(AppError::BadRequest("a template is {\"subject\": \"…\", \"body\": \"…\"}".into()));
    };
    if let Some(k) = body.as_object().and_then(|m| m.keys().find(|k| *k != "subject" && *k != "body")) {
        return Err(AppError::BadRequest(format!("unknown field {k:?}; a template has subject and body")));
    }
    chronicle_automation::template::check(&subject, &text).map_err(|e| AppError::BadRequest(e.0))?;
    if template(app, tenant, name).is_some_and(|t| t.subject == subject && t.body == text) {
        return Ok(false);
    }
    let e = AutomationEvent::TemplateSaved { name: name.into(), subject, body: text };
    record(app, tenant, &template_stream(name), e, actor).await?;
    Ok(true)
}

pub async fn delete_template(app: &App, tenant: &str, name: &str, actor: &str) -> Result<(), AppError> {
    if template(app, tenant, name).is_none() {
        return Err(AppError::NotFound("template"));
    }
    let used_by = {
        let v = app.views();
        let a = &v.tenant(tenant).expect("the template exists").automation;
        let found = a.live_campaigns().find(|(_, _, c)| c.templates().any(|t| t == name)).map(|(n, _, _)| n.to_owned());
        found
    };
    if let Some(c) = used_by {
        return Err(AppError::Rule { code: "template_in_use", message: format!("campaign {c:?} sends this template") });
    }
    record(app, tenant, &template_stream(name), AutomationEvent::TemplateDeleted { name: name.into() }, actor).await
}

pub fn template(app: &App, tenant: &str, name: &str) -> Option<Template> {
    app.views().tenant(tenant)?.automation.templates.get(name).cloned()
}

/// Load a folder of definitions: `TENANT/templates/NAME.json` and `TENANT/campaigns/NAME.json`
/// (templates first, since campaigns name them). Every file is read and checked before any is
/// saved; saving what is already in force writes nothing. Returns how many changed.
pub async fn load_folder(app: &App, dir: &std::path::Path) -> Result<usize, AppError> {
    let io = |p: &std::path::Path, e: std::io::Error| AppError::BadRequest(format!("{}: {e}", p.display()));
    let mut tenants = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        if path.is_dir() {
            tenants.push(path);
        }
    }
    tenants.sort();
    let mut sets = Vec::new();
    for t in tenants {
        let tenant = t.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if !app.views().tenant_exists(&tenant) {
            return Err(AppError::BadRequest(format!("{}: no tenant {tenant:?}", t.display())));
        }
        let read = |kind: &str| -> Result<Vec<(String, Value)>, AppError> {
            let d = t.join(kind);
            let mut out = Vec::new();
            if !d.exists() {
                return Ok(out);
            }
            for entry in std::fs::read_dir(&d).map_err(|e| io(&d, e))? {
                let p = entry.map_err(|e| io(&d, e))?.path();
                if p.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let name = p.file_stem().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| AppError::BadRequest(format!("{}: {e}", p.display())))?;
                out.push((name, v));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        };
        sets.push((tenant, read("templates")?, read("campaigns")?));
    }
    let mut changed = 0;
    for (tenant, templates, campaigns) in sets {
        changed += load(app, &tenant, &templates, &campaigns, "campaigns-folder").await?;
    }
    Ok(changed)
}

/// Save templates, then campaigns, for one tenant, each checked before anything is written.
pub async fn load(
    app: &App,
    tenant: &str,
    templates: &[(String, Value)],
    campaigns: &[(String, Value)],
    actor: &str,
) -> Result<usize, AppError> {
    for (name, t) in templates {
        check_name(name)?;
        let field = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or_default();
        chronicle_automation::template::check(field("subject"), field("body"))
            .map_err(|e| AppError::BadRequest(format!("template {name}: {}", e.0)))?;
    }
    for (name, c) in campaigns {
        check_name(name)?;
        Campaign::parse(c).map_err(|e| AppError::BadRequest(format!("campaign {name}: {}", e.0)))?;
    }
    let mut changed = 0;
    for (name, t) in templates {
        changed += usize::from(save_template(app, tenant, name, t, actor).await?);
    }
    for (name, c) in campaigns {
        changed += usize::from(save_campaign(app, tenant, name, c.clone(), actor).await?);
    }
    Ok(changed)
}

/// A segment as the API answers it: its definition and how many are in it now.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct SegmentInfo {
    pub name: String,
    pub definition: Value,
    pub members: usize,
}

/// Save a segment (checked whole; saving the same definition again records nothing). The
/// engine then keeps its membership: customers enter as their next event or the next scan finds
/// them in it.
pub async fn save_segment(app: &App, tenant: &str, name: &str, definition: Value, actor: &str) -> Result<bool, AppError> {
    use chronicle_automation::segment::{self, Segment, SegmentEvent};
    check_name(name)?;
    let s = Segment::parse(&definition).map_err(|e| AppError::BadRequest(e.0))?;
    if let Some(g) = s.rfm_groups().find(|g| !chronicle_analytics::rfm::GROUPS.contains(g)) {
        return Err(AppError::BadRequest(format!("no RFM group {g:?}; the groups are {}", chronicle_analytics::rfm::GROUPS.join(", "))));
    }
    if segment_info(app, tenant, name).is_some_and(|i| i.definition == s.definition) {
        return Ok(false);
    }
    let (ty, data) = SegmentEvent::SegmentSaved { name: name.into(), definition }.to_parts();
    let ev = NewEvent::new(Uuid::now_v7(), ty, data, app.now()).with_actor(actor);
    app.append(tenant, &segment::stream_of(name), ExpectedVersion::Any, vec![ev]).await?;
    Ok(true)
}

pub fn segment_info(app: &App, tenant: &str, name: &str) -> Option<SegmentInfo> {
    let v = app.views();
    let a = &v.tenant(tenant)?.automation;
    let (_, s) = a.segments.get(name)?;
    Some(SegmentInfo { name: name.to_owned(), definition: s.definition.clone(), members: a.members.get(name).map_or(0, |m| m.len()) })
}

/// One page of a segment's members now, by customer id: (id, since).
pub fn segment_members(app: &App, tenant: &str, name: &str, after: Option<&str>, limit: usize) -> Result<(Vec<(String, chrono::DateTime<chrono::Utc>)>, Option<String>), AppError> {
    let v = app.views();
    let a = &v.tenant(tenant).ok_or(AppError::NotFound("segment"))?.automation;
    if !a.segments.contains_key(name) {
        return Err(AppError::NotFound("segment"));
    }
    let mut rest = a.members.get(name).into_iter().flatten().filter(|(id, _)| after.is_none_or(|x| id.as_str() > x));
    let page: Vec<(String, chrono::DateTime<chrono::Utc>)> = rest.by_ref().take(limit).map(|(id, t)| (id.clone(), *t)).collect();
    let next = rest.next().and(page.last().map(|(id, _)| id.clone()));
    Ok((page, next))
}
