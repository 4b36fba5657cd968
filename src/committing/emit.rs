//! Turns committed row changes into events: row triggers record changes in a backend-local log,
//! and a pre-commit hook writes the transaction's net events (see outbox.rs); the worker fans them
//! out into deliveries.
//!
//! Why a backend-local log and a pre-commit hook rather than writing events from each trigger:
//! an invoice inserted with its ten lines must yield one `invoice.created` holding all ten lines,
//! which only exists once the transaction's last statement has run. Subtransaction and transaction
//! callbacks keep the log in step with savepoint rollbacks and aborts.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use pgrx::prelude::*;

use crate::catalog::{EntityKind, EventSet};
use crate::committing::changes::{Change, ChangeLog, ChangeOp, RowState, Source, TrackedTable};
use crate::delivering::worker::Wake;
use crate::error::{BillhookError, OrReport};

thread_local! {
    static CHANGES: RefCell<ChangeLog> = RefCell::new(ChangeLog::default());
    /// The transaction queued deliveries or changed webhooks: wake the worker once it has committed.
    static WAKE_AT_COMMIT: Cell<bool> = const { Cell::new(false) };
    /// The events the transaction recorded (`EventSet` bits): they wake the worker after the commit
    /// if a webhook subscribes to one. Decided after the commit, not before: the worker publishes
    /// new subscriptions before its fan-out, so a commit that still saw the old ones is visible to
    /// that fan-out.
    static RECORDED_EVENTS: Cell<u32> = const { Cell::new(0) };
    /// The transaction changed which webhooks are enabled or what they subscribe to.
    static WEBHOOKS_CHANGED: Cell<bool> = const { Cell::new(false) };
    /// The tracked tables (billhook.tracked_tables) the transaction changed rows of, read once per
    /// transaction: a table tracked or untracked meanwhile counts from the next one.
    static TRACKED: RefCell<HashMap<pg_sys::Oid, Option<Rc<TrackedTable>>>> = RefCell::new(HashMap::new());
}

/// Wakes the delivery worker when the current transaction commits (not before: it could not yet
/// see the events or deliveries).
pub fn wake_worker_at_commit() {
    WAKE_AT_COMMIT.with(|w| w.set(true));
}

/// Hooks the change log to transaction ends. Called once per backend from `_PG_init`.
pub fn register_transaction_callbacks() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => write_pending_events(),
        XACT_EVENT_COMMIT => {
            // What a table owner's code changed while its rows were turned into JSON, after the
            // changes were taken, belongs to no later transaction.
            CHANGES.with(|c| c.borrow_mut().clear());
            TRACKED.with(|t| t.borrow_mut().clear());
            if WEBHOOKS_CHANGED.with(|c| c.replace(false)) {
                crate::delivering::worker::webhooks_changed();
            }
            let recorded = EventSet::from_bits(RECORDED_EVENTS.with(|r| r.replace(0)));
            let subscribed = crate::delivering::worker::subscribed_events().intersects(recorded);
            if WAKE_AT_COMMIT.with(|w| w.replace(false)) {
                crate::delivering::worker::wake(Wake::Everyone);
            } else if subscribed {
                crate::delivering::worker::wake(Wake::FanOut);
            }
        }
        // A prepared transaction's events and webhook changes are found by the worker's next poll.
        XACT_EVENT_PREPARE | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            CHANGES.with(|c| c.borrow_mut().clear());
            TRACKED.with(|t| t.borrow_mut().clear());
            WAKE_AT_COMMIT.with(|w| w.set(false));
            RECORDED_EVENTS.with(|r| r.set(0));
            WEBHOOKS_CHANGED.with(|c| c.set(false));
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        CHANGES.with(|c| c.borrow_mut().roll_back_subxact(subxact));
    }
}

fn record(source: Source, id: i64, op: ChangeOp) {
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    CHANGES.with(|c| c.borrow_mut().record(Change { source, id, op, subxact }));
}

/// Queues a catalog event raised by billhook itself (the scheduler), with the entity as it is now.
/// It is written at commit with the transaction's other events, in order.
pub fn emit(kind: EntityKind, id: i64, event: &'static str, entity: String) {
    record(Source::Catalog(kind), id, ChangeOp::Emitted { event, entity });
}

fn write_pending_events() {
    let events = CHANGES.with(|c| c.borrow_mut().take_events());
    if events.is_empty() {
        return;
    }
    if crate::committing::outbox::record(&events) > 0 {
        let recorded = EventSet::of(events.iter().flat_map(|e| &e.events));
        RECORDED_EVENTS.with(|r| r.set(r.get() | recorded.bits()));
    }
    // A table owner's code that ran while its rows were turned into JSON (a cast, say) changed
    // rows that emit events: they would commit without theirs.
    if CHANGES.with(|c| !c.borrow().is_empty()) {
        BillhookError::ChangedWhileWriting.report();
    }
}

/// `AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF enabled, enabled_events, administration_id
/// FOR EACH STATEMENT` on `billhook.webhooks`: the worker learns at commit that the events worth
/// waking it for may have changed.
#[pg_trigger]
fn note_webhooks_changed<'a>(
    _trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, BillhookError> {
    WEBHOOKS_CHANGED.with(|c| c.set(true));
    wake_worker_at_commit();
    Ok(None)
}

/// `AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW` on entity tables, with the entity type as
/// argument (`record_change('Invoice')`), and on line tables, with the parent's entity type and
/// foreign-key column (`record_change('Invoice', 'invoice_id')`).
#[pg_trigger]
fn record_change<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, BillhookError> {
    let (kind, parent_column) = trigger_arguments(trigger).or_report();
    let new = trigger.new();
    let old = trigger.old();
    match parent_column {
        Some(column) => {
            let new_parent = new.as_ref().map(|row| column_i64(row, &column));
            let old_parent = old.as_ref().map(|row| column_i64(row, &column));
            // A line moved to another parent changes both.
            let moved_to = new_parent.filter(|_| new_parent != old_parent);
            for parent in [old_parent, moved_to].into_iter().flatten() {
                record(Source::Catalog(kind), parent, ChangeOp::LineChange);
            }
        }
        None => {
            let row = new.as_ref().or(old.as_ref()).expect("row trigger has a row");
            let id = column_i64(row, "id");
            let op = row_op(&old, &new, |row| row_state(kind, row));
            record(Source::Catalog(kind), id, op);
        }
    }
    Ok(None)
}

fn row_op(
    old: &Option<PgHeapTuple<'_, AllocatedByPostgres>>,
    new: &Option<PgHeapTuple<'_, AllocatedByPostgres>>,
    state: impl Fn(&PgHeapTuple<'_, AllocatedByPostgres>) -> RowState,
) -> ChangeOp {
    match (old, new) {
        (None, Some(new)) => ChangeOp::Insert { after: state(new) },
        (Some(old), Some(new)) => ChangeOp::Update { before: state(old), after: state(new) },
        (Some(old), None) => ChangeOp::Delete { before: state(old) },
        (None, None) => unreachable!("row trigger without rows"),
    }
}

/// `AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW` on a table tracked with billhook.track_table,
/// which attaches it: records the row's change like billhook's own tables'. It fires only on tables
/// billhook.tracked_tables holds.
#[pg_trigger]
fn record_tracked_change<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, BillhookError> {
    let table = tracked_table_of(trigger).or_report();
    let (old, new) = (trigger.old(), trigger.new());
    if tenant_isolation_applies() {
        for row in [&old, &new].into_iter().flatten() {
            check_tenant(&table, row).or_report();
        }
    }
    let Some(row) = new.as_ref().or(old.as_ref()) else { return Ok(None) };
    let id = tracked_id(&table, row).or_report();
    let op = row_op(&old, &new, |row| RowState {
        state: table.state_column.as_ref().and_then(|column| {
            row.get_by_name::<String>(column).map_err(|e| tracked_column(&table, column, e)).or_report()
        }),
        sent_at: None,
    });
    record(Source::Tracked(table), id, op);
    Ok(None)
}

/// `BEFORE DELETE FOR EACH ROW` on a tracked table: keeps the row's last state for `.deleted`.
#[pg_trigger]
fn capture_deleted_tracked_row<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, BillhookError> {
    let table = tracked_table_of(trigger).or_report();
    let Some(old) = trigger.old() else { BillhookError::TriggerMisuse("must be BEFORE DELETE".into()).report() };
    let id = tracked_id(&table, &old).or_report();
    let source = Source::Tracked(table);
    if let Some(json) = crate::committing::outbox::snapshot(&source, id) {
        record(source, id, ChangeOp::DeletedSnapshot(json));
    }
    Ok(Some(old))
}

/// Under tenant isolation a restricted session writes only its own administration's rows, in a
/// tracked table as in billhook's own tables (whose policies check it): its events go to that
/// administration's webhooks. The rows of a table without an administration column are
/// administration 1's.
fn check_tenant(table: &TrackedTable, row: &PgHeapTuple<'_, AllocatedByPostgres>) -> Result<(), BillhookError> {
    // As billhook.fan_out reads it: NULL (or no column) is administration 1.
    let administration = match &table.administration_column {
        Some(column) => tracked_integer(table, row, column)?.unwrap_or(1),
        None => 1,
    };
    match crate::gucs::session_administration() {
        Ok(Some(session)) if session == administration => Ok(()),
        session => Err(BillhookError::OtherAdministration {
            table: table.table.clone(),
            row: administration,
            session: match session {
                Ok(Some(id)) => format!("administration {id}"),
                Ok(None) => "no administration (billhook.administration_id is not set)".to_string(),
                Err(value) => format!("billhook.administration_id \"{value}\", which is not an id"),
            },
        }),
    }
}

/// Whether tenant isolation restricts the current role: row-level security applies to it on
/// billhook.webhooks. Looked up once per row change, for its old and new row alike.
fn tenant_isolation_applies() -> bool {
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"billhook".as_ptr(), true);
        let webhooks = pg_sys::get_relname_relid(c"webhooks".as_ptr(), schema);
        webhooks != pg_sys::InvalidOid
            && pg_sys::check_enable_rls(webhooks, pg_sys::InvalidOid, true) as u32
                == pg_sys::CheckEnableRlsResult::RLS_ENABLED
    }
}

fn tracked_table_of(trigger: &PgTrigger) -> Result<Rc<TrackedTable>, BillhookError> {
    let misuse = |what: &str| BillhookError::TriggerMisuse(what.to_string());
    if !matches!(trigger.level(), PgTriggerLevel::Row) {
        return Err(misuse("must be a FOR EACH ROW trigger"));
    }
    let relation = trigger.relation().map_err(|e| misuse(&e.to_string()))?.oid();
    let table = TRACKED.with(|t| {
        t.borrow_mut()
            .entry(relation)
            .or_insert_with(|| crate::committing::outbox::tracked_table(relation).map(Rc::new))
            .clone()
    });
    table.ok_or_else(|| {
        let name = trigger.table_name().unwrap_or_default();
        misuse(&format!("fired on table {name}, which billhook.track_table does not track"))
    })
}

/// A tracked row's id: its id column, an integer of either width, not NULL.
fn tracked_id(table: &TrackedTable, row: &PgHeapTuple<'_, AllocatedByPostgres>) -> Result<i64, BillhookError> {
    tracked_integer(table, row, &table.id_column)?.ok_or_else(|| BillhookError::TrackedColumn {
        table: table.table.clone(),
        column: table.id_column.clone(),
        reason: "is NULL: a tracked row needs an id".to_string(),
    })
}

/// An integer column of a tracked row, of either width (track_table checks).
fn tracked_integer(
    table: &TrackedTable,
    row: &PgHeapTuple<'_, AllocatedByPostgres>,
    column: &str,
) -> Result<Option<i64>, BillhookError> {
    match row.get_by_name::<i64>(column) {
        Ok(value) => Ok(value),
        Err(_) => row
            .get_by_name::<i32>(column)
            .map(|value| value.map(i64::from))
            .map_err(|e| tracked_column(table, column, e)),
    }
}

fn tracked_column(table: &TrackedTable, column: &str, error: impl std::fmt::Display) -> BillhookError {
    BillhookError::TrackedColumn {
        table: table.table.clone(),
        column: column.to_string(),
        reason: format!("cannot be read: {error}"),
    }
}

/// `BEFORE DELETE FOR EACH ROW` on entity tables whose kind has a `.deleted` event: keeps the
/// entity's last state while its lines still exist (cascades remove them before AFTER triggers).
#[pg_trigger]
fn capture_deleted_entity<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, BillhookError> {
    let (kind, _) = trigger_arguments(trigger).or_report();
    let old = trigger.old().expect("BEFORE DELETE row trigger has an old row");
    let id = column_i64(&old, "id");
    let source = Source::Catalog(kind);
    if let Some(json) = crate::committing::outbox::snapshot(&source, id) {
        record(source, id, ChangeOp::DeletedSnapshot(json));
    }
    Ok(Some(old))
}

fn trigger_arguments(trigger: &PgTrigger) -> Result<(EntityKind, Option<String>), BillhookError> {
    let misuse = |what: &str| BillhookError::TriggerMisuse(what.to_string());
    if !matches!(trigger.level(), PgTriggerLevel::Row) {
        return Err(misuse("must be a FOR EACH ROW trigger"));
    }
    let args = trigger.extra_args().map_err(|e| misuse(&e.to_string()))?;
    let (entity_type, parent_column) = match args.as_slice() {
        [entity_type] => (entity_type, None),
        [entity_type, column] => (entity_type, Some(column.clone())),
        _ => return Err(misuse("expects an entity type and optionally a parent key column")),
    };
    let kind = EntityKind::from_entity_type(entity_type)
        .ok_or_else(|| BillhookError::UnknownEntityType(entity_type.clone()))?;
    // Only billhook's own tables record changes: the same trigger on any other table (a temporary
    // one shaped like invoices, say) would emit events for entities it never changed.
    let schema = trigger.table_schema().map_err(|e| misuse(&e.to_string()))?;
    let table = trigger.table_name().map_err(|e| misuse(&e.to_string()))?;
    if schema != "billhook" || !kind.is_recorded_from(&table, parent_column.as_deref()) {
        return Err(misuse(&format!("fired on table {schema}.{table}, which does not hold {entity_type} changes")));
    }
    Ok((kind, parent_column))
}

fn column_i64(row: &PgHeapTuple<'_, AllocatedByPostgres>, column: &str) -> i64 {
    row.get_by_name::<i64>(column)
        .unwrap_or_else(|e| panic!("column {column}: {e}"))
        .unwrap_or_else(|| panic!("column {column} is NULL"))
}

fn row_state(kind: EntityKind, row: &PgHeapTuple<'_, AllocatedByPostgres>) -> RowState {
    let state = if kind.has_state() {
        row.get_by_name::<String>("state").unwrap_or_else(|e| panic!("column state: {e}"))
    } else {
        None
    };
    let sent_at = if kind.has_sent_at() {
        row.get_by_name::<pgrx::datum::TimestampWithTimeZone>("sent_at")
            .unwrap_or_else(|e| panic!("column sent_at: {e}"))
            .map(|ts| ts.into_inner())
    } else {
        None
    };
    RowState { state, sent_at }
}
