//! The app-side endpoint the example upload page needs: serves `upload.html` and `upload.js`, and
//! answers `POST /presign` with a presigned PUT (the library's `presign`, as the command uses it).
//!
//!     S3_BUCKET=datapack-uploads cargo run --release --example presign_server -- --listen 127.0.0.1:3000
//!
//! then open http://127.0.0.1:3000/ (the bucket's CORS rule must allow that origin). Endpoint,
//! region and credentials come from the standard AWS environment (`AWS_ENDPOINT_URL`, …).
//!
//! A real app takes the uploader's name and email from its own session and checks that the user
//! may upload into the datapack before presigning; this example trusts the form, to stay small.

mod router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match (flag.as_str(), argv.next()) {
            ("--listen", Some(addr)) => listen = addr,
            _ => anyhow::bail!("usage: presign_server [--listen HOST:PORT]"),
        }
    }
    let bucket = std::env::var("S3_BUCKET")
        .map_err(|_| anyhow::anyhow!("S3_BUCKET must name the upload bucket"))?;
    let settings = datapack_worker::aws::AwsSettings::default();
    let s3 = datapack_worker::aws::s3(&datapack_worker::aws::load(&settings).await);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("upload page on http://{}/", listener.local_addr()?);
    axum::serve(listener, router::router(s3, bucket)).await?;
    Ok(())
}
