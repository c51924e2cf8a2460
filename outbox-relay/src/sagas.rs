//! `sagas`: what the saga orchestrator of this database is doing — counts by
//! type and status, or one saga with its history. Read-only.

use clap::Args;
use outbox_core::saga::SagaOrchestrator;
use outbox_core::{Outbox, OutboxConfig};
use sqlx::PgPool;
use uuid::Uuid;

/// Options of `sagas`.
#[derive(Debug, Args)]
pub struct SagasArgs {
    /// Show this saga and its history (default: counts by type and status).
    pub id: Option<Uuid>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `sagas`.
pub async fn sagas(pool: &PgPool, config: &OutboxConfig, args: &SagasArgs) -> anyhow::Result<()> {
    // Queries need no saga definitions.
    let orchestrator = SagaOrchestrator::new(Outbox::new(config.clone()), [])?;
    let Some(id) = args.id else {
        let counts = orchestrator.counts(pool).await?;
        if args.json {
            let rows: Vec<_> = counts
                .iter()
                .map(|((saga, status), n)| serde_json::json!({"saga": saga, "status": status, "count": n}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            println!("{:<24} {:<13} {:>8}", "saga", "status", "count");
            for ((saga, status), n) in &counts {
                println!("{saga:<24} {:<13} {n:>8}", status.as_str());
            }
        }
        return Ok(());
    };
    let Some(saga) = orchestrator.status(pool, id).await? else {
        anyhow::bail!("no saga with id {id}; nothing to show");
    };
    let history = orchestrator.history(pool, id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"saga": saga, "history": history}))?);
        return Ok(());
    }
    println!("saga      {} ({})", saga.id, saga.saga_type);
    println!("status    {} at step {} (attempt {})", saga.status, saga.step, saga.attempt);
    if let Some(reason) = &saga.reason {
        println!("reason    {reason}");
    }
    if let Some(deadline) = saga.deadline {
        println!("deadline  {deadline}");
    }
    println!("started   {}", saga.created_at);
    println!("data      {}", saga.data);
    println!("\n{:>3}  {:<20} {:<10} {:>7}  {:<10} {:>9}  reason", "#", "step", "action", "attempt", "outcome", "took");
    for r in &history {
        let took = r.finished_at.map(|f| format!("{} ms", (f - r.sent_at).num_milliseconds())).unwrap_or_default();
        println!(
            "{:>3}  {:<20} {:<10} {:>7}  {:<10} {:>9}  {}",
            r.seq,
            r.step_name,
            r.action.as_str(),
            r.attempt,
            r.outcome.as_deref().unwrap_or("waiting"),
            took,
            r.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
