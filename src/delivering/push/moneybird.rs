//! Moneybird's JSON of each entity, made from billhook's entity JSON, for webhooks with
//! `payload_format => 'moneybird'` (references 002 and 003). Moneybird's event, entity type and state
//! names are the catalog's (catalog/moneybird_names.rs). Pure: no Postgres calls.

use serde_json::{json, Map, Value};

use crate::catalog::moneybird_names::state;
use crate::catalog::EntityKind;

/// Moneybird's JSON of an entity, from billhook's: Moneybird's field names, ids and decimals as
/// strings the way Moneybird writes them ("300.0"), times to the millisecond, empty text as "",
/// and the fields billhook does not keep (workflows, ledger accounts, SEPA, notes) empty.
pub fn entity(kind: EntityKind, billhook: &Value) -> Value {
    let b = Fields(billhook);
    match kind {
        EntityKind::Customer => contact(billhook),
        EntityKind::Invoice => {
            let mut invoice = document_head(&b);
            invoice.extend(object(json!({
                "invoice_id": b.get("invoice_number"),
                "workflow_id": null,
                "document_style_id": null,
                "state": b.get("state"),
                "invoice_date": b.get("invoice_date"),
                "due_date": b.get("due_date"),
                "payment_conditions": b.get("payment_conditions"),
                "paid_at": b.time("paid_at"),
                "sent_at": b.time("sent_at"),
                "payments": [],
                "custom_fields": [],
                "notes": [],
                "attachments": [],
            })));
            invoice.extend(document_tail(&b));
            Value::Object(invoice)
        }
        EntityKind::Quotation => {
            let mut estimate = document_head(&b);
            estimate.extend(object(json!({
                "estimate_id": b.get("quotation_number"),
                "workflow_id": null,
                "document_style_id": null,
                "state": b.0.get("state").and_then(Value::as_str).map(|s| state(kind, s)),
                "estimate_date": b.get("quotation_date"),
                "due_date": b.get("valid_until"),
                "pre_text": b.get("pre_text"),
                "sent_at": b.time("sent_at"),
                "accepted_at": b.time("accepted_at"),
                "custom_fields": [],
                "notes": [],
                "attachments": [],
            })));
            estimate.extend(document_tail(&b));
            Value::Object(estimate)
        }
        EntityKind::Expense => json!({
            "id": b.get("id"),
            "contact_id": null,
            "contact": {"company_name": b.text("supplier_name")},
            "reference": b.get("reference"),
            "date": b.get("expense_date"),
            "due_date": b.get("due_date"),
            "state": b.get("state"),
            "currency": b.get("currency"),
            "total_price_excl_tax": b.decimal("amount"),
            "total_price_incl_tax": b.decimal("total_price_incl_tax"),
            "details": [{
                "description": b.text("description"),
                "price": b.decimal("amount"),
                "amount": "1 x",
                "tax_rate": b.decimal("tax_rate"),
            }],
            "paid_at": b.time("paid_at"),
            "created_at": b.time("created_at"),
            "updated_at": b.time("updated_at"),
        }),
        EntityKind::RecurringInvoice => {
            let mut recurring = document_head(&b);
            recurring.extend(object(json!({
                "start_date": b.get("start_date"),
                "invoice_date": b.get("next_date"),
                "last_date": b.get("end_date"),
                "active": b.get("active"),
                "frequency_type": b.get("frequency"),
                "frequency": b.get("frequency_interval"),
                "payment_conditions": b.get("payment_conditions"),
                "details": details(&b),
            })));
            Value::Object(recurring)
        }
    }
}

/// What Moneybird's invoices, estimates and recurring invoices begin with.
fn document_head(b: &Fields) -> Map<String, Value> {
    object(json!({
        "id": b.get("id"),
        "contact_id": b.get("customer_id"),
        "contact": b.0.get("customer").filter(|c| !c.is_null()).map(contact),
        "reference": b.get("reference"),
        "language": b.get("language"),
        "currency": b.get("currency"),
        "discount": b.decimal("discount"),
        "created_at": b.time("created_at"),
        "updated_at": b.time("updated_at"),
    }))
}

/// Lines and totals of invoices and estimates.
fn document_tail(b: &Fields) -> Map<String, Value> {
    object(json!({
        "details": details(b),
        "total_price_excl_tax": b.decimal("total_price_excl_tax"),
        "total_price_incl_tax": b.decimal("total_price_incl_tax"),
    }))
}

fn details(b: &Fields) -> Value {
    let discount = b.0.get("discount").and_then(Value::as_str).and_then(|d| d.parse::<f64>().ok()).unwrap_or(0.0);
    let lines = b.0.get("lines").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    lines
        .iter()
        .map(|line| {
            let l = Fields(line);
            let with_discount =
                l.0.get("total_price_excl_tax").and_then(Value::as_str).map(|total| with_discount(total, discount));
            json!({
                "id": l.get("id"),
                "tax_rate_id": null,
                "ledger_account_id": null,
                "amount": l.0.get("amount").and_then(Value::as_str).map(|a| format!("{} x", quantity(a))),
                "description": l.get("description"),
                "price": l.decimal("price"),
                "row_order": l.get("row_order"),
                "total_price_excl_tax_with_discount": with_discount,
                "total_price_excl_tax_with_discount_base": with_discount,
                "tax_report_reference": [],
                "created_at": l.time("created_at"),
                "updated_at": l.time("updated_at"),
            })
        })
        .collect()
}

fn contact(customer: &Value) -> Value {
    let c = Fields(customer);
    let invoices_to = c.0.get("send_invoices_to_email").filter(|e| !e.is_null()).or(c.0.get("email"));
    let invoices_to = invoices_to.and_then(Value::as_str).unwrap_or_default();
    json!({
        "id": c.get("id"),
        "company_name": c.text("company_name"),
        "firstname": c.text("firstname"),
        "lastname": c.text("lastname"),
        "attention": c.text("attention"),
        "address1": c.text("address1"),
        "address2": c.text("address2"),
        "zipcode": c.text("zipcode"),
        "city": c.text("city"),
        "country": c.text("country"),
        "email": c.text("email"),
        "phone": c.text("phone"),
        "send_method": "email",
        "customer_id": c.text("customer_number"),
        "tax_number": c.text("tax_number"),
        "chamber_of_commerce": c.text("chamber_of_commerce"),
        "bank_account": c.text("bank_account"),
        "send_invoices_to_attention": c.text("attention"),
        "send_invoices_to_email": invoices_to,
        "send_estimates_to_attention": c.text("attention"),
        "send_estimates_to_email": invoices_to,
        "sepa_active": false,
        "sepa_iban": "",
        "sepa_bic": "",
        "sepa_mandate_id": "",
        "sepa_mandate_date": null,
        "created_at": c.time("created_at"),
        "updated_at": c.time("updated_at"),
        "notes": [],
        "custom_fields": [],
    })
}

/// Reads billhook's entity JSON.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn get(&self, key: &str) -> Value {
        self.0.get(key).cloned().unwrap_or(Value::Null)
    }

    /// Text as Moneybird writes it: "" for none.
    fn text(&self, key: &str) -> Value {
        match self.0.get(key) {
            Some(Value::Null) | None => Value::String(String::new()),
            Some(value) => value.clone(),
        }
    }

    fn decimal(&self, key: &str) -> Value {
        self.0.get(key).and_then(Value::as_str).map_or(Value::Null, |d| Value::String(decimal(d)))
    }

    fn time(&self, key: &str) -> Value {
        self.0.get(key).and_then(Value::as_str).map_or(Value::Null, |t| Value::String(milliseconds(t)))
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("json!({{…}}) is an object"),
    }
}

/// A decimal as Moneybird (Ruby's BigDecimal) writes it: no trailing zeros, at least one decimal.
pub fn decimal(text: &str) -> String {
    match text.split_once('.') {
        Some((whole, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            format!("{whole}.{}", if fraction.is_empty() { "0" } else { fraction })
        }
        None => format!("{text}.0"),
    }
}

/// A quantity without a needless fraction: "1", "1.5".
fn quantity(text: &str) -> String {
    decimal(text).trim_end_matches(".0").to_string()
}

/// A line total after the document's discount (a percentage), rounded to cents.
fn with_discount(total: &str, discount: f64) -> String {
    if discount == 0.0 {
        return decimal(total);
    }
    let value = total.parse::<f64>().unwrap_or(0.0) * (1.0 - discount / 100.0);
    decimal(&format!("{:.2}", (value * 100.0).round() / 100.0))
}

/// billhook's microsecond times ("…:41.615123Z") to Moneybird's milliseconds ("…:41.615Z").
fn milliseconds(time: &str) -> String {
    match time.split_once('.') {
        Some((seconds, fraction)) if fraction.ends_with('Z') && fraction.len() > 4 => {
            format!("{seconds}.{}Z", &fraction[..3])
        }
        _ => time.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_times_are_written_the_moneybird_way() {
        assert_eq!(decimal("300.00"), "300.0");
        assert_eq!(decimal("0"), "0.0");
        assert_eq!(decimal("12.50"), "12.5");
        assert_eq!(quantity("1"), "1");
        assert_eq!(quantity("1.50"), "1.5");
        assert_eq!(with_discount("300.00", 10.0), "270.0");
        assert_eq!(with_discount("0.10", 50.0), "0.05");
        assert_eq!(milliseconds("2015-02-25T10:39:41.615123Z"), "2015-02-25T10:39:41.615Z");
        assert_eq!(milliseconds("2015-02-25"), "2015-02-25");
    }

    #[test]
    fn a_sales_invoice_has_moneybird_fields_its_contact_and_details() {
        let billhook = json!({
            "id": "5", "administration_id": "1", "customer_id": "4", "invoice_number": null, "state": "late",
            "invoice_date": "2015-02-25", "due_date": "2015-03-11", "currency": "EUR", "discount": "0",
            "reference": "Project X", "language": "nl", "payment_conditions": "Pay", "sent_at": null,
            "paid_at": null, "recurring_invoice_id": null, "quotation_id": null,
            "created_at": "2015-02-25T10:39:41.685123Z", "updated_at": "2015-02-25T10:39:41.685123Z",
            "customer": {"id": "4", "company_name": "Foobar Holding B.V.", "firstname": null, "email": "info@example.com",
                         "send_invoices_to_email": null, "customer_number": "1"},
            "lines": [{"id": "8", "description": "Project X", "amount": "1", "price": "300.00", "tax_rate": "21",
                       "row_order": 1, "total_price_excl_tax": "300.00",
                       "created_at": "2015-02-25T10:39:41.693000Z", "updated_at": "2015-02-25T10:39:41.693000Z"}],
            "total_price_excl_tax": "300.00", "total_tax": "63.00", "total_price_incl_tax": "363.00",
        });
        let invoice = entity(EntityKind::Invoice, &billhook);
        assert_eq!(invoice["contact_id"], "4");
        assert_eq!(invoice["invoice_id"], Value::Null);
        assert_eq!(invoice["discount"], "0.0");
        assert_eq!(invoice["total_price_incl_tax"], "363.0");
        assert_eq!(invoice["created_at"], "2015-02-25T10:39:41.685Z");
        assert_eq!(invoice["contact"]["firstname"], "");
        assert_eq!(invoice["contact"]["send_estimates_to_email"], "info@example.com");
        assert_eq!(invoice["contact"]["customer_id"], "1");
        let line = &invoice["details"][0];
        assert_eq!((line["amount"].as_str(), line["price"].as_str()), (Some("1 x"), Some("300.0")));
        assert_eq!(line["total_price_excl_tax_with_discount"], "300.0");
        assert!(
            invoice.get("lines").is_none() && invoice.get("customer").is_none() && invoice.get("total_tax").is_none()
        );
    }
}
