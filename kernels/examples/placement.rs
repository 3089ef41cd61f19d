//! Prints how far apart this machine's two cores are: the median round trip
//! of a cache line between two threads, in nanoseconds, and `near` or
//! `far` (`kiln_kernels::placement`). `benches/peers.py` runs it after
//! every epoch of every framework, so that epoch times measured on
//! different placements (a 2-vCPU VM's vCPUs move between the host's core
//! complexes) are not compared with each other. Prints `unknown` on a
//! machine with one core, or if the other thread never answered.

use std::time::{Duration, Instant};

fn main() {
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(2).build() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("placement: cannot start two threads: {e}");
            std::process::exit(1);
        }
    };
    let trip = pool.install(|| {
        // A fresh pool's other thread may not be awake at the first try.
        let give_up = Instant::now() + Duration::from_secs(2);
        loop {
            match kiln_kernels::round_trip() {
                Some(t) => break Some(t),
                None if Instant::now() > give_up || !kiln_kernels::runs_side_by_side() => break None,
                None => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    });
    match trip {
        Some(t) => {
            let far = t >= kiln_kernels::FAR_ROUND_TRIP;
            println!("{} {}", t.as_nanos(), if far { "far" } else { "near" });
        }
        None => println!("unknown"),
    }
}
