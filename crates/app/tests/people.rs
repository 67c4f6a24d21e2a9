//! People, sessions and the newest-first timeline the web UI reads, over the embedded store:
//! a person signs in with their password (not another's, not when deactivated), a session ends
//! with a sign-out or a revoked key, an e-mail has one account per tenant; the timeline pages
//! newest first across a customer's own and anonymous streams, each event once.

use chronicle_app::app::SignInError;
use chronicle_app::App;
use chronicle_core::customer::CustomerCommand;
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_projections::Role;
use chronicle_store::log::LogStore;
use serde_json::json;
use std::sync::Arc;

async fn app(dir: &std::path::Path) -> (Arc<App>, String) {
    let app = App::start(Arc::new(LogStore::open(dir).unwrap()), None).await.unwrap();
    let (key, _) = app.create_tenant("acme").await.unwrap();
    (app, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_sign_in_and_sessions_end() {
    let dir = tempfile::tempdir().unwrap();
    let (app, key) = app(dir.path()).await;
    let pw = "correct horse battery";
    let ada = app.create_user("acme", "Ada", "Ada@Example.com", Role::Writer, pw, "test").await.unwrap();
    assert_eq!(ada.email, "ada@example.com");
    // One account per address in a tenant; bad input changes nothing.
    assert!(app.create_user("acme", "Ada again", "ada@example.com", Role::Reader, pw, "test").await.is_err());
    assert!(app.create_user("acme", "Short", "s@example.com", Role::Reader, "short", "test").await.is_err());
    assert!(app.create_user("acme", "Ingest", "i@example.com", Role::Ingest, pw, "test").await.is_err());
    assert!(app.create_user("nope", "X", "x@example.com", Role::Reader, pw, "test").await.is_err());
    assert_eq!(app.users("acme").len(), 1);

    assert!(matches!(app.sign_in("acme", "ada@example.com", "wrong password!", None).await, Err(SignInError::Wrong)));
    assert!(matches!(app.sign_in("acme", "nobody@example.com", pw, None).await, Err(SignInError::Wrong)));
    assert!(matches!(app.sign_in("other", "ada@example.com", pw, None).await, Err(SignInError::Wrong)));
    let (token, session) = app.sign_in("acme", "ADA@example.com", pw, None).await.unwrap();
    assert_eq!(session.actor, "user:ada@example.com");
    let signed = app.session(&token).expect("the session is valid");
    assert_eq!((signed.role, signed.name.as_str()), (Role::Writer, "Ada"));
    assert!(app.session("cs_not-a-token").is_none());

    // Deactivated: the session no longer opens, and no new one starts.
    app.set_user_active("acme", &ada.id, false, "test").await.unwrap();
    assert!(app.session(&token).is_none());
    assert!(matches!(app.sign_in("acme", "ada@example.com", pw, None).await, Err(SignInError::Wrong)));
    app.set_user_active("acme", &ada.id, true, "test").await.unwrap();
    assert!(app.session(&token).is_some());
    app.sign_out(&token).await.unwrap();
    assert!(app.session(&token).is_none(), "signed out");

    // Too many wrong passwords: refused for a while, the right one too.
    for _ in 0..5 {
        let _ = app.sign_in("acme", "ada@example.com", "wrong password!", None).await;
    }
    assert!(matches!(app.sign_in("acme", "ada@example.com", pw, None).await, Err(SignInError::TooMany(_))));

    // An API key's session lasts while the key does.
    let (record, made) = app.create_api_key("acme", Role::Reader, None, "test").await.unwrap();
    let (t, _) = app.sign_in_with_key(&made).await.unwrap();
    assert_eq!(app.session(&t).unwrap().role, Role::Reader);
    app.revoke_api_key("acme", &record.id, "test").await.unwrap();
    assert!(app.session(&t).is_none(), "the key is revoked");
    let (t, _) = app.sign_in_with_key(&key).await.unwrap();
    assert_eq!(app.session(&t).unwrap().role, Role::Admin, "the tenant's first key");
    assert!(matches!(app.sign_in_with_key("ck_nope").await, Err(SignInError::UnknownKey)));

    // Sessions expire: twelve hours after the sign-in, as the app's clock tells.
    let clock = Arc::new(chronicle_app::clock::ManualClock::new(chrono::Utc::now()));
    assert!(app.set_clock(clock.clone()));
    let (late, _) = app.sign_in_with_key(&key).await.unwrap();
    clock.advance(chrono::Duration::hours(11));
    assert!(app.session(&late).is_some());
    clock.advance(chrono::Duration::hours(2));
    assert!(app.session(&late).is_none(), "expired");
    // A rebuild from the log knows the same people and sessions.
    let fresh = App::start(app.store().clone(), None).await.unwrap();
    assert_eq!(fresh.users("acme"), app.users("acme"));
    assert_eq!(fresh.views().sessions, app.views().sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_pages_newest_first_across_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(dir.path()).await;
    let cmd = CustomerCommand::Register { email: None, phone: None, traits: Default::default(), consents: vec![] };
    app.customer_command("acme", "c1", cmd, "test").await.unwrap();
    for i in 0..120 {
        // Tags on the customer's stream, pages on an anonymous one linked later.
        if i % 3 == 0 {
            let ev = NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", json!({"kind": "page", "name": format!("p{i}")}), chrono::Utc::now());
            app.append("acme", "anonymous-a1", ExpectedVersion::Any, vec![ev]).await.unwrap();
        } else {
            app.customer_command("acme", "c1", CustomerCommand::Tag { tag: format!("t{i}") }, "test").await.unwrap();
        }
    }
    app.customer_command("acme", "c1", CustomerCommand::LinkIdentity { anonymous_id: "a1".into() }, "test").await.unwrap();
    let all = app.timeline("acme", "c1", 0, 1000, None, &[]).await.unwrap().events;
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let (page, more) = app.timeline_newest("acme", "c1", before, 25, None, &[]).await.unwrap();
        assert!(page.len() <= 25);
        assert!(page.windows(2).all(|w| w[0].position > w[1].position), "newest first");
        seen.extend(page.iter().map(|e| e.position));
        match more {
            Some(p) => before = Some(p),
            None => break,
        }
    }
    let mut want: Vec<u64> = all.iter().map(|e| e.position).collect();
    want.reverse();
    assert_eq!(seen, want, "every event once, newest first, across both streams");
    // A type filter reaches past pages without matches.
    let (tags, _) = app.timeline_newest("acme", "c1", None, 5, None, &["CustomerRegistered".to_owned()]).await.unwrap();
    assert_eq!(tags.len(), 1);
}
