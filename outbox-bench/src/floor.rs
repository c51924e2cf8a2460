//! S0 F: the floor of any outbox kept in a PostgreSQL table, measured in the
//! same run as K. It does the least such an outbox can do per event and none
//! of what makes ours correct under failure (no leases or fences, no
//! per-key holds, no CloudEvents headers, no retries): read the backlog's
//! rows in sequence order with one streamed query and hand each to K's
//! producer; in the second variant, also delete each batch of 2,000 rows
//! once the broker confirmed all of it, as a queue table must. What the
//! relay drains (S2) against this floor says how much our own work costs;
//! the floor against K says how much of K any PostgreSQL outbox can reach on
//! this machine.

use std::time::Instant;

use futures::TryStreamExt;

use crate::env::{backlog, Env};
use crate::physical::{produce, K_SETTINGS};

/// Events per second of each variant.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Floor {
    pub events: usize,
    /// Stream the rows and produce them, await every confirmation.
    pub read_eps: f64,
    /// The same, and delete each confirmed batch by primary key.
    pub read_delete_eps: f64,
}

const BATCH: usize = 2_000;

pub async fn pg_outbox(env: &Env, n: usize, keys: usize) -> anyhow::Result<Floor> {
    let read_eps = variant(env, n, keys, false).await?;
    let read_delete_eps = variant(env, n, keys, true).await?;
    Ok(Floor { events: n, read_eps, read_delete_eps })
}

async fn variant(env: &Env, n: usize, keys: usize, delete: bool) -> anyhow::Result<f64> {
    let (config, outbox) = env.outbox("floor").await?;
    let topic = env.topic("floor", 6).await?;
    let producer = env.warm_producer(&topic, &K_SETTINGS).await?;
    backlog(env, &outbox, &topic, 0, n, keys).await?;
    let table = format!("{}.outbox", config.schema());
    let select = format!("SELECT seq, key, payload FROM {table} ORDER BY seq");
    let delete_sql = format!("DELETE FROM {table} WHERE seq = ANY($1)");
    let mut conn = env.pool.acquire().await?;
    let start = Instant::now();
    let mut settling = tokio::task::JoinSet::new();
    let mut seqs = Vec::with_capacity(BATCH);
    let mut futures = Vec::with_capacity(BATCH);
    let mut rows = sqlx::query_as::<_, (i64, Option<String>, Vec<u8>)>(&select).fetch(&mut *conn);
    let mut read = 0usize;
    loop {
        let row = rows.try_next().await?;
        if let Some((seq, key, payload)) = &row {
            futures.push(produce(&producer, &topic, key.as_deref(), payload).await);
            seqs.push(*seq);
            read += 1;
        }
        if futures.len() == BATCH || (row.is_none() && !futures.is_empty()) {
            let batch = std::mem::take(&mut futures);
            let done = std::mem::take(&mut seqs);
            let (pool, sql) = (env.pool.clone(), delete_sql.clone());
            settling.spawn(async move {
                for result in futures::future::join_all(batch).await {
                    result?.map_err(|(e, _)| e)?;
                }
                if delete {
                    sqlx::query(&sql).bind(done).execute(&pool).await?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        if row.is_none() {
            break;
        }
    }
    drop(rows);
    while let Some(result) = settling.join_next().await {
        result??;
    }
    let eps = read as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(read == n, "floor read {read} of {n} rows");
    if delete {
        anyhow::ensure!(!env.pending(&config).await?, "floor left rows in the outbox");
    }
    Ok(eps)
}
