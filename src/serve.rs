//! `serve`: the draw-a-digit page and a JSON API over HTTP/1.1, on axum
//! (routing, extractors, JSON) running on hyper and tokio.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the page (embedded, self-contained) |
//! | `POST /api/predict` | body: an image file in any format `predict` reads; JSON `digit`, `probability`, `probabilities` (one per class), `input` (the 28x28 the network saw, 784 values 0-255) |
//! | `GET /api/model` | JSON: the layers and the model file's metadata |
//! | `GET /healthz` | `ok` |
//!
//! The image goes through exactly `predict`'s preprocessing
//! ([`crate::preprocess`]: decode, grayscale, invert guess, crop to the ink,
//! 20 px box, centre of mass), so the page, the CLI and the API agree.
//! Bad requests are answered, never crash or hang the server: a body over
//! [`Config::max_body`] gets 413 as soon as its length is known (the rest
//! is never read); an empty, corrupt, blank or oversized image 400 with a
//! JSON `error` in `predict`'s words; a wrong method 405; an unknown path
//! 404; a client that does not send its headers within
//! [`Config::header_timeout`], or its body within [`Config::body_timeout`],
//! is dropped (408 for a late body). Each request is logged on one line:
//! method, path, status, microseconds.
//!
//! The model is loaded once; each prediction runs the kiln kernels through
//! the library on one of [`Config::workers`] blocking threads, with an
//! inference-only [`Predictor`] taken from a pool built at start, all
//! sharing one copy of the packed weights (so up to that many requests run
//! in parallel, further ones wait for a predictor, memory stays bounded,
//! and no request repacks the weights). Memory is bounded as a whole:
//! request bodies share [`Config::body_budget`], decoding is capped at
//! [`Config::max_pixels`], and at most [`Config::max_connections`]
//! connections are open.

use crate::model::{Arch, Params, Predictor};
use crate::preprocess::{self, Invert, SIDE};
use anyhow::{ensure, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_kernels::Backend;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The page, embedded in the binary: no CDN, no web fonts, works offline.
pub const PAGE: &str = include_str!("serve/page.html");

/// Limits of the server.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Largest request body accepted (bytes); larger ones get 413.
    pub max_body: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time a client has to send its request body.
    pub body_timeout: Duration,
    /// Largest image accepted (width x height), against decompression
    /// bombs; decoding one takes at most
    /// [`preprocess::BYTES_PER_PIXEL`] bytes a pixel.
    pub max_pixels: u64,
    /// Predictions run at once (the size of the pool of models).
    pub workers: usize,
    /// Request bodies held in memory at once, in bytes, all requests
    /// together: a body over [`SMALL_BODY`] reserves its declared length (a
    /// chunked one the [`Config::max_body`]) before it is read; a request
    /// that cannot reserve within [`BUDGET_WAIT`] gets 503.
    pub body_budget: usize,
    /// Connections open at once; further ones wait in the listen queue.
    pub max_connections: usize,
}

/// The largest image the server decodes by default: 4 Mpx (2048 x 2048),
/// plenty for a digit, and at most 48 MB to decode.
pub const SERVE_MAX_PIXELS: u64 = 1 << 22;

/// Bodies up to this size (declared) need no room in the body budget.
pub const SMALL_BODY: u64 = 64 << 10;

/// How long a request waits for room in the body budget before 503.
pub const BUDGET_WAIT: Duration = Duration::from_millis(500);

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body: 10 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_pixels: SERVE_MAX_PIXELS,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            body_budget: 64 << 20,
            max_connections: 128,
        }
    }
}

/// What the server knows: the model, its metadata, the backend, a pool of
/// models ready to run, and the limits.
pub struct Server {
    be: &'static dyn Backend<f32>,
    /// The layers (the weights live in the predictors, once).
    arch: Arch,
    meta: BTreeMap<String, String>,
    /// Predictors of one image each, sharing one copy of the weights.
    pool: Mutex<Vec<Predictor<'static, f32>>>,
    /// One permit per model of the pool: a request holds one while it predicts.
    slots: Arc<tokio::sync::Semaphore>,
    /// One permit per KiB of [`Config::body_budget`].
    bodies: Arc<tokio::sync::Semaphore>,
    config: Config,
}

/// An error answer: a status and a JSON `{"error": ...}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl Server {
    /// A server for `params` (a model reading 28x28 images) on `be`.
    pub fn new(
        be: &'static dyn Backend<f32>,
        params: Params<f32>,
        meta: BTreeMap<String, String>,
        config: Config,
    ) -> Result<Arc<Self>> {
        ensure!(
            params.arch().inputs() == SIDE * SIDE,
            "the model reads {} pixels per image; serve's preprocessing makes 28x28 = 784 (train a model on 28x28 images)",
            params.arch().inputs()
        );
        ensure!(
            u32::try_from(config.max_body.div_ceil(1024)).is_ok(),
            "the largest body accepted ({} bytes) must be under 4 TiB",
            config.max_body
        );
        ensure!(
            config.body_budget >= config.max_body,
            "the body budget ({} bytes) must hold at least one body of the largest size accepted ({} bytes)",
            config.body_budget,
            config.max_body
        );
        let workers = config.workers.max(1);
        // Inference only: one copy of the weights, and a single image's
        // activations per worker.
        let first = Predictor::new(be, &params, 1);
        let mut pool: Vec<_> = (1..workers).map(|_| first.fork(1)).collect();
        pool.push(first);
        let slots = Arc::new(tokio::sync::Semaphore::new(workers));
        // Permits in KiB, rounded as requests round theirs (up), so a body of
        // the largest size accepted always fits an empty budget.
        let bodies = Arc::new(tokio::sync::Semaphore::new(config.body_budget.div_ceil(1024)));
        let arch = params.arch().clone();
        Ok(Arc::new(Server { be, arch, meta, pool: Mutex::new(pool), slots, bodies, config }))
    }

    /// The probabilities of one preprocessed 28x28 input (the caller holds a
    /// permit of `slots`, so a model is free).
    fn predict(&self, pixels: &[u8]) -> Vec<f32> {
        let mut model = self.pool.lock().expect("pool lock").pop().expect("a permit guarantees a free model");
        let probs = model.probs(pixels, &[0]).to_vec();
        self.pool.lock().expect("pool lock").push(model);
        probs
    }

    /// The answer to an image file's bytes: preprocessing, then prediction.
    fn answer(&self, body: &[u8]) -> Result<Value> {
        let name = Path::new("request body");
        let (gray, h, w) = preprocess::decode_gray(body, name, self.config.max_pixels)?;
        let input = preprocess::to_mnist(&gray, h, w, Invert::Guess).context("request body")?;
        let probs = self.predict(&input);
        let digit = kiln_kernels::argmax(&probs);
        Ok(json!({"digit": digit, "probability": probs[digit], "probabilities": probs, "input": input.to_vec()}))
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn model_info(State(s): State<Arc<Server>>) -> Json<Value> {
    let arch = &s.arch;
    Json(json!({
        "layers": arch.spec(),
        "inputs": arch.inputs(),
        "classes": arch.classes(),
        "parameters": arch.parameters(),
        "backend": s.be.name(),
        "metadata": public_meta(&s.meta),
    }))
}

/// The model file's metadata as `/api/model` shows it: a value that is a
/// path (the data directory, an `--init` file; absolute or relative, with
/// `/` or `\`) is cut to its last component, so that the server does not
/// reveal the machine's directories.
fn public_meta(meta: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    meta.iter()
        .map(|(k, v)| {
            // Any path, absolute or relative, Unix or Windows: its last part.
            let trimmed = v.trim_end_matches(['/', '\\']);
            let shown = match trimmed.rsplit(['/', '\\']).next() {
                Some(last) if v.contains(['/', '\\']) => last.to_string(),
                _ => v.clone(),
            };
            (k.clone(), shown)
        })
        .collect()
}

async fn predict(
    State(s): State<Arc<Server>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the {} bytes accepted", s.config.max_body),
        )
    };
    // A declared length over the cap is refused before any of the body is read.
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.config.max_body as u64) {
        return Err(too_large());
    }
    // Room for the body in the budget of all bodies in flight, before any
    // of it is read (a chunked body may grow to the cap). A small body (a
    // drawing from the page is a few KB) needs none: their total is
    // bounded by the connection cap, and large bodies cannot crowd them out.
    let size = declared.unwrap_or(s.config.max_body as u64);
    let _room = if size <= SMALL_BODY {
        None
    } else {
        // At most `max_body`'s KiB (checked when the server was built).
        let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX);
        match tokio::time::timeout(BUDGET_WAIT, Arc::clone(&s.bodies).acquire_many_owned(kib)).await {
            Ok(permit) => Some(permit.expect("the semaphore is never closed")),
            Err(_) => {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is busy with other requests' bodies; try again shortly".into(),
                ))
            }
        }
    };
    let limited = http_body_util::Limited::new(body, s.config.max_body);
    let collected = tokio::time::timeout(s.config.body_timeout, http_body_util::BodyExt::collect(limited)).await;
    let bytes: Bytes = match collected {
        Err(_) => return Err(ApiError(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time".into())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => return Err(ApiError(StatusCode::BAD_REQUEST, format!("cannot read the request body ({e})"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    let permit = Arc::clone(&s.slots).acquire_owned().await.expect("the semaphore is never closed");
    let server = Arc::clone(&s);
    let answer = tokio::task::spawn_blocking(move || {
        let answer = server.answer(&bytes);
        drop(permit);
        answer
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the prediction failed ({e})")))?;
    answer.map(Json).map_err(|e| ApiError(StatusCode::BAD_REQUEST, crate::error_line(&e)))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no such resource: {method} {}", uri.path()))
}

/// Logs every request on one line: method, path, status, microseconds.
async fn log(req: Request, next: Next) -> Response {
    let (method, path, start) = (req.method().clone(), req.uri().path().to_string(), Instant::now());
    let resp = next.run(req).await;
    eprintln!("{method} {path} {} {}us", resp.status().as_u16(), start.elapsed().as_micros());
    resp
}

/// The routes of the server (see the module docs).
pub fn router(server: Arc<Server>) -> Router {
    let max_body = server.config.max_body;
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/api/model", get(model_info))
        .route("/api/predict", post(predict))
        .fallback(not_found)
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(log))
        .with_state(server)
}

/// Serves `server` on `listener` until the process ends: one task per
/// connection, HTTP/1.1 with keep-alive, the header timeout of the config.
pub async fn serve(listener: tokio::net::TcpListener, server: Arc<Server>) -> Result<()> {
    let header_timeout = server.config.header_timeout;
    let connections = Arc::new(tokio::sync::Semaphore::new(server.config.max_connections.max(1)));
    let app = router(server);
    loop {
        // At the cap, further clients wait in the kernel's listen queue.
        let open = Arc::clone(&connections).acquire_owned().await.expect("the semaphore is never closed");
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: back off, keep serving.
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A client that goes away or stalls ends only its connection.
            // Requests hyper answers itself (malformed: 400, headers too
            // large: 431) never reach the router's log, so they are logged
            // here, in its format.
            if let Err(e) = conn.await {
                let status = if e.is_parse_too_large() {
                    "431"
                } else if e.is_parse() {
                    "400"
                } else if e.is_timeout() {
                    "408"
                } else {
                    "-"
                };
                eprintln!("- - {status} ({e})");
            }
            drop(open);
        });
    }
}

/// Serves `server` on an ephemeral port of 127.0.0.1 from a thread of its
/// own (with its own runtime), for tests, benchmarks and programs that embed
/// the server; returns the address. The server lives as long as the process.
pub fn spawn_local(server: Arc<Server>) -> Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let workers = server.config.workers;
    std::thread::Builder::new().name("kiln-serve".into()).spawn(move || {
        let rt = match runtime(workers) {
            Ok(rt) => rt,
            Err(e) => return tx.send(Err(anyhow::anyhow!("cannot start the runtime: {e}"))).unwrap_or(()),
        };
        rt.block_on(async {
            match bind(SocketAddr::from(([127, 0, 0, 1], 0))).await {
                Ok((listener, addr)) => {
                    let _ = tx.send(Ok(addr));
                    let _ = serve(listener, server).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    })?;
    rx.recv().context("the server thread ended before it listened")?
}

/// The server's runtime: `workers` threads for connections, and as many
/// for predictions (decoding included). Predictions run on at most that
/// many threads (each request also holds a permit of the model pool), so
/// the memory their allocations leave in each thread's allocator arena is
/// bounded too; tokio's default would be up to 512 blocking threads.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .max_blocking_threads(workers.max(1))
        .enable_all()
        .build()
}

/// Binds `addr` and returns the listener and the address bound (with port
/// 0, the port the system chose).
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
