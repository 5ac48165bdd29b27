//! Live delivery: who is connected, to which conversations, and the fan-out of events to them.
//!
//! Every connection (a WebSocket or an event stream) owns one bounded queue. Message events
//! carry the conversation's sequence number, so a connection tells a gap (read the missing
//! messages from SQLite) from a duplicate (drop it); the hub itself never has to be lossless.
//! A connection whose queue is full is cut off rather than waited for: its client reconnects
//! and resumes from its last sequence number, and nobody else is slowed down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::protocol::ServerEvent;

/// Events a connection may have waiting before it counts as too slow and is cut off.
pub const QUEUE: usize = 256;

/// One event, serialised once for every recipient.
#[derive(Debug)]
pub struct Event {
    pub conversation_id: Option<String>,
    /// Message events: the message's sequence number.
    pub seq: Option<i64>,
    /// The connection it came from, which does not get it back (typing, receipts).
    pub from: Option<u64>,
    /// Its `type`, the event name on an event stream.
    pub name: &'static str,
    /// As the team sees it.
    pub json: String,
    /// What end users see of it.
    pub for_visitors: ForVisitors,
}

/// End users never see how an answer was made (retrieved passages, the raw answer, timings).
/// Deltas are checked sentences (see `delivery`), so they see those as they come.
#[derive(Debug)]
pub enum ForVisitors {
    Same,
    Redacted(String),
}

impl Event {
    pub fn new(event: &ServerEvent) -> Event {
        let (conversation_id, seq) = match event {
            ServerEvent::Message { message } => {
                (Some(message.conversation_id.clone()), Some(message.seq))
            }
            other => (other.conversation_id().map(str::to_string), None),
        };
        let for_visitors = match event {
            ServerEvent::Message { message } if message.stats.is_some() => {
                let redacted = ServerEvent::Message {
                    message: message.clone().without_stats(),
                };
                ForVisitors::Redacted(serde_json::to_string(&redacted).expect("events serialise"))
            }
            _ => ForVisitors::Same,
        };
        Event {
            conversation_id,
            seq,
            from: None,
            name: event.name(),
            json: serde_json::to_string(event).expect("events serialise"),
            for_visitors,
        }
    }

    /// The event as `participant` may see it, or `None` when it is not for them.
    pub fn json_for(&self, visitor: bool) -> Option<&str> {
        match (&self.for_visitors, visitor) {
            (_, false) | (ForVisitors::Same, true) => Some(&self.json),
            (ForVisitors::Redacted(json), true) => Some(json),
        }
    }

    pub fn from_connection(mut self, connection: Option<u64>) -> Event {
        self.from = connection;
        self
    }
}

/// Who holds a connection.
#[derive(Debug, Clone)]
pub enum Participant {
    Visitor { visitor_id: String },
    Staff,
}

/// Who receives a published event besides the conversation's followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Only connections following the conversation.
    Followers,
    /// Followers and every staff connection of the tenant (their inbox changes).
    FollowersAndStaff,
}

type Sender = mpsc::Sender<Arc<Event>>;

/// The registry of live connections. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    registry: Arc<Mutex<Registry>>,
    next_id: Arc<AtomicU64>,
}

#[derive(Default)]
struct Registry {
    tenants: HashMap<String, Room>,
    /// conversation id → followers.
    conversations: HashMap<String, HashMap<u64, Sender>>,
    connections: HashMap<u64, Entry>,
}

/// A tenant's connections.
#[derive(Default)]
struct Room {
    visitors: HashMap<u64, Sender>,
    /// visitor id → open connections, for "is the end user online".
    visitors_online: HashMap<String, u32>,
    staff: HashMap<u64, Sender>,
}

struct Entry {
    tenant_id: String,
    participant: Participant,
    following: HashSet<String>,
}

/// A registered connection; dropping it unregisters it.
pub struct Connection {
    pub id: u64,
    pub events: mpsc::Receiver<Arc<Event>>,
    hub: Hub,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain maps behind, which stay usable.
        self.registry
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Registers a connection of the tenant. The first staff connection tells the tenant's end
    /// users that a person is online; an end user's first connection tells the staff.
    pub fn connect(&self, tenant_id: &str, participant: Participant) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, events) = mpsc::channel(QUEUE);
        let mut registry = self.lock();
        let room = registry.tenants.entry(tenant_id.to_string()).or_default();
        match &participant {
            Participant::Staff => {
                room.staff.insert(id, sender);
                if room.staff.len() == 1 {
                    let event = Arc::new(Event::new(&ServerEvent::Presence { staff_online: true }));
                    let cut = fan_out(room.visitors.iter(), &event, None);
                    registry.cut_off(cut);
                }
            }
            Participant::Visitor { visitor_id } => {
                room.visitors.insert(id, sender);
                let count = room.visitors_online.entry(visitor_id.clone()).or_default();
                *count += 1;
                if *count == 1 {
                    let event = Arc::new(Event::new(&ServerEvent::VisitorPresence {
                        visitor_id: visitor_id.clone(),
                        online: true,
                    }));
                    let cut = fan_out(room.staff.iter(), &event, None);
                    registry.cut_off(cut);
                }
            }
        }
        registry.connections.insert(
            id,
            Entry {
                tenant_id: tenant_id.to_string(),
                participant,
                following: HashSet::new(),
            },
        );
        metrics::gauge!("companero_live_connections").increment(1.0);
        Connection {
            id,
            events,
            hub: self.clone(),
        }
    }

    /// Sends the connection the conversation's events from now on.
    pub fn follow(&self, connection: &Connection, conversation_id: &str) {
        let mut registry = self.lock();
        let Some(sender) = registry.sender_of(connection.id) else {
            return;
        };
        let Some(entry) = registry.connections.get_mut(&connection.id) else {
            return;
        };
        entry.following.insert(conversation_id.to_string());
        registry
            .conversations
            .entry(conversation_id.to_string())
            .or_default()
            .insert(connection.id, sender);
    }

    /// Delivers the event to the conversation's followers (and the tenant's staff).
    pub fn publish(&self, tenant_id: &str, event: Event, audience: Audience) {
        let event = Arc::new(event);
        let mut registry = self.lock();
        let mut recipients: HashMap<u64, Sender> = HashMap::new();
        if let Some(followers) = event
            .conversation_id
            .as_ref()
            .and_then(|id| registry.conversations.get(id))
        {
            recipients.extend(followers.iter().map(|(id, s)| (*id, s.clone())));
        }
        if audience == Audience::FollowersAndStaff
            && let Some(room) = registry.tenants.get(tenant_id)
        {
            recipients.extend(room.staff.iter().map(|(id, s)| (*id, s.clone())));
        }
        let cut = fan_out(recipients.iter(), &event, event.from);
        registry.cut_off(cut);
    }

    /// Whether a person of the team is connected.
    pub fn is_staff_online(&self, tenant_id: &str) -> bool {
        self.lock()
            .tenants
            .get(tenant_id)
            .is_some_and(|room| !room.staff.is_empty())
    }

    pub fn is_visitor_online(&self, tenant_id: &str, visitor_id: &str) -> bool {
        self.lock()
            .tenants
            .get(tenant_id)
            .is_some_and(|room| room.visitors_online.contains_key(visitor_id))
    }

    /// Live connections, all tenants together.
    pub fn connection_count(&self) -> usize {
        self.lock().connections.len()
    }

    fn remove(&self, id: u64) {
        let mut registry = self.lock();
        if registry.connections.contains_key(&id) {
            registry.cut_off(vec![id]);
        }
    }
}

impl Registry {
    fn sender_of(&self, id: u64) -> Option<Sender> {
        let entry = self.connections.get(&id)?;
        let room = self.tenants.get(&entry.tenant_id)?;
        match entry.participant {
            Participant::Staff => room.staff.get(&id).cloned(),
            Participant::Visitor { .. } => room.visitors.get(&id).cloned(),
        }
    }

    /// Forgets connections: their queues close, so their sessions end (and clients resume).
    /// Presence changes that follow are announced.
    fn cut_off(&mut self, ids: Vec<u64>) {
        let mut pending = ids;
        while let Some(id) = pending.pop() {
            let Some(entry) = self.connections.remove(&id) else {
                continue;
            };
            metrics::gauge!("companero_live_connections").decrement(1.0);
            for conversation in &entry.following {
                if let Some(followers) = self.conversations.get_mut(conversation) {
                    followers.remove(&id);
                    if followers.is_empty() {
                        self.conversations.remove(conversation);
                    }
                }
            }
            let Some(room) = self.tenants.get_mut(&entry.tenant_id) else {
                continue;
            };
            let announcement = match entry.participant {
                Participant::Staff => {
                    room.staff.remove(&id);
                    room.staff.is_empty().then(|| {
                        let event = ServerEvent::Presence {
                            staff_online: false,
                        };
                        fan_out(room.visitors.iter(), &Arc::new(Event::new(&event)), None)
                    })
                }
                Participant::Visitor { visitor_id } => {
                    room.visitors.remove(&id);
                    let gone = match room.visitors_online.get_mut(&visitor_id) {
                        Some(count) if *count > 1 => {
                            *count -= 1;
                            false
                        }
                        _ => {
                            room.visitors_online.remove(&visitor_id);
                            true
                        }
                    };
                    gone.then(|| {
                        let event = ServerEvent::VisitorPresence {
                            visitor_id,
                            online: false,
                        };
                        fan_out(room.staff.iter(), &Arc::new(Event::new(&event)), None)
                    })
                }
            };
            if room.visitors.is_empty() && room.staff.is_empty() {
                self.tenants.remove(&entry.tenant_id);
            }
            pending.extend(announcement.unwrap_or_default());
        }
    }
}

/// Queues `event` for each recipient but `skip`; returns those whose queue was full or closed.
fn fan_out<'a>(
    recipients: impl Iterator<Item = (&'a u64, &'a Sender)>,
    event: &Arc<Event>,
    skip: Option<u64>,
) -> Vec<u64> {
    let mut cut = Vec::new();
    for (id, sender) in recipients {
        if Some(*id) == skip {
            continue;
        }
        if sender.try_send(Arc::clone(event)).is_err() {
            cut.push(*id);
        }
    }
    if !cut.is_empty() {
        metrics::counter!("companero_live_connections_cut_off_total").increment(cut.len() as u64);
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing(conversation: &str) -> Event {
        Event::new(&ServerEvent::Typing {
            conversation_id: conversation.into(),
            from: "visitor".into(),
            name: None,
            active: true,
        })
    }

    #[tokio::test]
    async fn events_reach_followers_and_presence_follows_staff() {
        let hub = Hub::new();
        let mut visitor = hub.connect(
            "t1",
            Participant::Visitor {
                visitor_id: "v1".into(),
            },
        );
        let other_tenant = hub.connect("t2", Participant::Staff);
        assert!(!hub.is_staff_online("t1"));
        let mut staff = hub.connect("t1", Participant::Staff);
        assert!(hub.is_staff_online("t1"));
        let presence = visitor.events.recv().await.unwrap();
        assert!(presence.json.contains(r#""staff_online":true"#));
        // The end user was online before the staff connected: nothing to announce to them.
        assert!(staff.events.try_recv().is_err());

        hub.follow(&visitor, "c1");
        hub.publish("t1", typing("c1"), Audience::FollowersAndStaff);
        hub.publish("t1", typing("c2"), Audience::Followers);
        assert!(visitor.events.recv().await.unwrap().json.contains("c1"));
        assert!(staff.events.try_recv().unwrap().json.contains("c1"));
        assert!(visitor.events.try_recv().is_err(), "c2 is not followed");
        drop(other_tenant);

        drop(staff);
        assert!(!hub.is_staff_online("t1"));
        let presence = visitor.events.recv().await.unwrap();
        assert!(presence.json.contains(r#""staff_online":false"#));
        drop(visitor);
        assert_eq!(hub.connection_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_that_does_not_keep_up_is_cut_off_alone() {
        let hub = Hub::new();
        let mut slow = hub.connect(
            "t",
            Participant::Visitor {
                visitor_id: "slow".into(),
            },
        );
        let mut quick = hub.connect(
            "t",
            Participant::Visitor {
                visitor_id: "quick".into(),
            },
        );
        hub.follow(&slow, "c");
        hub.follow(&quick, "c");
        for _ in 0..QUEUE + 1 {
            hub.publish("t", typing("c"), Audience::Followers);
            quick.events.recv().await.unwrap();
        }
        let mut received = 0;
        while slow.events.recv().await.is_some() {
            received += 1;
        }
        assert_eq!(received, QUEUE, "the queue closed after it filled");
        hub.publish("t", typing("c"), Audience::Followers);
        assert!(quick.events.recv().await.is_some(), "others keep receiving");
        assert_eq!(hub.connection_count(), 1);
    }
}
