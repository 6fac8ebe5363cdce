//! One-shot commands beside `run`: [`migrate`], [`dlq`] (list and redrive dead letters),
//! [`presign`] (presigned PUT URLs for browser uploads) and [`reconcile`] (compare a bucket with
//! the database and repair the difference).

use crate::config::DatabaseArgs;
use crate::store;

pub mod dlq;
pub mod presign;
pub mod reconcile;

/// The `migrate` command: applies the pending migrations, then checks that the schema holds
/// what the writes need (a migration recorded as applied says nothing of a column dropped since)
/// and fails, naming what is missing, if it does not.
pub async fn migrate(database: DatabaseArgs) -> anyhow::Result<()> {
    let settings = database.to_settings()?;
    let sdk = match settings.password {
        store::Password::RdsIam => crate::aws::load(&crate::config::aws_from_env()).await,
        _ => aws_config::SdkConfig::builder().build(),
    };
    let database = crate::app::database(&settings, &sdk)?;
    store::migrate(database.pool()).await?;
    let mut connection = database.acquire().await?;
    let missing = store::schema::missing(&mut connection).await?;
    drop(connection);
    database.close().await;
    if !missing.is_empty() {
        return Err(store::schema::Drift(missing).into());
    }
    println!("migrations applied; the schema holds what this version writes");
    Ok(())
}
