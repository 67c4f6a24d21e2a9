//! A campaign as data: its JSON definition, checked whole and compiled into a flat program of
//! operations (branches become jumps), so an enrolment's place in it is one number.

use chronicle_core::customer::{Channel, LifecycleStage, Purpose};
use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CampaignError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, CampaignError> {
    Err(CampaignError(msg.into()))
}

/// What starts an enrolment: an event type (`CustomerRegistered`) or a tracked event's name
/// (`Product Added`), optionally only when some of its fields have given values; or the
/// absence of something, found by a periodic scan: no tracked activity for a while
/// (`inactive_for`), an open deal in the same stage for a while (`deal_stuck_for`, enrolling
/// the deal's customer with the deal as context).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Trigger {
    Event {
        event: String,
        #[serde(default, rename = "where", skip_serializing_if = "Map::is_empty")]
        filter: Map<String, Value>,
    },
    InactiveFor(#[serde(with = "secs")] Duration),
    DealStuckFor(#[serde(with = "secs")] Duration),
}

impl Trigger {
    pub fn describe(&self) -> String {
        match self {
            Trigger::Event { event, .. } => event.clone(),
            Trigger::InactiveFor(d) => format!("inactive for {}d", d.num_days()),
            Trigger::DealStuckFor(d) => format!("deal stuck for {}d", d.num_days()),
        }
    }
}

/// When a customer may enrol again once an earlier enrolment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reentry {
    Never,
    Always,
    /// Again once this long has passed since the previous enrolment began.
    After(#[serde(with = "secs")] Duration),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendSpec {
    pub channel: Channel,
    pub purpose: Purpose,
    pub template: String,
    /// Channels to try, in order, when the first is not allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<Channel>,
    /// For `webhook` sends to the owner or a team instead of the customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl SendSpec {
    /// The channels this step may use, the preferred first.
    pub fn channels(&self) -> impl Iterator<Item = Channel> + '_ {
        std::iter::once(self.channel).chain(self.fallback.iter().copied().filter(move |c| *c != self.channel))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Wait {
    For(#[serde(with = "secs")] Duration),
    /// Until the next time the customer's clock shows this time of day.
    Until(NaiveTime),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Condition {
    /// An event of this type or name happened on the customer since the enrolment began.
    Happened(String),
    /// A trait has this value.
    TraitEquals(String, Value),
}

/// One operation of the compiled program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Wait(Wait),
    Send(SendSpec),
    SetStage(LifecycleStage),
    Tag(String),
    Webhook { url: String },
    /// Go on with the next operation when the condition holds, else jump to `otherwise`.
    Branch { condition: Condition, otherwise: usize },
    Jump(usize),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub trigger: Trigger,
    pub exit_on: Vec<String>,
    pub goal: Option<String>,
    pub reentry: Reentry,
    pub program: Vec<Op>,
    /// The definition as given (answered by `GET`).
    pub definition: Value,
}

const FIELDS: &[&str] = &["trigger", "exit_on", "goal", "reentry", "steps", "description"];
/// The kinds of step, each the one field of its step (`if` with `then` and `else`).
const STEPS: &[&str] = &["wait", "send", "set_stage", "tag", "webhook", "if"];

/// The JSON a campaign definition is, as [`Campaign::parse`] reads it: its schema for
/// `/openapi.json` (the parser stays the authority: it also checks what a schema cannot say,
/// such as that a duration is at most ten years).
pub struct Definition;

/// One step of a definition (recursive: `if` holds steps).
struct Step;

const DURATION: &str = "^[0-9]+[smhdw]$";

impl schemars::JsonSchema for Definition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CampaignDefinition".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let steps = generator.subschema_for::<Vec<Step>>();
        let alone = |key: &str| {
            serde_json::json!({"type": "object", "required": [key], "additionalProperties": false,
                               "properties": {key: {"type": "string", "pattern": DURATION}}})
        };
        schemars::json_schema!({
            "description": "A campaign: what starts an enrolment, the steps it runs, what ends it.",
            "type": "object",
            "required": ["trigger", "steps"],
            "additionalProperties": false,
            "properties": {
                "trigger": {"oneOf": [
                    {"type": "string", "minLength": 1, "description": "An event type or a tracked event's name"},
                    {"type": "object", "required": ["event"], "properties": {
                        "event": {"type": "string", "minLength": 1},
                        "where": {"type": ["object", "null"], "description": "Field values the event must have"}
                    }},
                    alone("inactive_for"),
                    alone("deal_stuck_for")
                ]},
                "exit_on": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
                "goal": {"type": ["string", "null"], "minLength": 1},
                "reentry": {"type": "string", "pattern": "^(never|always|after:[0-9]+[smhdw])$"},
                "description": {"type": ["string", "null"]},
                "steps": steps
            }
        })
    }
}

impl schemars::JsonSchema for Step {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CampaignStep".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let steps = generator.subschema_for::<Vec<Step>>();
        let channel = generator.subschema_for::<Channel>();
        let purpose = generator.subschema_for::<Purpose>();
        let stage = generator.subschema_for::<LifecycleStage>();
        let one = |key: &str, schema: serde_json::Value| {
            serde_json::json!({"type": "object", "required": [key], "additionalProperties": false, "properties": {key: schema}})
        };
        schemars::json_schema!({
            "oneOf": [
                one("wait", serde_json::json!({"oneOf": [
                    {"type": "string", "pattern": DURATION},
                    {"type": "object", "required": ["until"], "properties": {"until": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}$"}}}
                ]})),
                one("send", serde_json::json!({"type": "object", "required": ["channel", "purpose", "template"], "properties": {
                    "channel": channel,
                    "purpose": purpose,
                    "template": {"type": "string", "minLength": 1},
                    "fallback": {"type": "array", "items": channel},
                    "to": {"type": "string", "description": "For webhook sends: the owner or a team instead of the customer"}
                }})),
                one("set_stage", stage.to_value()),
                one("tag", serde_json::json!({"type": "string", "minLength": 1})),
                one("webhook", serde_json::json!({"type": "object", "required": ["url"], "properties": {"url": {"type": "string", "pattern": "^https?://"}}})),
                {"type": "object", "required": ["if"], "additionalProperties": false, "properties": {
                    "if": {"oneOf": [
                        {"type": "object", "required": ["happened"], "additionalProperties": false, "properties": {"happened": {"type": "string", "minLength": 1}}},
                        {"type": "object", "required": ["trait", "equals"], "additionalProperties": false, "properties": {"trait": {"type": "string"}, "equals": {}}}
                    ]},
                    "then": {"anyOf": [steps, {"type": "null"}]},
                    "else": {"anyOf": [steps, {"type": "null"}]}
                }}
            ]
        })
    }
}

impl Campaign {
    /// Check a definition whole and compile it.
    pub fn parse(definition: &Value) -> Result<Campaign, CampaignError> {
        let Some(m) = definition.as_object() else { return bad("a campaign must be a JSON object") };
        if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return bad(format!("unknown field {k:?}; a campaign has {}", FIELDS.join(", ")));
        }
        if m.get("description").is_some_and(|d| !d.is_string() && !d.is_null()) {
            return bad("description must be text");
        }
        let trigger = match m.get("trigger") {
            Some(Value::String(s)) => Trigger::Event { event: s.clone(), filter: Map::new() },
            Some(Value::Object(t)) if t.contains_key("inactive_for") || t.contains_key("deal_stuck_for") => {
                let (key, v) = t.iter().next().expect("not empty");
                if t.len() != 1 {
                    return bad(format!("trigger.{key} stands alone"));
                }
                let d = v
                    .as_str()
                    .ok_or_else(|| CampaignError("must be a duration such as 60d".into()))
                    .and_then(parse_duration)
                    .map_err(|e| CampaignError(format!("trigger.{key}: {}", e.0)))?;
                if key == "inactive_for" { Trigger::InactiveFor(d) } else { Trigger::DealStuckFor(d) }
            }
            Some(Value::Object(t)) => {
                let event = t.get("event").and_then(Value::as_str).filter(|s| !s.is_empty());
                let Some(event) = event else { return bad("trigger.event must be an event type or name") };
                let filter = match t.get("where") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(w)) => w.clone(),
                    Some(_) => return bad("trigger.where must be an object of field values"),
                };
                Trigger::Event { event: event.to_owned(), filter }
            }
            _ => return bad("a campaign needs a trigger: {\"event\": \"…\"}, {\"inactive_for\": \"60d\"} or {\"deal_stuck_for\": \"21d\"}"),
        };
        let exit_on = match m.get("exit_on") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| CampaignError("exit_on must be a list of event names".into()))?,
            Some(_) => return bad("exit_on must be a list of event names"),
        };
        let goal = match m.get("goal") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => return bad("goal must be an event name"),
        };
        let reentry = match m.get("reentry").map(|v| v.as_str()) {
            None | Some(Some("never")) => Reentry::Never,
            Some(Some("always")) => Reentry::Always,
            Some(Some(s)) if s.starts_with("after:") => Reentry::After(parse_duration(&s[6..])?),
            _ => return bad("reentry must be \"never\", \"always\" or \"after:<duration>\" (e.g. after:7d)"),
        };
        let Some(Value::Array(steps)) = m.get("steps") else { return bad("a campaign needs steps: [...]") };
        let mut program = Vec::new();
        compile(steps, "steps", &mut program)?;
        Ok(Campaign { trigger, exit_on, goal, reentry, program, definition: definition.clone() })
    }

    /// Whether an event starts this campaign: `name` is the event type, or for a tracked event
    /// its name; `fields` are the tracked event's properties or the event's data.
    pub fn triggered_by(&self, event_type: &str, name: Option<&str>, fields: &Value) -> bool {
        match &self.trigger {
            Trigger::Event { event, filter } => {
                names_match(event, event_type, name) && filter.iter().all(|(k, v)| fields.get(k) == Some(v))
            }
            _ => false,
        }
    }

    pub fn exits_on(&self, event_type: &str, name: Option<&str>) -> bool {
        self.exit_on.iter().any(|e| names_match(e, event_type, name))
    }

    pub fn converts_on(&self, event_type: &str, name: Option<&str>) -> bool {
        self.goal.as_deref().is_some_and(|g| names_match(g, event_type, name))
    }

    /// The templates the program sends with (to check they exist when it is saved).
    pub fn templates(&self) -> impl Iterator<Item = &str> {
        self.program.iter().filter_map(|op| match op {
            Op::Send(s) => Some(s.template.as_str()),
            _ => None,
        })
    }

    /// The URLs the campaign's webhook steps post to.
    pub fn webhook_urls(&self) -> impl Iterator<Item = &str> {
        self.program.iter().filter_map(|op| match op {
            Op::Webhook { url } => Some(url.as_str()),
            _ => None,
        })
    }
}

/// An event answers to its type and, when it is a tracked event, to its name.
pub fn names_match(wanted: &str, event_type: &str, name: Option<&str>) -> bool {
    wanted == event_type || name == Some(wanted)
}

fn compile(steps: &[Value], at: &str, out: &mut Vec<Op>) -> Result<(), CampaignError> {
    for (i, step) in steps.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Some(m) = step.as_object() else { return bad(format!("{here} must be an object")) };
        let kind = STEPS.iter().copied().find(|k| m.contains_key(*k));
        let Some(kind) = kind else {
            return bad(format!("{here} must be one of wait, send, set_stage, tag, webhook, if"));
        };
        let allowed: &[&str] = if kind == "if" { &["if", "then", "else"] } else { &[kind] };
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return bad(format!("{here}: unexpected field {k:?} in a {kind} step"));
        }
        let v = &m[kind];
        match kind {
            "wait" => out.push(Op::Wait(match v {
                Value::String(s) => Wait::For(parse_duration(s).map_err(|e| CampaignError(format!("{here}: {e}")))?),
                Value::Object(w) => match w.get("until").and_then(Value::as_str) {
                    Some(t) => Wait::Until(
                        NaiveTime::parse_from_str(t, "%H:%M")
                            .map_err(|_| CampaignError(format!("{here}: until must be a time of day, HH:MM")))?,
                    ),
                    None => return bad(format!("{here}: wait is a duration (\"1h\") or {{\"until\": \"HH:MM\"}}")),
                },
                _ => return bad(format!("{here}: wait is a duration (\"1h\") or {{\"until\": \"HH:MM\"}}")),
            })),
            "send" => {
                let spec: SendSpec = serde_json::from_value(v.clone())
                    .map_err(|e| CampaignError(format!("{here}: send needs channel, purpose and template: {e}")))?;
                if spec.template.is_empty() {
                    return bad(format!("{here}: send needs a template"));
                }
                out.push(Op::Send(spec));
            }
            "set_stage" => out.push(Op::SetStage(
                serde_json::from_value(v.clone())
                    .map_err(|_| CampaignError(format!("{here}: set_stage needs a lifecycle stage such as \"mql\"")))?,
            )),
            "tag" => match v.as_str().filter(|s| !s.is_empty()) {
                Some(t) => out.push(Op::Tag(t.to_owned())),
                None => return bad(format!("{here}: tag needs a tag name")),
            },
            "webhook" => match v.get("url").and_then(Value::as_str) {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    out.push(Op::Webhook { url: u.to_owned() })
                }
                _ => return bad(format!("{here}: webhook needs {{\"url\": \"http(s)://…\"}}")),
            },
            _ => {
                let condition = match v {
                    Value::Object(c) if c.contains_key("happened") => match c["happened"].as_str() {
                        Some(e) if !e.is_empty() && c.len() == 1 => Condition::Happened(e.to_owned()),
                        _ => return bad(format!("{here}: if.happened needs an event name")),
                    },
                    Value::Object(c) if c.contains_key("trait") => match (c["trait"].as_str(), c.get("equals")) {
                        (Some(t), Some(eq)) if c.len() == 2 => Condition::TraitEquals(t.to_owned(), eq.clone()),
                        _ => return bad(format!("{here}: if.trait needs a trait name and equals")),
                    },
                    _ => return bad(format!("{here}: if is {{\"happened\": event}} or {{\"trait\": name, \"equals\": value}}")),
                };
                let branch = out.len();
                out.push(Op::Branch { condition, otherwise: 0 });
                // `then` and `else` are lists of steps; either may be left out, not mistyped.
                let branch_steps = |key: &str| match m.get(key) {
                    None | Some(Value::Null) => Ok(&[][..]),
                    Some(Value::Array(a)) => Ok(a.as_slice()),
                    Some(_) => bad(format!("{here}.{key} must be a list of steps")),
                };
                compile(branch_steps("then")?, &format!("{here}.then"), out)?;
                let jump = out.len();
                out.push(Op::Jump(0));
                let otherwise = out.len();
                compile(branch_steps("else")?, &format!("{here}.else"), out)?;
                let end = out.len();
                out[branch] = Op::Branch { condition: condition_of(&out[branch]), otherwise };
                out[jump] = Op::Jump(end);
            }
        }
    }
    Ok(())
}

fn condition_of(op: &Op) -> Condition {
    match op {
        Op::Branch { condition, .. } => condition.clone(),
        _ => unreachable!("a branch"),
    }
}

/// `90s`, `15m`, `1h`, `7d`, `2w`.
pub fn parse_duration(s: &str) -> Result<Duration, CampaignError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| CampaignError(format!("{s:?} is not a duration such as 30m, 1h or 7d")))?;
    let unit_secs: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return bad(format!("{s:?} is not a duration such as 30m, 1h or 7d")),
    };
    // At most ten years (checked before it is made: a huge count would overflow).
    match n.checked_mul(unit_secs).filter(|secs| *secs <= 3650 * 86_400) {
        Some(secs) => Ok(Duration::seconds(secs)),
        None => bad(format!("{s:?} is too long (ten years at most)")),
    }
}

/// The next instant after `now` at which the clock in `tz` shows `time`.
pub fn next_local_time(now: DateTime<Utc>, tz: chrono_tz::Tz, time: NaiveTime) -> DateTime<Utc> {
    let local = now.with_timezone(&tz).date_naive();
    for day in 0..3 {
        let date = local + Duration::days(day);
        // A time skipped by a DST change falls to the next one the clock shows.
        let at = tz.from_local_datetime(&date.and_time(time)).earliest();
        if let Some(at) = at.map(|t| t.with_timezone(&Utc)).filter(|t| *t > now) {
            return at;
        }
    }
    now + Duration::days(1)
}

/// The customer's time zone, UTC when none is set or it is not a known zone name.
pub fn zone(name: Option<&str>) -> chrono_tz::Tz {
    name.and_then(|n| n.parse().ok()).unwrap_or(chrono_tz::UTC)
}

pub(crate) mod secs {
    use chrono::Duration;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.num_seconds())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::seconds(i64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_whose_steps_are_not_a_list_is_refused() {
        let c = |then: Value| Campaign::parse(&serde_json::json!({"trigger": "X", "steps": [{"if": {"happened": "Y"}, "then": then}]}));
        assert!(c(serde_json::json!([{"tag": "a"}])).is_ok());
        assert!(c(Value::Null).is_ok());
        for bad in [serde_json::json!({}), serde_json::json!("tag"), serde_json::json!(1)] {
            assert_eq!(c(bad).unwrap_err().0, "steps[0].then must be a list of steps");
        }
    }

    #[test]
    fn the_schema_names_the_fields_and_steps_the_parser_reads() {
        let mut g = schemars::SchemaGenerator::default();
        let def = g.root_schema_for::<Definition>().to_value();
        let fields: Vec<&str> = def["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = FIELDS.to_vec();
        want.sort_unstable();
        assert_eq!(fields, want);
        let step = g.definitions()["CampaignStep"].clone();
        let kinds: Vec<&str> = step["oneOf"].as_array().unwrap().iter().map(|s| s["required"][0].as_str().unwrap()).collect();
        assert_eq!(kinds, STEPS);
    }
    use serde_json::json;

    #[test]
    fn a_definition_compiles_to_a_flat_program_with_jumps() {
        let c = Campaign::parse(&json!({
            "trigger": {"event": "Product Added", "where": {"category": "shoes"}},
            "exit_on": ["Order Completed"], "goal": "Order Completed", "reentry": "after:7d",
            "steps": [{"wait": "1h"},
                      {"if": {"happened": "Checkout Started"},
                       "then": [{"send": {"channel": "email", "purpose": "marketing", "template": "t1"}}],
                       "else": [{"tag": "browser"}]},
                      {"set_stage": "mql"}]
        }))
        .unwrap();
        assert_eq!(c.reentry, Reentry::After(Duration::days(7)));
        assert!(matches!(c.program[0], Op::Wait(Wait::For(d)) if d == Duration::hours(1)));
        assert!(matches!(&c.program[1], Op::Branch { otherwise: 4, .. }));
        assert!(matches!(c.program[2], Op::Send(_)));
        assert_eq!(c.program[3], Op::Jump(5));
        assert_eq!(c.program[4], Op::Tag("browser".into()));
        assert_eq!(c.program[5], Op::SetStage(LifecycleStage::Mql));
        assert!(c.triggered_by("ActivityTracked", Some("Product Added"), &json!({"category": "shoes"})));
        assert!(!c.triggered_by("ActivityTracked", Some("Product Added"), &json!({"category": "hats"})));
        assert!(c.exits_on("ActivityTracked", Some("Order Completed")));
        assert_eq!(c.templates().collect::<Vec<_>>(), ["t1"]);
        let idle = Campaign::parse(&json!({"trigger": {"inactive_for": "60d"}, "steps": []})).unwrap();
        assert_eq!(idle.trigger, Trigger::InactiveFor(Duration::days(60)));
        assert!(!idle.triggered_by("ActivityTracked", Some("Product Added"), &json!({})));
    }

    #[test]
    fn bad_definitions_are_refused_with_where_and_why() {
        for (def, says) in [
            (json!([]), "JSON object"),
            (json!({"steps": []}), "trigger"),
            (json!({"trigger": "X"}), "steps"),
            (json!({"trigger": "X", "steps": [{"wait": "soon"}]}), "steps[0]"),
            (json!({"trigger": "X", "steps": [{"send": {"channel": "fax"}}]}), "steps[0]: send"),
            (json!({"trigger": "X", "steps": [{"set_stage": "boss"}]}), "lifecycle stage"),
            (json!({"trigger": "X", "steps": [{"webhook": {"url": "ftp://x"}}]}), "http"),
            (json!({"trigger": "X", "steps": [{"if": {"happened": "Y"}, "then": [{"dance": 1}]}]}), "steps[0].then[0]"),
            (json!({"trigger": "X", "reentry": "sometimes", "steps": []}), "reentry"),
            (json!({"trigger": "X", "steps": [], "colour": "red"}), "colour"),
            (json!({"trigger": {"inactive_for": "a while"}, "steps": []}), "inactive_for"),
            (json!({"trigger": {"deal_stuck_for": "21d", "event": "X"}, "steps": []}), "stands alone"),
        ] {
            let err = Campaign::parse(&def).unwrap_err().0;
            assert!(err.contains(says), "{def}: {err}");
        }
    }

    #[test]
    fn local_times_follow_the_customers_zone() {
        let now = "2026-03-10T20:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let berlin = zone(Some("Europe/Berlin"));
        // 21:00 in Berlin; 09:00 next morning there is 08:00 UTC.
        assert_eq!(next_local_time(now, berlin, NaiveTime::from_hms_opt(9, 0, 0).unwrap()).to_rfc3339(), "2026-03-11T08:00:00+00:00");
        assert_eq!(zone(Some("Mars/Olympus")), chrono_tz::UTC);
        assert_eq!(parse_duration("90s").unwrap(), Duration::seconds(90));
        assert!(parse_duration("1y").is_err());
        // Found by the fuzz target: a count too large for the clock is refused, not a panic.
        assert!(parse_duration("21212121212121d").unwrap_err().0.contains("too long"));
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
