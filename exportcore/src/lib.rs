//! # exportcore
//!
//! The core of an export center: it turns security evidence (OSV advisories, OpenVEX
//! statements, policy findings, ...) into reproducible, verifiable export bundles.
//!
//! - [`model`]: the gateway contract's types — [`RunRequest`] (validated, with the seed's
//!   limits), [`Run`], [`RunStatus`], [`Progress`], [`Output`], [`RunEvent`].
//! - [`Profile`]: the one trait a format adapter implements; [`Profiles`] registry.
//! - [`Sink`]: where artifacts go; [`InMemorySink`] and [`FsSink`] (atomic) ship here.
//! - [`EvidenceSource`]: where records come from; [`DirEvidence`] and [`MemoryEvidence`];
//!   [`Records`] streams schema-checked records, in batches for [`parallel::ordered_map`];
//!   [`evidence::osv::Osv`] reads OSV advisories without `Value` trees.
//! - [`manifest`]: the deterministic manifest builder (RFC 8785, [`canonical`]).
//! - [`archive`]: the streaming deterministic tar / tar.gz / tar.zst writer (gzip and zstd
//!   compress on several threads; the bytes never depend on how many).
//! - [`RunBuilder`]: runs one export end to end, returning `Result<`[`RunOutcome`]`>`;
//!   [`verify`]: offline verification.
//! - Typed ids [`TenantId`], [`ProfileId`], [`RunId`], parsed once.
//! - `engine` (feature `engine`): the `Exporter` — queue, workers, retries, timeouts,
//!   retention, event streams — over a `store::RunStore` (memory, or SQLite with `sqlite`).
//! - `conformance` (feature `conformance`): the checks every sink, profile, evidence source
//!   and store runs.
//! - [`ExportError`]: one error type with stable `ERR_EXPORT_*` codes.
//! - [`prelude`]: what an implementer of the traits needs in scope; the adapter guide
//!   (`docs/adapter-guide.md`) walks through a profile and a sink.
//!
//! ## Example: a custom profile, run into memory
//!
//! ```
//! use exportcore::*;
//! use std::sync::Arc;
//!
//! #[derive(Debug)]
//! struct Hello;
//! impl Profile for Hello {
//!     fn descriptor(&self) -> ProfileDescriptor {
//!         ProfileDescriptor::new("hello:txt", "says hello")
//!     }
//!     fn validate(&self, _: &RunRequest) -> Result<()> { Ok(()) }
//!     fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
//!         ctx.time_anchor(None); // no evidence times: the pinned time, else the epoch
//!         let spec = ArtifactSpec::new("hello.txt", ArtifactType::Data, "text", "text/plain")?;
//!         ctx.write_artifact(spec, |w| w.write_all(b"hello\n").map_err(|e| ExportError::io("hello.txt", e)))?;
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let sink = InMemorySink::new();
//! let outcome = RunBuilder::new(Hello, MemoryEvidence::new(), sink.clone())
//!     .tenant(TenantId::parse("tenant-a")?)
//!     .execute(RunRequest::new(ProfileId::from_static("hello:txt")))
//!     .await?;
//! assert_eq!(outcome.run.status, RunStatus::Succeeded);
//! assert!(outcome.run.warnings.is_empty());
//! assert_eq!(sink.snapshot().len(), 2); // hello.txt + manifest.json
//! # Ok::<(), ExportError>(())
//! # }).unwrap();
//! ```
//!
//! ## Features
//! - `gzip` (default): tar.gz archives via `flate2` (zlib-rs), deflated in parallel blocks by
//!   our own writer (`pgzip`, the pigz scheme: no maintained crate gives thread-count-independent
//!   output).
//! - `zstd` (default): tar.zst archives via `zstd` (C library, multithreaded).
//! - `engine` (default): the `Exporter` engine, the `RunStore` trait and `MemoryStore` (adds
//!   `metrics`). Without it the crate runs single exports ([`RunBuilder`]) and nothing else.
//! - `sqlite`: the durable `SqliteStore` (bundled SQLite); implies `engine`.
//! - `conformance`: the public conformance suite.
//!
//! Adapters depend on the core with `default-features = false` plus what they use, so an
//! embedder that needs only `json:raw` compiles no engine, SQLite or metrics.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod archive;
pub mod bundle;
pub mod canonical;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(feature = "engine")]
pub mod engine;
pub mod error;
pub mod evidence;
pub mod files;
pub mod hashing;
pub mod id;
pub mod manifest;
pub mod model;
pub mod parallel;
mod path;
#[cfg(feature = "gzip")]
mod pgzip;
pub mod profile;
pub mod purl;
pub mod run;
pub mod saved;
pub mod select;
pub mod sign;
pub mod sink;
#[cfg(feature = "engine")]
pub mod store;
pub mod verify;

pub use error::{ExportError, IoContext, Location, Result};
pub use evidence::{DirEvidence, EvidenceItem, EvidenceKind, EvidenceSource, MemoryEvidence, Record, Records};
pub use hashing::{HashingWriter, Sha256Digest};
pub use id::{ProfileId, RunId, TenantId};
pub use manifest::{Manifest, ManifestBuilder, ManifestEntry, TimeAnchor, TimeSource};
pub use model::{
    ArtifactType, Compression, DistributedArtifact, Distribution, DistributionRecord, DistributionStatus,
    DistributionType, Encryption, Format, Lease, Limits, Output, Priority, Progress, Run, RunError, RunEvent,
    RunRequest, RunRequestBuilder, RunStatus, SavedProfileRef, Signing, Target, Timestamp,
};
pub use path::ArtifactPath;
pub use profile::{
    check_supported, export_detached, ArtifactSpec, CancelFlag, ExportContext, Profile, ProfileDescriptor, Profiles,
    StagedArtifact,
};
pub use run::{RunBuilder, RunOutcome};
pub use select::{SelectedEvidence, Selection, Selectors};
pub use sink::{ByteStream, FsSink, InMemorySink, ObjectMeta, PutReceipt, Sink, SinkExt};

/// What an implementer of [`Profile`], [`Sink`] or [`EvidenceSource`] needs in scope:
/// `use exportcore::prelude::*;` brings the traits, their argument and result types, the
/// `async_trait` attribute, `Bytes`, the stream helpers, `serde_json`'s `Value`/`json!` and
/// `std::io::{Read, Write}`.
pub mod prelude {
    pub use crate::error::{ExportError, IoContext, Location, Result};
    pub use crate::evidence::{EvidenceItem, EvidenceKind, EvidenceSource, Record, Records};
    pub use crate::hashing::Sha256Digest;
    pub use crate::id::{ProfileId, RunId, TenantId};
    pub use crate::model::{ArtifactType, Compression, Format, Progress, RunRequest, Target, Timestamp};
    pub use crate::path::ArtifactPath;
    pub use crate::profile::{check_supported, ArtifactSpec, ExportContext, Profile, ProfileDescriptor, Profiles};
    pub use crate::sink::{file_stream, ByteStream, ObjectMeta, PutReceipt, Sink, SinkExt};
    pub use async_trait::async_trait;
    pub use bytes::Bytes;
    pub use futures::stream::{BoxStream, StreamExt, TryStreamExt};
    pub use serde_json::{json, Value};
    pub use std::io::{Read, Write};
}

/// How to write a profile, a sink or an evidence source (the text of `docs/adapter-guide.md`;
/// its examples are doc-tested, with the `conformance` feature).
#[cfg(all(feature = "conformance", feature = "gzip"))]
#[doc = include_str!("../../docs/adapter-guide.md")]
pub mod adapter_guide {}
