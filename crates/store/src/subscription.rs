//! A live subscription to the global log: catches up from a position by paging through
//! `read_all`, then follows the head. Because every delivery is a read by position from the
//! store itself (the head watch only wakes the reader), there is no gap and no duplicate at
//! the switch from catch-up to live.

use crate::event_store::{EventStore, ReadError};
use chronicle_core::envelope::EventEnvelope;
use std::collections::VecDeque;
use std::sync::Arc;

const PAGE: usize = 1000;

pub struct Subscription {
    store: Arc<dyn EventStore>,
    after: u64,
    buffer: VecDeque<EventEnvelope>,
    head: tokio::sync::watch::Receiver<u64>,
}

impl Subscription {
    /// Deliver every event with `position > after`, then every event committed later.
    pub fn new(store: Arc<dyn EventStore>, after: u64) -> Self {
        let head = store.head_watch();
        Subscription { store, after, buffer: VecDeque::new(), head }
    }

    /// The position of the last event handed out.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next event; waits for one when caught up. `Ok(None)` only when the store is gone.
    pub async fn next(&mut self) -> Result<Option<EventEnvelope>, ReadError> {
        loop {
            if let Some(ev) = self.buffer.pop_front() {
                self.after = ev.position;
                return Ok(Some(ev));
            }
            // Mark the current head as seen before reading, so a commit that lands after the
            // read below still wakes us.
            self.head.borrow_and_update();
            let page = self.store.read_all(self.after, PAGE).await?;
            if !page.is_empty() {
                self.buffer.extend(page);
                continue;
            }
            if self.head.changed().await.is_err() {
                return Ok(None);
            }
        }
    }
}
