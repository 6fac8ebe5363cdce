// The browser side of an upload: SHA-256 with WebCrypto, a presigned PUT from the app's
// `POST /presign`, then the PUT to S3 with exactly the headers the app returned.
//
// The outcome is written as JSON into #result, with data-state "done" or "error", so a person
// and a test read the same thing.
"use strict";

const form = document.getElementById("upload");
const statusLine = document.getElementById("status");
const result = document.getElementById("result");

function show(state, outcome) {
  result.dataset.state = state;
  result.textContent = JSON.stringify(outcome, null, 2);
  statusLine.textContent = state === "done" ? "Uploaded." : outcome.message || "Failed.";
}

// WebCrypto has no streaming digest: the file is read into memory once. Fine for the files a
// page uploads in one PUT (S3's limit for one is 5 GiB; browsers cope with a few hundred MiB).
async function sha256Hex(file) {
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function upload(file, fields) {
  statusLine.textContent = "Hashing…";
  const sha256 = await sha256Hex(file);

  statusLine.textContent = "Asking for an upload URL…";
  const answer = await fetch("presign", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...fields, file: file.name, sha256 }),
  });
  const signed = await answer.json();
  if (!answer.ok) {
    return { ok: false, stage: "presign", status: answer.status, message: signed.error, sha256 };
  }

  statusLine.textContent = "Uploading…";
  let put;
  try {
    // Exactly the signed headers: Content-Type, the x-amz-meta-* metadata and
    // x-amz-checksum-sha256. Any other value, or a missing one, and S3 refuses the upload.
    put = await fetch(signed.url, { method: signed.method, headers: signed.headers, body: file });
  } catch (error) {
    // A CORS refusal and an unreachable S3 look the same to a page (a TypeError); the console
    // says which.
    return { ok: false, stage: "put", status: 0, message: `${error.name}: ${error.message}`, sha256 };
  }
  if (!put.ok) {
    const body = await put.text();
    const code = (body.match(/<Code>([^<]*)<\/Code>/) || [])[1] || "";
    return { ok: false, stage: "put", status: put.status, code, message: `S3 answered ${put.status} ${code}`, sha256 };
  }
  // ETag is readable only if the bucket's CORS rule exposes it.
  return { ok: true, status: put.status, etag: put.headers.get("ETag"), sha256, file: file.name, url: signed.url.split("?")[0] };
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("file").files[0];
  if (!file) {
    show("error", { ok: false, message: "Choose a file first." });
    return;
  }
  const fields = {
    datapack: document.getElementById("datapack").value,
    path: document.getElementById("path").value,
    uploader_name: document.getElementById("uploader-name").value,
    uploader_email: document.getElementById("uploader-email").value,
  };
  result.dataset.state = "busy";
  try {
    const outcome = await upload(file, fields);
    show(outcome.ok ? "done" : "error", outcome);
  } catch (error) {
    show("error", { ok: false, message: `${error.name}: ${error.message}` });
  }
});
