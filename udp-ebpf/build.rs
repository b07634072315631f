//! Lets the BPF backend emit unaligned loads and stores as single
//! instructions (LLVM 22's `allows-misaligned-mem-access`; bpf-linker does
//! the code generation). Without it every `read_unaligned` of a packet field
//! becomes one byte load per byte, which is most of the instructions of
//! header parsing. The kernel accepts misaligned packet and map-value
//! accesses on architectures that handle them (the verifier only insists on
//! alignment for the stack and when asked for strict alignment); an older
//! bpf-linker ignores the unknown feature and keeps the byte loads.
fn main() {
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
