//! One-shot commands beside `run`: [`migrate`], [`dlq`] (list and redrive dead letters),
//! [`presign`] (presigned PUT URLs for browser uploads) and [`reconcile`] (compare a bucket with
//! the database and repair the difference).

use crate::config::DatabaseArgs;
use crate::store;

pub mod dlq;
pub mod presign;
pub mod reconcile;

/// The `migrate` command: applies the pending migrations and says so.
pub async fn migrate(database: DatabaseArgs) -> anyhow::Result<()> {
    let database = database.to_settings()?;
    let pool = store::pool(database.connect, &database.pool);
    store::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
