//! What an app does to hear of uploads at once: LISTEN on the worker's channel and print each
//! committed change of a `datapack_resource` row.
//!
//!     DATABASE_URL=postgres://app@db/datapack cargo run --release --example listen
//!
//! A notification arrives only once the worker's transaction has committed, so the row it names
//! is there to read. A connection that drops misses what is committed meanwhile: the listener
//! notices (`try_recv` answers `None`), reconnects, and the app reads the rows once again before
//! following the notifications.

use datapack_worker::store::notify::CHANNEL;
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    // Two connections: the listener keeps one for itself.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    println!("listening on {CHANNEL}");
    loop {
        let Some(notification) = listener.try_recv().await? else {
            // Reconnected: whatever was committed during the gap was not announced.
            println!(
                "connection lost and restored: re-read the rows changed since the last change seen"
            );
            continue;
        };
        let change: Value = serde_json::from_str(notification.payload())?;
        let id = change["id"].as_i64().unwrap_or_default();
        // A payload that would pass PostgreSQL's limit comes without its long fields.
        let key = match change["key"].as_str() {
            Some(key) => key.to_owned(),
            None => {
                sqlx::query_scalar("SELECT object_key FROM datapack_resource WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await?
            }
        };
        println!(
            "{change:<8} live={live:<5} id={id} key={key:?} etag={etag}",
            change = change["change"].as_str().unwrap_or("?"),
            live = change["live"],
            etag = change["etag"].as_str().unwrap_or(""),
        );
    }
}
