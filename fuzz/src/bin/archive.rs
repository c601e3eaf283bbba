//! AFL target: `exportcore_fuzz::archive`.
fn main() {
    afl::fuzz!(|data: &[u8]| exportcore_fuzz::archive(data));
}
