//! The demo's invariants, checked across the three services' databases.

use std::collections::{BTreeMap, HashMap};

use sqlx::PgPool;
use uuid::Uuid;

/// What the run came to.
pub struct Report {
    pub orders: i64,
    pub completed: i64,
    pub compensated: i64,
    pub failed: i64,
    /// (status, reason) → orders.
    by_reason: BTreeMap<(String, String), i64>,
    refunds: i64,
    late_charges_refused: i64,
    pub violations: Vec<String>,
}

impl Report {
    pub fn print(&self) {
        println!("\n| final state | reason | orders |\n|---|---|---:|");
        for ((status, reason), n) in &self.by_reason {
            println!("| {status} | {reason} | {n} |");
        }
        println!("| **all** | | **{}** |\n", self.orders);
        println!(
            "   failed={} refunds={} late_charges_refused={} (a slow payment that arrived after its refund)",
            self.failed, self.refunds, self.late_charges_refused
        );
        println!("   invariants checked: every saga terminal; stock conserved per SKU (initial = available + sold);");
        println!("   sold = quantity of completed orders; charged = value of completed orders; every refund belongs");
        println!("   to a compensated order; each order's effects match its state; no dead letters.");
        for v in &self.violations {
            println!("   VIOLATION: {v}");
        }
    }
}

/// Whether everything in flight has settled: every outbox drained and no
/// deferred payment waiting.
pub async fn quiet(pools: &[PgPool]) -> anyhow::Result<bool> {
    for pool in pools {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.outbox").fetch_one(pool).await?;
        if pending > 0 {
            return Ok(false);
        }
    }
    let deferred: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.deferred").fetch_one(&pools[1]).await?;
    Ok(deferred == 0)
}

/// Checks every invariant; `pools` are inventory, payments, orders.
pub async fn check(pools: &[PgPool], expected: u32) -> anyhow::Result<Report> {
    let (inventory, payments, orders) = (&pools[0], &pools[1], &pools[2]);
    let mut violations = Vec::new();
    let rows: Vec<(Uuid, String, i32, i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, sku, qty, amount_cents, status, reason FROM shop.orders").fetch_all(orders).await?;
    let count = |s: &str| rows.iter().filter(|r| r.4 == s).count() as i64;
    let (completed, compensated, failed) = (count("completed"), count("compensated"), count("failed"));
    let mut by_reason = BTreeMap::new();
    for r in &rows {
        let reason = r.5.clone().unwrap_or_default();
        *by_reason.entry((r.4.clone(), reason)).or_insert(0) += 1;
    }

    // 1. every saga reached a terminal state, and none needs an operator
    if rows.len() != expected as usize {
        violations.push(format!("{} orders placed, {expected} expected", rows.len()));
    }
    let open = rows.len() as i64 - completed - compensated - failed;
    if open != 0 {
        violations.push(format!("{open} orders not in a terminal state"));
    }
    let moving: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox.outbox_saga WHERE status IN ('running', 'compensating')")
            .fetch_one(orders)
            .await?;
    if moving != 0 {
        violations.push(format!("{moving} sagas still running or compensating"));
    }
    if failed != 0 {
        violations.push(format!("{failed} sagas failed (a compensation was refused)"));
    }

    // 2. stock: conserved per SKU, and sold = what completed orders bought
    let stock: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT sku, initial, available FROM inventory.stock").fetch_all(inventory).await?;
    let reservations: Vec<(Uuid, String, i32, String)> =
        sqlx::query_as("SELECT order_id, sku, qty, status FROM inventory.reservations").fetch_all(inventory).await?;
    let active: HashMap<Uuid, (&str, i32)> =
        reservations.iter().filter(|r| r.3 == "reserved").map(|r| (r.0, (r.1.as_str(), r.2))).collect();
    for (sku, initial, available) in &stock {
        let sold: i64 = active.values().filter(|(s, _)| s == sku).map(|(_, q)| i64::from(*q)).sum();
        let bought: i64 = rows.iter().filter(|r| r.4 == "completed" && &r.1 == sku).map(|r| i64::from(r.2)).sum();
        if *initial != available + sold {
            violations.push(format!("{sku}: initial {initial} != available {available} + sold {sold}"));
        }
        if sold != bought {
            violations.push(format!("{sku}: {sold} reserved but completed orders bought {bought}"));
        }
    }

    // 3. money: charged = value of completed orders; refunds only for compensated orders
    let charges: Vec<(Uuid, i64, String)> =
        sqlx::query_as("SELECT order_id, amount_cents, status FROM payments.payments").fetch_all(payments).await?;
    let charged: HashMap<Uuid, i64> = charges.iter().filter(|c| c.2 == "charged").map(|c| (c.0, c.1)).collect();
    let charged_total: i64 = charged.values().sum();
    let completed_value: i64 = rows.iter().filter(|r| r.4 == "completed").map(|r| r.3).sum();
    if charged_total != completed_value {
        violations.push(format!("charged {charged_total} cents, completed orders are worth {completed_value}"));
    }
    let status_of: HashMap<Uuid, &str> = rows.iter().map(|r| (r.0, r.4.as_str())).collect();
    let refunds = charges.iter().filter(|c| c.2 == "refunded").count() as i64;
    for refund in charges.iter().filter(|c| c.2 == "refunded") {
        if status_of.get(&refund.0) != Some(&"compensated") {
            violations.push(format!("order {} was refunded but is {:?}", refund.0, status_of.get(&refund.0)));
        }
    }

    // 4. each order's effects match its state (never both completed and compensated)
    for (id, sku, qty, amount, status, _) in &rows {
        let reserved = active.get(id);
        let paid = charged.get(id);
        let consistent = match status.as_str() {
            "completed" => reserved == Some(&(sku.as_str(), *qty)) && paid == Some(amount),
            "compensated" => reserved.is_none() && paid.is_none(),
            _ => true,
        };
        if !consistent {
            violations.push(format!("order {id} is {status} but reserved={reserved:?} charged={paid:?}"));
        }
    }

    // 5. nothing dead-lettered anywhere
    for (name, pool) in super::SERVICES.iter().zip(pools) {
        let dead: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM outbox.inbox_dead_letter) + (SELECT count(*) FROM outbox.outbox_dead_letter)",
        )
        .fetch_one(pool)
        .await?;
        if dead != 0 {
            violations.push(format!("{name}: {dead} dead-lettered messages"));
        }
    }
    let late_charges_refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.outbox_saga_commands WHERE action = 'execute' AND outcome = 'refused'",
    )
    .fetch_one(payments)
    .await?;
    Ok(Report {
        orders: rows.len() as i64,
        completed,
        compensated,
        failed,
        by_reason,
        refunds,
        late_charges_refused,
        violations,
    })
}
