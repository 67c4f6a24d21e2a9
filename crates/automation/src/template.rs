//! Message templates: `{"subject", "body"}` with `{{ traits.first_name }}` placeholders,
//! rendered by minijinja. The body is HTML, so every value put into it is escaped; the subject
//! is a mail header, plain text. A missing value renders as nothing.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// What a template can refer to.
#[derive(Serialize)]
pub struct Context<'a> {
    pub id: &'a str,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub traits: &'a serde_json::Map<String, Value>,
    /// What started the enrolment (e.g. `context.deal.name`); null when nothing.
    pub context: &'a Value,
}

fn env(html: bool) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(move |_| if html { minijinja::AutoEscape::Html } else { minijinja::AutoEscape::None });
    env
}

/// Check a template's syntax (when it is saved, so a send never meets a broken one).
pub fn check(subject: &str, body: &str) -> Result<(), TemplateError> {
    for (what, text, html) in [("subject", subject, false), ("body", body, true)] {
        env(html).template_from_str(text).map_err(|e| TemplateError(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// Render subject and body for one customer.
pub fn render(subject: &str, body: &str, ctx: &Context<'_>) -> Result<(String, String), TemplateError> {
    let one = |text: &str, html: bool| {
        let env = env(html);
        let t = env.template_from_str(text).map_err(|e| TemplateError(e.to_string()))?;
        t.render(ctx).map_err(|e| TemplateError(e.to_string()))
    };
    Ok((one(subject, false)?, one(body, true)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_render_and_the_body_escapes_html() {
        let traits = json!({"first_name": "Ada <b>", "plan": "pro"}).as_object().unwrap().clone();
        let ctx = Context { id: "c1", email: Some("ada@example.com"), phone: None, traits: &traits, context: &Value::Null };
        let (s, b) = render("Hi {{ traits.first_name }}", "<p>Hello {{ traits.first_name }} ({{ email }}){{ traits.missing }}</p>", &ctx).unwrap();
        assert_eq!(s, "Hi Ada <b>");
        assert_eq!(b, "<p>Hello Ada &lt;b&gt; (ada@example.com)</p>");
        assert!(check("Hi {{ traits.first_name", "x").unwrap_err().0.starts_with("subject"));
        assert!(check("ok", "{% if %}").unwrap_err().0.starts_with("body"));
    }
}
