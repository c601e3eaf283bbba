//! TUF 1.0 repository metadata for a mirror (root, targets, snapshot, timestamp; consistent
//! snapshots), signed through the core's [`Signer`], and a verifier of the chain at a chosen
//! time.
//!
//! Written by hand: the Rust TUF crate (`tuf`) is unmaintained and async-only, and what a
//! static repository needs is small: four documents, the canonical JSON TUF signs (the OLPC
//! form securesystemslib uses: sorted keys, no whitespace, only `\` and `"` escaped, integers
//! only) and the key ids. python-tuf's `ngclient.Updater` is the reference these are tested
//! against (`tests/interop`).

use exportcore::sign::{SignatureAlgorithm, Signer, Verifier};
use exportcore::{ExportError, Result, Timestamp};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// The TUF specification version written.
pub const SPEC_VERSION: &str = "1.0.31";

/// The four top-level roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Signs the root metadata: the keys of every role.
    Root,
    /// Signs the list of targets with their hashes.
    Targets,
    /// Signs the versions of the targets metadata.
    Snapshot,
    /// Signs the newest snapshot (short-lived: freshness).
    Timestamp,
}

impl Role {
    /// Every role, in metadata order.
    pub const ALL: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];

    /// The role's name in metadata (`root`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }
}

/// Keys, threshold and lifetime of one role.
#[derive(Clone, Debug)]
pub struct RoleKeys {
    /// Signers (empty: the run's signer).
    pub signers: Vec<Arc<dyn Signer>>,
    /// Signatures required.
    pub threshold: u32,
    /// Days from the pinned time until the role's metadata expires.
    pub expires_days: u32,
}

/// How a mirror's TUF metadata is signed: per role, its keys, threshold and lifetime. The
/// default signs every role with the run's signer, threshold 1; root, targets and snapshot
/// expire a year after the pinned time, timestamp after 90 days.
#[derive(Clone, Debug)]
pub struct TufOptions {
    roles: BTreeMap<Role, RoleKeys>,
    max_targets_per_role: usize,
}

/// How many targets the top-level targets metadata lists itself; a repository with more
/// delegates them to hashed bins ([`TufOptions::max_targets_per_role`]). At about 150 to 250
/// bytes an entry this keeps every targets file near 2 MB, under python-tuf's default
/// `targets_max_length` of 5 MB.
pub const DEFAULT_MAX_TARGETS_PER_ROLE: usize = 10_000;

/// The prefix of a hashed-bin role's name: `bins-<hex prefix>`.
pub const BIN_ROLE_PREFIX: &str = "bins-";

impl Default for TufOptions {
    fn default() -> Self {
        let keys = |days| RoleKeys { signers: Vec::new(), threshold: 1, expires_days: days };
        Self {
            roles: BTreeMap::from([
                (Role::Root, keys(365)),
                (Role::Targets, keys(365)),
                (Role::Snapshot, keys(365)),
                (Role::Timestamp, keys(90)),
            ]),
            max_targets_per_role: DEFAULT_MAX_TARGETS_PER_ROLE,
        }
    }
}

impl TufOptions {
    /// Signs `role` with `signers` (instead of the run's signer) and requires `threshold`
    /// of them.
    #[must_use]
    pub fn role_keys(mut self, role: Role, signers: Vec<Arc<dyn Signer>>, threshold: u32) -> Self {
        if let Some(r) = self.roles.get_mut(&role) {
            r.signers = signers;
            r.threshold = threshold;
        }
        self
    }

    /// Sets how many days after the pinned time `role`'s metadata expires.
    #[must_use]
    pub fn expires_days(mut self, role: Role, days: u32) -> Self {
        if let Some(r) = self.roles.get_mut(&role) {
            r.expires_days = days;
        }
        self
    }

    /// Lists at most `n` targets (at least 1) in one targets metadata file. With more, the
    /// top-level targets role lists none itself and delegates them, by the SHA-256 of their
    /// path, to 16, 256, 4,096 or 65,536 hashed bins (`bins-<prefix>`, signed with the targets
    /// role's keys; the fewest bins that keep each under `n`), as PEP 458 and python-tuf's
    /// hashed-bin example do. The default is [`DEFAULT_MAX_TARGETS_PER_ROLE`].
    #[must_use]
    pub fn max_targets_per_role(mut self, n: usize) -> Self {
        self.max_targets_per_role = n.max(1);
        self
    }

    /// The settings of `role`.
    pub fn role(&self, role: Role) -> &RoleKeys {
        // Every role is present from `default` on.
        &self.roles[&role]
    }
}

/// OLPC canonical JSON, as TUF signs it: sorted keys, no whitespace, strings with only `\`
/// and `"` escaped, integers only.
///
/// # Errors
/// `ERR_EXPORT_INTERNAL` for a non-integer number.
pub fn canonical(v: &Value) -> Result<Vec<u8>> {
    fn write(v: &Value, out: &mut Vec<u8>) -> Result<()> {
        match v {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Number(n) if n.is_i64() || n.is_u64() => out.extend_from_slice(n.to_string().as_bytes()),
            Value::Number(n) => return Err(ExportError::internal("tuf", format!("non-integer number {n}"))),
            Value::String(s) => {
                out.push(b'"');
                for b in s.bytes() {
                    if b == b'"' || b == b'\\' {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(x, out)?;
                }
                out.push(b']');
            }
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(&Value::String(k.clone()), out)?;
                    out.push(b':');
                    write(&o[k], out)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    write(v, &mut out)?;
    Ok(out)
}

/// The TUF key object of a signer's public key and its key id (SHA-256 of the object's
/// canonical JSON, as python-tuf computes it).
///
/// # Errors
/// `ERR_EXPORT_NOT_SUPPORTED` for a key TUF has no scheme for (SM2, HMAC) or a signer that
/// does not expose its public key.
pub fn key_object(signer: &dyn Signer) -> Result<(String, Value)> {
    let spki = signer.public_key_der().ok_or_else(|| ExportError::NotSupported {
        feature: format!("TUF signing with key {}: the signer does not expose its public key", signer.key_id()),
    })?;
    let key = match signer.algorithm() {
        SignatureAlgorithm::Ed25519 => {
            let raw = spki.get(spki.len().saturating_sub(32)..).unwrap_or_default();
            json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": hex::encode(raw)}})
        }
        SignatureAlgorithm::EcdsaP256Sha256 => {
            json!({"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": pem("PUBLIC KEY", &spki)}})
        }
        other => {
            return Err(ExportError::NotSupported {
                feature: format!("TUF signing with {other:?} keys: TUF defines ed25519 and ecdsa-sha2-nistp256"),
            })
        }
    };
    let id = hex::encode(Sha256::digest(canonical(&key)?));
    Ok((id, key))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// `expires` of `role`: seconds precision with a `Z`, as TUF requires; an error past the year
/// 9999 (a time RFC 3339 cannot write).
fn expiry(anchor: Timestamp, role: Role, days: u32) -> Result<String> {
    let t = anchor
        .checked_plus_days(days)
        .ok_or_else(|| {
            ExportError::invalid(
                "createdAt",
                format!(
                    "{anchor} plus the {} metadata's {days}-day expiry is past 9999-12-31: pin an earlier time",
                    role.as_str()
                ),
            )
        })?
        .as_offset_date_time();
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// One target: its path (relative to the targets directory), length and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Path, `/`-separated.
    pub path: String,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256.
    pub sha256: exportcore::Sha256Digest,
}

impl Target {
    /// Where a consistent-snapshot client fetches it: the hash before the base name
    /// (`data/raw/<sha256>.x.jsonl.zst`).
    pub fn hashed_path(&self) -> String {
        match self.path.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/{}.{base}", self.sha256),
            None => format!("{}.{}", self.sha256, self.path),
        }
    }
}

/// The metadata files of a repository: (file name, bytes), e.g. `1.root.json`.
pub type MetadataFiles = Vec<(String, Vec<u8>)>;

/// An existing repository a new version continues: its root files (kept as they are) and
/// the current versions of targets, snapshot and timestamp.
#[derive(Clone, Debug, Default)]
pub struct Previous {
    /// `N.root.json` files and `root.json`, unchanged.
    pub root_files: MetadataFiles,
    /// The root's `signed` part (the keys new metadata must be signed with).
    pub root: Value,
    /// Current targets version.
    pub targets: u64,
    /// Current snapshot version.
    pub snapshot: u64,
    /// Current timestamp version.
    pub timestamp: u64,
}

impl Previous {
    /// Reads the current state of the repository whose metadata `fetch` reads.
    ///
    /// # Errors
    /// A message naming the file that is missing or malformed.
    pub fn read(fetch: &Fetch<'_>) -> std::result::Result<Self, String> {
        let get = |f: &str| fetch(f)?.ok_or_else(|| format!("{f}: missing"));
        let json = |f: &str, b: &[u8]| serde_json::from_slice::<Value>(b).map_err(|e| format!("{f}: not JSON: {e}"));
        let mut root_files = Vec::new();
        let mut root = Value::Null;
        for n in 1.. {
            let name = format!("{n}.root.json");
            let Some(bytes) = fetch(&name)? else { break };
            root = json(&name, &bytes)?["signed"].clone();
            root_files.push((name, bytes));
        }
        if root_files.is_empty() {
            return Err("1.root.json: missing".into());
        }
        root_files.push(("root.json".into(), get("root.json")?));
        let ts = json("timestamp.json", &get("timestamp.json")?)?;
        let version = |v: &Value, what: &str| v.as_u64().ok_or_else(|| format!("{what}: no version"));
        let timestamp = version(&ts["signed"]["version"], "timestamp.json")?;
        let snapshot = version(&ts["signed"]["meta"]["snapshot.json"]["version"], "timestamp.json")?;
        let snap_file = format!("{snapshot}.snapshot.json");
        let snap = json(&snap_file, &get(&snap_file)?)?;
        let targets = version(&snap["signed"]["meta"]["targets.json"]["version"], &snap_file)?;
        Ok(Self { root_files, root, targets, snapshot, timestamp })
    }
}

/// Builds and signs version 1 of a repository holding `targets`, pinned at `anchor`; or,
/// after `previous`, the next versions of targets, snapshot and timestamp under its root.
///
/// # Errors
/// `ERR_EXPORT_NOT_SUPPORTED` for keys TUF cannot use, or for root signers other than the
/// keys `previous`'s root names (root key rotation); `ERR_EXPORT_REQUEST_INVALID` when a
/// version of `previous` has no successor; signing errors.
///
/// After `previous`, a new root version (`N+1.root.json`, and `root.json`) is written when
/// the other roles' keys or thresholds changed, or when the previous root would expire before
/// the new timestamp: same root keys, signed by them, so a client that trusts the old root
/// accepts it.
pub fn build(
    targets: &[Target],
    anchor: Timestamp,
    options: &TufOptions,
    run_signer: Option<&dyn Signer>,
    previous: Option<&Previous>,
) -> Result<MetadataFiles> {
    let signers_of = |role: Role| -> Vec<&dyn Signer> {
        let r = options.role(role);
        if r.signers.is_empty() {
            run_signer.into_iter().collect()
        } else {
            r.signers.iter().map(|s| &**s as &dyn Signer).collect()
        }
    };
    let mut keys = Map::new();
    let mut roles = Map::new();
    let mut role_signers: BTreeMap<Role, Vec<(String, &dyn Signer)>> = BTreeMap::new();
    for role in Role::ALL {
        let mut ids = Vec::new();
        for s in signers_of(role) {
            let (id, key) = key_object(s)?;
            keys.insert(id.clone(), key);
            ids.push(id.clone());
            role_signers.entry(role).or_default().push((id, s));
        }
        ids.sort();
        ids.dedup();
        roles.insert(role.as_str().into(), json!({"keyids": ids, "threshold": options.role(role).threshold}));
    }
    // After a base: the root role keeps its keys (a root key rotation needs the old keys'
    // signatures, which the build does not have); other roles may change keys or threshold,
    // which a new root version records.
    let mut new_root = previous.is_none();
    if let Some(prev) = previous {
        if prev.root["roles"]["root"]["keyids"] != roles["root"]["keyids"] {
            return Err(ExportError::NotSupported {
                feature: "signing root metadata with other keys than the base's TUF root names (root key rotation)"
                    .into(),
            });
        }
        new_root = Role::ALL.iter().any(|r| prev.root["roles"][r.as_str()] != roles[r.as_str()]);
    }
    let next = |v: u64, what: &str| {
        v.checked_add(1).ok_or_else(|| {
            ExportError::invalid("base", format!("the base's {what} version is {v}: there is no next version"))
        })
    };
    let (tv, sv, tsv) = match previous {
        None => (1, 1, 1),
        Some(p) => (next(p.targets, "targets")?, next(p.snapshot, "snapshot")?, next(p.timestamp, "timestamp")?),
    };
    let mut expiries = Vec::new();
    for role in Role::ALL {
        expiries.push((role, expiry(anchor, role, options.role(role).expires_days)?));
    }
    let expires_of = |role: Role| expiries.iter().find(|(r, _)| *r == role).map(|(_, e)| e.clone()).unwrap_or_default();
    // A root that would expire before the new timestamp does is renewed (same keys, next
    // version): clients must be able to use the repository for as long as it says.
    if let Some(prev) = previous {
        let root_expires = prev.root["expires"].as_str().and_then(|e| Timestamp::parse(e).ok());
        let ts_expires = Timestamp::parse(&expires_of(Role::Timestamp)).ok();
        new_root |= root_expires.is_none() || root_expires < ts_expires;
    }
    let root_version = match previous {
        Some(p) if new_root => next(p.root["version"].as_u64().unwrap_or(0), "root")?,
        Some(p) => p.root["version"].as_u64().unwrap_or(1),
        None => 1,
    };
    let common = |role: Role| {
        let version = match role {
            Role::Root => root_version,
            Role::Targets => tv,
            Role::Snapshot => sv,
            Role::Timestamp => tsv,
        };
        json!({"_type": role.as_str(), "spec_version": SPEC_VERSION, "version": version,
               "expires": expires_of(role)})
    };
    let mut root = common(Role::Root);
    root["consistent_snapshot"] = json!(true);
    root["keys"] = Value::Object(keys);
    root["roles"] = Value::Object(roles);

    let listing = |targets: &[&Target]| {
        let mut listed = Map::new();
        for t in targets {
            listed.insert(t.path.clone(), json!({"length": t.length, "hashes": {"sha256": t.sha256.to_hex()}}));
        }
        Value::Object(listed)
    };
    let all: Vec<&Target> = targets.iter().collect();
    let bins = hashed_bins(&all, options.max_targets_per_role)?;
    let mut targets_md = common(Role::Targets);
    if bins.is_empty() {
        targets_md["targets"] = listing(&all);
    } else {
        let ids = root["roles"]["targets"]["keyids"].clone();
        let delegated_keys: Map<String, Value> = ids
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|id| Some((id.to_owned(), root["keys"].get(id)?.clone())))
            .collect();
        let delegated: Vec<Value> = bins
            .iter()
            .map(|(prefix, _)| {
                json!({"name": format!("{BIN_ROLE_PREFIX}{prefix}"), "keyids": ids,
                       "threshold": options.role(Role::Targets).threshold, "terminating": true,
                       "path_hash_prefixes": [prefix]})
            })
            .collect();
        targets_md["targets"] = json!({});
        targets_md["delegations"] = json!({"keys": delegated_keys, "roles": delegated});
    }

    let sign = |role: Role, signed: Value| -> Result<Vec<u8>> {
        let bytes = canonical(&signed)?;
        let mut signatures = Vec::new();
        for (id, s) in role_signers.get(&role).into_iter().flatten() {
            signatures.push(json!({"keyid": id, "sig": hex::encode(s.sign(&bytes)?)}));
        }
        signatures.sort_by(|a, b| a["keyid"].as_str().cmp(&b["keyid"].as_str()));
        // The file is ordinary JSON (RFC 8785 form: control characters escaped); only the
        // signed bytes use TUF's canonical form.
        exportcore::canonical::to_vec(&json!({"signed": signed, "signatures": signatures}))
            .map_err(|e| ExportError::internal_caused("tuf", "serialising metadata", e))
    };
    let meta = |version: u64, bytes: &[u8]| json!({"version": version, "length": bytes.len(), "hashes": {"sha256": hex::encode(Sha256::digest(bytes))}});

    let targets_bytes = sign(Role::Targets, targets_md)?;
    let mut snapshot_meta = Map::new();
    snapshot_meta.insert("targets.json".into(), meta(tv, &targets_bytes));
    let mut bin_files = Vec::new();
    for (prefix, listed) in &bins {
        // A bin carries the targets version: it changes with every new version of the
        // repository, so no bin ever goes back.
        let mut bin = common(Role::Targets);
        bin["targets"] = listing(listed);
        let bytes = sign(Role::Targets, bin)?;
        let name = format!("{BIN_ROLE_PREFIX}{prefix}");
        snapshot_meta.insert(format!("{name}.json"), meta(tv, &bytes));
        bin_files.push((format!("{tv}.{name}.json"), bytes));
    }
    let mut snapshot = common(Role::Snapshot);
    snapshot["meta"] = Value::Object(snapshot_meta);
    let snapshot_bytes = sign(Role::Snapshot, snapshot)?;
    let mut timestamp = common(Role::Timestamp);
    timestamp["meta"] = json!({"snapshot.json": meta(sv, &snapshot_bytes)});
    let timestamp_bytes = sign(Role::Timestamp, timestamp)?;
    let mut files: MetadataFiles = match previous {
        Some(p) => p.root_files.iter().filter(|(name, _)| !(new_root && name == "root.json")).cloned().collect(),
        None => Vec::new(),
    };
    if new_root {
        let root_bytes = sign(Role::Root, root)?;
        files.push((format!("{root_version}.root.json"), root_bytes.clone()));
        files.push(("root.json".into(), root_bytes));
    }
    files.push((format!("{sv}.snapshot.json"), snapshot_bytes));
    files.push((format!("{tv}.targets.json"), targets_bytes));
    files.extend(bin_files);
    files.push(("timestamp.json".into(), timestamp_bytes));
    files.sort();
    Ok(files)
}

/// The hex SHA-256 of a target path, which hashed-bin delegations match prefixes of.
fn path_hash(path: &str) -> String {
    hex::encode(Sha256::digest(path.as_bytes()))
}

/// The bins (hex prefix, targets) of `targets` when there are more than `max`: every prefix
/// of the fewest hex digits (1 to 4) that keep each bin at `max` or under, empty bins too,
/// so that every path hash falls in exactly one. None when `max` or fewer targets.
fn hashed_bins<'t>(targets: &[&'t Target], max: usize) -> Result<Vec<(String, Vec<&'t Target>)>> {
    if targets.len() <= max {
        return Ok(Vec::new());
    }
    let hashed: Vec<(String, &Target)> = targets.iter().map(|t| (path_hash(&t.path), *t)).collect();
    for digits in 1..=4usize {
        let mut bins: Vec<(String, Vec<&Target>)> =
            (0..16usize.pow(digits as u32)).map(|i| (format!("{i:0digits$x}"), Vec::new())).collect();
        for (hash, t) in &hashed {
            let i = usize::from_str_radix(&hash[..digits], 16).unwrap_or(0);
            bins[i].1.push(t);
        }
        if bins.iter().all(|(_, b)| b.len() <= max) {
            return Ok(bins);
        }
    }
    Err(ExportError::NotSupported {
        feature: format!(
            "a TUF repository of {} targets with at most {max} per role: more than 65,536 hashed bins",
            targets.len()
        ),
    })
}

/// A role's keys and threshold as a root document names them.
struct Trusted {
    keys: BTreeMap<String, Arc<dyn Verifier>>,
    roles: BTreeMap<String, (Vec<String>, u64)>,
}

fn verifier_of(key: &Value) -> std::result::Result<Arc<dyn Verifier>, String> {
    let public = key["keyval"]["public"].as_str().ok_or("key without keyval.public")?;
    let pem_text = match (key["keytype"].as_str(), key["scheme"].as_str()) {
        (Some("ed25519"), Some("ed25519")) => {
            let raw = hex::decode(public).map_err(|e| format!("ed25519 key is not hex: {e}"))?;
            if raw.len() != 32 {
                return Err("ed25519 key is not 32 bytes".into());
            }
            let mut der = hex::decode("302a300506032b6570032100").unwrap_or_default();
            der.extend_from_slice(&raw);
            pem("PUBLIC KEY", &der)
        }
        (Some("ecdsa" | "ecdsa-sha2-nistp256"), Some("ecdsa-sha2-nistp256")) => public.to_owned(),
        (t, s) => return Err(format!("unsupported key type {t:?} / scheme {s:?}")),
    };
    exportcore_crypto::verifier_from_pem(&pem_text).map_err(|e| e.to_string())
}

fn trusted(root_signed: &Value) -> std::result::Result<Trusted, String> {
    let keys = verifiers(&root_signed["keys"]).map_err(|e| format!("root: {e}"))?;
    let mut roles = BTreeMap::new();
    for role in Role::ALL {
        let r = role_keys(&root_signed["roles"][role.as_str()], role.as_str())?;
        roles.insert(role.as_str().to_owned(), r);
    }
    Ok(Trusted { keys, roles })
}

/// The verifiers of a `keys` object (root's, or a delegation's), each key id checked to be
/// the SHA-256 of its key.
fn verifiers(keys: &Value) -> std::result::Result<BTreeMap<String, Arc<dyn Verifier>>, String> {
    let mut out = BTreeMap::new();
    for (id, key) in keys.as_object().ok_or("no keys")? {
        let computed = hex::encode(Sha256::digest(canonical(key).map_err(|e| e.to_string())?));
        if &computed != id {
            return Err(format!("key id {id} is not the SHA-256 of its key ({computed})"));
        }
        out.insert(id.clone(), verifier_of(key)?);
    }
    Ok(out)
}

/// A role's `keyids` and `threshold` (at least 1), as a root or a delegation names them.
fn role_keys(r: &Value, name: &str) -> std::result::Result<(Vec<String>, u64), String> {
    let ids: Vec<String> = r["keyids"]
        .as_array()
        .ok_or_else(|| format!("no keyids for {name}"))?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let threshold =
        r["threshold"].as_u64().filter(|t| *t >= 1).ok_or_else(|| format!("{name}: threshold must be >= 1"))?;
    Ok((ids, threshold))
}

/// Parses a metadata file and checks `role`'s threshold of signatures over its `signed`.
fn checked(bytes: &[u8], role: Role, trust: &Trusted) -> std::result::Result<Value, String> {
    checked_as(bytes, role.as_str(), role.as_str(), trust)
}

/// [`checked`] for a role by name (a delegated one) whose metadata has `_type` `kind`.
fn checked_as(bytes: &[u8], kind: &str, role: &str, trust: &Trusted) -> std::result::Result<Value, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let signed = &doc["signed"];
    if signed["_type"].as_str() != Some(kind) {
        return Err(format!("_type is {:?}, expected {kind:?}", signed["_type"]));
    }
    let msg = canonical(signed).map_err(|e| e.to_string())?;
    let Some((ids, threshold)) = trust.roles.get(role) else {
        return Err(format!("no keys are trusted for role {role:?}"));
    };
    let mut good = std::collections::BTreeSet::new();
    for sig in doc["signatures"].as_array().into_iter().flatten() {
        let (Some(id), Some(hex_sig)) = (sig["keyid"].as_str(), sig["sig"].as_str()) else { continue };
        if !ids.iter().any(|k| k == id) {
            continue;
        }
        let (Some(v), Ok(raw)) = (trust.keys.get(id), hex::decode(hex_sig)) else { continue };
        if v.verify(&msg, &raw).is_ok() {
            good.insert(id.to_owned());
        }
    }
    if (good.len() as u64) < *threshold {
        return Err(format!("{role} was signed by {}/{} keys", good.len(), threshold));
    }
    Ok(signed.clone())
}

fn check_expiry(signed: &Value, now: Timestamp, file: &str) -> std::result::Result<(), (bool, String)> {
    let expires = signed["expires"].as_str().ok_or((false, format!("{file}: no expires")))?;
    let t = Timestamp::parse(expires).map_err(|e| (false, format!("{file}: expires {e}")))?;
    if t <= now {
        return Err((true, format!("{file}: expired at {expires} (now {now})")));
    }
    Ok(())
}

fn check_meta(entry: &Value, bytes: &[u8], what: &str) -> std::result::Result<(), String> {
    if let Some(len) = entry["length"].as_u64() {
        if len != bytes.len() as u64 {
            return Err(format!("{what}: length {} != {len}", bytes.len()));
        }
    }
    if let Some(h) = entry["hashes"]["sha256"].as_str() {
        if hex::encode(Sha256::digest(bytes)) != h {
            return Err(format!("{what}: sha256 differs from the one listed"));
        }
    }
    Ok(())
}

/// A delegated role's name as it may appear in a file name: letters, digits, `-`, `_` and
/// `.`, not leading with `.`, not a top-level role.
fn is_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !Role::ALL.iter().any(|r| r.as_str() == name)
}

/// A problem the chain check found; `stale` marks expiry (ERR_EXPORT_STALE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// File it concerns, relative to the repository.
    pub file: String,
    /// What is wrong.
    pub message: String,
    /// True for expiry.
    pub stale: bool,
}

/// What a verified chain lists.
#[derive(Clone, Debug, Default)]
pub struct Verified {
    /// The targets, from the trusted targets metadata.
    pub targets: Vec<Target>,
    /// Key ids (our scheme: SHA-256 of the SubjectPublicKeyInfo) of the root role's keys.
    pub root_key_ids: Vec<String>,
}

/// The largest root or timestamp metadata [`verify`] reads (python-tuf's defaults are
/// 512,000 and 16,384 bytes).
pub const MAX_UNLISTED_METADATA: usize = 1 << 20;

/// Reads a metadata file by name (`1.root.json`, `timestamp.json`...); `None` when absent.
pub type Fetch<'a> = dyn Fn(&str) -> std::result::Result<Option<Vec<u8>>, String> + 'a;

/// Checks the chain as a TUF client would at time `now`: `1.root.json` (self-signed, the
/// trust anchor), each `N.root.json` rotation, `timestamp.json`, the snapshot and targets
/// versions it names (signatures, thresholds, versions, lengths and hashes), and expiry.
pub fn verify(fetch: &Fetch<'_>, now: Timestamp) -> std::result::Result<Verified, Problem> {
    check_chain(fetch, Some(now))
}

/// [`verify`] without the expiry checks: everything that says who signed which version. A
/// delta's builder uses it on its base, whose metadata may have expired since (a base whose
/// root expired is exactly one whose next delta must renew it).
pub fn verify_signatures(fetch: &Fetch<'_>) -> std::result::Result<Verified, Problem> {
    check_chain(fetch, None)
}

fn check_chain(fetch: &Fetch<'_>, now: Option<Timestamp>) -> std::result::Result<Verified, Problem> {
    let fail = |file: &str, message: String| Problem { file: file.to_owned(), message, stale: false };
    let get = |file: &str| -> std::result::Result<Vec<u8>, Problem> {
        fetch(file).map_err(|e| fail(file, e))?.ok_or_else(|| fail(file, "missing".into()))
    };
    // Root and timestamp are parsed before anything vouches for their bytes: capped (a client
    // would not download more), so a forged file cannot make the check hold gigabytes.
    // Snapshot and targets are checked against the length and hash listed for them first.
    let capped = |file: &str, bytes: Vec<u8>| {
        if bytes.len() > MAX_UNLISTED_METADATA {
            return Err(fail(file, format!("{} bytes: over the {MAX_UNLISTED_METADATA}-byte limit", bytes.len())));
        }
        Ok(bytes)
    };
    let first = capped("1.root.json", get("1.root.json")?)?;
    let doc: Value = serde_json::from_slice(&first).map_err(|e| fail("1.root.json", format!("not JSON: {e}")))?;
    let mut trust = trusted(&doc["signed"]).map_err(|e| fail("1.root.json", e))?;
    let mut root = checked(&first, Role::Root, &trust).map_err(|e| fail("1.root.json", e))?;
    if root["version"].as_u64() != Some(1) {
        return Err(fail("1.root.json", "version is not 1".into()));
    }
    let mut newest = first;
    // Rotation: N+1 must be signed by the old root's threshold and its own.
    for n in 2.. {
        let file = format!("{n}.root.json");
        let Some(bytes) = fetch(&file).map_err(|e| fail(&file, e))? else { break };
        let bytes = capped(&file, bytes)?;
        checked(&bytes, Role::Root, &trust)
            .map_err(|e| fail(&file, format!("not signed by the previous root: {e}")))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| fail(&file, e.to_string()))?;
        let next = trusted(&doc["signed"]).map_err(|e| fail(&file, e))?;
        root = checked(&bytes, Role::Root, &next).map_err(|e| fail(&file, e))?;
        if root["version"].as_u64() != Some(n) {
            return Err(fail(&file, format!("version is not {n}")));
        }
        trust = next;
        newest = bytes;
    }
    // `root.json`, where a person bootstraps trust by hand, is the newest root.
    if let Some(bytes) = fetch("root.json").map_err(|e| fail("root.json", e))? {
        if bytes != newest {
            return Err(fail("root.json", "differs from the newest N.root.json".into()));
        }
    }
    let expired = |signed: &Value, file: &str| match now {
        Some(now) => check_expiry(signed, now, file).map_err(|(stale, message)| Problem {
            file: file.to_owned(),
            message,
            stale,
        }),
        None => Ok(()),
    };
    expired(&root, "root.json")?;
    let consistent = root["consistent_snapshot"].as_bool().unwrap_or(false);

    let ts_bytes = capped("timestamp.json", get("timestamp.json")?)?;
    let ts = checked(&ts_bytes, Role::Timestamp, &trust).map_err(|e| fail("timestamp.json", e))?;
    expired(&ts, "timestamp.json")?;
    let snap_meta = &ts["meta"]["snapshot.json"];
    let snap_version =
        snap_meta["version"].as_u64().ok_or_else(|| fail("timestamp.json", "no snapshot version".into()))?;
    let snap_file = if consistent { format!("{snap_version}.snapshot.json") } else { "snapshot.json".into() };
    let snap_bytes = get(&snap_file)?;
    check_meta(snap_meta, &snap_bytes, &snap_file).map_err(|e| fail(&snap_file, e))?;
    let snap = checked(&snap_bytes, Role::Snapshot, &trust).map_err(|e| fail(&snap_file, e))?;
    if snap["version"].as_u64() != Some(snap_version) {
        return Err(fail(&snap_file, format!("version is not {snap_version} (rollback?)")));
    }
    expired(&snap, &snap_file)?;
    let targets_meta = &snap["meta"]["targets.json"];
    let targets_version =
        targets_meta["version"].as_u64().ok_or_else(|| fail(&snap_file, "no targets version".into()))?;
    let targets_file = if consistent { format!("{targets_version}.targets.json") } else { "targets.json".into() };
    let targets_bytes = get(&targets_file)?;
    check_meta(targets_meta, &targets_bytes, &targets_file).map_err(|e| fail(&targets_file, e))?;
    let targets = checked(&targets_bytes, Role::Targets, &trust).map_err(|e| fail(&targets_file, e))?;
    if targets["version"].as_u64() != Some(targets_version) {
        return Err(fail(&targets_file, format!("version is not {targets_version} (rollback?)")));
    }
    expired(&targets, &targets_file)?;
    let mut out = Verified::default();
    let mut seen = BTreeMap::new();
    let mut collect = |signed: &Value, file: &str, prefixes: Option<&[String]>| {
        for (path, info) in signed["targets"].as_object().into_iter().flatten() {
            let length = info["length"].as_u64().ok_or_else(|| fail(file, format!("{path}: no length")))?;
            let sha256 = info["hashes"]["sha256"]
                .as_str()
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| fail(file, format!("{path}: no sha256")))?;
            // A client looks for a path only in the bin its hash names.
            if let Some(prefixes) = prefixes {
                let hash = path_hash(path);
                if !prefixes.iter().any(|p| hash.starts_with(p.as_str())) {
                    return Err(fail(file, format!("{path}: outside the role's path_hash_prefixes")));
                }
            }
            if let Some(other) = seen.insert(path.clone(), file.to_owned()) {
                return Err(fail(file, format!("{path}: also listed by {other}")));
            }
            out.targets.push(Target { path: path.clone(), length, sha256 });
        }
        Ok(())
    };
    collect(&targets, &targets_file, None)?;
    // Hashed-bin delegations, one level: each bin signed by the keys the targets role
    // delegates to, at the version the snapshot names, unexpired.
    let delegations = &targets["delegations"];
    if !delegations.is_null() {
        let bad = |m: String| fail(&targets_file, m);
        let keys = verifiers(&delegations["keys"]).map_err(|e| bad(format!("delegations: {e}")))?;
        let mut trust = Trusted { keys, roles: BTreeMap::new() };
        for role in delegations["roles"].as_array().ok_or_else(|| bad("delegations without roles".into()))? {
            let name = role["name"].as_str().unwrap_or_default();
            if !is_role_name(name) || trust.roles.contains_key(name) {
                return Err(bad(format!("delegated role name {:?} is not a plain, unique role name", role["name"])));
            }
            if !role["paths"].is_null() {
                return Err(bad(format!("{name}: delegation by paths is not supported (only path_hash_prefixes)")));
            }
            let prefixes: Vec<String> = role["path_hash_prefixes"]
                .as_array()
                .ok_or_else(|| bad(format!("{name}: no path_hash_prefixes")))?
                .iter()
                .map(|p| p.as_str().map(str::to_owned).ok_or_else(|| bad(format!("{name}: a prefix is not a string"))))
                .collect::<std::result::Result<_, _>>()?;
            trust.roles.insert(name.to_owned(), role_keys(role, name).map_err(bad)?);
            let entry = &snap["meta"][format!("{name}.json")];
            let version =
                entry["version"].as_u64().ok_or_else(|| fail(&snap_file, format!("{name}.json: not listed")))?;
            let file = if consistent { format!("{version}.{name}.json") } else { format!("{name}.json") };
            let bytes = get(&file)?;
            check_meta(entry, &bytes, &file).map_err(|e| fail(&file, e))?;
            let bin = checked_as(&bytes, "targets", name, &trust).map_err(|e| fail(&file, e))?;
            if bin["version"].as_u64() != Some(version) {
                return Err(fail(&file, format!("version is not {version} (rollback?)")));
            }
            expired(&bin, &file)?;
            if !bin["delegations"].is_null() {
                return Err(fail(&file, "nested delegations are not supported".into()));
            }
            collect(&bin, &file, Some(&prefixes))?;
        }
    }
    out.root_key_ids =
        trust.roles["root"].0.iter().filter_map(|id| trust.keys.get(id)).map(|v| v.key_id().to_owned()).collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_is_the_olpc_form() {
        let v = json!({"b": [1, "x\"y\\z\n"], "a": {"é": true, "A": null}});
        assert_eq!(canonical(&v).unwrap(), "{\"a\":{\"A\":null,\"é\":true},\"b\":[1,\"x\\\"y\\\\z\n\"]}".as_bytes());
        assert!(canonical(&json!(1.5)).is_err());
    }

    fn signer(alg: exportcore_crypto::Algorithm) -> Arc<dyn Signer> {
        exportcore_crypto::signer_from_pem(&exportcore_crypto::generate(alg).unwrap().private_pem).unwrap()
    }

    fn repo(s: &Arc<dyn Signer>) -> BTreeMap<String, Vec<u8>> {
        let t = Target { path: "data/x.json".into(), length: 2, sha256: exportcore::Sha256Digest::of(b"{}") };
        let anchor = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
        build(&[t], anchor, &TufOptions::default(), Some(&**s), None).unwrap().into_iter().collect()
    }

    fn check(files: &BTreeMap<String, Vec<u8>>, now: &str) -> std::result::Result<Verified, Problem> {
        verify(&|f: &str| Ok(files.get(f).cloned()), Timestamp::parse(now).unwrap())
    }

    #[test]
    fn a_built_repository_verifies_and_tampering_fails() {
        for alg in [exportcore_crypto::Algorithm::Ed25519, exportcore_crypto::Algorithm::EcdsaP256] {
            let s = signer(alg);
            let files = repo(&s);
            let v = check(&files, "2025-02-01T00:00:00Z").unwrap();
            assert_eq!(v.targets[0].path, "data/x.json");
            assert_eq!(v.root_key_ids, [s.key_id().to_owned()], "our key id of the root key");
            assert_eq!(v.targets[0].hashed_path(), format!("data/{}.x.json", exportcore::Sha256Digest::of(b"{}")));
            // Expired timestamp (90 days), then everything.
            let e = check(&files, "2025-06-01T00:00:00Z").unwrap_err();
            assert!(e.stale && e.file == "timestamp.json", "{e:?}");
            // Without the expiry checks (a delta's base), the signatures still hold.
            let fetch = |f: &str| Ok(files.get(f).cloned());
            assert_eq!(verify_signatures(&fetch).unwrap().targets, v.targets);
            // A changed target list breaks the targets signature, and the snapshot's hash first.
            let mut bad = files.clone();
            let t = String::from_utf8(bad["1.targets.json"].clone()).unwrap().replace("\"length\":2", "\"length\":3");
            bad.insert("1.targets.json".into(), t.into_bytes());
            let e = check(&bad, "2025-02-01T00:00:00Z").unwrap_err();
            assert!(e.message.contains("length") || e.message.contains("sha256"), "{e:?}");
            assert!(verify_signatures(&|f: &str| Ok(bad.get(f).cloned())).is_err(), "tampering without expiry");
            // Another key's repository cannot pass for this root.
            let other = repo(&signer(alg));
            let mut mixed = files.clone();
            mixed.insert("timestamp.json".into(), other["timestamp.json"].clone());
            let e = check(&mixed, "2025-02-01T00:00:00Z").unwrap_err();
            assert!(e.message.contains("signed by 0/1"), "{e:?}");
            // An oversized root or timestamp is refused before it is parsed.
            for file in ["1.root.json", "timestamp.json"] {
                let mut big = files.clone();
                let mut doc = b"[".to_vec();
                doc.extend(std::iter::repeat_n(&b"0,"[..], MAX_UNLISTED_METADATA).flatten());
                doc.extend(b"0]");
                big.insert(file.into(), doc);
                let e = check(&big, "2025-02-01T00:00:00Z").unwrap_err();
                assert!(e.file == file && e.message.contains("limit"), "{e:?}");
            }
        }
    }

    #[test]
    fn many_targets_go_to_hashed_bins_that_verify_and_cannot_be_moved() {
        let s = signer(exportcore_crypto::Algorithm::Ed25519);
        let anchor = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
        let targets: Vec<Target> = (0..40)
            .map(|i| Target {
                path: format!("data/{i}.json"),
                length: i,
                sha256: exportcore::Sha256Digest::of(&[i as u8]),
            })
            .collect();
        let options = TufOptions::default().max_targets_per_role(5);
        let built = build(&targets, anchor, &options, Some(&*s), None).unwrap();
        let files: BTreeMap<String, Vec<u8>> = built.into_iter().collect();
        // 40 targets in 16 bins do not fit 5 a bin every time; the fewest digits that do.
        let bins: Vec<&String> = files.keys().filter(|f| f.contains(".bins-")).collect();
        assert!(bins.len() == 16 || bins.len() == 256, "{bins:?}");
        let top: Value = serde_json::from_slice(&files["1.targets.json"]).unwrap();
        assert_eq!(top["signed"]["targets"], json!({}));
        assert_eq!(top["signed"]["delegations"]["roles"].as_array().unwrap().len(), bins.len());
        let v = check(&files, "2025-02-01T00:00:00Z").unwrap();
        let mut got: Vec<Target> = v.targets;
        got.sort_by(|a, b| a.path.cmp(&b.path));
        let mut want = targets.clone();
        want.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(got, want, "every target, from its bin");
        // The same targets with the default limit: one targets file, no bins.
        let flat = build(&targets, anchor, &TufOptions::default(), Some(&*s), None).unwrap();
        assert!(flat.iter().all(|(f, _)| !f.contains("bins-")), "{flat:?}");

        // A bin that lists a path whose hash is not its prefix: the client would never look
        // there, so it is a failure even when signed and listed correctly.
        let bin_of = |path: &str| {
            let hash = path_hash(path);
            bins.iter()
                .find(|b| hash.starts_with(b.split("bins-").nth(1).unwrap().trim_end_matches(".json")))
                .map(|b| (*b).clone())
                .unwrap()
        };
        let home = bin_of("data/0.json");
        let other = bins.iter().find(|b| **b != &home).unwrap().to_string();
        let mut doc: Value = serde_json::from_slice(&files[&other]).unwrap();
        doc["signed"]["targets"]["data/0.json"] =
            json!({"length": 0, "hashes": {"sha256": exportcore::Sha256Digest::of(&[0]).to_hex()}});
        let msg = canonical(&doc["signed"]).unwrap();
        doc["signatures"][0]["sig"] = json!(hex::encode(s.sign(&msg).unwrap()));
        let mut moved = files.clone();
        moved.insert(other.clone(), serde_json::to_vec(&doc).unwrap());
        // Re-list the bin in the snapshot and re-sign snapshot and timestamp, as a key holder
        // could: only the prefix rule is left to catch it.
        let resign = |files: &mut BTreeMap<String, Vec<u8>>, file: &str, edit: &dyn Fn(&mut Value)| {
            let mut d: Value = serde_json::from_slice(&files[file]).unwrap();
            edit(&mut d["signed"]);
            let m = canonical(&d["signed"]).unwrap();
            d["signatures"][0]["sig"] = json!(hex::encode(s.sign(&m).unwrap()));
            files.insert(file.to_owned(), serde_json::to_vec(&d).unwrap());
        };
        let bytes = moved[&other].clone();
        let role = other.trim_start_matches("1.").to_owned();
        resign(&mut moved, "1.snapshot.json", &|d| {
            d["meta"][&role] =
                json!({"version": 1, "length": bytes.len(), "hashes": {"sha256": hex::encode(Sha256::digest(&bytes))}});
        });
        let snap = moved["1.snapshot.json"].clone();
        resign(&mut moved, "timestamp.json", &|d| {
            d["meta"]["snapshot.json"] =
                json!({"version": 1, "length": snap.len(), "hashes": {"sha256": hex::encode(Sha256::digest(&snap))}});
        });
        let e = check(&moved, "2025-02-01T00:00:00Z").unwrap_err();
        assert!(e.file == other && e.message.contains("path_hash_prefixes"), "{e:?}");

        // A bin whose bytes changed after the snapshot listed them; a bin that is missing.
        let mut changed = files.clone();
        changed.get_mut(&home).unwrap().push(b' ');
        let e = check(&changed, "2025-02-01T00:00:00Z").unwrap_err();
        assert!(e.file == home && e.message.contains("length"), "{e:?}");
        let mut missing = files.clone();
        missing.remove(&home);
        let e = check(&missing, "2025-02-01T00:00:00Z").unwrap_err();
        assert!(e.file == home && e.message == "missing", "{e:?}");
    }

    #[test]
    fn sm2_keys_are_refused() {
        let e = key_object(&*signer(exportcore_crypto::Algorithm::Sm2)).unwrap_err();
        assert_eq!(e.code(), "ERR_EXPORT_NOT_SUPPORTED");
    }
}
