//! Runs lock+unlock pairs (or pings) against the lockd at $LOCKD_SOCKET, from
//! THREADS threads with a connection each, for SECS seconds (for profiling).
//! Usage: pairs THREADS SECS [ping]
fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let secs: f64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2.0);
    let ping = std::env::args().nth(3).as_deref() == Some("ping");
    let sock = std::env::var("LOCKD_SOCKET").expect("LOCKD_SOCKET");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = std::time::Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            let (sock, stop) = (sock.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = o2tools::client::Client::connect(std::path::Path::new(&sock)).unwrap();
                let res = format!("r{i}");
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if ping {
                        c.domains().unwrap();
                    } else {
                        let id = c
                            .lock(
                                b"bench",
                                res.as_bytes(),
                                o2tools::dlm::Mode::EX,
                                &Default::default(),
                            )
                            .unwrap();
                        c.unlock(id).unwrap();
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    println!(
        "{:.0} {}/s",
        n as f64 / t.elapsed().as_secs_f64(),
        if ping { "pings" } else { "pairs" }
    );
}
