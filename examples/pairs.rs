//! Runs N lock+unlock pairs (or N pings) against the lockd at $LOCKD_SOCKET (for profiling).
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20000);
    let ping = std::env::args().nth(2).as_deref() == Some("ping");
    let sock = std::env::var("LOCKD_SOCKET").expect("LOCKD_SOCKET");
    let mut c = o2tools::client::Client::connect(std::path::Path::new(&sock)).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..n {
        if ping {
            c.domains().unwrap();
        } else {
            let id = c
                .lock(b"bench", b"r", o2tools::dlm::Mode::EX, &Default::default())
                .unwrap();
            c.unlock(id).unwrap();
        }
    }
    println!(
        "{:.2} us/{}",
        t.elapsed().as_secs_f64() * 1e6 / n as f64,
        if ping { "ping" } else { "pair" }
    );
}
