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

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datapack_worker::cli::PresignArgs;
use datapack_worker::commands::presign::{self, PresignError};
use serde::Deserialize;

const PAGE: &str = include_str!("upload.html");
const SCRIPT: &str = include_str!("upload.js");

/// What the page sends.
#[derive(Debug, Deserialize)]
struct PresignRequest {
    datapack: String,
    #[serde(default)]
    path: String,
    file: String,
    uploader_name: String,
    uploader_email: String,
    content_type: Option<String>,
    sha256: Option<String>,
}

struct App {
    s3: aws_sdk_s3::Client,
    bucket: String,
}

/// The page, its script and `POST /presign`.
pub fn router(s3: aws_sdk_s3::Client, bucket: String) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/upload.js", get(script))
        .route("/presign", post(presign_upload))
        .with_state(Arc::new(App { s3, bucket }))
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn presign_upload(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let request: PresignRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            let error = format!("bad request body: {e}");
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": error }),
            );
        }
    };
    let args = PresignArgs {
        bucket: Some(app.bucket.clone()),
        datapack: request.datapack,
        path: request.path,
        file: request.file,
        uploader_name: request.uploader_name,
        uploader_email: request.uploader_email,
        content_type: request.content_type,
        expires_secs: 900,
        json: true,
        sha256: request.sha256,
    };
    match presign::presign(&app.s3, &app.bucket, &args).await {
        Ok(signed) => json(StatusCode::OK, &signed),
        Err(e @ PresignError::Invalid(_)) => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": e.to_string() }),
        ),
        Err(e @ PresignError::Sdk(_)) => {
            eprintln!("presign_server: {e}");
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({ "error": "could not presign" }),
            )
        }
    }
}

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
    let settings = datapack_worker::config::aws_from_env();
    let s3 = datapack_worker::aws::s3(&datapack_worker::aws::load(&settings).await);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("upload page on http://{}/", listener.local_addr()?);
    axum::serve(listener, router(s3, bucket)).await?;
    Ok(())
}
