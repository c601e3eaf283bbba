//! # exportcore-json
//!
//! Two export profiles for [`exportcore`]:
//!
//! - **`json:raw`** ([`JsonRaw`]): the evidence selected by `targets` (`advisory` = OSV
//!   records, `vex` = OpenVEX documents, `policy` = policy findings), one file per target in
//!   each requested format (`json`: one array document; `ndjson`: one record per line), every
//!   record in RFC 8785 canonical form, in a stable order (evidence files by path, records in
//!   file order), packed in a deterministic bundle `json-raw.tar[.gz|.zst]` whose
//!   `manifest.json` lists each file's path, size, sha256, media type and record count.
//! - **`json:policy`** ([`JsonPolicy`]): the same raw files plus the policy overlay
//!   `policy/overlay.<fmt>`: each finding joined with its advisory and the VEX status for its
//!   product and vulnerability into an effective verdict with reasons.
//!
//! Record schemas are documented in `docs/records.md`.
//!
//! ```
//! use exportcore::{InMemorySink, MemoryEvidence, RunBuilder, RunRequest, RunStatus, Target, TenantId};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut evidence = MemoryEvidence::new();
//! evidence.insert("advisories/a.json", r#"{"id":"GHSA-1","modified":"2024-05-01T00:00:00Z"}"#)?;
//! let request = RunRequest::builder("json:raw").targets([Target::Advisory]).build()?;
//! let sink = InMemorySink::new();
//! let run = RunBuilder::new(exportcore_json::JsonRaw, evidence, sink.clone())
//!     .tenant(TenantId::parse("tenant-a")?)
//!     .execute(request)
//!     .await?
//!     .run;
//! assert_eq!(run.status, RunStatus::Succeeded);
//! assert_eq!(run.outputs[0].path, "json-raw.tar.zst");
//! # Ok::<(), exportcore::ExportError>(())
//! # }).unwrap();
//! ```

mod policy;

mod raw;

pub use policy::JsonPolicy;
pub use raw::JsonRaw;

use exportcore::Profiles;

/// A registry holding `json:raw` and `json:policy`.
pub fn profiles() -> Profiles {
    Profiles::new().with(JsonRaw).with(JsonPolicy)
}
