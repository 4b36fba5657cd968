//! The per-transaction change log and its net effect. Pure: the triggers in `emit` feed it, the
//! commit hook turns it into events.
//!
//! Rules (the transaction's net effect counts, comparing the entity at transaction start with the
//! entity at commit):
//! - created during the transaction and still there → `<kind>.created` only;
//! - created and deleted again → nothing;
//! - existed and deleted → `<kind>.deleted` (if the catalog has one), with its last state;
//! - existed and still there → `<kind>.updated`, plus `<kind>.sent` when `sent_at` got a new
//!   value and the state event when the state differs from the state at transaction start.
//!
//! At most one event of each name per entity per transaction. Events emitted explicitly (the
//! scheduler's `recurring_invoice.*`) are not coalesced: each keeps its own entity JSON and its place
//! in the order of the transaction.

use std::collections::HashMap;
use std::rc::Rc;

use crate::catalog::{EntityKind, RowEvent};

/// Whose changes these are: an entity kind of billhook's catalog, or an application table tracked
/// with `billhook.track_table`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Catalog(EntityKind),
    Tracked(Rc<TrackedTable>),
}

/// A row of `billhook.tracked_tables`, as the emitter uses it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrackedTable {
    /// The table's name, schema-qualified and quoted for SQL.
    pub table: String,
    /// Its owner, as whom its rows are read (outbox::tracked_entity).
    pub owner: pgrx::pg_sys::Oid,
    pub entity_type: String,
    pub category: String,
    pub id_column: String,
    pub administration_column: Option<String>,
    pub state_column: Option<String>,
    /// Event names of states: moving into the state emits the event.
    pub state_events: Vec<(String, String)>,
    pub excluded_columns: Vec<String>,
}

impl Source {
    pub fn entity_type(&self) -> &str {
        match self {
            Source::Catalog(kind) => kind.entity_type(),
            Source::Tracked(table) => &table.entity_type,
        }
    }

    /// The event of a row change. A tracked table's are `<category>.created`, `.updated` and
    /// `.deleted`, registered by track_table.
    fn row_event(&self, change: RowEvent) -> Option<String> {
        match self {
            Source::Catalog(kind) => kind.row_event(change).map(str::to_string),
            Source::Tracked(table) => {
                let suffix = match change {
                    RowEvent::Created => "created",
                    RowEvent::Updated => "updated",
                    RowEvent::Deleted => "deleted",
                };
                Some(format!("{}.{suffix}", table.category))
            }
        }
    }

    fn state_event(&self, state: &str) -> Option<String> {
        match self {
            Source::Catalog(kind) => kind.state_event(state).map(str::to_string),
            Source::Tracked(table) => table.state_events.iter().find(|(s, _)| s == state).map(|(_, e)| e.clone()),
        }
    }

    fn sent_event(&self) -> Option<String> {
        match self {
            Source::Catalog(kind) => kind.sent_event().map(str::to_string),
            Source::Tracked(_) => None,
        }
    }
}

/// The columns of a row that decide lifecycle events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowState {
    pub state: Option<String>,
    /// `sent_at` in Postgres microseconds, if set.
    pub sent_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    Insert {
        after: RowState,
    },
    Update {
        before: RowState,
        after: RowState,
    },
    Delete {
        before: RowState,
    },
    /// A line of this entity (invoice line, quotation line) was inserted, updated or deleted.
    LineChange,
    /// The entity's JSON just before a deletion, captured while its lines still existed.
    DeletedSnapshot(String),
    /// A catalog event emitted by billhook itself, with the entity as it was at that moment.
    Emitted {
        event: &'static str,
        entity: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub source: Source,
    pub id: i64,
    pub op: ChangeOp,
    /// The subtransaction that made the change, so a rolled-back savepoint can drop it.
    pub subxact: u32,
}

/// The events one entity emits at commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityEvents {
    pub source: Source,
    pub id: i64,
    pub events: Vec<String>,
    /// The entity's JSON when it is not to be read at commit: a deleted entity's last state, or the
    /// entity an emitted event was raised with.
    pub entity: Option<String>,
    /// The entity's state when the transaction began, if the transaction changed it.
    pub previous_state: Option<String>,
}

#[derive(Default, Debug)]
pub struct ChangeLog {
    changes: Vec<Change>,
}

impl ChangeLog {
    pub fn record(&mut self, change: Change) {
        self.changes.push(change);
    }

    pub fn clear(&mut self) {
        self.changes.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Forgets everything done in `subxact` and its children. Subtransaction ids grow in start
    /// order and the log is in time order, so those changes are exactly the log's tail from the
    /// first change whose id is at least `subxact`.
    pub fn roll_back_subxact(&mut self, subxact: u32) {
        if let Some(start) = self.changes.iter().position(|c| c.subxact >= subxact) {
            self.changes.truncate(start);
        }
    }

    /// Empties the log and returns the net events, entities in the order they were first touched.
    pub fn take_events(&mut self) -> Vec<EntityEvents> {
        enum Slot {
            Entity(Source, i64),
            Emitted(EntityEvents),
        }
        let mut order: Vec<Slot> = Vec::new();
        let mut by_entity: HashMap<(Source, i64), Vec<ChangeOp>> = HashMap::new();
        for change in self.changes.drain(..) {
            if let ChangeOp::Emitted { event, entity } = change.op {
                let events = vec![event.to_string()];
                order.push(Slot::Emitted(EntityEvents {
                    source: change.source,
                    id: change.id,
                    events,
                    entity: Some(entity),
                    previous_state: None,
                }));
                continue;
            }
            by_entity
                .entry((change.source.clone(), change.id))
                .or_insert_with(|| {
                    order.push(Slot::Entity(change.source.clone(), change.id));
                    Vec::new()
                })
                .push(change.op);
        }
        order
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Entity(source, id) => {
                    let ops = &by_entity[&(source.clone(), id)];
                    net_events(source, id, ops)
                }
                Slot::Emitted(events) => Some(events),
            })
            .collect()
    }
}

fn net_events(source: Source, id: i64, ops: &[ChangeOp]) -> Option<EntityEvents> {
    let is_row_op =
        |op: &&ChangeOp| matches!(op, ChangeOp::Insert { .. } | ChangeOp::Update { .. } | ChangeOp::Delete { .. });
    let first_row_op = ops.iter().find(is_row_op);
    let last_row_op = ops.iter().rev().find(is_row_op);
    let existed_at_start = !matches!(first_row_op, Some(ChangeOp::Insert { .. }));
    let exists_at_commit = !matches!(last_row_op, Some(ChangeOp::Delete { .. }));
    let changed = ops.iter().any(|op| !matches!(op, ChangeOp::DeletedSnapshot(_)));

    let mut events = Vec::new();
    let mut entity = None;
    let mut previous_state = None;
    match (existed_at_start, exists_at_commit) {
        (false, false) => {}
        (false, true) => events.extend(source.row_event(RowEvent::Created)),
        (true, false) => {
            if let Some(name) = source.row_event(RowEvent::Deleted) {
                events.push(name);
                entity = ops.iter().rev().find_map(|op| match op {
                    ChangeOp::DeletedSnapshot(json) => Some(json.clone()),
                    _ => None,
                });
            }
        }
        (true, true) if changed => {
            events.extend(source.row_event(RowEvent::Updated));
            let at_start = first_row_op.and_then(|op| match op {
                ChangeOp::Update { before, .. } | ChangeOp::Delete { before } => Some(before),
                _ => None,
            });
            let at_commit = last_row_op.and_then(|op| match op {
                ChangeOp::Insert { after } | ChangeOp::Update { after, .. } => Some(after),
                _ => None,
            });
            if let (Some(start), Some(end)) = (at_start, at_commit) {
                if end.sent_at.is_some() && end.sent_at != start.sent_at {
                    events.extend(source.sent_event());
                }
                if end.state != start.state {
                    events.extend(end.state.as_deref().and_then(|s| source.state_event(s)));
                    previous_state = start.state.clone();
                }
            }
        }
        (true, true) => {}
    }
    (!events.is_empty()).then_some(EntityEvents { source, id, events, entity, previous_state })
}

#[cfg(test)]
mod tests {
    use super::*;
    use EntityKind::*;

    fn row(state: &str, sent_at: Option<i64>) -> RowState {
        RowState { state: Some(state.to_string()), sent_at }
    }

    fn log(changes: &[(EntityKind, i64, ChangeOp, u32)]) -> ChangeLog {
        let mut log = ChangeLog::default();
        for (kind, id, op, subxact) in changes.iter().cloned() {
            log.record(Change { source: Source::Catalog(kind), id, op, subxact });
        }
        log
    }

    fn names(log: &mut ChangeLog) -> Vec<(i64, Vec<&'static str>)> {
        let leak = |names: Vec<String>| names.into_iter().map(|n| &*n.leak()).collect();
        log.take_events().into_iter().map(|e| (e.id, leak(e.events))).collect()
    }

    fn insert(state: &str) -> ChangeOp {
        ChangeOp::Insert { after: row(state, None) }
    }

    fn update(from: RowState, to: RowState) -> ChangeOp {
        ChangeOp::Update { before: from, after: to }
    }

    #[test]
    fn insert_then_updates_is_only_created() {
        let mut l = log(&[
            (Invoice, 1, insert("draft"), 1),
            (Invoice, 1, ChangeOp::LineChange, 1),
            (Invoice, 1, update(row("draft", None), row("paid", Some(5))), 1),
        ]);
        assert_eq!(names(&mut l), vec![(1, vec!["invoice.created"])]);
        assert!(l.changes.is_empty());
    }

    #[test]
    fn insert_then_delete_is_nothing() {
        let mut l = log(&[
            (Customer, 7, ChangeOp::Insert { after: RowState::default() }, 1),
            (Customer, 7, ChangeOp::DeletedSnapshot("{}".into()), 1),
            (Customer, 7, ChangeOp::Delete { before: RowState::default() }, 1),
        ]);
        assert_eq!(names(&mut l), vec![]);
    }

    #[test]
    fn delete_carries_the_last_snapshot() {
        let mut l = log(&[
            (Invoice, 3, update(row("draft", None), row("open", None)), 1),
            (Invoice, 3, ChangeOp::DeletedSnapshot(r#"{"id":"3"}"#.into()), 1),
            (Invoice, 3, ChangeOp::LineChange, 1),
            (Invoice, 3, ChangeOp::Delete { before: row("open", None) }, 1),
        ]);
        let events = l.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].events, vec!["invoice.deleted"]);
        assert_eq!(events[0].entity.as_deref(), Some(r#"{"id":"3"}"#));
    }

    #[test]
    fn quotations_have_no_deleted_event() {
        let mut l = log(&[(Quotation, 2, ChangeOp::Delete { before: row("open", None) }, 1)]);
        assert_eq!(names(&mut l), vec![]);
    }

    #[test]
    fn lifecycle_events_follow_updated_once_each() {
        let mut l = log(&[
            (Invoice, 1, update(row("draft", None), row("open", Some(10))), 1),
            (Invoice, 1, update(row("open", Some(10)), row("paid", Some(10))), 1),
            (Invoice, 1, update(row("paid", Some(10)), row("paid", Some(10))), 1),
        ]);
        assert_eq!(names(&mut l), vec![(1, vec!["invoice.updated", "invoice.sent", "invoice.paid"])]);
    }

    #[test]
    fn state_is_compared_with_the_start_of_the_transaction() {
        let mut l = log(&[
            (Expense, 4, update(row("new", None), row("paid", None)), 1),
            (Expense, 4, update(row("paid", None), row("new", None)), 1),
        ]);
        assert_eq!(names(&mut l), vec![(4, vec!["expense.updated"])]);
    }

    #[test]
    fn resending_emits_sent_again() {
        let mut l = log(&[(Quotation, 9, update(row("open", Some(1)), row("open", Some(2))), 1)]);
        assert_eq!(names(&mut l), vec![(9, vec!["quotation.updated", "quotation.sent"])]);
    }

    #[test]
    fn line_change_alone_is_updated() {
        let mut l = log(&[(Invoice, 5, ChangeOp::LineChange, 1), (Invoice, 5, ChangeOp::LineChange, 1)]);
        assert_eq!(names(&mut l), vec![(5, vec!["invoice.updated"])]);
    }

    #[test]
    fn a_snapshot_without_a_delete_is_no_change() {
        let mut l = log(&[(Customer, 5, ChangeOp::DeletedSnapshot("{}".into()), 1)]);
        assert_eq!(names(&mut l), vec![]);
    }

    #[test]
    fn entities_come_out_in_first_touched_order() {
        let mut l = log(&[
            (Customer, 2, ChangeOp::Insert { after: RowState::default() }, 1),
            (Invoice, 1, insert("draft"), 1),
            (Customer, 2, update(RowState::default(), RowState::default()), 1),
        ]);
        assert_eq!(names(&mut l), vec![(2, vec!["customer.created"]), (1, vec!["invoice.created"])]);
    }

    #[test]
    fn emitted_events_keep_their_own_entity_and_place() {
        let emitted = |n: &str| ChangeOp::Emitted { event: "recurring_invoice.generated", entity: n.to_string() };
        let mut l = log(&[
            (Invoice, 10, insert("draft"), 1),
            (RecurringInvoice, 1, emitted("first"), 1),
            (Invoice, 11, insert("draft"), 1),
            (RecurringInvoice, 1, emitted("second"), 1),
        ]);
        let events: Vec<(i64, Vec<&str>, Option<String>)> = l
            .take_events()
            .into_iter()
            .map(|e| (e.id, e.events.into_iter().map(|n| &*n.leak()).collect(), e.entity))
            .collect();
        assert_eq!(
            events,
            vec![
                (10, vec!["invoice.created"], None),
                (1, vec!["recurring_invoice.generated"], Some("first".into())),
                (11, vec!["invoice.created"], None),
                (1, vec!["recurring_invoice.generated"], Some("second".into())),
            ]
        );
    }

    #[test]
    fn rolled_back_subtransactions_are_forgotten() {
        // BEGIN; insert 1; SAVEPOINT a (2); SAVEPOINT b (3); insert 2; RELEASE b; insert 3;
        // SAVEPOINT c (4); insert 4; ROLLBACK TO c; ... ROLLBACK TO a; COMMIT
        let mut l = log(&[
            (Invoice, 1, insert("draft"), 1),
            (Invoice, 2, insert("draft"), 3),
            (Invoice, 3, insert("draft"), 2),
            (Invoice, 4, insert("draft"), 4),
        ]);
        l.roll_back_subxact(4);
        assert_eq!(l.changes.len(), 3, "only savepoint c's change is gone");
        l.roll_back_subxact(2);
        assert_eq!(names(&mut l), vec![(1, vec!["invoice.created"])]);
    }
}
