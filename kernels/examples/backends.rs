//! Prints the backends: each instruction-set backend this CPU runs, one a
//! line (`--simd`), or every backend with whether it runs here. CI forces
//! its test runs onto each line of `--simd`, so a new instruction set in
//! `BACKEND_NAMES` is tested wherever the CPU has it.

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--simd") {
        for name in kiln_kernels::simd_backends().filter(|n| kiln_kernels::select(n).is_ok()) {
            println!("{name}");
        }
        return;
    }
    for name in kiln_kernels::BACKEND_NAMES {
        match kiln_kernels::select(name) {
            Ok(be) => println!("{name}: {}", be.describe()),
            Err(e) => println!("{name}: {e}"),
        }
    }
}
