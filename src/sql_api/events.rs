//! What the committing side and the fan-out call in SQL: queuing an event from SQL (the
//! scheduler's), waking the worker at commit, the size bound of an entity, and the Idempotency-Key
//! each delivery gets.

use pgrx::prelude::*;

use crate::catalog::{self, EntityKind};
use crate::committing::emit;
use crate::delivering::push::idempotency;
use crate::error::{BillhookError, OrReport};
use crate::jsonb::{DetoastedSize, JsonbText};

/// The bytes a jsonb value takes once read (pg_column_size gives what it takes stored, which a
/// well-compressed value can make a hundred times smaller), without reading it.
#[pg_extern(immutable, parallel_safe, strict)]
fn detoasted_size(value: DetoastedSize) -> i64 {
    value.0
}

/// Wakes the delivery worker when the current transaction commits, for functions that queue
/// deliveries themselves (redeliver, replay).
#[pg_extern(volatile, parallel_unsafe)]
fn wake_worker_at_commit() {
    emit::wake_worker_at_commit();
}

/// Queues a catalog event with the entity's JSON as it is now; written at commit with the
/// transaction's other events. Used by the scheduler for the `recurring_invoice.*` events, which no
/// row change produces. Not executable by PUBLIC.
#[pg_extern(volatile, parallel_unsafe)]
fn emit_event(entity_type: &str, entity_id: i64, event: &str, entity: JsonbText) {
    let kind = EntityKind::from_entity_type(entity_type)
        .ok_or_else(|| BillhookError::UnknownEntityType(entity_type.to_string()))
        .or_report();
    let name = catalog::event_of(kind, event).ok_or_else(|| BillhookError::UnknownEvent(event.to_string())).or_report();
    emit::emit(kind, entity_id, name, entity.0);
}

/// The Idempotency-Key of the push of event `event_id` to webhook `webhook_id` (idempotency.rs);
/// the fan-out gives every delivery its key with it.
#[pg_extern(immutable, parallel_safe, strict)]
fn delivery_key(namespace: pgrx::datum::Uuid, event_id: i64, webhook_id: i64) -> pgrx::datum::Uuid {
    let namespace: [u8; 16] = *namespace.as_bytes();
    pgrx::datum::Uuid::from_bytes(idempotency::delivery_key(&namespace, event_id, webhook_id))
}
