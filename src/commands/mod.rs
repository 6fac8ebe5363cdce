//! One-shot commands beside `run`: [`dlq`] (list and redrive dead letters) and [`presign`]
//! (presigned PUT URLs for browser uploads).

pub mod dlq;
pub mod presign;
