//! Rows of billhook's own tables read through a btree index on a bigint column, with the snapshot
//! the commit's statement would have used, and their values as entity JSON writes them: what the
//! entity's SQL query does, without the executor's start-up for each commit.
//!
//! A table is read so only when that gives the rows the SQL would read: a plain table without
//! inheritance children, readable by the current user with no row-level security applying to it,
//! every column the entity needs there with the type it expects, and a valid btree index of bigint
//! order leading with the key column, one the planner would use for this transaction's snapshots.
//! Otherwise `Table::open` says so and the caller builds the entity with SQL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::{direct_function_call, direct_function_call_as_datum, IntoDatum};

use super::jsonb::Object;
use super::numeric;

/// How a column's value appears in entity JSON, and so which type it must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// bigint, as a string (64-bit safe in JavaScript).
    Id,
    /// text or char(n), as a string.
    Text,
    /// integer, as a number.
    Integer,
    /// date, as jsonb_build_object writes one.
    Date,
    /// timestamptz, as billhook.json_time writes one.
    Time,
    /// numeric, as a string (decimal safe).
    Decimal,
}

impl Form {
    fn accepts(self, type_oid: Oid) -> bool {
        match self {
            Form::Id => type_oid == pg_sys::INT8OID,
            Form::Text => type_oid == pg_sys::TEXTOID || type_oid == pg_sys::BPCHAROID,
            Form::Integer => type_oid == pg_sys::INT4OID,
            Form::Date => type_oid == pg_sys::DATEOID,
            Form::Time => type_oid == pg_sys::TIMESTAMPTZOID,
            Form::Decimal => type_oid == pg_sys::NUMERICOID,
        }
    }
}

/// A column the entity reads: its name (also its key in the entity's JSON, when written as it is),
/// its form, and whether it is written as it is.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub form: Form,
    pub as_is: bool,
}

pub const fn column(name: &'static str, form: Form) -> Column {
    Column { name, form, as_is: true }
}

/// A column read for a computed value only.
pub const fn input(name: &'static str, form: Form) -> Column {
    Column { name, form, as_is: false }
}

/// Why an entity cannot be built from its rows here.
#[derive(Debug)]
pub struct Unreadable;

/// An open table of billhook's with its key index, the columns the entity reads, and a slot to
/// read its rows into. Closed (its locks kept to the end of the transaction, as the executor does)
/// when dropped.
pub struct Table {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    columns: &'static [Column],
    /// Each of `columns`' position in the row.
    positions: Vec<usize>,
}

impl Table {
    /// `billhook.<name>`, read by `key` (a bigint column) and returning `columns`.
    pub fn open(name: &CStr, key: &'static str, columns: &'static [Column]) -> Result<Table, Unreadable> {
        unsafe {
            let schema = pg_sys::get_namespace_oid(c"billhook".as_ptr(), true);
            let relation = pg_sys::get_relname_relid(name.as_ptr(), schema);
            if relation == pg_sys::InvalidOid {
                return Err(Unreadable);
            }
            let heap = pg_sys::table_open(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            // A table swapped in under the name while this waited for the lock is not the one locked.
            if pg_sys::get_relname_relid(name.as_ptr(), schema) != relation || !reads_as_sql(heap) {
                pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
                return Err(Unreadable);
            }
            let reading = (relation, key);
            let cached = LAYOUTS.with(|layouts| layouts.borrow().get(&reading).cloned());
            let found = match cached {
                Some(layout) if layout.holds(heap, key, columns) => {
                    open_key_index(heap, layout.key, layout.index).map(|index| (layout.positions, index))
                }
                _ => None,
            }
            .or_else(|| {
                let positions: Vec<usize> =
                    columns.iter().map(|c| position_of(heap, c.name, c.form)).collect::<Option<_>>()?;
                let key = position_of(heap, key, Form::Id)? + 1;
                let index = find_key_index(heap, key)?;
                let layout = Layout { positions: positions.clone(), key, index: (*index).rd_id };
                LAYOUTS.with(|layouts| layouts.borrow_mut().insert(reading, layout));
                Some((positions, index))
            });
            match found {
                Some((positions, index)) => {
                    let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
                    Ok(Table { heap, index, slot, columns, positions })
                }
                None => {
                    pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
                    Err(Unreadable)
                }
            }
        }
    }

    /// Calls `each` with every row whose key is `key`, as the active snapshot sees it.
    pub fn for_each(&self, key: i64, mut each: impl FnMut(&Row) -> Result<(), Unreadable>) -> Result<(), Unreadable> {
        unsafe {
            let mut scan_key: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyInit(
                &mut scan_key,
                1,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::Oid::from(pg_sys::F_INT8EQ),
                Datum::from(key),
            );
            let scan = pg_sys::index_beginscan(self.heap, self.index, pg_sys::GetActiveSnapshot(), 1, 0);
            pg_sys::index_rescan(scan, &mut scan_key, 1, std::ptr::null_mut(), 0);
            let mut outcome = Ok(());
            while outcome.is_ok()
                && pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, self.slot)
            {
                pg_sys::slot_getallattrs(self.slot);
                let natts = (*(*self.slot).tts_tupleDescriptor).natts as usize;
                let row = Row {
                    values: std::slice::from_raw_parts((*self.slot).tts_values, natts),
                    nulls: std::slice::from_raw_parts((*self.slot).tts_isnull, natts),
                    table: self,
                };
                outcome = each(&row);
            }
            pg_sys::ExecClearTuple(self.slot);
            pg_sys::index_endscan(scan);
            outcome
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::table_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// A table read by a key column: the table, the key's name. Each is read for one list of columns.
type Reading = (pg_sys::Oid, &'static str);

/// Where a reading's columns, key and key index were found.
#[derive(Clone)]
struct Layout {
    positions: Vec<usize>,
    /// The key's attribute number.
    key: usize,
    index: pg_sys::Oid,
}

impl Layout {
    /// Whether `heap` still has `columns` and `key` where they were.
    unsafe fn holds(&self, heap: pg_sys::Relation, key: &str, columns: &[Column]) -> bool {
        let attributes = attributes(heap);
        let at = |position: usize, name: &str, form: Form| {
            attributes.get(position).is_some_and(|a| is_column(a, name, form))
        };
        at(self.key - 1, key, Form::Id)
            && self.positions.len() == columns.len()
            && columns.iter().zip(&self.positions).all(|(c, &p)| at(p, c.name, c.form))
    }
}

thread_local! {
    /// Looked up once per backend, checked at every use: a table can change under a backend.
    static LAYOUTS: RefCell<HashMap<Reading, Layout>> = RefCell::new(HashMap::new());
}

/// Whether reading `heap` directly gives the rows its entity's SQL reads as the outbox's owner: a
/// plain table (no partitions, no inheritance children the SQL would read too), readable by the
/// current user, and no row-level security that would apply to them.
unsafe fn reads_as_sql(heap: pg_sys::Relation) -> bool {
    let class = (*heap).rd_rel;
    let relation = (*heap).rd_id;
    (*class).relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
        && !(*class).relhassubclass
        && pg_sys::check_enable_rls(relation, pg_sys::InvalidOid, true)
            != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        && pg_sys::pg_class_aclcheck(relation, pg_sys::GetUserId(), pg_sys::ACL_SELECT as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
}

unsafe fn attributes<'a>(heap: pg_sys::Relation) -> &'a [pg_sys::FormData_pg_attribute] {
    let descriptor = (*heap).rd_att;
    (*descriptor).attrs.as_slice((*descriptor).natts as usize)
}

/// The position of column `name` in `heap`'s rows, if it has that column with a type `form` takes.
unsafe fn position_of(heap: pg_sys::Relation, name: &str, form: Form) -> Option<usize> {
    attributes(heap).iter().position(|a| is_column(a, name, form))
}

unsafe fn is_column(attribute: &pg_sys::FormData_pg_attribute, name: &str, form: Form) -> bool {
    !attribute.attisdropped
        && CStr::from_ptr(attribute.attname.data.as_ptr()).to_bytes() == name.as_bytes()
        && form.accepts(attribute.atttypid)
}

/// A btree index of `heap` to read it by `key` (an attribute number): a unique one if there is one.
unsafe fn find_key_index(heap: pg_sys::Relation, key: usize) -> Option<pg_sys::Relation> {
    let indexes = pg_sys::RelationGetIndexList(heap);
    let mut found: Option<pg_sys::Relation> = None;
    for n in 0..pg_sys::list_length(indexes) {
        let Some(index) = open_key_index(heap, key, pg_sys::list_nth_oid(indexes, n)) else { continue };
        if found.is_none() || (*(*index).rd_index).indisunique {
            if let Some(previous) = found.replace(index) {
                pg_sys::index_close(previous, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
        } else {
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
    pg_sys::list_free(indexes);
    found
}

/// Index `oid`, opened, if it still is a valid btree index of `heap` without predicate whose first
/// column is `key`, ordered as bigint is, and one the planner would use for this transaction's
/// snapshots: an index built while some of them were taken may lack rows they see (indcheckxmin).
unsafe fn open_key_index(heap: pg_sys::Relation, key: usize, oid: pg_sys::Oid) -> Option<pg_sys::Relation> {
    let index = pg_sys::try_relation_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    if index.is_null() {
        return None;
    }
    let form = (*index).rd_index;
    let usable = !form.is_null()
        && (*(*index).rd_rel).relkind == pg_sys::RELKIND_INDEX as std::ffi::c_char
        && (*form).indrelid == (*heap).rd_id
        && (*form).indnkeyatts >= 1
        && (*form).indkey.values.as_slice(1)[0] as usize == key
        && (*form).indisvalid
        && (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
        && *(*index).rd_opfamily == pg_sys::INTEGER_BTREE_FAM_OID
        && (!(*form).indcheckxmin
            || pg_sys::TransactionIdPrecedes(
                pg_sys::HeapTupleHeaderGetXmin((*(*index).rd_indextuple).t_data),
                pg_sys::TransactionXmin,
            ))
        && pg_sys::RelationGetIndexPredicate(index).is_null();
    if usable {
        Some(index)
    } else {
        pg_sys::relation_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        None
    }
}

/// A row of a `Table`, its columns addressed by name.
pub struct Row<'a> {
    values: &'a [Datum],
    nulls: &'a [bool],
    table: &'a Table,
}

impl Row<'_> {
    /// Writes the columns that appear as they are, under their names.
    pub fn write_as_is(&self, object: &mut Object) -> Result<(), Unreadable> {
        for (column, position) in self.table.columns.iter().zip(&self.table.positions) {
            if !column.as_is {
                continue;
            }
            if self.nulls[*position] {
                object.null(column.name);
            } else {
                Value { form: column.form, datum: self.values[*position] }.write(object, column.name)?;
            }
        }
        Ok(())
    }

    /// The value of column `name`, None if it is null.
    pub fn value(&self, name: &str) -> Result<Option<Value>, Unreadable> {
        let (column, position) =
            self.table.columns.iter().zip(&self.table.positions).find(|(c, _)| c.name == name).ok_or(Unreadable)?;
        if self.nulls[*position] {
            return Ok(None);
        }
        Ok(Some(Value { form: column.form, datum: self.values[*position] }))
    }

    /// A bigint column's value.
    pub fn id(&self, name: &str) -> Result<Option<i64>, Unreadable> {
        Ok(self.value(name)?.map(|v| v.datum.value() as i64))
    }
}

/// A column's value, not null. Its datum may point into the row's buffer: used within the callback
/// of `Table::for_each` that was given the row, never kept.
#[derive(Clone, Copy)]
pub struct Value {
    form: Form,
    datum: Datum,
}

impl Value {
    pub fn datum(self) -> Datum {
        self.datum
    }

    /// Writes the value under `key` as it appears in entity JSON: a time that is not finite as
    /// null, as to_char gives it.
    pub fn write(self, object: &mut Object, key: &'static str) -> Result<(), Unreadable> {
        match self.form {
            Form::Id => object.string(key, Some(&(self.datum.value() as i64).to_string())),
            Form::Integer => {
                object.number(key, numeric::integer(self.datum.value() as i32)?);
                Ok(())
            }
            Form::Text => object.string(key, Some(unsafe { text_of(self.datum) }?)),
            Form::Decimal => object.string(key, Some(&decimal_text(self.datum)?)),
            Form::Date => unsafe {
                let encoded =
                    pg_sys::JsonEncodeDateTime(std::ptr::null_mut(), self.datum, pg_sys::DATEOID, std::ptr::null());
                object.string(key, Some(utf8(CStr::from_ptr(encoded).to_bytes())?))
            },
            Form::Time => match crate::pg_time::iso_utc(self.datum.value() as i64) {
                Some(time) => object.string(key, Some(&time)),
                None => object.string(key, json_time(self.datum)?.as_deref()),
            },
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Unreadable> {
    std::str::from_utf8(bytes).map_err(|_| Unreadable)
}

/// A text or char(n) datum's characters (char(n) with its padding, as its output function gives),
/// valid while the datum is (a detoasted copy lives in the current memory context).
unsafe fn text_of<'a>(datum: Datum) -> Result<&'a str, Unreadable> {
    unsafe {
        let text = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        utf8(pgrx::varlena::varlena_to_byte_slice(text))
    }
}

/// A numeric datum as numeric's output function writes it.
pub fn decimal_text(datum: Datum) -> Result<String, Unreadable> {
    let text = unsafe { direct_function_call::<&CStr>(pg_sys::numeric_out, &[Some(datum)]) }.ok_or(Unreadable)?;
    utf8(text.to_bytes()).map(str::to_string)
}

/// billhook.json_time: `to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`, through
/// the same functions, for the times pg_time::iso_utc leaves to it; None for a time that is not
/// finite.
fn json_time(datum: Datum) -> Result<Option<String>, Unreadable> {
    let utc = "UTC".into_datum();
    let format = r#"YYYY-MM-DD"T"HH24:MI:SS.US"Z""#.into_datum();
    unsafe {
        let local = direct_function_call_as_datum(pg_sys::timestamptz_zone, &[utc, Some(datum)]).ok_or(Unreadable)?;
        match direct_function_call::<&str>(pg_sys::timestamp_to_char, &[Some(local), format]) {
            Some(text) => Ok(Some(text.to_string())),
            None => Ok(None),
        }
    }
}
