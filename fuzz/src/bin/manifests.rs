//! AFL target: `exportcore_fuzz::manifests`.
fn main() {
    afl::fuzz!(|data: &[u8]| exportcore_fuzz::manifests(data));
}
