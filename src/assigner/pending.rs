//! In-flight requests, keyed by correlation id.
//!
//! A handler registers its request here *before* publishing it, so a fast reply always finds
//! its taker. Whatever reply cannot be handed out — a duplicate, one that comes after the
//! deadline, one whose client went away — is an assigned slot nobody will use: it goes to the
//! release queue so the slot is given back at once instead of waiting for its lease to run out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::protocol::{AssignReply, RenewReply, decode};

/// Why a waiting request got no reply: the broker connection it was published on is gone, so
/// its reply (if any) can never arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lost;

type Outcome<T> = Result<T, Lost>;

pub(crate) enum Waiter {
    Acquire(oneshot::Sender<Outcome<AssignReply>>),
    Renew(oneshot::Sender<Outcome<RenewReply>>),
}

struct Entry {
    /// The broker session the request was published on.
    epoch: u64,
    waiter: Waiter,
}

/// The table of in-flight requests.
pub(crate) struct Pending {
    entries: Mutex<HashMap<Uuid, Entry>>,
    releases: mpsc::UnboundedSender<AssignReply>,
}

/// A reply kind that a [`Ticket`] can wait for.
pub(crate) trait Reply: Sized + Send + 'static {
    fn waiter(tx: oneshot::Sender<Outcome<Self>>) -> Waiter;
    /// What to do with a reply that arrived but has no taker.
    fn abandon(self, pending: &Pending);
}

impl Reply for AssignReply {
    fn waiter(tx: oneshot::Sender<Outcome<Self>>) -> Waiter {
        Waiter::Acquire(tx)
    }
    fn abandon(self, pending: &Pending) {
        pending.release(self);
    }
}

impl Reply for RenewReply {
    fn waiter(tx: oneshot::Sender<Outcome<Self>>) -> Waiter {
        Waiter::Renew(tx)
    }
    /// A late renew answer changes nothing: the lease was extended or it was not.
    fn abandon(self, _pending: &Pending) {}
}

impl Pending {
    /// An empty table, and the receiving end of its release queue.
    pub(crate) fn new() -> (Arc<Pending>, mpsc::UnboundedReceiver<AssignReply>) {
        let (releases, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Pending {
                entries: Mutex::new(HashMap::new()),
                releases,
            }),
            rx,
        )
    }

    /// Registers request `id`, published on session `epoch`. Dropping the ticket unregisters
    /// it (and releases a reply that raced in).
    pub(crate) fn register<T: Reply>(self: &Arc<Self>, id: Uuid, epoch: u64) -> Ticket<T> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            id,
            Entry {
                epoch,
                waiter: T::waiter(tx),
            },
        );
        Ticket {
            id,
            rx,
            pending: Arc::clone(self),
        }
    }

    /// Hands a reply from the reply queue to its waiting request, or releases it.
    pub(crate) fn deliver(&self, correlation_id: Option<&str>, body: &[u8]) {
        let entry = correlation_id
            .and_then(|c| Uuid::parse_str(c).ok())
            .and_then(|id| self.lock().remove(&id));
        match entry {
            Some(Entry {
                waiter: Waiter::Acquire(tx),
                ..
            }) => match decode::<AssignReply>(body) {
                Ok(reply) => {
                    if let Err(Ok(reply)) = tx.send(Ok(reply)) {
                        reply.abandon(self);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "unreadable assign reply; ignored"),
            },
            Some(Entry {
                waiter: Waiter::Renew(tx),
                ..
            }) => match decode::<RenewReply>(body) {
                Ok(reply) => {
                    let _ = tx.send(Ok(reply));
                }
                Err(err) => tracing::warn!(error = %err, "unreadable renew reply; ignored"),
            },
            // Nobody waits: if it hands out a slot, give the slot back.
            None => {
                if let Ok(reply) = decode::<AssignReply>(body) {
                    tracing::info!(slot = %reply.slot, request_id = %reply.request_id,
                        "reply nobody is waiting for (duplicate, late or abandoned); releasing its slot");
                    self.release(reply);
                }
            }
        }
    }

    /// Answers every request published on a session up to `epoch` with [`Lost`].
    pub(crate) fn fail_through(&self, epoch: u64) {
        let lost: Vec<Entry> = {
            let mut entries = self.lock();
            let ids: Vec<Uuid> = entries
                .iter()
                .filter(|(_, e)| e.epoch <= epoch)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| entries.remove(id)).collect()
        };
        for entry in lost {
            match entry.waiter {
                Waiter::Acquire(tx) => {
                    let _ = tx.send(Err(Lost));
                }
                Waiter::Renew(tx) => {
                    let _ = tx.send(Err(Lost));
                }
            }
        }
    }

    /// How many acquires are waiting for a slot (the tests' view; the metric counts the
    /// handlers' waits per pool).
    #[cfg(test)]
    pub(crate) fn waiting_acquires(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| matches!(e.waiter, Waiter::Acquire(_)))
            .count()
    }

    pub(crate) fn release(&self, reply: AssignReply) {
        // The receiver lives as long as the assigner; once it is gone nobody can release
        // anything and the lease bounds the loss.
        let _ = self.releases.send(reply);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A registered request waiting for its reply.
pub(crate) struct Ticket<T: Reply> {
    id: Uuid,
    rx: oneshot::Receiver<Outcome<T>>,
    pending: Arc<Pending>,
}

impl<T: Reply> Ticket<T> {
    /// Waits for the reply; [`Lost`] when the session it was published on is gone.
    pub(crate) async fn reply(&mut self) -> Outcome<T> {
        (&mut self.rx).await.unwrap_or(Err(Lost))
    }
}

impl<T: Reply> Drop for Ticket<T> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
        // Closing first means a reply sent from now on bounces back to `deliver`, which
        // releases it; one that got in before is released here.
        self.rx.close();
        if let Ok(Ok(reply)) = self.rx.try_recv() {
            reply.abandon(&self.pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PROTOCOL_VERSION, encode};

    fn reply(id: Uuid, slot: &str) -> AssignReply {
        AssignReply {
            v: PROTOCOL_VERSION,
            request_id: id,
            slot: slot.into(),
            pool: "p".into(),
            lease_token: "t".into(),
            lease_expires: chrono::Utc::now(),
            resource: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn first_reply_is_handed_out_and_duplicates_released() {
        let (pending, mut releases) = Pending::new();
        let id = Uuid::new_v4();
        let mut ticket = pending.register::<AssignReply>(id, 1);
        let key = id.to_string();
        pending.deliver(Some(&key), &encode(&reply(id, "a")));
        pending.deliver(Some(&key), &encode(&reply(id, "b")));
        assert_eq!(ticket.reply().await.unwrap().slot, "a");
        assert_eq!(releases.try_recv().unwrap().slot, "b");
        assert_eq!(pending.waiting_acquires(), 0, "answered: no longer waiting");
        drop(ticket);
        assert!(
            releases.try_recv().is_err(),
            "the handed-out reply is not released"
        );
    }

    #[tokio::test]
    async fn reply_to_a_dropped_ticket_is_released() {
        let (pending, mut releases) = Pending::new();
        let id = Uuid::new_v4();
        let ticket = pending.register::<AssignReply>(id, 1);
        drop(ticket);
        pending.deliver(Some(&id.to_string()), &encode(&reply(id, "late")));
        assert_eq!(releases.try_recv().unwrap().slot, "late");
    }

    #[tokio::test]
    async fn reply_received_but_never_read_is_released_on_drop() {
        let (pending, mut releases) = Pending::new();
        let id = Uuid::new_v4();
        let ticket = pending.register::<AssignReply>(id, 1);
        pending.deliver(Some(&id.to_string()), &encode(&reply(id, "raced")));
        drop(ticket);
        assert_eq!(releases.try_recv().unwrap().slot, "raced");
    }

    #[tokio::test]
    async fn losing_a_session_fails_its_requests_only() {
        let (pending, _releases) = Pending::new();
        let mut old = pending.register::<AssignReply>(Uuid::new_v4(), 1);
        let _new = pending.register::<AssignReply>(Uuid::new_v4(), 2);
        pending.fail_through(1);
        assert_eq!(old.reply().await.unwrap_err(), Lost);
        assert_eq!(pending.waiting_acquires(), 1);
    }
}
