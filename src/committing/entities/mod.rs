//! The entities of billhook's own tables as of commit, built from their rows: the JSON that
//! sql/entities.sql's `<kind>_entities` functions build, with the same values through the same
//! Postgres functions (numeric arithmetic and output, to_char, jsonb's date format), read through
//! the tables' indexes with the snapshot the commit's statement would have had. The SQL functions
//! remain the definition (billhook.entity_json and the docs use them); tests/test_entities.py
//! checks that both give the same JSON for generated rows, and a commit builds with SQL whenever a
//! table is not as expected here (rows.rs).
//!
//! Why not the SQL: the statement that builds an entity starts and runs a plan of joins,
//! aggregates and an SQL expression per key for every commit; the rows are a few index lookups
//! away. Only an install at this library's version builds here (outbox.rs): an older one's SQL
//! may define its entities otherwise.

mod jsonb;
mod rows;

pub use jsonb::JsonbDatum;

use std::collections::HashMap;

use pgrx::pg_sys::{self, Datum};
use pgrx::{direct_function_call_as_datum, IntoDatum, PgMemoryContexts};

use crate::catalog::EntityKind;
use jsonb::Object;
use rows::{column, input, Column, Form::*, Row, Table, Unreadable};

const CUSTOMER: &[Column] = &[
    column("id", Id),
    column("administration_id", Id),
    column("customer_number", Text),
    column("company_name", Text),
    column("firstname", Text),
    column("lastname", Text),
    column("attention", Text),
    column("address1", Text),
    column("address2", Text),
    column("zipcode", Text),
    column("city", Text),
    column("country", Text),
    column("email", Text),
    column("phone", Text),
    column("tax_number", Text),
    column("chamber_of_commerce", Text),
    column("bank_account", Text),
    column("send_invoices_to_email", Text),
    column("created_at", Time),
    column("updated_at", Time),
];

const INVOICE: &[Column] = &[
    column("id", Id),
    column("administration_id", Id),
    column("customer_id", Id),
    column("invoice_number", Text),
    column("state", Text),
    column("invoice_date", Date),
    column("due_date", Date),
    column("currency", Text),
    column("discount", Decimal),
    column("reference", Text),
    column("language", Text),
    column("payment_conditions", Text),
    column("sent_at", Time),
    column("paid_at", Time),
    column("recurring_invoice_id", Id),
    column("created_at", Time),
    column("updated_at", Time),
];

const QUOTATION: &[Column] = &[
    column("id", Id),
    column("administration_id", Id),
    column("customer_id", Id),
    column("quotation_number", Text),
    column("state", Text),
    column("quotation_date", Date),
    column("valid_until", Date),
    column("currency", Text),
    column("discount", Decimal),
    column("reference", Text),
    column("language", Text),
    column("pre_text", Text),
    column("sent_at", Time),
    column("accepted_at", Time),
    column("invoice_id", Id),
    column("created_at", Time),
    column("updated_at", Time),
];

/// The quotations converted to an invoice: the invoice's `quotation_id`.
const QUOTATION_OF_INVOICE: &[Column] = &[input("id", Id)];

const EXPENSE: &[Column] = &[
    column("id", Id),
    column("administration_id", Id),
    column("reference", Text),
    column("supplier_name", Text),
    column("description", Text),
    column("expense_date", Date),
    column("due_date", Date),
    column("currency", Text),
    column("amount", Decimal),
    column("tax_rate", Decimal),
    column("state", Text),
    column("approved_at", Time),
    column("paid_at", Time),
    column("created_at", Time),
    column("updated_at", Time),
];

const LINE: &[Column] = &[
    column("id", Id),
    column("description", Text),
    column("amount", Decimal),
    column("price", Decimal),
    column("tax_rate", Decimal),
    column("row_order", Integer),
    column("created_at", Time),
    column("updated_at", Time),
];

/// The tables one kind's entity reads, open and locked.
pub struct Tables {
    kind: EntityKind,
    main: Table,
    customers: Option<Table>,
    lines: Option<Table>,
    quotations_of_invoice: Option<Table>,
}

impl Tables {
    /// Opens and locks the tables of `kind`'s entity, or says they are not what the builders read
    /// (the caller then builds with SQL).
    pub fn open(kind: EntityKind) -> Result<Tables, Unreadable> {
        let customers = || Table::open(c"customers", "id", CUSTOMER);
        let alone = |main| Tables { kind, main, customers: None, lines: None, quotations_of_invoice: None };
        Ok(match kind {
            EntityKind::Customer => alone(customers()?),
            EntityKind::Expense => alone(Table::open(c"expenses", "id", EXPENSE)?),
            EntityKind::Invoice => Tables {
                kind,
                main: Table::open(c"invoices", "id", INVOICE)?,
                customers: Some(customers()?),
                lines: Some(Table::open(c"invoice_lines", "invoice_id", LINE)?),
                quotations_of_invoice: Some(Table::open(c"quotations", "invoice_id", QUOTATION_OF_INVOICE)?),
            },
            EntityKind::Quotation => Tables {
                kind,
                main: Table::open(c"quotations", "id", QUOTATION)?,
                customers: Some(customers()?),
                lines: Some(Table::open(c"quotation_lines", "quotation_id", LINE)?),
                quotations_of_invoice: None,
            },
            // A recurring invoice's events are raised by the scheduler with their entity.
            EntityKind::RecurringInvoice => return Err(Unreadable),
        })
    }

    /// The entities `ids` as of now, in order (None: no such row), in the current memory context.
    /// Call with an active snapshot, taken after `open`, whose command id sees the transaction's
    /// last changes.
    pub fn build(&self, ids: &[i64]) -> Result<Vec<Option<JsonbDatum>>, Unreadable> {
        let mut built = Building {
            entities_context: PgMemoryContexts::For(PgMemoryContexts::CurrentMemoryContext.value()),
            customers: HashMap::new(),
            customers_context: PgMemoryContexts::new("billhook customers"),
        };
        // Values of numeric arithmetic and output, strings and a builder's state are palloc'd:
        // freed entity by entity, so a commit of many entities holds one's worth.
        let mut scratch = PgMemoryContexts::new("billhook entity");
        ids.iter()
            .map(|&id| {
                let entity = unsafe { scratch.switch_to(|_| self.entity(id, &mut built)) };
                unsafe { scratch.reset() };
                entity
            })
            .collect()
    }

    fn entity(&self, id: i64, built: &mut Building) -> Result<Option<JsonbDatum>, Unreadable> {
        let mut entity = None;
        self.main.for_each(id, |row| {
            entity = self.entity_of_row(row, built)?;
            Ok(())
        })?;
        Ok(entity)
    }

    fn entity_of_row(&self, row: &Row, built: &mut Building) -> Result<Option<JsonbDatum>, Unreadable> {
        let mut object = Object::new();
        row.write_as_is(&mut object)?;
        // The nested customer, joined: no customer, no entity.
        if let Some(table) = &self.customers {
            let customer_id = row.id("customer_id")?.ok_or(Unreadable)?;
            let Some(customer) = built.customer(table, customer_id)? else {
                return Ok(None);
            };
            object.jsonb("customer", customer);
        }
        if let Some(table) = &self.quotations_of_invoice {
            let id = row.id("id")?.ok_or(Unreadable)?;
            let mut first: Option<i64> = None;
            table.for_each(id, |quotation| {
                let quotation_id = quotation.id("id")?.ok_or(Unreadable)?;
                first = Some(first.map_or(quotation_id, |f| f.min(quotation_id)));
                Ok(())
            })?;
            object.string("quotation_id", first.map(|q| q.to_string()).as_deref())?;
        }
        if self.kind == EntityKind::Expense {
            let amount = row.value("amount")?.ok_or(Unreadable)?.datum();
            let tax_rate = row.value("tax_rate")?.ok_or(Unreadable)?.datum();
            // round(amount * (1 + tax_rate / 100), 2)
            let factor = numeric::add(numeric::integer(1)?, numeric::div(tax_rate, numeric::integer(100)?)?)?;
            let total = numeric::round(numeric::mul(amount, factor)?)?;
            object.string("total_price_incl_tax", Some(&rows::decimal_text(total)?))?;
        }
        if let Some(table) = &self.lines {
            let lines = Lines::of(table, row.id("id")?.ok_or(Unreadable)?)?;
            object.array("lines", lines.objects);
            let discount = row.value("discount")?.ok_or(Unreadable)?.datum();
            let net = numeric::discounted(lines.net, discount)?;
            let tax = numeric::discounted(lines.tax, discount)?;
            object.string("total_price_excl_tax", Some(&rows::decimal_text(net)?))?;
            object.string("total_tax", Some(&rows::decimal_text(tax)?))?;
            object.string("total_price_incl_tax", Some(&rows::decimal_text(numeric::add(net, tax)?)?))?;
        }
        Ok(Some(object.finish().copied_into(&built.entities_context)))
    }
}

/// What a build keeps from one entity to the next.
struct Building {
    /// Where the entities go: the caller's memory context.
    entities_context: PgMemoryContexts,
    /// billhook.customer_object of the customers read so far, in `customers_context`.
    customers: HashMap<i64, Option<JsonbDatum>>,
    customers_context: PgMemoryContexts,
}

impl Building {
    /// billhook.customer_object of a customer, read once per build.
    fn customer(&mut self, table: &Table, id: i64) -> Result<Option<JsonbDatum>, Unreadable> {
        if let Some(known) = self.customers.get(&id) {
            return Ok(*known);
        }
        let mut customer = None;
        table.for_each(id, |row| {
            let mut object = Object::new();
            row.write_as_is(&mut object)?;
            customer = Some(object.finish().copied_into(&self.customers_context));
            Ok(())
        })?;
        self.customers.insert(id, customer);
        Ok(customer)
    }
}

/// A document's lines as billhook.document_lines gives them: their objects in order, and the sums
/// the totals are made of (line totals rounded to cents, the tax per line; None: no lines).
struct Lines {
    objects: Vec<JsonbDatum>,
    net: Option<Datum>,
    tax: Option<Datum>,
}

impl Lines {
    fn of(table: &Table, document_id: i64) -> Result<Lines, Unreadable> {
        let mut lines: Vec<(i32, i64, JsonbDatum)> = Vec::new();
        let (mut net, mut tax): (Option<Datum>, Option<Datum>) = (None, None);
        table.for_each(document_id, |row| {
            let amount = row.value("amount")?.ok_or(Unreadable)?.datum();
            let price = row.value("price")?.ok_or(Unreadable)?.datum();
            let tax_rate = row.value("tax_rate")?.ok_or(Unreadable)?.datum();
            // round(amount * price, 2), and that * tax_rate / 100
            let total = numeric::round(numeric::mul(amount, price)?)?;
            let line_tax = numeric::div(numeric::mul(total, tax_rate)?, numeric::integer(100)?)?;
            net = Some(match net {
                Some(sum) => numeric::add(sum, total)?,
                None => total,
            });
            tax = Some(match tax {
                Some(sum) => numeric::add(sum, line_tax)?,
                None => line_tax,
            });
            let mut object = Object::new();
            row.write_as_is(&mut object)?;
            object.string("total_price_excl_tax", Some(&rows::decimal_text(total)?))?;
            let row_order = row.value("row_order")?.ok_or(Unreadable)?.datum().value() as i32;
            // In the entity's memory, which lives until the entity is finished.
            lines.push((row_order, row.id("id")?.ok_or(Unreadable)?, object.finish()));
            Ok(())
        })?;
        lines.sort_by_key(|(row_order, id, _)| (*row_order, *id));
        Ok(Lines { objects: lines.into_iter().map(|(_, _, line)| line).collect(), net, tax })
    }
}

/// numeric arithmetic through Postgres's own functions, so that every scale and rounding is what
/// the SQL gives.
mod numeric {
    use super::*;

    fn call(function: unsafe fn(pg_sys::FunctionCallInfo) -> Datum, arguments: &[Datum]) -> Result<Datum, Unreadable> {
        let arguments: Vec<Option<Datum>> = arguments.iter().copied().map(Some).collect();
        unsafe { direct_function_call_as_datum(function, &arguments) }.ok_or(Unreadable)
    }

    /// An integer constant as SQL turns it into numeric.
    pub fn integer(value: i32) -> Result<Datum, Unreadable> {
        call(pg_sys::int4_numeric, &[Datum::from(value)])
    }

    pub fn add(a: Datum, b: Datum) -> Result<Datum, Unreadable> {
        call(pg_sys::numeric_add, &[a, b])
    }

    pub fn sub(a: Datum, b: Datum) -> Result<Datum, Unreadable> {
        call(pg_sys::numeric_sub, &[a, b])
    }

    pub fn mul(a: Datum, b: Datum) -> Result<Datum, Unreadable> {
        call(pg_sys::numeric_mul, &[a, b])
    }

    pub fn div(a: Datum, b: Datum) -> Result<Datum, Unreadable> {
        call(pg_sys::numeric_div, &[a, b])
    }

    /// round(value, 2)
    pub fn round(value: Datum) -> Result<Datum, Unreadable> {
        call(pg_sys::numeric_round, &[value, 2i32.into_datum().ok_or(Unreadable)?])
    }

    /// billhook.discounted: round(coalesce(amount, 0) * (1 - discount / 100), 2)
    pub fn discounted(amount: Option<Datum>, discount: Datum) -> Result<Datum, Unreadable> {
        let amount = match amount {
            Some(amount) => amount,
            None => integer(0)?,
        };
        let factor = sub(integer(1)?, div(discount, integer(100)?)?)?;
        round(mul(amount, factor)?)
    }
}
