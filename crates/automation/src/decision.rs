//! The send decision: may this message go to this customer now, on which channel — and if not,
//! why. The checks run in a fixed order and the first refusal is the recorded reason:
//!
//! 1. the customer is erased, deactivated or merged away → suppressed;
//! 2. consent for the channel and purpose, read from the consent view the commit path keeps
//!    current (so a revocation committed before the decision always wins), trying the step's
//!    channels in the customer's preferred order → suppressed when none is allowed (or has no
//!    address to send to);
//! 3. quiet hours in the customer's time zone → deferred to their end (marketing only: a
//!    receipt or a password reset is not held back);
//! 4. the frequency cap per channel and window → suppressed (marketing only).

use crate::campaign::{parse_duration, zone, SendSpec};
use chronicle_core::customer::{Channel, ConsentDecision, CustomerStatus, Preferences, Purpose};
use chrono::{DateTime, Duration, NaiveTime, Utc};

/// What the decision reads about the customer.
pub struct Recipient<'a> {
    pub status: CustomerStatus,
    pub email: Option<&'a str>,
    /// The e-mail address hard-bounced: it is not mailed again.
    pub email_bounced: bool,
    pub phone: Option<&'a str>,
    pub preferences: &'a Preferences,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Send { channel: Channel },
    Defer { channel: Channel, until: DateTime<Utc> },
    Suppress { channel: Channel, reason: String },
}

/// Decide. `consent` answers from the consent view; `sent_since(channel, t)` counts the
/// messages queued for the customer on the channel since `t`.
pub fn decide(
    spec: &SendSpec,
    r: &Recipient<'_>,
    consent: impl Fn(Channel, Purpose) -> ConsentDecision,
    sent_since: impl Fn(Channel, DateTime<Utc>) -> usize,
    now: DateTime<Utc>,
) -> Decision {
    let first = spec.channel;
    match r.status {
        CustomerStatus::Erased => return suppress(first, "erased"),
        CustomerStatus::Deactivated => return suppress(first, "deactivated"),
        CustomerStatus::Merged => return suppress(first, "merged"),
        CustomerStatus::Active => {}
    }
    let mut channels: Vec<Channel> = spec.channels().collect();
    if let Some(preferred) = &r.preferences.preferred_channels {
        // The customer's order first, then the step's own order for the rest.
        channels.sort_by_key(|c| preferred.iter().position(|p| p == c).unwrap_or(usize::MAX));
    }
    let mut refusal: Option<String> = None;
    let mut chosen = None;
    for c in channels {
        let d = consent(c, spec.purpose);
        if !d.allowed {
            refusal.get_or_insert_with(|| d.reason.to_owned());
            continue;
        }
        if c == Channel::Email && r.email_bounced {
            refusal.get_or_insert_with(|| "address_bounced".to_owned());
            continue;
        }
        let addressed = match c {
            Channel::Email => r.email.is_some(),
            Channel::Sms | Channel::Phone => r.phone.is_some(),
            Channel::Push | Channel::InApp => true,
        };
        if !addressed {
            refusal.get_or_insert_with(|| format!("no_{}_address", channel_name(c)));
            continue;
        }
        chosen = Some(c);
        break;
    }
    let Some(channel) = chosen else {
        return suppress(first, refusal.as_deref().unwrap_or("no_consent"));
    };
    if spec.purpose == Purpose::Transactional {
        return Decision::Send { channel };
    }
    let tz = zone(r.preferences.time_zone.as_deref());
    if let Some(q) = &r.preferences.quiet_hours {
        if let (Ok(start), Ok(end)) = (hhmm(&q.start), hhmm(&q.end)) {
            let local = now.with_timezone(&tz).time();
            let quiet = if start <= end { local >= start && local < end } else { local >= start || local < end };
            if quiet {
                return Decision::Defer { channel, until: crate::campaign::next_local_time(now, tz, end) };
            }
        }
    }
    if let Some(cap) = &r.preferences.frequency_cap {
        let window = parse_duration(&cap.per).unwrap_or(Duration::days(1));
        if sent_since(channel, now - window) >= cap.max as usize {
            return suppress(channel, "frequency_cap");
        }
    }
    Decision::Send { channel }
}

fn suppress(channel: Channel, reason: &str) -> Decision {
    Decision::Suppress { channel, reason: reason.to_owned() }
}

/// A time of day, `HH:MM` or `HH:MM:SS`.
pub fn hhmm(s: &str) -> Result<NaiveTime, chrono::ParseError> {
    NaiveTime::parse_from_str(s, "%H:%M").or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
}

/// Check preferences before they are recorded: the decision above must be able to read them.
pub fn check_preferences(p: &Preferences) -> Result<(), String> {
    if let Some(q) = &p.quiet_hours {
        for (what, t) in [("start", &q.start), ("end", &q.end)] {
            hhmm(t).map_err(|_| format!("quiet_hours.{what} must be a time of day, HH:MM: {t:?}"))?;
        }
    }
    if let Some(tz) = &p.time_zone {
        tz.parse::<chrono_tz::Tz>().map_err(|_| format!("time_zone {tz:?} is not an IANA time zone such as Europe/Lisbon"))?;
    }
    if let Some(cap) = &p.frequency_cap {
        parse_duration(&cap.per).map_err(|e| format!("frequency_cap.per: {e}"))?;
        if cap.max == 0 {
            return Err("frequency_cap.max must be at least 1 (revoke consent to send nothing)".into());
        }
    }
    Ok(())
}

pub fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::Email => "email",
        Channel::Sms => "sms",
        Channel::Push => "push",
        Channel::InApp => "in_app",
        Channel::Phone => "phone",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_core::customer::{FrequencyCap, QuietHours};

    fn spec(purpose: Purpose) -> SendSpec {
        SendSpec { channel: Channel::Email, purpose, template: "t".into(), fallback: vec![Channel::Sms], to: None }
    }
    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }
    fn allow(allowed: &[Channel]) -> impl Fn(Channel, Purpose) -> ConsentDecision + '_ {
        move |c, _| ConsentDecision { allowed: allowed.contains(&c), reason: if allowed.contains(&c) { "granted" } else { "no_consent" } }
    }

    #[test]
    fn each_check_refuses_in_its_order() {
        let prefs = Preferences::default();
        let mut r = Recipient { status: CustomerStatus::Erased, email: Some("a@x"), email_bounced: false, phone: Some("+1"), preferences: &prefs };
        let now = at("2026-05-01T12:00:00Z");
        let none = |_, _| 0;
        // Erased wins over everything, even consent.
        assert_eq!(decide(&spec(Purpose::Marketing), &r, allow(&[Channel::Email]), none, now), suppress(Channel::Email, "erased"));
        r.status = CustomerStatus::Deactivated;
        assert_eq!(decide(&spec(Purpose::Marketing), &r, allow(&[Channel::Email]), none, now), suppress(Channel::Email, "deactivated"));
        r.status = CustomerStatus::Active;
        assert_eq!(decide(&spec(Purpose::Marketing), &r, allow(&[]), none, now), suppress(Channel::Email, "no_consent"));
        // Falls back to the next allowed channel.
        assert_eq!(decide(&spec(Purpose::Marketing), &r, allow(&[Channel::Sms]), none, now), Decision::Send { channel: Channel::Sms });
        // A hard-bounced address is not mailed again; SMS is the fallback.
        r.email_bounced = true;
        assert_eq!(decide(&spec(Purpose::Marketing), &r, allow(&[Channel::Email, Channel::Sms]), none, now), Decision::Send { channel: Channel::Sms });
        assert_eq!(decide(&spec(Purpose::Marketing), &r, allow(&[Channel::Email]), none, now), suppress(Channel::Email, "address_bounced"));
        r.email_bounced = false;
        // No address for the only allowed channel.
        r.phone = None;
        assert_eq!(
            decide(&spec(Purpose::Marketing), &r, allow(&[Channel::Sms]), none, now),
            suppress(Channel::Email, "no_consent")
        );
    }

    #[test]
    fn preference_orders_channels_quiet_hours_defer_and_the_cap_suppresses() {
        let prefs = Preferences {
            preferred_channels: Some(vec![Channel::Sms]),
            quiet_hours: Some(QuietHours { start: "22:00".into(), end: "08:00".into() }),
            time_zone: Some("Europe/Berlin".into()),
            frequency_cap: Some(FrequencyCap { max: 2, per: "1d".into() }),
        };
        let r = Recipient { status: CustomerStatus::Active, email: Some("a@x"), email_bounced: false, phone: Some("+1"), preferences: &prefs };
        let both = allow(&[Channel::Email, Channel::Sms]);
        let noon = at("2026-05-01T10:00:00Z");
        assert_eq!(decide(&spec(Purpose::Marketing), &r, &both, |_, _| 0, noon), Decision::Send { channel: Channel::Sms });
        // 23:30 in Berlin (21:30 UTC in summer): deferred to 08:00 Berlin = 06:00 UTC.
        let night = at("2026-05-01T21:30:00Z");
        assert_eq!(
            decide(&spec(Purpose::Marketing), &r, &both, |_, _| 0, night),
            Decision::Defer { channel: Channel::Sms, until: at("2026-05-02T06:00:00Z") }
        );
        // Transactional messages are not held back by quiet hours or the cap.
        assert_eq!(decide(&spec(Purpose::Transactional), &r, &both, |_, _| 9, night), Decision::Send { channel: Channel::Sms });
        assert_eq!(decide(&spec(Purpose::Marketing), &r, &both, |_, _| 2, noon), suppress(Channel::Sms, "frequency_cap"));
        assert_eq!(decide(&spec(Purpose::Marketing), &r, &both, |_, _| 1, noon), Decision::Send { channel: Channel::Sms });
    }

    #[test]
    fn preferences_are_checked_before_they_are_recorded() {
        let mut p = Preferences { time_zone: Some("Europe/Lisbon".into()), ..Default::default() };
        assert!(check_preferences(&p).is_ok());
        p.quiet_hours = Some(QuietHours { start: "22:00:30".into(), end: "7am".into() });
        assert!(check_preferences(&p).unwrap_err().contains("quiet_hours.end"));
        p.quiet_hours = None;
        p.time_zone = Some("Lisbon".into());
        assert!(check_preferences(&p).unwrap_err().contains("IANA"));
        p.time_zone = None;
        p.frequency_cap = Some(FrequencyCap { max: 3, per: "fortnight".into() });
        assert!(check_preferences(&p).unwrap_err().contains("frequency_cap.per"));
    }
}
