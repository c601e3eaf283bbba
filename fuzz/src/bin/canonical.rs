//! AFL target: `exportcore_fuzz::canonical`.
fn main() {
    afl::fuzz!(|data: &[u8]| exportcore_fuzz::canonical(data));
}
