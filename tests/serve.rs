//! The `serve` HTTP server, started on an ephemeral port of 127.0.0.1, as
//! clients use it: real HTTP/1.1 requests over TCP for every route and
//! every bad request, answers compared with `predict --json` on the same
//! files, a stalled client dropped, concurrent requests served.

use kiln::data::Dataset;
use kiln::model::{Arch, Model, Params};
use kiln::serve::Server;
use kiln::train::{fit, Config, Samples};
use kiln_kernels::RmsProp;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A model trained for one epoch on the vendored MNIST, saved to a file, and
/// a server for it with short timeouts (shared by the tests).
struct Fixture {
    addr: SocketAddr,
    model: PathBuf,
    dir: tempfile::TempDir,
    test: Dataset,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ds = Dataset::load(&kiln::data::default_data_dir(), &std::env::temp_dir().join("kiln-test-cache")).unwrap();
        let be = kiln_kernels::select("auto").unwrap();
        let arch = Arch::parse("128:relu", 784, 10).unwrap();
        let mut m = Model::new(be, &Params::glorot(&arch, 1), RmsProp::default()).unwrap();
        fit(&mut m, Samples::from(&ds.train), &Config { epochs: 1, ..Config::default() }, |_| {}, |_| {}).unwrap();
        let model = dir.path().join("model.safetensors");
        kiln::checkpoint::save(&model, &m.params(), &Default::default()).unwrap();
        let (params, meta) = kiln::checkpoint::load(&model).unwrap();
        let config = kiln::serve::Config {
            max_body: 1 << 20,
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let addr = kiln::serve::spawn_local(Server::new(be, params, meta, config).unwrap()).unwrap();
        Fixture { addr, model, dir, test: ds }
    })
}

/// One request (`Connection: close`), answered with (status, body).
fn request(method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(fixture().addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 4 + n..];
    }
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Test digit `i`, inverted (dark ink on white, as a person draws), as a
/// PNG or JPEG file's bytes, also written to the fixture's directory.
fn digit_file(i: usize, format: image::ImageFormat) -> (PathBuf, Vec<u8>) {
    let f = fixture();
    let pixels: Vec<u8> = f.test.test.image(i).iter().map(|&p| 255 - p).collect();
    let img = image::GrayImage::from_raw(28, 28, pixels).unwrap();
    let ext = if format == image::ImageFormat::Png { "png" } else { "jpg" };
    let path = f.dir.path().join(format!("digit{i}.{ext}"));
    img.save_with_format(&path, format).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn predictions_agree_with_predict_json_on_png_and_jpeg_digits() {
    let f = fixture();
    let mut files = Vec::new();
    let mut correct = 0;
    for i in 0..20 {
        for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let (path, bytes) = digit_file(i, format);
            let (status, body) = request("POST", "/api/predict", &bytes);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let a = json(&body);
            let probs: Vec<f64> = a["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(probs.len(), 10);
            assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
            let input: Vec<u64> = a["input"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(input.len(), 784);
            assert!(input.iter().all(|&v| v <= 255) && input.iter().any(|&v| v > 200));
            correct += usize::from(a["digit"].as_u64().unwrap() == u64::from(f.test.test.labels()[i]));
            files.push((path, a));
        }
    }
    assert!(correct >= 36, "only {correct} of 40 digits right");
    // The CLI on the same files gives the same digit and probabilities.
    let out = Command::new(env!("CARGO_BIN_EXE_predict"))
        .arg("--model")
        .arg(&f.model)
        .arg("--json")
        .args(files.iter().map(|(p, _)| p))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(cli.len(), files.len());
    for ((path, api), cli) in files.iter().zip(&cli) {
        assert_eq!(api["digit"], cli["digit"], "{}", path.display());
        assert_eq!(api["probabilities"], cli["probabilities"], "{}", path.display());
    }
}

#[test]
fn the_page_model_and_health_routes_answer() {
    let (status, body) = request("GET", "/", b"");
    assert_eq!(status, 200);
    let page = String::from_utf8(body).unwrap();
    for part in ["<canvas id=\"canvas\"", "id=\"clear\"", "id=\"upload\"", "/api/predict", "pointerdown"] {
        assert!(page.contains(part), "the page lacks {part}");
    }
    assert!(!page.contains("http://") && !page.contains("https://"), "the page must not load anything from outside");
    let (status, body) = request("GET", "/api/model", b"");
    assert_eq!(status, 200);
    let m = json(&body);
    assert_eq!(m["layers"], "128:relu,10:softmax");
    assert_eq!(m["metadata"]["format"], "kiln-sequential-v1");
    assert_eq!(request("GET", "/healthz", b""), (200, b"ok\n".to_vec()));
}

#[test]
fn bad_requests_get_clear_json_errors() {
    let blank = {
        let img = image::GrayImage::from_pixel(28, 28, image::Luma([255]));
        let mut v = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png).unwrap();
        v
    };
    let (_, png) = digit_file(0, image::ImageFormat::Png);
    // 8000 x 8000 = 64 million pixels (over the 4,194,304 a server accepts), a few
    // hundred KB compressed: a decompression bomb under the body cap.
    let bomb = {
        let mut v = Vec::new();
        image::GrayImage::new(8000, 8000).write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png).unwrap();
        assert!(v.len() < 1 << 20, "the bomb fits the body cap");
        v
    };
    for (what, body, want) in [
        ("no image", b"hello, not an image".to_vec(), "request body: not an image in a supported format"),
        ("empty", Vec::new(), "request body: the file is empty (0 bytes), not an image"),
        ("corrupt", png[..60].to_vec(), "request body: corrupt image data"),
        ("blank", blank, "request body: no ink found: the image is blank"),
        ("bomb", bomb, "request body: 8000x8000 pixels (rows x columns) is more than the 4194304 accepted"),
    ] {
        let (status, resp) = request("POST", "/api/predict", &body);
        assert_eq!(status, 400, "{what}: {}", String::from_utf8_lossy(&resp));
        let e = json(&resp)["error"].as_str().unwrap().to_string();
        assert!(e.contains(want), "{what}: {e}");
    }
    let (status, resp) = request("GET", "/api/predict", b"");
    assert_eq!(status, 405);
    assert!(json(&resp)["error"].as_str().unwrap().contains("GET is not allowed on /api/predict"));
    let (status, resp) = request("POST", "/nowhere", b"x");
    assert_eq!(status, 404);
    assert!(json(&resp)["error"].as_str().unwrap().contains("no such resource: POST /nowhere"));
}

/// A body over the cap (1 MiB in this fixture) gets 413 from its declared
/// length alone: the client never sends it, and the answer still comes.
#[test]
fn an_oversized_body_gets_413_without_being_read() {
    let mut s = TcpStream::connect(fixture().addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = "POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 50000000\r\n\r\n";
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&[0u8; 1000]).unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 413);
    assert!(json(&body)["error"].as_str().unwrap().contains("larger than the 1048576 bytes accepted"));
    // Without a declared length (chunked), the cap still holds.
    let mut s = TcpStream::connect(fixture().addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = vec![b'a'; 1 << 16];
    for _ in 0..17 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err() || s.write_all(&chunk).is_err() {
            break;
        }
        let _ = s.write_all(b"\r\n");
    }
    assert_eq!(read_response(&mut s).0, 413);
}

/// A client that stops half-way through its headers is dropped after the
/// header timeout (1 s here); one that stops half-way through its body
/// gets 408; the server goes on serving others meanwhile.
#[test]
fn stalled_clients_are_dropped() {
    let addr = fixture().addr;
    let mut headers = TcpStream::connect(addr).unwrap();
    headers.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    headers.write_all(b"POST /api/predict HTTP/1.1\r\nHost: local").unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = TcpStream::connect(addr).unwrap();
    body.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    body.write_all(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789").unwrap();
    assert_eq!(request("GET", "/healthz", b"").0, 200, "others are served while two clients stall");
    let start = Instant::now();
    let mut rest = Vec::new();
    let n = headers.read_to_end(&mut rest).unwrap_or(0);
    assert!(start.elapsed() < Duration::from_secs(8), "the stalled connection was not dropped");
    assert!(n == 0 || String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&rest));
    // One that connects and never sends a byte is dropped too.
    let dropped = match silent.read_to_end(&mut rest) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => false,
        _ => true, // closed (or reset) by the server
    };
    assert!(dropped && start.elapsed() < Duration::from_secs(8), "the silent connection was not dropped");
    let (status, resp) = read_response(&mut body);
    assert_eq!(status, 408);
    assert!(json(&resp)["error"].as_str().unwrap().contains("did not arrive in time"));
}

#[test]
fn concurrent_requests_are_all_answered_alike() {
    let (_, png) = digit_file(3, image::ImageFormat::Png);
    let (status, want) = request("POST", "/api/predict", &png);
    assert_eq!(status, 200);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let png = png.clone();
            std::thread::spawn(move || (0..10).map(|_| request("POST", "/api/predict", &png)).collect::<Vec<_>>())
        })
        .collect();
    for t in threads {
        for (status, body) in t.join().unwrap() {
            assert_eq!(status, 200);
            assert_eq!(body, want, "a concurrent answer differs");
        }
    }
}

#[test]
fn serve_binary_refuses_a_missing_model_and_prints_the_url() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("none.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_serve")).arg("--model").arg(&missing).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `cargo run --release --bin train` first"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--model")
        .arg(&fixture().model)
        .args(["--addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(line.starts_with("open http://127.0.0.1:") && line.contains("to draw a digit"), "{line}");
}

/// Bodies in flight share one budget: while a stalled client holds all of
/// it, another large body gets 503 after a brief wait instead of growing
/// the server's memory, a small one (a drawing) is still served, and the
/// large one is served once the budget is free again.
#[test]
fn request_bodies_share_a_budget_and_the_rest_get_503() {
    let (params, meta) = kiln::checkpoint::load(&fixture().model).unwrap();
    let config = kiln::serve::Config {
        max_body: 256 << 10,
        body_budget: 256 << 10,
        body_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let be = kiln_kernels::select("auto").unwrap();
    let addr = kiln::serve::spawn_local(Server::new(be, params, meta, config).unwrap()).unwrap();
    let ask = |len: usize| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(&vec![b'a'; len]);
        read_response(&mut s)
    };
    let big = kiln::serve::SMALL_BODY as usize + 1;
    // A budget of exactly the largest body, not a whole number of KiB: a
    // body of nearly that size still fits an empty budget.
    let (params, meta) = kiln::checkpoint::load(&fixture().model).unwrap();
    let odd = kiln::serve::Config { max_body: 1_000_000, body_budget: 1_000_000, ..Default::default() };
    let odd_addr = kiln::serve::spawn_local(Server::new(be, params, meta, odd).unwrap()).unwrap();
    let mut s = TcpStream::connect(odd_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999500\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    s.write_all(&vec![b'a'; 999_500]).unwrap();
    assert_eq!(read_response(&mut s).0, 400, "served (no image), not 503");
    let mut hog = TcpStream::connect(addr).unwrap();
    hog.write_all(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 262144\r\n\r\n0123456789")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // its reservation is made
    let (status, body) = ask(big);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(json(&body)["error"].as_str().unwrap().contains("busy"));
    assert_eq!(ask(3).0, 400, "a small body needs no room: served (3 bytes are no image)");
    drop(hog);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ask(big).0, 400, "served once the budget is free");
}

/// `/api/model` shows the model file's metadata without the machine's
/// directories, and requests hyper answers itself (a malformed request
/// line: 400; headers over its limit: 431) are logged like the others.
#[test]
fn the_model_route_hides_paths_and_hyper_answers_are_logged() {
    let d = tempfile::tempdir().unwrap();
    let (params, _) = kiln::checkpoint::load(&fixture().model).unwrap();
    let model = d.path().join("m.safetensors");
    let meta = [("data", "/home/someone/datasets/mnist/"), ("init", "weights/acme/w.safetensors")];
    let meta = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    kiln::checkpoint::save(&model, &params, &meta).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--model")
        .arg(&model)
        .args(["--addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr: SocketAddr = line.split("http://").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let info = send(b"GET /api/model HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert!(info.contains("\"data\":\"mnist\"") && !info.contains("/home/someone"), "{info}");
    assert!(info.contains("\"init\":\"w.safetensors\"") && !info.contains("acme"), "relative paths too: {info}");
    assert!(send(b"NOT A REQUEST\r\n\r\n").starts_with("HTTP/1.1 400"));
    let huge = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    assert!(send(huge.as_bytes()).starts_with("HTTP/1.1 431"));
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let _ = child.wait();
    assert!(log.contains("GET /api/model 200"), "{log}");
    assert!(log.lines().any(|l| l.starts_with("- - 400")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("- - 431")), "{log}");
}
