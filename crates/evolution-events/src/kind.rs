//! The event registry: every event kind and the two names every other name is derived from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident => $key:literal, $wire:literal; )*) => {
        /// An event kind. The 31 events of the specification plus `STATUS_INSTANCE`.
        ///
        /// Serialized as its filter key (`MESSAGES_UPSERT`); parsed from the filter key, the dotted
        /// wire name (`messages.upsert`, `group-participants.update`) or kebab case
        /// (`messages-upsert`), in any case. `GROUP_UPDATE` is accepted as an alias of
        /// `GROUPS_UPDATE`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum EventKind {
            $( $(#[$doc])* $variant, )*
        }

        /// The registry: one row per event kind, in the specification's order.
        pub const REGISTRY: &[EventInfo] = &[
            $( EventInfo { kind: EventKind::$variant, key: $key, wire: $wire }, )*
        ];
    };
}

registry! {
    /// The application started.
    ApplicationStartup => "APPLICATION_STARTUP", "application.startup";
    /// An instance was created.
    InstanceCreate => "INSTANCE_CREATE", "instance.create";
    /// An instance was deleted.
    InstanceDelete => "INSTANCE_DELETE", "instance.delete";
    /// A new QR code is available.
    QrcodeUpdated => "QRCODE_UPDATED", "qrcode.updated";
    /// The connection state changed.
    ConnectionUpdate => "CONNECTION_UPDATE", "connection.update";
    /// An instance was removed.
    RemoveInstance => "REMOVE_INSTANCE", "remove.instance";
    /// An instance logged out.
    LogoutInstance => "LOGOUT_INSTANCE", "logout.instance";
    /// Message history was loaded.
    MessagesSet => "MESSAGES_SET", "messages.set";
    /// A new message arrived.
    MessagesUpsert => "MESSAGES_UPSERT", "messages.upsert";
    /// A message was updated.
    MessagesUpdate => "MESSAGES_UPDATE", "messages.update";
    /// A message was deleted.
    MessagesDelete => "MESSAGES_DELETE", "messages.delete";
    /// A message was edited.
    MessagesEdited => "MESSAGES_EDITED", "messages.edited";
    /// A message was sent.
    SendMessage => "SEND_MESSAGE", "send.message";
    /// The send status of a message changed.
    SendMessageUpdate => "SEND_MESSAGE_UPDATE", "send.message.update";
    /// The contact list was loaded.
    ContactsSet => "CONTACTS_SET", "contacts.set";
    /// A contact was added or updated.
    ContactsUpsert => "CONTACTS_UPSERT", "contacts.upsert";
    /// A contact was updated.
    ContactsUpdate => "CONTACTS_UPDATE", "contacts.update";
    /// The chat list was loaded.
    ChatsSet => "CHATS_SET", "chats.set";
    /// A chat was added or updated.
    ChatsUpsert => "CHATS_UPSERT", "chats.upsert";
    /// A chat was updated.
    ChatsUpdate => "CHATS_UPDATE", "chats.update";
    /// A chat was deleted.
    ChatsDelete => "CHATS_DELETE", "chats.delete";
    /// A presence status changed.
    PresenceUpdate => "PRESENCE_UPDATE", "presence.update";
    /// A group was created or updated.
    GroupsUpsert => "GROUPS_UPSERT", "groups.upsert";
    /// A group was updated (alias `GROUP_UPDATE`).
    GroupsUpdate => "GROUPS_UPDATE", "groups.update";
    /// Group participants changed.
    GroupParticipantsUpdate => "GROUP_PARTICIPANTS_UPDATE", "group-participants.update";
    /// Labels were edited.
    LabelsEdit => "LABELS_EDIT", "labels.edit";
    /// Labels were associated with a chat.
    LabelsAssociation => "LABELS_ASSOCIATION", "labels.association";
    /// A call arrived.
    Call => "CALL", "call";
    /// A Typebot session started.
    TypebotStart => "TYPEBOT_START", "typebot.start";
    /// A Typebot session changed status.
    TypebotChangeStatus => "TYPEBOT_CHANGE_STATUS", "typebot.change-status";
    /// An error occurred (a delivery went dead, or the errors webhook).
    Errors => "ERRORS", "error";
    /// The instance status changed (closed for good).
    StatusInstance => "STATUS_INSTANCE", "status.instance";
}

/// One row of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventInfo {
    /// The kind.
    pub kind: EventKind,
    /// Filter key, upper snake case: `MESSAGES_UPSERT`. Used in `events` lists and env toggles.
    pub key: &'static str,
    /// Evolution API's wire name: `messages.upsert`, `group-participants.update`.
    pub wire: &'static str,
}

/// Aliases accepted on input, mapped to their kind.
const ALIASES: &[(&str, EventKind)] = &[("GROUP_UPDATE", EventKind::GroupsUpdate)];

impl EventKind {
    /// Every kind, in registry order.
    pub fn all() -> impl ExactSizeIterator<Item = Self> + Clone {
        REGISTRY.iter().map(|info| info.kind)
    }

    /// This kind's position in the registry (`0..REGISTRY.len()`): an index for per-kind tables.
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }

    /// This kind's registry row.
    #[must_use]
    pub fn info(self) -> &'static EventInfo {
        // The registry is generated from the enum in declaration order, so the discriminant is the
        // index. A test checks this.
        &REGISTRY[self as usize]
    }

    /// Filter key: `MESSAGES_UPSERT`.
    #[must_use]
    pub fn key(self) -> &'static str {
        self.info().key
    }

    /// Evolution API's wire name: `messages.upsert`.
    #[must_use]
    pub fn wire(self) -> &'static str {
        self.info().wire
    }

    /// Kebab case of the filter key: `messages-upsert`, `group-participants-update`.
    #[must_use]
    pub fn kebab(self) -> String {
        self.key().to_ascii_lowercase().replace('_', "-")
    }

    /// Lower snake case of the filter key: `messages_upsert`.
    #[must_use]
    pub fn snake(self) -> String {
        self.key().to_ascii_lowercase()
    }

    /// Parses an event name: the filter key, the dotted wire name or kebab case, any case, plus the
    /// aliases (`GROUP_UPDATE`).
    ///
    /// # Errors
    /// Returns [`UnknownEvent`], whose message lists every valid name.
    pub fn parse(input: &str) -> Result<Self, UnknownEvent> {
        // The filter key as written (how events are stored) is found without normalizing; the rest
        // compare normalized characters without allocating (this runs for every event accepted and
        // every delivery read back).
        if let Some(info) = REGISTRY.iter().find(|info| info.key == input) {
            return Ok(info.kind);
        }
        REGISTRY
            .iter()
            .find(|info| {
                info.key.chars().eq(normalized(input)) || normalized(info.wire).eq(normalized(input))
            })
            .map(|info| info.kind)
            .or_else(|| {
                ALIASES
                    .iter()
                    .find(|(alias, _)| alias.chars().eq(normalized(input)))
                    .map(|(_, kind)| *kind)
            })
            .ok_or_else(|| UnknownEvent(input.to_owned()))
    }
}

/// An event name as compared: trimmed, `.` and `-` as `_`, upper case.
fn normalized(name: &str) -> impl Iterator<Item = char> + '_ {
    name.trim().chars().map(|c| match c {
        '.' | '-' => '_',
        c => c.to_ascii_uppercase(),
    })
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for EventKind {
    type Err = UnknownEvent;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.key())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// An event name that is not in the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event `{0}`; valid events are: {list}", list = valid_list())]
pub struct UnknownEvent(pub String);

fn valid_list() -> String {
    let mut names: Vec<&str> = REGISTRY.iter().map(|info| info.key).collect();
    names.push("GROUP_UPDATE (alias of GROUPS_UPDATE)");
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_index_matches_discriminant() {
        for (i, info) in REGISTRY.iter().enumerate() {
            assert_eq!(info.kind as usize, i, "{}", info.key);
        }
        assert_eq!(REGISTRY.len(), 32, "31 events of the seed plus STATUS_INSTANCE");
    }

    #[test]
    fn parses_every_spelling() {
        for kind in EventKind::all() {
            for spelling in [
                kind.key().to_owned(),
                kind.key().to_ascii_lowercase(),
                kind.wire().to_owned(),
                kind.wire().to_ascii_uppercase(),
                kind.kebab(),
                kind.kebab().to_ascii_uppercase(),
            ] {
                assert_eq!(EventKind::parse(&spelling), Ok(kind), "{spelling}");
            }
        }
        assert_eq!(EventKind::parse("GROUP_UPDATE"), Ok(EventKind::GroupsUpdate));
        assert_eq!(EventKind::parse("group.update"), Ok(EventKind::GroupsUpdate));
        assert_eq!(EventKind::parse("Messages-Upsert"), Ok(EventKind::MessagesUpsert));
    }

    #[test]
    fn rejects_unknown_names_listing_the_valid_ones() {
        for bad in [
            "",
            "CALLBACK_QUERY",
            "messages",
            "messages upsert",
            "MESSAGES_UPSERT_",
            "*",
        ] {
            let err = EventKind::parse(bad).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("MESSAGES_UPSERT") && msg.contains("STATUS_INSTANCE"),
                "{msg}"
            );
        }
    }

    #[test]
    fn serde_round_trip_uses_the_filter_key() {
        let json = serde_json::to_string(&EventKind::GroupParticipantsUpdate).unwrap();
        assert_eq!(json, "\"GROUP_PARTICIPANTS_UPDATE\"");
        let back: EventKind = serde_json::from_str("\"group-participants.update\"").unwrap();
        assert_eq!(back, EventKind::GroupParticipantsUpdate);
        assert!(serde_json::from_str::<EventKind>("\"nope\"").is_err());
    }
}
