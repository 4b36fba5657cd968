//! The benchmark's receiver and load generator; std and rustls only.
//!
//!   receiver serve PORT [PEM]    answer every POST with 200 (POST /blackhole: never answer), record
//!                                (event_id, arrival µs since the epoch) per request; GET /dump
//!                                returns and clears them as CSV, GET /count tells how many arrived;
//!                                with PEM (certificate chain and private key) over TLS
//!   receiver blast URL FILE THREADS SECONDS
//!                                POST FILE's bytes over THREADS keep-alive connections for SECONDS,
//!                                print requests per second (the receiver's ceiling)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Arrivals = Arc<Mutex<Vec<(u64, u64)>>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(args[2].parse().expect("port"), args.get(3).map(|pem| tls_config(pem))),
        Some("blast") => blast(&args[2], &args[3], args[4].parse().expect("threads"), args[5].parse().expect("seconds")),
        _ => {
            eprintln!("usage: receiver serve PORT | receiver blast URL FILE THREADS SECONDS");
            std::process::exit(2);
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn tls_config(pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pem).expect("PEM file").collect::<Result<_, _>>().expect("certificates");
    let key = PrivateKeyDer::from_pem_file(pem).expect("private key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    Arc::new(config)
}

fn serve(port: u16, tls: Option<Arc<rustls::ServerConfig>>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let arrivals: Arrivals = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
    let count = Arc::new(AtomicU64::new(0));
    for stream in listener.incoming().flatten() {
        let (arrivals, count, tls) = (arrivals.clone(), count.clone(), tls.clone());
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let _ = match tls {
                Some(config) => match rustls::ServerConnection::new(config) {
                    Ok(connection) => handle(rustls::StreamOwned::new(connection, stream), &arrivals, &count),
                    Err(_) => Ok(()),
                },
                None => handle(stream, &arrivals, &count),
            };
        });
    }
}

fn handle(stream: impl Read + Write, arrivals: &Arrivals, count: &AtomicU64) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request_line = line.trim_end().to_string();
        let mut length = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
        let arrived = now_micros();
        let response: &[u8] = if request_line.starts_with("POST /blackhole") {
            std::thread::sleep(Duration::from_secs(3600));
            return Ok(());
        } else if request_line.starts_with("GET /dump") {
            let taken = std::mem::take(&mut *arrivals.lock().unwrap());
            let csv: String = taken.iter().map(|(event, at)| format!("{event},{at}\n")).collect();
            write!(reader.get_mut(), "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{csv}", csv.len())?;
            reader.get_mut().flush()?;
            continue;
        } else if request_line.starts_with("GET /count") {
            let n = count.load(Ordering::Relaxed).to_string();
            write!(reader.get_mut(), "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{n}", n.len())?;
            reader.get_mut().flush()?;
            continue;
        } else {
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(event) = event_id(&body) {
                arrivals.lock().unwrap().push((event, arrived));
            }
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        reader.get_mut().write_all(response)?;
        reader.get_mut().flush()?;
    }
}

/// The `"event_id":"123"` of a billhook push, found without parsing the whole body.
fn event_id(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"event_id\":\"";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = body[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[start..start + digits]).ok()?.parse().ok()
}

fn blast(url: &str, file: &str, threads: usize, seconds: u64) {
    let body = std::fs::read(file).expect("payload file");
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map(|(h, p)| (h.to_string(), format!("/{p}"))).unwrap_or((rest.to_string(), "/".into()));
    let request = [
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
        body,
    ]
    .concat();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (request, host, done) = (request.clone(), host.clone(), done.clone());
            std::thread::spawn(move || {
                let stream = TcpStream::connect(&host).expect("connect");
                stream.set_nodelay(true).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while Instant::now() < deadline {
                    writer.write_all(&request).unwrap();
                    let mut length = 0;
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut sink = vec![0; length];
                    reader.read_exact(&mut sink).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0}");
}
