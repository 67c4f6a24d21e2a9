//! Message templates: `{"subject", "body"}` with `{{ traits.first_name }}` placeholders,
//! rendered by minijinja. The body is HTML, so every value put into it is escaped; the subject
//! is a mail header, plain text. A missing value renders as nothing.
//!
//! Rendering is bounded, so no template can stall the engine: at most [`FUEL`] instructions
//! (minijinja's fuel: a loop's every turn costs some) and at most [`MAX_BODY_BYTES`] of body and
//! [`MAX_SUBJECT_BYTES`] of subject; past either the render fails (`template_error`, and the
//! send is suppressed with that reason). A template that runs out without any data — nested
//! loops over long ranges, say — is refused when it is saved.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// Instructions one render may run (a template of ordinary size with a few loops over a
/// customer's traits needs a few hundred).
pub const FUEL: u64 = 50_000;
/// The largest rendered body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The largest rendered subject.
pub const MAX_SUBJECT_BYTES: usize = 2 * 1024;

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
    env.set_fuel(Some(FUEL));
    env
}

/// Check a template when it is saved, so a send never meets a broken one: its syntax, and a
/// render for a customer with no data, which must stay within the bounds.
pub fn check(subject: &str, body: &str) -> Result<(), TemplateError> {
    for (what, text, html) in [("subject", subject, false), ("body", body, true)] {
        env(html).template_from_str(text).map_err(|e| TemplateError(format!("{what}: {e}")))?;
    }
    let traits = serde_json::Map::new();
    let empty = Context { id: "c", email: None, phone: None, traits: &traits, context: &Value::Null };
    render(subject, body, &empty).map(|_| ())
}

/// Render subject and body for one customer, within the bounds.
pub fn render(subject: &str, body: &str, ctx: &Context<'_>) -> Result<(String, String), TemplateError> {
    let one = |what: &str, text: &str, html: bool, max: usize| {
        let env = env(html);
        let t = env.template_from_str(text).map_err(|e| TemplateError(format!("{what}: {e}")))?;
        let mut out = Bounded { buf: Vec::new(), max, over: false };
        t.render_captured_to(ctx, &mut out).map_err(|e| {
            if out.over {
                TemplateError(format!("{what}: the rendered text is over {max} bytes"))
            } else if e.kind() == minijinja::ErrorKind::OutOfFuel {
                TemplateError(format!("{what}: rendering takes too many steps (more than {FUEL})"))
            } else {
                TemplateError(format!("{what}: {e}"))
            }
        })?;
        String::from_utf8(out.buf).map_err(|_| TemplateError(format!("{what}: not UTF-8")))
    };
    Ok((one("subject", subject, false, MAX_SUBJECT_BYTES)?, one("body", body, true, MAX_BODY_BYTES)?))
}

/// A writer that refuses to grow past `max` bytes (`over` tells that it did).
struct Bounded {
    buf: Vec<u8>,
    max: usize,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.max {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The plain-text part sent beside a rendered HTML body (mail clients that show no HTML, and
/// spam filters, expect one): tags dropped, block ends and `<br>` as line breaks, a link's
/// address kept after its text, the common entities decoded, blank runs collapsed.
pub fn plain_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    let mut href: Option<String> = None;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('>') else {
            rest = &rest[start..];
            break;
        };
        let tag = &rest[start + 1..start + len];
        rest = &rest[start + len + 1..];
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
        let closing = tag.starts_with('/');
        match name.as_str() {
            "br" => out.push('\n'),
            "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul" | "ol" | "table" if closing != (name == "li") => {
                out.push('\n')
            }
            "a" if !closing => {
                href = tag.split("href=").nth(1).map(|v| {
                    let v = v.trim_start();
                    let q = v.chars().next().filter(|c| *c == '"' || *c == '\'');
                    match q {
                        Some(q) => v[1..].split(q).next().unwrap_or_default().to_owned(),
                        None => v.split_whitespace().next().unwrap_or_default().to_owned(),
                    }
                })
            }
            "a" => {
                if let Some(h) = href.take().filter(|h| !h.is_empty()) {
                    out.push_str(&format!(" ({h})"));
                }
            }
            _ => {}
        }
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&amp;", "&");
    let mut text = String::with_capacity(decoded.len());
    let mut blank = 0;
    for line in decoded.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")) {
        if line.is_empty() {
            blank += 1;
            if blank > 1 || text.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        text.push_str(&line);
        text.push('\n');
    }
    text.trim_end().to_owned()
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

    /// Issue 17, item 9: nested loops pushed `/healthz` to 6.3 s. Rendering is bounded, and a
    /// template that cannot render within the bounds is refused when it is saved.
    #[test]
    fn rendering_is_bounded_and_a_runaway_template_is_refused_at_save() {
        let nested = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x{% endfor %}{% endfor %}{% endfor %}";
        let started = std::time::Instant::now();
        let e = check("Hi", nested).unwrap_err();
        assert!(e.0.contains("too many steps"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        // Output is bounded too: a big trait repeated within the fuel.
        let traits = json!({"blob": "y".repeat(100_000)}).as_object().unwrap().clone();
        let ctx = Context { id: "c1", email: None, phone: None, traits: &traits, context: &Value::Null };
        let e = render("Hi", "{% for i in range(10) %}{{ traits.blob }}{% endfor %}", &ctx).unwrap_err();
        assert!(e.0.contains("over"), "{e}");
        assert!(render("{{ traits.blob }}", "ok", &ctx).unwrap_err().0.starts_with("subject"));
        // An ordinary template with a loop over the data renders.
        let traits = json!({"items": ["a", "b"]}).as_object().unwrap().clone();
        let ctx = Context { id: "c1", email: None, phone: None, traits: &traits, context: &Value::Null };
        let (_, b) = render("Hi", "{% for i in traits.items %}<li>{{ i }}</li>{% endfor %}", &ctx).unwrap();
        assert_eq!(b, "<li>a</li><li>b</li>");
    }

    #[test]
    fn the_plain_text_part_keeps_the_words_lines_and_links() {
        let html = "<h1>Hello Ada</h1><p>Your plan: <b>pro</b> &amp; more.<br>See <a href=\"https://ex.com/x?a=1&amp;b=2\">your account</a>.</p>\n\n\n<ul><li>one</li><li>two</li></ul>";
        assert_eq!(plain_text(html), "Hello Ada\nYour plan: pro & more.\nSee your account (https://ex.com/x?a=1&b=2).\n\none\ntwo");
        assert_eq!(plain_text("no tags &lt;here&gt;"), "no tags <here>");
        assert_eq!(plain_text("cut <b"), "cut <b");
    }
}
