//! One-shot commands beside `run`: [`migrate`], [`dlq`] (list and redrive dead letters) and
//! [`presign`] (presigned PUT URLs for browser uploads).

use crate::config::DatabaseArgs;
use crate::store;

pub mod dlq;
pub mod presign;

/// The `migrate` command: applies the pending migrations and says so.
pub async fn migrate(database: DatabaseArgs) -> anyhow::Result<()> {
    let database = database.to_settings()?;
    let pool = store::pool(database.connect, &database.pool);
    store::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
