//! AFL target: `exportcore_fuzz::records`.
fn main() {
    afl::fuzz!(|data: &[u8]| exportcore_fuzz::records(data));
}
