//! The page, its script and `POST /presign`: the routes of the app-side example endpoint
//! (`main.rs`), which the browser test serves too.

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

const PAGE: &str = include_str!("../upload.html");
const SCRIPT: &str = include_str!("../upload.js");

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
