//! The emitter's writes: a committing transaction's events, and the last state of an entity about
//! to be deleted.
//!
//! They run as the owner of the outbox with a fixed `search_path`, like a SECURITY DEFINER
//! function: applications need no rights on the outbox, cannot forge events through it, and cannot
//! redirect its statements with objects of their own. A tracked table's row is read as that table's
//! owner instead, restricted (tracked_entity): it may run code of theirs. Each statement exists once
//! per entity kind, planned once per backend (plans.rs).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{PgOid, PgRelation};

use crate::catalog::EntityKind;
use crate::committing::changes::{EntityEvents, Source, TrackedTable};
use crate::committing::entities::{self, JsonbDatum};
use crate::plans::with_kept_plan;

/// The events of a run of entities of one kind, in one statement: the commit's cost per entity is
/// the entity's JSON and its rows, not a statement each. One element per event, in order: $1 its
/// entity's id, $2 the entity built from its rows (jsonb), $7 the entity's JSON text where it is
/// given instead (a deleted entity's last state, an event raised with its entity; both NULL:
/// build it, or no such entity), $3 the entity's state when the transaction began if the
/// transaction changed it, $5 the event's name; $4 the entity type; $6 the ids whose JSON
/// `{entities}` is to build with SQL, once each (Entities). The subquery is kept apart (OFFSET 0)
/// so that a given entity is parsed once per event, not once for each of the three columns read
/// from it.
/// Deliveries are the worker's business (`billhook.fan_out`): a commit's cost does not depend on
/// how many webhooks subscribe.
const RECORD: &str = "
    INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, state, entity{previous_state})
    SELECT (x.entity ->> 'administration_id')::bigint, x.name, $4, x.id, x.entity ->> 'state', x.entity{x.previous_state}
    FROM (SELECT e.id, {entity} AS entity, e.previous_state, e.name, e.position
          FROM unnest($1::bigint[], $2::jsonb[], $7::text[], $3::text[], $5::text[])
               WITH ORDINALITY AS e(id, built_entity, entity_text, previous_state, name, position)
          {entities}
          OFFSET 0) AS x
    WHERE x.entity IS NOT NULL
    ORDER BY x.position";

/// $1 entity id.
const SNAPSHOT: &str = "SELECT {json}($1)::text";

/// Where RECORD's entities come from.
#[derive(Clone, Copy)]
enum Entities {
    /// All in $2 or $7: built from their rows beforehand (entities/), or given.
    Given,
    /// Those not given built by the SQL functions of sql/entities.sql: when the install is not at
    /// this library's version, or its tables are not what entities/ reads.
    BuiltWithSql,
}

#[derive(Clone, Copy)]
enum Statement {
    Record(Outbox, Entities),
    Snapshot,
}

impl Statement {
    fn sql(self, kind: EntityKind) -> String {
        match self {
            Statement::Record(outbox, entities) => {
                let (entity, built) = match entities {
                    Entities::Given => ("coalesce(e.built_entity, e.entity_text::jsonb)", String::new()),
                    Entities::BuiltWithSql => {
                        let set = if outbox.builds_entity_sets {
                            format!("{}($6)", kind.entities_function())
                        } else {
                            format!(
                                "(SELECT b.id, {}(b.id) AS entity FROM unnest($6::bigint[]) AS b(id))",
                                kind.json_function()
                            )
                        };
                        (
                            "coalesce(e.entity_text::jsonb, built.entity)",
                            format!("LEFT JOIN {set} AS built ON e.entity_text IS NULL AND built.id = e.id"),
                        )
                    }
                };
                // The outbox of an install not updated to 0.6.0 yet has no previous_state; this
                // library keeps writing to it until ALTER EXTENSION billhook UPDATE.
                let (column, value) =
                    if outbox.keeps_previous_state { (", previous_state", ", x.previous_state") } else { ("", "") };
                RECORD
                    .replace("{entity}", entity)
                    .replace("{entities}", &built)
                    .replace("{previous_state}", column)
                    .replace("{x.previous_state}", value)
            }
            Statement::Snapshot => SNAPSHOT.replace("{json}", kind.json_function()),
        }
    }

    fn argument_types(self) -> Vec<PgOid> {
        use pg_sys::BuiltinOid::*;
        match self {
            Statement::Record(..) => {
                [INT8ARRAYOID, JSONBARRAYOID, TEXTARRAYOID, TEXTOID, TEXTARRAYOID, INT8ARRAYOID, TEXTARRAYOID]
                    .map(|t| t.oid())
                    .to_vec()
            }
            Statement::Snapshot => vec![INT8OID.oid()],
        }
    }

    fn with_plan<R>(
        self,
        kind: EntityKind,
        run: impl FnOnce(&OwnedPreparedStatement) -> pgrx::spi::Result<R>,
    ) -> pgrx::spi::Result<R> {
        with_kept_plan(&self.sql(kind), &self.argument_types(), run)
    }
}

/// The ids of a run's entities whose JSON is not given, once each.
fn ids_to_build(run: &[&EntityEvents]) -> Vec<i64> {
    let mut ids: Vec<i64> = run.iter().filter(|e| e.entity.is_none()).map(|e| e.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Entities `ids`, built from their rows (entities/) with the snapshot RECORD would have had, in
/// the current memory context; None when this install's tables are not what that reads.
fn entities_from_rows(kind: EntityKind, ids: &[i64]) -> Option<HashMap<i64, Option<JsonbDatum>>> {
    if ids.is_empty() {
        return Some(HashMap::new());
    }
    // What SPI does for a statement: the transaction's last changes made visible; the tables locked
    // (a commit that waited for a lock, behind a table's rewrite say, must see what was committed
    // meanwhile); then a snapshot of its own (a new one in READ COMMITTED), with the current command
    // id.
    let built = unsafe {
        pg_sys::CommandCounterIncrement();
        let tables = entities::Tables::open(kind);
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::UpdateActiveSnapshotCommandId();
        let built = tables.and_then(|tables| tables.build(ids));
        pg_sys::PopActiveSnapshot();
        built
    };
    Some(ids.iter().copied().zip(built.ok()?).collect())
}

thread_local! {
    /// The outbox (its relation) of an install seen at this library's version, by a transaction that
    /// did not make it so itself. An install is updated only forward, and a new library only after
    /// a restart (docs/operations.md): once at this version, it stays so while its outbox does.
    static CURRENT_OUTBOX: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// Whether the install is at this library's version, whose entities entities/ builds. One not
/// updated yet builds them with its own SQL functions until ALTER EXTENSION billhook UPDATE.
fn install_is_current(client: &SpiClient, outbox: Outbox) -> bool {
    if CURRENT_OUTBOX.get() == outbox.events {
        return true;
    }
    const VERSION: &str =
        "SELECT extversion, xmin::text::bigint FROM pg_catalog.pg_extension WHERE extname = 'billhook'";
    let Some((version, written_by)) = client
        .select(VERSION, None, &[])
        .and_then(|rows| rows.first().get_two::<String, i64>())
        .ok()
        .and_then(|(version, xmin)| Some((version?, xmin?)))
    else {
        return false;
    };
    let current = version == env!("CARGO_PKG_VERSION");
    // An update made by this very transaction could still roll back after this commit hook.
    let updated_here = u32::try_from(written_by)
        .is_ok_and(|xid| unsafe { pg_sys::TransactionIdIsCurrentTransactionId(pg_sys::TransactionId::from(xid)) });
    if current && !updated_here {
        CURRENT_OUTBOX.set(outbox.events);
    }
    current
}

/// RECORD's arguments for a run of entities of one kind: with the entities built from their rows if
/// they were, else the ids for the SQL to build.
fn record_arguments(
    run: &[&EntityEvents],
    built: Option<&HashMap<i64, Option<JsonbDatum>>>,
    to_build: Vec<i64>,
) -> Vec<DatumWithOid<'static>> {
    let mut ids: Vec<i64> = Vec::new();
    let mut built_entities: Vec<Option<JsonbDatum>> = Vec::new();
    let mut given_entities: Vec<Option<String>> = Vec::new();
    let mut previous_states: Vec<Option<String>> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for e in run {
        let built_entity = match &e.entity {
            Some(_) => None,
            None => built.and_then(|b| b.get(&e.id).copied().flatten()),
        };
        for name in &e.events {
            ids.push(e.id);
            built_entities.push(built_entity);
            given_entities.push(e.entity.clone());
            previous_states.push(e.previous_state.clone());
            names.push(name.clone());
        }
    }
    let to_build = if built.is_some() { Vec::new() } else { to_build };
    vec![
        ids.into(),
        built_entities.into(),
        previous_states.into(),
        run[0].source.entity_type().into(),
        names.into(),
        to_build.into(),
        given_entities.into(),
    ]
}

/// A tracked table's events, its entity built beforehand (tracked_entity). $1 the entity's id, $2
/// its events' names in order, $3 its JSON (NULL: no such row, no events), $4 the entity type, $5
/// its state when the transaction began, $6 the administration column, $7 the state column (NULL:
/// none).
const RECORD_TRACKED: &str = "
    INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, state, entity, previous_state)
    SELECT coalesce((entity ->> $6)::bigint, 1), e.name, $4, $1, entity ->> $7, entity, $5
    FROM (SELECT $3::jsonb AS entity) AS x, unnest($2) WITH ORDINALITY AS e(name, position)
    WHERE entity IS NOT NULL
    ORDER BY e.position";

/// A tracked row as its events carry it: the row as JSON without the excluded columns. $1 entity
/// id, $2 the excluded columns.
const TRACKED_ENTITY: &str = "SELECT (to_jsonb(t) - $2::text[])::text FROM {table} AS t WHERE t.{id} = $1";

/// A tracked table's statement: its name (as regclass prints it) and id column, quoted.
fn tracked_sql(template: &str, table: &TrackedTable) -> String {
    template.replace("{table}", &table.table).replace("{id}", &pgrx::spi::quote_identifier(&table.id_column))
}

/// The tracked row `id` as JSON, None if there is none. Built as the table's owner under
/// SECURITY_RESTRICTED_OPERATION, never as billhook's owner: turning a row into JSON runs code of
/// whoever defined its columns' types (casts to json, output functions), which must not get rights
/// the table's owner does not have, nor change the session it runs in. It is what Postgres does
/// for REFRESH MATERIALIZED VIEW.
fn tracked_entity(table: &TrackedTable, id: i64) -> Option<String> {
    use pg_sys::BuiltinOid::*;
    let restricted = (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32;
    as_role(table.owner, restricted, |client| {
        with_kept_plan(&tracked_sql(TRACKED_ENTITY, table), &[INT8OID.oid(), TEXTARRAYOID.oid()], |plan| {
            client.select(plan, None, &[id.into(), table.excluded_columns.clone().into()])?.first().get_one::<String>()
        })
        .unwrap_or_else(|e| error!("billhook could not read {} {id}: {e}", table.entity_type))
    })
}

/// Writes the events in order; returns how many. Does nothing when billhook's outbox is gone (the
/// extension dropped in this very transaction).
pub fn record(events: &[EntityEvents]) -> u64 {
    // A commit of billhook's own entities looks the outbox up once, in as_outbox_owner.
    let reads_tracked_rows = events.iter().any(|e| matches!((&e.source, &e.entity), (Source::Tracked(_), None)));
    if reads_tracked_rows && outbox().is_none() {
        return 0;
    }
    // Tracked rows are read first, as their tables' owners; the events are written as the outbox's.
    let events: Vec<Cow<EntityEvents>> = events
        .iter()
        .map(|e| match (&e.source, &e.entity) {
            (Source::Tracked(table), None) => {
                Cow::Owned(EntityEvents { entity: tracked_entity(table, e.id), ..e.clone() })
            }
            _ => Cow::Borrowed(e),
        })
        .collect();
    as_outbox_owner(|client, outbox| {
        let mut recorded = 0;
        let mut current: Option<bool> = None;
        for run in runs_of_one_kind(events.iter().map(Cow::as_ref)) {
            let written = match &run[0].source {
                Source::Catalog(kind) => {
                    let to_build = ids_to_build(&run);
                    let current = *current.get_or_insert_with(|| install_is_current(client, outbox));
                    let built = if current { entities_from_rows(*kind, &to_build) } else { None };
                    let entities = if built.is_some() { Entities::Given } else { Entities::BuiltWithSql };
                    Statement::Record(outbox, entities).with_plan(*kind, |plan| {
                        let arguments = record_arguments(&run, built.as_ref(), to_build);
                        client.update(plan, None, &arguments).map(|table| table.len() as u64)
                    })
                }
                Source::Tracked(table) => {
                    let entity = run[0];
                    let args: Vec<DatumWithOid> = vec![
                        entity.id.into(),
                        entity.events.clone().into(),
                        entity.entity.as_deref().into(),
                        entity.source.entity_type().into(),
                        entity.previous_state.as_deref().into(),
                        table.administration_column.as_deref().into(),
                        table.state_column.as_deref().into(),
                    ];
                    use pg_sys::BuiltinOid::*;
                    let types = [INT8OID, TEXTARRAYOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID].map(|t| t.oid());
                    with_kept_plan(RECORD_TRACKED, &types, |plan| {
                        client.update(plan, None, &args).map(|table| table.len() as u64)
                    })
                }
            };
            recorded += written
                .unwrap_or_else(|e| error!("billhook could not record {} events: {e}", run[0].source.entity_type()));
        }
        recorded
    })
    .unwrap_or(0)
}

/// The entities in order, cut into runs that one statement records: neighbours of the same
/// catalog kind go together; a tracked table's entity goes alone.
fn runs_of_one_kind<'a>(events: impl IntoIterator<Item = &'a EntityEvents>) -> Vec<Vec<&'a EntityEvents>> {
    let mut runs: Vec<Vec<&EntityEvents>> = Vec::new();
    for entity in events {
        match (runs.last_mut(), &entity.source) {
            (Some(run), Source::Catalog(kind)) if matches!(run[0].source, Source::Catalog(k) if k == *kind) => {
                run.push(entity)
            }
            _ => runs.push(vec![entity]),
        }
    }
    runs
}

/// The entity's JSON as its events carry it, or None if it does not exist.
pub fn snapshot(kind: &Source, id: i64) -> Option<String> {
    match kind {
        Source::Catalog(kind) => as_outbox_owner(|client, _| {
            Statement::Snapshot
                .with_plan(*kind, |plan| client.select(plan, None, &[id.into()])?.first().get_one::<String>())
                .unwrap_or_else(|e| error!("billhook could not read {} {id}: {e}", kind.entity_type()))
        })
        .flatten(),
        Source::Tracked(table) => tracked_entity(table, id),
    }
}

/// The row of `billhook.tracked_tables` of this table, read as the outbox owner (applications
/// need no rights on it); None if it is not tracked.
pub fn tracked_table(relation: pg_sys::Oid) -> Option<TrackedTable> {
    const READ: &str = "
        SELECT relation::regclass::text, (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = relation),
               entity_type, category, id_column, administration_column, state_column,
               ARRAY(SELECT key FROM jsonb_each_text(state_events) ORDER BY key),
               ARRAY(SELECT value FROM jsonb_each_text(state_events) ORDER BY key),
               excluded_columns
        FROM billhook.tracked_tables WHERE relation = $1::oid";
    as_outbox_owner(|client, _| {
        let rows = client
            .select(READ, None, &[relation.into()])
            .unwrap_or_else(|e| error!("billhook could not read its tracked tables: {e}"));
        let row = rows.into_iter().next()?;
        let text = |n: usize| row.get::<String>(n).unwrap_or_else(|e| error!("tracked_tables column {n}: {e}"));
        let texts = |n: usize| {
            row.get::<Vec<String>>(n).unwrap_or_else(|e| error!("tracked_tables column {n}: {e}")).unwrap_or_default()
        };
        Some(TrackedTable {
            table: text(1)?,
            owner: row.get::<pg_sys::Oid>(2).unwrap_or_else(|e| error!("tracked_tables owner: {e}"))?,
            entity_type: text(3)?,
            category: text(4)?,
            id_column: text(5)?,
            administration_column: text(6),
            state_column: text(7),
            state_events: texts(8).into_iter().zip(texts(9)).collect(),
            excluded_columns: texts(10),
        })
    })
    .flatten()
}

/// Runs `f` in an SPI connection as the owner of `billhook.events`, like a SECURITY DEFINER
/// function. None when billhook's outbox does not exist.
fn as_outbox_owner<R>(f: impl FnOnce(&mut SpiClient<'_>, Outbox) -> R) -> Option<R> {
    let outbox = outbox()?;
    Some(as_role(outbox.owner, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32, |client| f(client, outbox)))
}

/// Runs `f` in an SPI connection as `role` with the security context flags `context` added, with
/// `search_path` set to `pg_catalog, pg_temp`, generic plans, and an active snapshot (commit hooks
/// run without one).
fn as_role<R>(role: pg_sys::Oid, context: i32, f: impl FnOnce(&mut SpiClient<'_>) -> R) -> R {
    unsafe {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(role, saved_context | context);
        let nest_level = pg_sys::NewGUCNestLevel();
        for (name, value) in [(c"search_path", c"pg_catalog, pg_temp"), (c"plan_cache_mode", c"force_generic_plan")] {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        // On an error, the transaction's abort restores the user, the settings and the snapshot.
        let result = Spi::connect_mut(f);
        pg_sys::PopActiveSnapshot();
        // Every setting made inside goes, as after REFRESH MATERIALIZED VIEW: a table owner's
        // code must not leave a search_path (or anything) behind in the committing session.
        pg_sys::AtEOXact_GUC(false, nest_level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
        result
    }
}

#[derive(Clone, Copy)]
struct Outbox {
    /// `billhook.events`.
    events: pg_sys::Oid,
    owner: pg_sys::Oid,
    /// Whether `billhook.events` has `previous_state` (0.6.0 and later).
    keeps_previous_state: bool,
    /// Whether the `<kind>_entities` functions exist (0.9.0 and later).
    builds_entity_sets: bool,
}

fn outbox() -> Option<Outbox> {
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"billhook".as_ptr(), true);
        if schema == pg_sys::InvalidOid {
            return None;
        }
        let events = pg_sys::get_relname_relid(c"events".as_ptr(), schema);
        if events == pg_sys::InvalidOid {
            return None;
        }
        let relation = PgRelation::with_lock(events, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let keeps_previous_state =
            pg_sys::get_attnum(events, c"previous_state".as_ptr()) != pg_sys::InvalidAttrNumber as pg_sys::AttrNumber;
        let argument = pg_sys::BuiltinOid::INT8ARRAYOID.oid().value();
        let entities = pg_sys::stringToQualifiedNameList(c"billhook.customer_entities".as_ptr());
        let builds_entity_sets = pg_sys::LookupFuncName(entities, 1, &argument, true) != pg_sys::InvalidOid;
        Some(Outbox { events, owner: (*relation.rd_rel).relowner, keeps_previous_state, builds_entity_sets })
    }
}
