//! A bounded load test of `serve`: the server runs in this process on an
//! ephemeral port of 127.0.0.1 with the tutorial network (trained here for
//! one epoch), and `CLIENTS` client threads each send their share of
//! `REQUESTS` `POST /api/predict` requests of a real test digit (PNG) over
//! one keep-alive connection each. Prints requests per second, p50/p99/max
//! latency, and the count of errors and dropped connections; exits non-zero
//! if there was any. It stops by itself (every read has a timeout).
//!
//! `cargo bench --bench serve_load` (`KILN_LOAD_REQUESTS`, `KILN_LOAD_CLIENTS`
//! override the 20,000 requests and 16 clients).

use kiln::data::Dataset;
use kiln::model::{Arch, Model, Params};
use kiln::serve::Server;
use kiln::train::{fit, Config, Samples};
use kiln_kernels::RmsProp;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Reads one response from a keep-alive connection: (status, body length).
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, usize)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((status, len))
}

fn main() {
    let (requests, clients) = (env_or("KILN_LOAD_REQUESTS", 20_000), env_or("KILN_LOAD_CLIENTS", 16).max(1));
    let ds =
        Dataset::load(&kiln::data::default_data_dir(), &kiln::data::default_cache_dir()).expect("the vendored MNIST");
    let be = kiln_kernels::select("auto").unwrap();
    let arch = Arch::parse("512:relu", 784, 10).unwrap();
    let mut m = Model::new(be, &Params::glorot(&arch, 1), RmsProp::default()).unwrap();
    fit(&mut m, Samples::from(&ds.train), &Config { epochs: 1, ..Config::default() }, |_| {}, |_| {}).unwrap();
    let server = Server::new(be, m.params(), Default::default(), Default::default()).unwrap();
    let png = {
        let pixels: Vec<u8> = ds.test.image(0).iter().map(|&p| 255 - p).collect();
        let mut v = Vec::new();
        image::GrayImage::from_raw(28, 28, pixels)
            .unwrap()
            .write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png)
            .unwrap();
        v
    };
    let addr = kiln::serve::spawn_local(server).unwrap();
    let head = format!(
        "POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        png.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&png);
    eprintln!(
        "serve_load: {requests} requests from {clients} clients to http://{addr}/api/predict ({} bytes each)",
        request.len()
    );
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let request = request.clone();
            let n = requests / clients + usize::from(c < requests % clients);
            std::thread::spawn(move || {
                let (mut latencies, mut errors, mut dropped) = (Vec::with_capacity(n), 0usize, 0usize);
                let connect = || {
                    let s = TcpStream::connect(addr).ok()?;
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                    s.set_nodelay(true).ok()?;
                    Some((s.try_clone().ok()?, BufReader::new(s)))
                };
                let mut conn = connect();
                for _ in 0..n {
                    let Some((w, r)) = conn.as_mut() else {
                        dropped += 1;
                        conn = connect();
                        continue;
                    };
                    let t = Instant::now();
                    let answer = w.write_all(&request).and_then(|()| read_response(r));
                    match answer {
                        Ok((200, len)) if len > 0 => latencies.push(t.elapsed()),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            dropped += 1;
                            conn = connect();
                        }
                    }
                }
                (latencies, errors, dropped)
            })
        })
        .collect();
    let (mut all, mut errors, mut dropped) = (Vec::new(), 0, 0);
    for w in workers {
        let (l, e, d) = w.join().unwrap();
        all.extend(l);
        errors += e;
        dropped += d;
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    println!(
        "{{\"requests\":{requests},\"clients\":{clients},\"ok\":{},\"errors\":{errors},\"dropped\":{dropped},\
         \"seconds\":{seconds:.3},\"requests_per_second\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"backend\":\"{}\"}}",
        all.len(),
        all.len() as f64 / seconds,
        pct(0.50).as_micros(),
        pct(0.99).as_micros(),
        all.last().copied().unwrap_or_default().as_micros(),
        be.name()
    );
    if errors > 0 || dropped > 0 || all.len() != requests {
        eprintln!("serve_load: {errors} errors, {dropped} dropped connections");
        std::process::exit(1);
    }
}
