//! A 1 GiB asset is streamed: the process's peak resident memory (VmHWM) grows by far less
//! than the asset while it is hashed twice and packed. The asset is a sparse file (no disk
//! used), so the test costs CPU time only. Its own test binary, so no other test shares the
//! process whose peak is measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use exportcore::{DirEvidence, Sha256Digest};
use exportcore_devportal::{read_member, BundleManifest, BUNDLE_FILE};
use std::sync::Arc;

/// Peak resident set size of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const GIB: u64 = 1 << 30;

#[test]
fn one_gib_asset_streams_in_constant_memory() {
    let ev = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ev.path().join("portal")).unwrap();
    std::fs::write(ev.path().join("portal/index.html"), "<h1>big</h1>").unwrap();
    std::fs::create_dir_all(ev.path().join("sdks/java")).unwrap();
    let big = std::fs::File::create(ev.path().join("sdks/java/sdk-all.jar")).unwrap();
    big.set_len(GIB).unwrap();
    drop(big);

    // Warm up (runtime, thread pools, buffers) on a small bundle, then take the baseline.
    let warm = tempfile::tempdir().unwrap();
    build_samples(warm.path(), None);
    let before = vm_hwm_kib();

    let out = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    build_from(Arc::new(DirEvidence::new(ev.path()).unwrap()), out.path(), None);
    let after = vm_hwm_kib();
    let growth_mib = after.saturating_sub(before) / 1024;
    let tgz = out.path().join(BUNDLE_FILE);
    eprintln!(
        "1 GiB asset: built in {:?}, VmHWM {before} KiB -> {after} KiB (+{growth_mib} MiB), bundle {} bytes",
        started.elapsed(),
        std::fs::metadata(&tgz).unwrap().len()
    );
    assert!(growth_mib < 100, "peak memory grew by {growth_mib} MiB for a 1 GiB asset: not streamed");

    let m = BundleManifest::parse(&read_member(&tgz, "manifest.json").unwrap()).unwrap();
    let e = m.entries.iter().find(|e| e.path.as_str() == "sdks/java/sdk-all.jar").unwrap();
    assert_eq!(e.size_bytes, GIB);
    assert_eq!(e.content_type, "application/java-archive");
    // `head -c 1073741824 /dev/zero | sha256sum`
    let zeros: Sha256Digest = "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14".parse().unwrap();
    assert_eq!(e.sha256, zeros);
    assert_eq!(m.totals.total_size_bytes, GIB + 12);
    // The archive holds the whole asset: a gzip of 1 GiB of zeros is about 1 MiB, and the tar
    // stream in it is 1 GiB plus headers.
    let size = std::fs::metadata(&tgz).unwrap().len();
    assert!(size > 1 << 20 && size < 4 << 20, "{size}");
    let mut gz = std::fs::File::open(&tgz).unwrap();
    use std::io::{Read, Seek, SeekFrom};
    gz.seek(SeekFrom::End(-4)).unwrap();
    let mut trailer = [0u8; 4];
    gz.read_exact(&mut trailer).unwrap();
    // gzip's ISIZE is the uncompressed length modulo 2^32 (the tar is below 4 GiB).
    let tar_len = u64::from(u32::from_le_bytes(trailer));
    assert!(tar_len > GIB + 12 && tar_len < GIB + (1 << 20), "{tar_len}");
}
