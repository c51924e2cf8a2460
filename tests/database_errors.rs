//! How errors the database reports are classified: a fault that passes is
//! transient (worth retrying), a violated constraint is not.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use outbox::Error;

async fn raise(pool: &sqlx::PgPool, sqlstate: &str) -> Error {
    let statement = format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{sqlstate}'; END $$");
    Error::Database(sqlx::query(&statement).execute(pool).await.unwrap_err())
}

#[tokio::test]
async fn faults_that_pass_are_transient_and_violations_are_not() {
    let pool = pool().await;
    // serialization failure, deadlock, admin shutdown, connection failure
    for code in ["40001", "40P01", "57P01", "08006"] {
        assert!(raise(&pool, code).await.is_transient(), "{code} should be transient");
    }
    // unique violation, check violation, syntax error, insufficient privilege
    for code in ["23505", "23514", "42601", "42501"] {
        assert!(!raise(&pool, code).await.is_transient(), "{code} should not be transient");
    }
    // The server itself ending this connection.
    let mut conn = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&pool).await.unwrap();
    let gone = Error::Database(sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap_err());
    assert!(gone.is_transient(), "a terminated connection should be transient: {gone}");
}
