//! Operator commands: `status` and `dead-letters …`. Read-only unless the
//! operator asks for a change; unknown ids change nothing.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use outbox_core::{OutboxAdmin, Status};
use uuid::Uuid;

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead-lettered events, oldest first.
    List {
        /// Most rows shown.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead-lettered event with its payload and headers.
    Show {
        /// Event id.
        id: Uuid,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead-lettered events back in line, at their original place in
    /// their key's order; releases their keys' quarantine.
    Retry {
        /// Event ids.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<Uuid>,
        /// Retry every dead-lettered event.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead-lettered events for good; releases their keys' quarantine.
    Discard {
        /// Event ids.
        #[arg(required = true)]
        ids: Vec<Uuid>,
    },
}

/// Options of `replay`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["ids", "since"])))]
pub struct ReplayArgs {
    /// Retained events to publish again, by id.
    #[arg(long = "id", num_args = 1.., conflicts_with_all = ["since", "until", "topic"])]
    pub ids: Vec<Uuid>,
    /// Publish again the retained events written at or after this time
    /// (RFC 3339, e.g. 2026-11-28T10:00:00Z).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// … and before this time (default: now).
    #[arg(long, requires = "since")]
    pub until: Option<DateTime<Utc>>,
    /// Only events of this topic.
    #[arg(long, requires = "since")]
    pub topic: Option<String>,
}

/// Runs `replay`.
pub async fn replay(admin: &OutboxAdmin, args: &ReplayArgs) -> anyhow::Result<()> {
    let n = match args.since {
        Some(since) => admin.replay_range(since, args.until.unwrap_or_else(Utc::now), args.topic.as_deref()).await?,
        None => admin.replay_ids(&args.ids).await?,
    };
    println!("{n} retained event(s) put back in line for publishing");
    Ok(())
}

/// Runs `status`.
pub async fn status(admin: &OutboxAdmin, args: &StatusArgs) -> anyhow::Result<()> {
    let status = admin.status().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_status(&status));
    }
    Ok(())
}

fn render_status(s: &Status) -> String {
    let mut out = String::new();
    out += &format!("pending          {}\n", s.pending);
    out += &format!("oldest pending   {:.1}s\n", s.oldest_pending_age_seconds);
    out += &format!("dead letters     {} ({} quarantined keys)\n", s.dead_letters, s.quarantined_keys);
    out += &format!("slots            {} ({} without a live owner)\n", s.slots, s.unowned_slots);
    out += &format!("\n{:<36}  {:<24}  {:>5}  {:>10}  {}\n", "RELAY", "NAME", "SLOTS", "HEARTBEAT", "SLOT LIST");
    for r in &s.relays {
        out += &format!(
            "{:<36}  {:<24}  {:>5}  {:>9.1}s  {}\n",
            r.id,
            r.name,
            r.slots.len(),
            r.heartbeat_age_seconds,
            compact(&r.slots)
        );
    }
    if s.relays.is_empty() {
        out += "(no relay has joined)\n";
    }
    out
}

/// `0-3,7,9-10` for a sorted list of slots.
fn compact(slots: &[i32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < slots.len() {
        let mut j = i;
        while j + 1 < slots.len() && slots[j + 1] == slots[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { slots[i].to_string() } else { format!("{}-{}", slots[i], slots[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// Runs a `dead-letters` subcommand.
pub async fn dead_letters(admin: &OutboxAdmin, command: &DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List { limit, json } => {
            let rows = admin.dead_letters(*limit).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!("{:<36}  {:<20}  {:<16}  {:>8}  {:<11}  ERROR", "ID", "TOPIC", "KEY", "ATTEMPTS", "QUARANTINED");
            for d in &rows {
                println!(
                    "{:<36}  {:<20}  {:<16}  {:>8}  {:<11}  {}",
                    d.id,
                    d.topic,
                    d.key.as_deref().unwrap_or("-"),
                    d.attempts,
                    if d.quarantined { "yes" } else { "no" },
                    d.error
                );
            }
            println!("({} shown)", rows.len());
        }
        DeadLetterCommand::Show { id, json } => {
            let d = admin.dead_letter(*id).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("id               {}", d.id);
                println!("topic            {}", d.topic);
                println!("key              {}", d.key.as_deref().unwrap_or("-"));
                println!("type             {}", d.event_type);
                println!("attempts         {}", d.attempts);
                println!("quarantined      {}", d.quarantined);
                println!("created          {}", d.created_at);
                println!("dead-lettered    {}", d.dead_lettered_at);
                println!("error            {}", d.error);
                for (k, v) in &d.headers {
                    println!("header           {k}: {v}");
                }
                println!("payload ({} B)   {}", d.payload_bytes, d.payload.as_deref().unwrap_or(""));
            }
        }
        DeadLetterCommand::Retry { ids, all } => {
            let n = if *all { admin.retry_all().await? } else { admin.retry(ids).await? };
            println!("{n} dead-lettered event(s) put back in line");
        }
        DeadLetterCommand::Discard { ids } => {
            let n = admin.discard(ids).await?;
            println!("{n} dead-lettered event(s) discarded");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn slot_lists_are_compact() {
        assert_eq!(compact(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(compact(&[]), "");
        assert_eq!(compact(&[5]), "5");
    }
}
