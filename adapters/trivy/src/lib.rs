//! # exportcore-trivy
//!
//! Two export profiles that build the databases the real Trivy scanner reads, from an
//! air-gapped site's own evidence, reproducibly:
//!
//! - **`trivy:db`** ([`TrivyDb`]): OSV advisories → `trivy.db` (BoltDB, schema 2: OS buckets
//!   such as `alpine 3.19` / `debian 12`, language buckets `pip::`, `npm::`, `maven::`, `go::`,
//!   `cargo::`, `rubygems::`, `nuget::`, `composer::`, the `vulnerability` and `data-source`
//!   buckets) + `metadata.json`, packaged as `db.tar.gz` and as an OCI image layout with
//!   Trivy's media types.
//! - **`trivy:java-db`** ([`TrivyJavaDb`]): Maven index entries → `trivy-java.db` (SQLite,
//!   schema 1) + `metadata.json`, as `javadb.tar.gz` and an OCI layout.
//!
//! The mapping (and what it loses) is in `docs/trivy.md`. BoltDB files are written bottom-up
//! from sorted keys by our own page writer (module `bolt`: no maintained crate bulk-loads a
//! bbolt file, and `bbolt-rs`' transactional puts were the slowest part of a build); every file
//! it writes in tests is checked with `bbolt-rs` as an independent reader, and the interop
//! tests scan with the real Trivy. The same input gives the same bytes.
//!
//! ```
//! use exportcore::{InMemorySink, MemoryEvidence, RunBuilder, RunRequest, RunStatus, TenantId};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut ev = MemoryEvidence::new();
//! ev.insert("advisories/a.json", r#"{"id":"GHSA-1","aliases":["CVE-2024-1"],"modified":"2024-05-01T00:00:00Z",
//!   "affected":[{"package":{"ecosystem":"npm","name":"lodash"},
//!     "ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"4.17.21"}]}]}]}"#)?;
//! let sink = InMemorySink::new();
//! let run = RunBuilder::new(exportcore_trivy::TrivyDb, ev, sink.clone())
//!     .tenant(TenantId::parse("t")?)
//!     .execute(RunRequest::builder("trivy:db").build()?)
//!     .await?
//!     .run;
//! assert_eq!(run.status, RunStatus::Succeeded);
//! assert!(run.outputs.iter().any(|o| o.path == "db.tar.gz"));
//! # Ok::<(), exportcore::ExportError>(())
//! # }).unwrap();
//! ```

mod bolt;
mod db;
mod java;
mod mapping;
mod package;
mod profile;
mod report;
mod vex;

pub use mapping::Skipped;
pub use package::{CONFIG_MEDIA_TYPE, DB_LAYER_MEDIA_TYPE, JAVADB_LAYER_MEDIA_TYPE};
pub use profile::{TrivyDb, TrivyJavaDb};
pub use report::DbReport;

/// A registry holding `trivy:db` and `trivy:java-db`.
pub fn profiles() -> exportcore::Profiles {
    exportcore::Profiles::new().with(TrivyDb).with(TrivyJavaDb)
}
