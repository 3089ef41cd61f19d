//! How much memory a run may take, and how much one needs, so that a run
//! too large for the machine stops before training with a one-line error
//! instead of aborting mid-way on a failed allocation.

use crate::model::Arch;
use kiln_kernels::Optimizer;

/// Bytes this process can still allocate: the least of the memory the
/// system reports available, the room under the address-space limit
/// (`ulimit -v`) and under the data limit, and the room under the control
/// group's memory limit (its page cache counted as free). `None` where none
/// of these can be read (not Linux), or when `KILN_SKIP_MEMORY_CHECK` is
/// set: the way out when a limit is mismeasured.
pub fn available() -> Option<u64> {
    if std::env::var_os("KILN_SKIP_MEMORY_CHECK").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let kib_field = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024)
    };
    let mut room: Vec<u64> = Vec::new();
    if let Some(m) = read("/proc/meminfo").and_then(|t| kib_field(&t, "MemAvailable:")) {
        room.push(m);
    }
    if let (Some(limits), Some(status)) = (read("/proc/self/limits"), read("/proc/self/status")) {
        let soft = |key: &str| -> Option<u64> {
            let line = limits.lines().find(|l| l.starts_with(key))?;
            line[key.len()..].split_whitespace().next()?.parse().ok()
        };
        if let (Some(limit), Some(used)) = (soft("Max address space"), kib_field(&status, "VmSize:")) {
            room.push(limit.saturating_sub(used));
        }
        if let (Some(limit), Some(used)) = (soft("Max data size"), kib_field(&status, "VmData:")) {
            room.push(limit.saturating_sub(used));
        }
    }
    let cgroup = |p: &str| read(p).and_then(|t| t.trim().parse::<u64>().ok());
    if let (Some(max), Some(cur)) = (cgroup("/sys/fs/cgroup/memory.max"), cgroup("/sys/fs/cgroup/memory.current")) {
        // The group's usage counts page cache the kernel reclaims on
        // demand (a build's files, say): that much is free to take too.
        let stat = read("/sys/fs/cgroup/memory.stat").unwrap_or_default();
        let field = |key: &str| {
            stat.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        let reclaimable = field("inactive_file ").saturating_add(field("active_file "));
        room.push(max.saturating_sub(cur.saturating_sub(reclaimable)));
    }
    room.into_iter().min()
}

/// A lower bound on the bytes training `arch` with `opt` on batches of up
/// to `capacity` rows allocates: the initial weights, the model's weights
/// and gradients, one array per optimizer state slot, and each layer's
/// activations and their gradients for a batch.
pub fn training_bytes(arch: &Arch, opt: &Optimizer, capacity: usize) -> u64 {
    let p = arch.parameters() as u64;
    let slots = opt.slots().iter().filter(|s| s.is_some()).count() as u64;
    let units: u64 = arch.dense().iter().map(|d| d.units as u64).sum();
    let f32s = p.saturating_mul(3 + slots).saturating_add((capacity as u64).saturating_mul(2 * units));
    f32s.saturating_mul(4)
}

/// `bytes` for people: `1.5 GB`, `320 MB`, `12 KB`.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{} MB", b >> 20),
        b => format!("{} KB", b.div_ceil(1024)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_weights_state_and_activations() {
        let arch = Arch::parse("512:relu", 784, 10).unwrap();
        let p = 784 * 512 + 512 + 512 * 10 + 10;
        let rms = Optimizer::RmsProp(Default::default());
        assert_eq!(training_bytes(&arch, &rms, 128), 4 * (4 * p + 128 * 2 * 522));
        let adam = Optimizer::Adam(Default::default());
        assert_eq!(training_bytes(&arch, &adam, 1), 4 * (5 * p + 2 * 522));
        assert_eq!(human(3 << 29), "1.5 GB");
        assert_eq!(human(320 << 20), "320 MB");
        #[cfg(target_os = "linux")]
        if std::env::var_os("KILN_SKIP_MEMORY_CHECK").is_none() {
            assert!(available().is_some(), "Linux reports the memory available");
        }
    }
}
