//! A bottom-up BoltDB file writer: sorted key/value pairs in, a Go bbolt (v1.3.x) file out.
//!
//! # What it writes
//!
//! A complete bbolt database with 4096-byte pages, read by Go's `go.etcd.io/bbolt` (what Trivy
//! opens) and by `bbolt-rs` with its `compat` feature. Keys arrive already sorted (see
//! [`BoltWriter::put`]), so every B+tree is built bottom-up the way a bulk loader does it: leaf
//! nodes are filled and written to the file as they fill, each written node adds one element (its
//! first key and page id) to a pending branch node one level up, and closing a bucket flushes its
//! pending nodes from the leaves upwards until a single node, the bucket's root, is left. Each
//! level holds back its last full node until the next one fills, so that closing can rebalance a
//! trailing one-element branch node (Go's branch `minKeys` is 2). Memory is therefore bounded by
//! the open buckets (at most three: the root bucket, a top-level bucket and a nested bucket) times
//! two nodes per tree level, never by the size of the file. Pages are written sequentially through a `BufWriter`, page ids are
//! allocated in file order, and pages 0 and 1 (the metas) are written last, by seeking back.
//!
//! # Page format (all integers little-endian; checked against bbolt v1.3.11 `page.go`,
//! `node.go`, `bucket.go`, `db.go`, `freelist.go`)
//!
//! - Page header, 16 bytes: `id u64, flags u16 (0x01 branch, 0x02 leaf, 0x04 meta, 0x10
//!   freelist), count u16, overflow u32` (number of extra contiguous pages of a node larger than
//!   one page).
//! - Leaf element, 16 bytes: `flags u32 (0x01 = the value is a bucket), pos u32, ksize u32,
//!   vsize u32`; branch element, 16 bytes: `pos u32, ksize u32, pgid u64`, whose key is the first
//!   key of the child. `pos` is the offset of the key from the start of *that element*. The
//!   element array follows the header, then every key (and value) in element order, as Go's
//!   `node.write` lays them out.
//! - A bucket value is a 16-byte header (`root pgid u64, sequence u64`). A bucket that Go would
//!   inline (a single leaf, no sub-buckets, page image of at most pageSize/4 = 1024 bytes) has
//!   root 0 and is followed by that page image (header with id 0, elements, data), unpadded. The
//!   root bucket (in the meta) is never inline: an empty database still has an empty leaf page.
//! - Meta pages 0 and 1 (header flags 0x04): at offset 16 `magic u32 0xED0CDAED, version u32 2,
//!   pageSize u32, flags u32 0, root bucket (pgid u64, sequence u64), freelist pgid u64, pgid u64
//!   (high-water mark = pages in the file), txid u64, checksum u64` = FNV-1a 64 of the 56 meta
//!   bytes before it. As in Go's `DB.init`, meta page *i* has txid *i* (Go writes the meta of
//!   transaction *t* to page `t % 2`); the higher valid txid wins, so a reader uses meta 1 and
//!   the next write transaction (txid 2) overwrites meta 0.
//! - Freelist page (flags 0x10, count 0: nothing is free), the last page of the file. The file is
//!   exactly high-water mark × 4096 bytes, and every byte not covered by a header, element, key
//!   or value is zero, so the same input always gives the same bytes.
//!
//! Nodes are filled like Go's fill percent 1.0: the next element goes into the current node when
//! it fits into the pages that node already occupies, otherwise a new node starts. An element
//! larger than a page gets a node with overflow pages; a further large element joins such a node
//! only when that needs fewer new pages than a node of its own and the node stays within 16 KiB
//! (or holds fewer than two elements, Go's `minKeysPerPage`), so values of a few KiB are packed at
//! least as densely as Go's own splitting, which puts two or more elements in every node, does.
//!
//! # Why hand-written
//!
//! No maintained Rust crate bulk-loads a bbolt file: `bbolt-rs` (a port of Go's bbolt) only offers
//! transactional puts, which re-read, split and copy-on-write nodes and allocate from the freelist
//! on every commit; that is far slower than writing each page once, in order. The format is small
//! and stable (file format version 2 in every bbolt release, 1.3.0 to 1.5), so this module writes
//! it directly.
//!
//! # How it is checked
//!
//! The tests read every file back with `bbolt-rs` (an independent implementation) through
//! cursor walks and run its consistency check (`TxCheck::check`: key order, page types,
//! multiple references, unreachable pages), let `bbolt-rs` open a written file read-write and
//! commit to it, and run a stricter checker of their own over the raw bytes (meta checksums and
//! txids, file length, every page id 0..high-water mark used exactly once, branch keys equal to
//! their child's first key, Go's exact element layout, zeroed slack, inline iff Go would inline).
//! Inputs cover the empty database, inline and non-inline buckets, two and more branch levels,
//! overflow values, binary keys, bad input, determinism and seeded random key sets.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// Page size of every file written (Go's default on 4 KiB-page systems).
const PAGE_SIZE: usize = 4096;
/// Size of a page header.
const PAGE_HEADER_SIZE: usize = 16;
/// Size of a leaf element and of a branch element (both 16 bytes).
const ELEMENT_SIZE: usize = 16;
/// Size of the bucket header at the start of a bucket value.
const BUCKET_HEADER_SIZE: usize = 16;
/// Page flag: branch page.
const BRANCH_PAGE_FLAG: u16 = 0x01;
/// Page flag: leaf page.
const LEAF_PAGE_FLAG: u16 = 0x02;
/// Page flag: meta page.
const META_PAGE_FLAG: u16 = 0x04;
/// Page flag: freelist page.
const FREELIST_PAGE_FLAG: u16 = 0x10;
/// Leaf element flag: the value is a bucket.
const BUCKET_LEAF_FLAG: u32 = 0x01;
/// Go bbolt's magic number.
const MAGIC: u32 = 0xED0C_DAED;
/// bbolt file format version.
const VERSION: u32 = 2;
/// Largest inline bucket page image (Go: `maxInlineBucketSize` = pageSize / 4).
const MAX_INLINE_BUCKET_SIZE: usize = PAGE_SIZE / 4;
/// Largest key Go's `Bucket.Put` accepts.
const MAX_KEY_SIZE: usize = 32768;
/// Largest value Go's `Bucket.Put` accepts.
const MAX_VALUE_SIZE: usize = (1 << 31) - 2;
/// Most elements in one node (Go's `node.write` panics at 0xFFFF).
const MAX_ELEMENTS: usize = 0xFFFE;
/// A node holding two or more elements grows past its current pages only up to this size.
const MAX_NODE_BYTES: usize = 4 * PAGE_SIZE;
/// Buffer size of the sequential page writer.
const WRITE_BUFFER: usize = 256 * 1024;

/// What [`BoltWriter::finish`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BoltStats {
    /// Pages in the file (the high-water mark), metas and freelist included; file size = pages × 4096.
    pub(crate) pages: u64,
    /// Key/value pairs written (bucket entries not counted).
    pub(crate) entries: u64,
    /// Buckets created, top-level and nested.
    pub(crate) buckets: u64,
    /// Of those, buckets stored inline in their parent's leaf.
    pub(crate) inline_buckets: u64,
}

/// Streams sorted key/value pairs into a new bbolt file (see the module docs).
///
/// If any call fails with an error other than [`io::ErrorKind::InvalidInput`] (which leaves the
/// writer unchanged), the file is incomplete: drop the writer and delete the file.
pub(crate) struct BoltWriter<'t> {
    /// The page sink.
    out: PageOut<'t>,
    /// Open buckets: `[root, top-level?, nested?]`.
    stack: Vec<OpenBucket>,
    /// The last `(bucket path, key)` put, as one tuple (path names then key).
    last: Vec<Vec<u8>>,
    /// Running statistics.
    stats: BoltStats,
}

impl<'t> BoltWriter<'t> {
    /// Creates `path` (must not exist) with 4096-byte pages.
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        Self::open(path, None)
    }

    /// Like [`BoltWriter::create`], and every byte written to the file in order is also written
    /// to `tee` — except the two meta pages, which `tee` sees as zeros (they are written last,
    /// in place: read them back from the file after [`BoltWriter::finish`]).
    pub(crate) fn create_with_tee(path: &Path, tee: &'t mut dyn Write) -> io::Result<Self> {
        Self::open(path, Some(tee))
    }

    fn open(path: &Path, tee: Option<&'t mut dyn Write>) -> io::Result<Self> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let file = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut out = PageOut { file, tee, next_pgid: 2, scratch: Vec::with_capacity(PAGE_SIZE) };
        // Placeholders for the two meta pages, written for real by `finish`.
        out.write_page(&[0u8; 2 * PAGE_SIZE])?;
        Ok(BoltWriter { out, stack: vec![OpenBucket::new(Vec::new())], last: Vec::new(), stats: BoltStats::default() })
    }

    /// Adds `key` = `value` in the bucket at `bucket_path` (1 or 2 names: a top-level bucket, or a
    /// bucket nested in a top-level bucket). Calls must arrive in strictly increasing order of
    /// (bucket_path..., key) compared as byte strings, element by element (the order a cursor
    /// walk of the finished file yields). Out-of-order, duplicate, empty key, empty bucket name,
    /// or a key that collides with a nested bucket's name -> io::Error of kind InvalidInput
    /// naming the offending key. Buckets are created implicitly when first used.
    pub(crate) fn put(&mut self, bucket_path: &[&[u8]], key: &[u8], value: &[u8]) -> io::Result<()> {
        self.validate(bucket_path, key, value)?;
        // Close the open buckets that are not on `bucket_path`, then open the missing ones.
        let common =
            self.stack[1..].iter().zip(bucket_path).take_while(|(open, name)| open.name.as_slice() == **name).count();
        while self.stack.len() > common + 1 {
            self.close_bucket()?;
        }
        for name in &bucket_path[common..] {
            self.stack.push(OpenBucket::new(name.to_vec()));
        }
        let top = self.stack.len() - 1;
        self.stack[top].tree.push(&mut self.out, 0, 0, key, value, 0)?;
        self.stats.entries += 1;
        // Remember the tuple, reusing the buffers.
        self.last.resize_with(bucket_path.len() + 1, Vec::new);
        for (slot, part) in self.last.iter_mut().zip(bucket_path.iter().copied().chain(std::iter::once(key))) {
            slot.clear();
            slot.extend_from_slice(part);
        }
        Ok(())
    }

    /// Closes all buckets, writes the freelist and both meta pages, returns stats. The file is
    /// not fsynced: it is staged, and publishing makes it durable.
    pub(crate) fn finish(mut self) -> io::Result<BoltStats> {
        while self.stack.len() > 1 {
            self.close_bucket()?;
        }
        let root = match self.stack.pop() {
            Some(root) => root.tree.finish(&mut self.out, false)?,
            None => return Err(io::Error::other("bolt: root bucket missing")),
        };
        let root_pgid = match root {
            Root::Page(pgid) => pgid,
            Root::Inline(_) => return Err(io::Error::other("bolt: root bucket cannot be inline")),
        };
        let freelist_pgid = self.out.next_pgid;
        let mut page = vec![0u8; PAGE_SIZE];
        put_u64(&mut page, 0, freelist_pgid);
        put_u16(&mut page, 8, FREELIST_PAGE_FLAG);
        self.out.write_page(&page)?;
        let high_water = freelist_pgid + 1;
        let mut file = self.out.file.into_inner().map_err(io::IntoInnerError::into_error)?;
        let mut metas = vec![0u8; 2 * PAGE_SIZE];
        for txid in 0..2u64 {
            let p = &mut metas[txid as usize * PAGE_SIZE..(txid as usize + 1) * PAGE_SIZE];
            write_meta(p, txid, root_pgid, freelist_pgid, high_water);
        }
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&metas)?;
        file.flush()?;
        self.stats.pages = high_water;
        Ok(self.stats)
    }

    /// Rejects a put that is malformed or out of order, before anything changes.
    fn validate(&self, bucket_path: &[&[u8]], key: &[u8], value: &[u8]) -> io::Result<()> {
        let shown = || show(bucket_path, key);
        if bucket_path.is_empty() || bucket_path.len() > 2 {
            return Err(invalid(format!("bolt: key {}: bucket path must have 1 or 2 names", shown())));
        }
        if bucket_path.iter().any(|n| n.is_empty()) {
            return Err(invalid(format!("bolt: key {}: empty bucket name", shown())));
        }
        if bucket_path.iter().any(|n| n.len() > MAX_KEY_SIZE) {
            return Err(invalid(format!("bolt: key {}: bucket name longer than {MAX_KEY_SIZE} bytes", shown())));
        }
        if key.is_empty() {
            return Err(invalid(format!("bolt: key {}: empty key", shown())));
        }
        if key.len() > MAX_KEY_SIZE {
            return Err(invalid(format!("bolt: key {}: longer than {MAX_KEY_SIZE} bytes", shown())));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(invalid(format!("bolt: key {}: value longer than {MAX_VALUE_SIZE} bytes", shown())));
        }
        if self.last.is_empty() {
            return Ok(());
        }
        let new = bucket_path.iter().copied().chain(std::iter::once(key));
        match new.clone().cmp(self.last.iter().map(Vec::as_slice)) {
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => return Err(invalid(format!("bolt: key {}: duplicate", shown()))),
            std::cmp::Ordering::Less => {
                let prefix =
                    new.clone().count() < self.last.len() && new.zip(&self.last).all(|(a, b)| a == b.as_slice());
                let why = if prefix { "collides with a nested bucket of that name" } else { "out of order" };
                return Err(invalid(format!("bolt: key {}: {why} (after {})", shown(), show_tuple(&self.last))));
            }
        }
        // A new nested bucket whose name was the previous key of its parent.
        if bucket_path.len() == 2
            && self.last.len() == 2
            && self.last[0] == bucket_path[0]
            && self.last[1] == bucket_path[1]
        {
            return Err(invalid(format!(
                "bolt: key {}: bucket name collides with the key {}",
                shown(),
                show_tuple(&self.last)
            )));
        }
        Ok(())
    }

    /// Closes the innermost open bucket and adds its bucket value to its parent.
    fn close_bucket(&mut self) -> io::Result<()> {
        let Some(bucket) = self.stack.pop() else {
            return Err(io::Error::other("bolt: no open bucket"));
        };
        let has_sub_buckets = bucket.tree.has_sub_buckets;
        let mut value = vec![0u8; BUCKET_HEADER_SIZE];
        match bucket.tree.finish(&mut self.out, !has_sub_buckets)? {
            Root::Page(pgid) => put_u64(&mut value, 0, pgid),
            Root::Inline(page) => {
                value.extend_from_slice(&page);
                self.stats.inline_buckets += 1;
            }
        }
        self.stats.buckets += 1;
        let Some(parent) = self.stack.last_mut() else {
            return Err(io::Error::other("bolt: bucket without parent"));
        };
        parent.tree.has_sub_buckets = true;
        parent.tree.push(&mut self.out, 0, BUCKET_LEAF_FLAG, &bucket.name, &value, 0)
    }
}

/// A bucket being written.
struct OpenBucket {
    /// Its name in the parent bucket (empty for the root bucket).
    name: Vec<u8>,
    /// Its B+tree.
    tree: Tree,
}

impl OpenBucket {
    /// An empty bucket called `name`.
    fn new(name: Vec<u8>) -> Self {
        OpenBucket { name, tree: Tree { levels: vec![Level::default()], has_sub_buckets: false } }
    }
}

/// Where a finished bucket's root is.
enum Root {
    /// In a page of the file.
    Page(u64),
    /// Inline: the leaf page image that follows the bucket header.
    Inline(Vec<u8>),
}

/// A B+tree under construction, bottom-up.
struct Tree {
    /// `levels[0]` holds leaves, `levels[i]` branches pointing at level `i - 1`.
    levels: Vec<Level>,
    /// Whether any leaf element is a bucket (such a bucket is never inlined).
    has_sub_buckets: bool,
}

/// One level of a [`Tree`].
#[derive(Default)]
struct Level {
    /// The last full node, held back until the level is closed or another node fills, so that
    /// a branch level never ends with a one-element node (Go's branch `minKeys` is 2).
    full: Option<Node>,
    /// The node being filled.
    node: Node,
    /// Nodes of this level already written to the file.
    written: u64,
}

impl Tree {
    /// Appends an element to the pending node at `level` (leaf flags/key/value, or branch
    /// key/child). When the element does not belong in that node, the held-back full node (if
    /// any) is written and linked one level up, and the pending node becomes the held-back one.
    fn push(
        &mut self,
        out: &mut PageOut<'_>,
        level: usize,
        flags: u32,
        key: &[u8],
        value: &[u8],
        child: u64,
    ) -> io::Result<()> {
        if self.levels.len() == level {
            self.levels.push(Level::default());
        }
        if !self.levels[level].node.accepts(key.len() + value.len()) {
            let lvl = &mut self.levels[level];
            let mut spare = lvl.full.take().unwrap_or_default();
            std::mem::swap(&mut spare, &mut lvl.node);
            lvl.full = Some(spare);
            // `lvl.node` is now the previously held node (or a new empty one).
            if !self.levels[level].node.elems.is_empty() {
                self.write(out, level)?;
            }
        }
        self.levels[level].node.push(flags, key, value, child);
        Ok(())
    }

    /// Writes the node in `levels[level].node`, links it one level up and empties it.
    fn write(&mut self, out: &mut PageOut<'_>, level: usize) -> io::Result<()> {
        let lvl = &mut self.levels[level];
        let flags = if level == 0 { LEAF_PAGE_FLAG } else { BRANCH_PAGE_FLAG };
        let pgid = out.write_node(&lvl.node, flags)?;
        let first_key = lvl.node.first_key().to_vec();
        lvl.node.clear();
        lvl.written += 1;
        self.push(out, level + 1, 0, &first_key, &[], pgid)
    }

    /// Writes the remaining pending nodes from the leaves up and returns the root (inline when
    /// `may_inline` and the tree is one small leaf, like Go's `Bucket.inlineable`).
    fn finish(mut self, out: &mut PageOut<'_>, may_inline: bool) -> io::Result<Root> {
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            let lvl = &mut self.levels[level];
            let mut full = lvl.full.take();
            if let Some(prev) = &mut full {
                // A branch node needs two children: take one from the held node, or merge.
                if level > 0 && lvl.node.elems.len() < 2 {
                    if prev.elems.len() >= 3 {
                        prev.move_last_to(&mut lvl.node);
                    } else {
                        prev.append(&mut lvl.node);
                        std::mem::swap(prev, &mut lvl.node);
                        full = None;
                    }
                }
            }
            if top && lvl.written == 0 && full.is_none() {
                let node = &lvl.node;
                if may_inline && level == 0 && node.size() <= MAX_INLINE_BUCKET_SIZE {
                    let mut page = Vec::new();
                    node.render(0, LEAF_PAGE_FLAG, node.size(), &mut page)?;
                    return Ok(Root::Inline(page));
                }
                let flags = if level == 0 { LEAF_PAGE_FLAG } else { BRANCH_PAGE_FLAG };
                return Ok(Root::Page(out.write_node(node, flags)?));
            }
            if let Some(prev) = full {
                let last = std::mem::replace(&mut self.levels[level].node, prev);
                self.write(out, level)?;
                self.levels[level].node = last;
            }
            if !self.levels[level].node.elems.is_empty() {
                self.write(out, level)?;
            }
            level += 1;
        }
    }
}

/// One element of a [`Node`]; its key and value are in [`Node::data`].
#[derive(Clone, Copy)]
struct Elem {
    /// Leaf element flags ([`BUCKET_LEAF_FLAG`] or 0); unused in branches.
    flags: u32,
    /// Key length.
    ksize: usize,
    /// Value length (0 in branches).
    vsize: usize,
    /// Child page id (branches only).
    child: u64,
}

/// A leaf or branch node being filled: one page image (possibly with overflow pages).
#[derive(Default)]
struct Node {
    /// The elements, in key order.
    elems: Vec<Elem>,
    /// Every element's key then value, in element order (Go's data layout).
    data: Vec<u8>,
}

impl Node {
    /// Serialized size: header, elements, keys and values.
    fn size(&self) -> usize {
        PAGE_HEADER_SIZE + self.elems.len() * ELEMENT_SIZE + self.data.len()
    }

    /// Whether an element with `kv` bytes of key and value goes into this node (see the module
    /// docs: fill the node's pages; a large element may extend a node when that saves pages).
    fn accepts(&self, kv: usize) -> bool {
        if self.elems.is_empty() {
            return true;
        }
        if self.elems.len() >= MAX_ELEMENTS {
            return false;
        }
        let (size, extra) = (self.size(), ELEMENT_SIZE + kv);
        let grow = pages(size + extra) - pages(size);
        grow == 0
            || (grow < pages(PAGE_HEADER_SIZE + extra) && (self.elems.len() < 2 || size + extra <= MAX_NODE_BYTES))
    }

    /// Appends an element.
    fn push(&mut self, flags: u32, key: &[u8], value: &[u8], child: u64) {
        self.elems.push(Elem { flags, ksize: key.len(), vsize: value.len(), child });
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    /// The first element's key (empty for an empty node).
    fn first_key(&self) -> &[u8] {
        self.elems.first().map_or(&[][..], |e| &self.data[..e.ksize])
    }

    /// Moves this node's last element to the front of `next`.
    fn move_last_to(&mut self, next: &mut Node) {
        if let Some(e) = self.elems.pop() {
            let at = self.data.len() - e.ksize - e.vsize;
            next.data.splice(0..0, self.data.drain(at..));
            next.elems.insert(0, e);
        }
    }

    /// Moves all of `next`'s elements to the end of this node.
    fn append(&mut self, next: &mut Node) {
        self.elems.append(&mut next.elems);
        self.data.append(&mut next.data);
    }

    /// Empties the node, keeping its buffers.
    fn clear(&mut self) {
        self.elems.clear();
        self.data.clear();
    }

    /// Renders the node as a page image of `len` zero-padded bytes into `buf`, as Go's `node.write`.
    fn render(&self, id: u64, flags: u16, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.resize(len, 0);
        let count = self.elems.len();
        put_u64(buf, 0, id);
        put_u16(buf, 8, flags);
        put_u16(buf, 10, u16::try_from(count).map_err(|_| io::Error::other("bolt: too many elements"))?);
        put_u32(buf, 12, to_u32(len.div_ceil(PAGE_SIZE).saturating_sub(1))?);
        let data_start = PAGE_HEADER_SIZE + count * ELEMENT_SIZE;
        let mut off = data_start;
        for (i, e) in self.elems.iter().enumerate() {
            let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
            let pos = to_u32(off - at)?;
            if flags == LEAF_PAGE_FLAG {
                put_u32(buf, at, e.flags);
                put_u32(buf, at + 4, pos);
                put_u32(buf, at + 8, to_u32(e.ksize)?);
                put_u32(buf, at + 12, to_u32(e.vsize)?);
            } else {
                put_u32(buf, at, pos);
                put_u32(buf, at + 4, to_u32(e.ksize)?);
                put_u64(buf, at + 8, e.child);
            }
            off += e.ksize + e.vsize;
        }
        buf[data_start..data_start + self.data.len()].copy_from_slice(&self.data);
        Ok(())
    }
}

/// The sequential page sink.
struct PageOut<'t> {
    /// The file, positioned at page `next_pgid`.
    file: BufWriter<File>,
    /// Where the same bytes also go, if anywhere.
    tee: Option<&'t mut dyn Write>,
    /// The id of the next page written.
    next_pgid: u64,
    /// Reused page image buffer.
    scratch: Vec<u8>,
}

impl PageOut<'_> {
    /// Writes whole pages at the end of the file (and to the tee).
    fn write_page(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        if let Some(tee) = self.tee.as_mut() {
            tee.write_all(bytes)?;
        }
        Ok(())
    }

    /// Writes `node` as the next page(s) and returns its page id.
    fn write_node(&mut self, node: &Node, flags: u16) -> io::Result<u64> {
        let id = self.next_pgid;
        let n = pages(node.size());
        let mut scratch = std::mem::take(&mut self.scratch);
        node.render(id, flags, n * PAGE_SIZE, &mut scratch)?;
        let written = self.write_page(&scratch);
        self.scratch = scratch;
        written?;
        self.next_pgid += n as u64;
        Ok(id)
    }
}

/// Writes meta page `txid` (0 or 1) into `page` (one zeroed page).
fn write_meta(page: &mut [u8], txid: u64, root: u64, freelist: u64, high_water: u64) {
    put_u64(page, 0, txid);
    put_u16(page, 8, META_PAGE_FLAG);
    let m = PAGE_HEADER_SIZE;
    put_u32(page, m, MAGIC);
    put_u32(page, m + 4, VERSION);
    put_u32(page, m + 8, PAGE_SIZE as u32);
    // m + 12: flags (0); m + 24: root bucket sequence (0).
    put_u64(page, m + 16, root);
    put_u64(page, m + 32, freelist);
    put_u64(page, m + 40, high_water);
    put_u64(page, m + 48, txid);
    let checksum = fnv1a64(&page[m..m + 56]);
    put_u64(page, m + 56, checksum);
}

/// FNV-1a, 64 bits (Go's `hash/fnv` `New64a`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Pages needed for `size` bytes (at least one).
fn pages(size: usize) -> usize {
    size.div_ceil(PAGE_SIZE).max(1)
}

/// `n` as a page field, or an error if it does not fit.
fn to_u32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("bolt: node larger than 4 GiB"))
}

/// Writes `v` little-endian at `at`.
fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` little-endian at `at`.
fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` little-endian at `at`.
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// An InvalidInput error.
fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// `"bucket"/"nested"/"key"`, bytes escaped.
fn show(bucket_path: &[&[u8]], key: &[u8]) -> String {
    let mut parts: Vec<String> = bucket_path.iter().map(|n| format!("\"{}\"", n.escape_ascii())).collect();
    parts.push(format!("\"{}\"", key.escape_ascii()));
    parts.join("/")
}

/// [`show`] for a stored tuple.
fn show_tuple(tuple: &[Vec<u8>]) -> String {
    tuple.iter().map(|n| format!("\"{}\"", n.escape_ascii())).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bbolt_rs::{BoltOptions, BucketApi, BucketRwApi, CursorApi, DbApi, DbRwAPI, TxApi, TxCheck, TxRwRefApi};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    /// `(bucket path, key, value)`.
    type Entry = (Vec<Vec<u8>>, Vec<u8>, Vec<u8>);

    /// Builds an entry from byte-string literals.
    fn e(path: &[&[u8]], key: &[u8], value: &[u8]) -> Entry {
        (path.iter().map(|n| n.to_vec()).collect(), key.to_vec(), value.to_vec())
    }

    /// Writes `entries` (sorted) to a new file in `dir`.
    fn write(dir: &Path, name: &str, entries: &[Entry]) -> (PathBuf, BoltStats) {
        let path = dir.join(name);
        let mut w = BoltWriter::create(&path).unwrap();
        for (p, k, v) in entries {
            let p: Vec<&[u8]> = p.iter().map(Vec::as_slice).collect();
            w.put(&p, k, v).unwrap();
        }
        (path, w.finish().unwrap())
    }

    /// Every entry of the file, by a cursor walk with bbolt-rs; also runs its consistency check.
    fn read_with_bbolt_rs(path: &Path) -> Vec<Entry> {
        fn walk<'tx, B: BucketApi<'tx>>(b: &B, path: &mut Vec<Vec<u8>>, out: &mut Vec<Entry>) {
            let mut c = b.cursor();
            let mut item = c.first().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)));
            while let Some((k, v)) = item {
                match v {
                    Some(v) => out.push((path.clone(), k, v)),
                    None => {
                        let child = b.bucket(&k).expect("nested bucket");
                        path.push(k);
                        walk(&child, path, out);
                        path.pop();
                    }
                }
                item = c.next().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)));
            }
        }
        let db = BoltOptions::builder().preload_freelist().build().open_ro(path).unwrap();
        let mut out = Vec::new();
        db.view(|tx| {
            let errors = tx.check();
            assert!(errors.is_empty(), "bbolt-rs check: {errors:?}");
            let mut c = tx.cursor();
            let mut names = Vec::new();
            let mut item = c.first().map(|(k, v)| (k.to_vec(), v.is_none()));
            while let Some((k, is_bucket)) = item {
                assert!(is_bucket, "top-level key {k:?} is not a bucket");
                names.push(k);
                item = c.next().map(|(k, v)| (k.to_vec(), v.is_none()));
            }
            for name in names {
                let b = tx.bucket(&name).expect("top-level bucket");
                walk(&b, &mut vec![name.clone()], &mut out);
            }
            Ok(())
        })
        .unwrap();
        out
    }

    /// What [`check_raw`] found.
    #[derive(Debug, Default)]
    struct RawReport {
        /// Pages in the file.
        high_water: u64,
        /// Non-inline buckets' tree heights (1 = a single leaf), root bucket excluded.
        heights: Vec<usize>,
        /// Inline buckets.
        inline: usize,
        /// Leaf pages with overflow.
        overflow_nodes: usize,
        /// Every entry, in file order.
        entries: Vec<Entry>,
    }

    /// Reads a little-endian integer.
    fn le(b: &[u8], at: usize, n: usize) -> u64 {
        b[at..at + n].iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    }

    /// Independent checker over the raw bytes; panics on any violation (see the module docs).
    fn check_raw(file: &[u8]) -> RawReport {
        assert_eq!(file.len() % PAGE_SIZE, 0, "file length not a page multiple");
        let metas: Vec<&[u8]> = (0..2).map(|i| &file[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]).collect();
        for (i, m) in metas.iter().enumerate() {
            assert_eq!(le(m, 0, 8), i as u64, "meta page id");
            assert_eq!(le(m, 8, 2), u64::from(META_PAGE_FLAG), "meta flags");
            assert_eq!(le(m, 10, 6), 0, "meta count/overflow");
            assert_eq!(le(m, 16, 4), u64::from(MAGIC));
            assert_eq!(le(m, 20, 4), u64::from(VERSION));
            assert_eq!(le(m, 24, 4), PAGE_SIZE as u64);
            assert_eq!(le(m, 28, 4), 0, "meta flags field");
            assert_eq!(le(m, 40, 8), 0, "root sequence");
            assert_eq!(le(m, 64, 8), i as u64, "txid");
            assert_eq!(le(m, 72, 8), fnv1a64(&m[16..72]), "checksum");
            assert!(m[80..].iter().all(|&b| b == 0), "meta slack not zero");
        }
        assert_eq!(metas[0][16..64], metas[1][16..64], "metas differ");
        let m = metas[1];
        let (root, freelist, high_water) = (le(m, 32, 8), le(m, 48, 8), le(m, 56, 8));
        assert_eq!(file.len() as u64, high_water * PAGE_SIZE as u64, "file length != high-water mark");
        let mut used = vec![0u32; high_water as usize];
        used[0] += 1;
        used[1] += 1;
        assert!(freelist >= 2 && freelist < high_water);
        let f = &file[freelist as usize * PAGE_SIZE..(freelist as usize + 1) * PAGE_SIZE];
        assert_eq!(le(f, 0, 8), freelist);
        assert_eq!(le(f, 8, 2), u64::from(FREELIST_PAGE_FLAG));
        assert!(f[10..].iter().all(|&b| b == 0), "freelist not empty");
        used[freelist as usize] += 1;
        let mut report = RawReport { high_water, ..RawReport::default() };
        let mut c = Checker { file, used: &mut used, report: &mut report };
        c.tree(root, &mut Vec::new(), true);
        for (id, n) in used.iter().enumerate() {
            assert_eq!(*n, 1, "page {id} used {n} times");
        }
        report
    }

    /// Walk state of [`check_raw`].
    struct Checker<'a> {
        /// The whole file.
        file: &'a [u8],
        /// Reference count per page id.
        used: &'a mut [u32],
        /// Findings.
        report: &'a mut RawReport,
    }

    /// A parsed element: flags, key, value or child page id.
    type Parsed<'a> = (u32, &'a [u8], &'a [u8], u64);

    impl<'a> Checker<'a> {
        /// Checks a page image (node of `node.len()` bytes, header id `id`) and returns its
        /// flags and elements.
        fn node(node: &'a [u8], id: u64, exact: bool) -> (u16, Vec<Parsed<'a>>) {
            assert_eq!(le(node, 0, 8), id, "page id");
            let flags = le(node, 8, 2) as u16;
            assert!(flags == LEAF_PAGE_FLAG || flags == BRANCH_PAGE_FLAG, "page {id}: flags {flags:#x}");
            let count = le(node, 10, 2) as usize;
            let data_start = PAGE_HEADER_SIZE + count * ELEMENT_SIZE;
            let mut off = data_start;
            let mut out = Vec::with_capacity(count);
            for i in 0..count {
                let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
                let (eflags, pos, ksize, vsize, child) = if flags == LEAF_PAGE_FLAG {
                    (le(node, at, 4) as u32, le(node, at + 4, 4), le(node, at + 8, 4), le(node, at + 12, 4), 0)
                } else {
                    (0, le(node, at, 4), le(node, at + 4, 4), 0, le(node, at + 8, 8))
                };
                assert_eq!(at as u64 + pos, off as u64, "page {id} element {i}: data not in Go's layout");
                assert!(eflags <= BUCKET_LEAF_FLAG, "element flags");
                assert!(ksize > 0, "empty key");
                let (k, v) = (ksize as usize, vsize as usize);
                out.push((eflags, &node[off..off + k], &node[off + k..off + k + v], child));
                off += k + v;
            }
            for w in out.windows(2) {
                assert!(w[0].1 < w[1].1, "page {id}: keys not strictly increasing");
            }
            if exact {
                assert_eq!(off, node.len(), "inline page length");
            } else {
                assert!(node[off..].iter().all(|&b| b == 0), "page {id}: slack not zero");
                assert_eq!(pages(off), node.len() / PAGE_SIZE, "page {id}: needless overflow");
            }
            (flags, out)
        }

        /// Checks the tree of a bucket rooted at page `pgid`, collecting entries under `path`.
        fn tree(&mut self, pgid: u64, path: &mut Vec<Vec<u8>>, is_root_bucket: bool) {
            let (height, _, _) = self.page(pgid, path, None, is_root_bucket);
            if !is_root_bucket {
                self.report.heights.push(height);
            }
        }

        /// Checks page `pgid` and its subtree; `expect_first` is the parent's key for it.
        /// Returns the subtree height, first key and last key.
        fn page(
            &mut self,
            pgid: u64,
            path: &mut Vec<Vec<u8>>,
            expect_first: Option<&[u8]>,
            root: bool,
        ) -> (usize, Vec<u8>, Vec<u8>) {
            let start = pgid as usize * PAGE_SIZE;
            assert!(pgid >= 2 && start + PAGE_SIZE <= self.file.len(), "page {pgid} out of bounds");
            let overflow = le(self.file, start + 12, 4) as usize;
            let end = start + (overflow + 1) * PAGE_SIZE;
            assert!(end <= self.file.len(), "page {pgid} overflow beyond the high-water mark");
            for id in pgid as usize..=pgid as usize + overflow {
                self.used[id] += 1;
            }
            let file = self.file;
            let (flags, elems) = Self::node(&file[start..end], pgid, false);
            if overflow > 0 {
                self.report.overflow_nodes += 1;
            }
            let first = elems.first().map(|e| e.1.to_vec()).unwrap_or_default();
            if let Some(k) = expect_first {
                assert_eq!(k, first.as_slice(), "branch key != first key of child {pgid}");
            }
            if flags == BRANCH_PAGE_FLAG {
                assert!(elems.len() >= 2, "branch page {pgid} with {} elements", elems.len());
                let mut heights = Vec::new();
                let mut last: Vec<u8> = Vec::new();
                for (i, (_, key, _, child)) in elems.into_iter().enumerate() {
                    if i > 0 {
                        assert!(last.as_slice() < key, "page {pgid}: child {i} overlaps its left sibling");
                    }
                    let (h, _, child_last) = self.page(child, path, Some(key), root);
                    heights.push(h);
                    last = child_last;
                }
                assert!(heights.windows(2).all(|w| w[0] == w[1]), "unbalanced tree");
                (heights[0] + 1, first, last)
            } else {
                assert!(!elems.is_empty() || (root && self.used.len() == 4), "empty leaf {pgid}");
                let last = elems.last().map(|e| e.1.to_vec()).unwrap_or_default();
                for (eflags, key, value, _) in elems {
                    if eflags & BUCKET_LEAF_FLAG != 0 {
                        path.push(key.to_vec());
                        self.bucket(value, path);
                        path.pop();
                    } else {
                        assert!(!root, "plain key in the root bucket");
                        self.report.entries.push((path.clone(), key.to_vec(), value.to_vec()));
                    }
                }
                (1, first, last)
            }
        }

        /// Checks a bucket value found under `path`.
        fn bucket(&mut self, value: &'a [u8], path: &mut Vec<Vec<u8>>) {
            assert!(value.len() >= BUCKET_HEADER_SIZE, "short bucket value");
            assert_eq!(le(value, 8, 8), 0, "bucket sequence");
            let root = le(value, 0, 8);
            if root == 0 {
                self.report.inline += 1;
                let page = &value[BUCKET_HEADER_SIZE..];
                assert!(page.len() <= MAX_INLINE_BUCKET_SIZE, "inline page too big");
                assert_eq!(le(page, 12, 4), 0, "inline overflow");
                let (flags, elems) = Self::node(page, 0, true);
                assert_eq!(flags, LEAF_PAGE_FLAG);
                assert!(!elems.is_empty(), "empty inline bucket");
                for (eflags, key, value, _) in elems {
                    assert_eq!(eflags, 0, "inline bucket with a sub-bucket");
                    self.report.entries.push((path.clone(), key.to_vec(), value.to_vec()));
                }
                return;
            }
            assert_eq!(value.len(), BUCKET_HEADER_SIZE, "bytes after a non-inline bucket header");
            // Go inlines a bucket whose root is one leaf without sub-buckets of at most 1024
            // bytes; such a bucket must be inline here too.
            let start = root as usize * PAGE_SIZE;
            if start + PAGE_SIZE <= self.file.len() && le(self.file, start + 8, 2) as u16 == LEAF_PAGE_FLAG {
                let end = start + PAGE_SIZE * (1 + le(self.file, start + 12, 4) as usize);
                let (_, elems) = Self::node(&self.file[start..end.min(self.file.len())], root, false);
                let size = PAGE_HEADER_SIZE + elems.iter().map(|e| ELEMENT_SIZE + e.1.len() + e.2.len()).sum::<usize>();
                let has_buckets = elems.iter().any(|e| e.0 != 0);
                assert!(has_buckets || size > MAX_INLINE_BUCKET_SIZE, "bucket at page {root} should be inline");
            }
            self.tree(root, path, false);
        }
    }

    /// Writes, then reads back with bbolt-rs and the raw checker; returns the raw report.
    fn roundtrip(entries: &[Entry]) -> (RawReport, BoltStats) {
        let dir = tempfile::tempdir().unwrap();
        let (path, stats) = write(dir.path(), "t.db", entries);
        let bytes = std::fs::read(&path).unwrap();
        let report = check_raw(&bytes);
        assert_eq!(report.entries, entries, "raw checker read different entries");
        assert_eq!(read_with_bbolt_rs(&path), entries, "bbolt-rs read different entries");
        assert_eq!(stats.pages, report.high_water);
        assert_eq!(stats.entries, entries.len() as u64);
        assert_eq!(stats.inline_buckets, report.inline as u64);
        (report, stats)
    }

    /// A small deterministic PRNG (SplitMix64).
    struct Rng(u64);

    impl Rng {
        /// The next 64 random bits.
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n`.
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// `min + below(span)` random bytes.
        fn bytes(&mut self, min: usize, span: u64) -> Vec<u8> {
            let len = min + self.below(span.max(1)) as usize;
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn empty_db() {
        let (report, stats) = roundtrip(&[]);
        // Metas, the root bucket's empty leaf, the freelist.
        assert_eq!(stats.pages, 4);
        assert_eq!(report.entries.len(), 0);
    }

    #[test]
    fn one_bucket_one_key() {
        let (report, stats) = roundtrip(&[e(&[b"vulnerability"], b"CVE-2024-1", b"{}")]);
        assert_eq!(stats.pages, 4);
        assert_eq!((stats.buckets, stats.inline_buckets, report.inline), (1, 1, 1));
    }

    #[test]
    fn many_tiny_nested_buckets_are_inline() {
        let mut entries = Vec::new();
        for top in [&b"alpine 3.19"[..], b"npm::GitHub Security Advisory npm"] {
            for pkg in 0..3000 {
                for v in 0..(pkg % 3 + 1) {
                    let pkg = format!("pkg-{pkg:05}");
                    let key = format!("CVE-2024-{v:04}");
                    entries.push(e(&[top, pkg.as_bytes()], key.as_bytes(), br#"{"FixedVersion":"1.2.3-r0"}"#));
                }
            }
        }
        let (report, stats) = roundtrip(&entries);
        assert_eq!(report.inline, 6000);
        assert_eq!(stats.buckets, 6002);
        // Both top-level buckets hold sub-buckets and are trees with branches.
        assert_eq!(report.heights.len(), 2);
        assert!(report.heights.iter().all(|&h| h >= 2), "{:?}", report.heights);
    }

    #[test]
    fn nested_bucket_with_branch_levels() {
        let mut entries = Vec::new();
        for i in 0..20_000u32 {
            let key = format!("GHSA-{i:08}");
            entries.push(e(&[b"pip::x", b"requests"], key.as_bytes(), &[b'v'; 100]));
        }
        let (report, _) = roundtrip(&entries);
        // Nested bucket: leaves, one branch level, a branch root.
        assert_eq!(report.heights, vec![3, 1]);
    }

    #[test]
    fn deep_tree_with_long_keys() {
        let mut entries = Vec::new();
        for i in 0..2000u32 {
            let mut key = format!("{i:08}").into_bytes();
            key.resize(1000, b'k');
            entries.push(e(&[b"b"], &key, b"x"));
        }
        let (report, _) = roundtrip(&entries);
        assert!(report.heights[0] >= 5, "{:?}", report.heights);
    }

    #[test]
    fn values_larger_than_a_page() {
        let entries = vec![
            e(&[b"a"], b"k0", b"small"),
            e(&[b"a"], b"k1", &[1u8; 10 * 1024]),
            e(&[b"a"], b"k2", b"small"),
            e(&[b"a"], b"k3", &[2u8; 100 * 1024]),
            e(&[b"a"], b"k4", &[3u8; 4080]),
            e(&[b"a"], b"k5", &[4u8; 5000]),
            e(&[b"a"], b"k6", &[5u8; 5000]),
            e(&[b"b", b"n"], b"k", &[6u8; 100 * 1024]),
            e(&[b"c"], b"k", &[7u8; 991]),
            e(&[b"d"], b"k", &[8u8; 992]),
        ];
        let (report, stats) = roundtrip(&entries);
        assert!(report.overflow_nodes >= 3, "{report:?}");
        // "c" is exactly 1024 bytes (inline), "d" one more (its own page).
        assert_eq!(stats.inline_buckets, 1);
    }

    #[test]
    fn keys_and_sub_buckets_mixed_and_binary() {
        let entries = vec![
            e(&[b"\x00"], b"\x00", b""),
            e(&[b"\x00"], b"\xff\x00", b"\x00\x01"),
            e(&[b"\x00", b"\xff\xff"], b"\x01", b"\xfe"),
            e(&[b"only-subs", b"a"], b"k", b"1"),
            e(&[b"only-subs", b"b"], b"k", b"2"),
            e(&[b"top", b"a"], b"k", b"1"),
            e(&[b"top"], b"b", b"plain"),
            e(&[b"top", b"c"], b"k", b"3"),
            e(&[b"top"], b"d", b"plain"),
            e(&[b"\xff"], b"\xff", &[0u8; 3]),
        ];
        let (report, stats) = roundtrip(&entries);
        assert_eq!(stats.buckets, 9);
        // Buckets without sub-buckets are inline; the three with sub-buckets are not.
        assert_eq!(report.inline, 6);
    }

    #[test]
    fn deterministic() {
        let mut rng = Rng(7);
        let mut keys: Vec<Vec<u8>> = (0..3000).map(|_| rng.bytes(1, 12)).collect();
        keys.sort();
        keys.dedup();
        // Sorted keys in buckets named by their first byte: already in `put` order.
        let entries: Vec<Entry> = keys.iter().map(|k| e(&[b"x", &k[..1]], k, &rng.bytes(0, 3000))).collect();
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = write(dir.path(), "a.db", &entries);
        let (b, _) = write(dir.path(), "b.db", &entries);
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }

    #[test]
    fn bad_input_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut w = BoltWriter::create(&path).unwrap();
        assert_eq!(BoltWriter::create(&path).err().map(|e| e.kind()), Some(io::ErrorKind::AlreadyExists));
        w.put(&[b"b"], b"k2", b"v").unwrap();
        /// A rejected put: bucket path, key, expected words in the message.
        type Bad<'a> = (&'a [&'a [u8]], &'a [u8], &'a str);
        let bad: &[Bad] = &[
            (&[b"b"], b"k2", "duplicate"),
            (&[b"b"], b"k1", "out of order"),
            (&[b"a"], b"k9", "out of order"),
            (&[b"b"], b"", "empty key"),
            (&[b""], b"k3", "empty bucket name"),
            (&[], b"k3", "1 or 2 names"),
            (&[b"b", b"c", b"d"], b"k3", "1 or 2 names"),
            (&[b"b", b"k2"], b"x", "collides"),
        ];
        for (p, k, why) in bad {
            let err = w.put(p, k, b"v").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{p:?} {k:?}");
            let msg = err.to_string();
            assert!(msg.contains(why), "{msg}");
            assert!(msg.contains(&format!("\"{}\"", k.escape_ascii())), "{msg}");
        }
        w.put(&[b"b", b"n"], b"k", b"v").unwrap();
        // A plain key named like the nested bucket just written, and a key in a closed bucket.
        let err = w.put(&[b"b"], b"n", b"v").unwrap_err();
        assert!(err.to_string().contains("collides with a nested bucket"), "{err}");
        assert_eq!(w.put(&[b"b", b"m"], b"z", b"v").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        w.put(&[b"b"], b"o", b"v").unwrap();
        w.finish().unwrap();
        // Rejected puts changed nothing.
        let want = vec![e(&[b"b"], b"k2", b"v"), e(&[b"b", b"n"], b"k", b"v"), e(&[b"b"], b"o", b"v")];
        assert_eq!(read_with_bbolt_rs(&path), want);
        assert_eq!(check_raw(&std::fs::read(&path).unwrap()).entries, want);
    }

    #[test]
    fn bbolt_rs_can_write_to_the_file() {
        let mut entries = Vec::new();
        for i in 0..5000u32 {
            entries.push(e(&[b"big"], format!("{i:06}").as_bytes(), &[b'x'; 200]));
        }
        entries.push(e(&[b"small", b"n"], b"k", b"v"));
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path(), "t.db", &entries);
        {
            let mut db = BoltOptions::builder().build().open(&path).unwrap();
            db.update(|mut tx| {
                {
                    let mut b = tx.bucket_mut(b"big").expect("big");
                    b.put(b"000100", b"changed")?;
                    b.delete(b"000200")?;
                }
                {
                    let mut s = tx.bucket_mut(b"small").expect("small");
                    let mut n = s.bucket_mut(b"n").expect("n");
                    n.put(b"k2", b"v2")?;
                }
                tx.create_bucket(b"new")?.put(b"a", b"b")?;
                Ok(())
            })
            .unwrap();
        }
        let mut want = entries;
        want[100].2 = b"changed".to_vec();
        want.remove(200);
        want.push(e(&[b"new"], b"a", b"b"));
        want.push(e(&[b"small", b"n"], b"k2", b"v2"));
        want.sort();
        assert_eq!(read_with_bbolt_rs(&path), want);
    }

    #[test]
    fn random_sorted_key_sets() {
        let mut rng = Rng(0x5eed);
        for round in 0..48 {
            // Keyed by the whole tuple (path names then key): the order `put` requires.
            let mut tuples: BTreeMap<Vec<Vec<u8>>, Vec<u8>> = BTreeMap::new();
            let mut sub_names: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
            for _ in 0..1 + rng.below(4) {
                let top = rng.bytes(1, 4);
                let names = sub_names.entry(top.clone()).or_default();
                for _ in 0..rng.below(if round % 4 == 0 { 400 } else { 60 }) {
                    let name = rng.bytes(1, 6);
                    let span = match rng.below(4) {
                        0 => 9000,
                        1 => 300,
                        _ => 40,
                    };
                    let value = rng.bytes(0, span);
                    if rng.below(3) == 0 {
                        // A nested bucket of a few keys.
                        names.push(name.clone());
                        let span = if rng.below(8) == 0 { 300 } else { 5 };
                        for _ in 0..1 + rng.below(span) {
                            let v = rng.bytes(0, 200);
                            tuples.insert(vec![top.clone(), name.clone(), rng.bytes(1, 8)], v);
                        }
                    } else {
                        tuples.insert(vec![top.clone(), name], value);
                    }
                }
            }
            // Drop plain keys that collide with nested bucket names.
            tuples.retain(|t, _| t.len() == 3 || !sub_names.get(&t[0]).is_some_and(|n| n.contains(&t[1])));
            let entries: Vec<Entry> = tuples
                .into_iter()
                .map(|(mut t, v)| {
                    let k = t.pop().unwrap();
                    (t, k, v)
                })
                .collect();
            roundtrip(&entries);
        }
    }

    /// Pages in use by a bbolt file: high-water mark minus free pages (from the newer meta).
    fn pages_in_use(file: &[u8]) -> u64 {
        let m = if le(file, PAGE_SIZE + 64, 8) > le(file, 64, 8) { PAGE_SIZE } else { 0 };
        let (freelist, high_water) = (le(file, m + 48, 8) as usize, le(file, m + 56, 8));
        let f = freelist * PAGE_SIZE;
        let mut free = le(file, f + 10, 2);
        if free == 0xFFFF {
            free = le(file, f + 16, 8);
        }
        high_water - free
    }

    #[test]
    fn not_larger_than_bbolt_rs() {
        let mut rng = Rng(42);
        let mut entries = Vec::new();
        for top in [&b"alpine 3.19"[..], b"pip::GitHub Security Advisory pip"] {
            for pkg in 0..2000 {
                for v in 0..1 + rng.below(4) {
                    let pkg = format!("pkg-{pkg:05}");
                    let value = rng.bytes(20, 400);
                    entries.push(e(&[top, pkg.as_bytes()], format!("CVE-2024-{v:05}").as_bytes(), &value));
                }
            }
        }
        for i in 0..3000 {
            let value = if i % 3 == 0 { rng.bytes(0, 9000) } else { rng.bytes(200, 2000) };
            entries.push(e(&[b"vulnerability"], format!("CVE-2024-{i:05}").as_bytes(), &value));
        }
        let dir = tempfile::tempdir().unwrap();
        let (ours, stats) = write(dir.path(), "ours.db", &entries);
        let theirs = dir.path().join("theirs.db");
        {
            let mut db = BoltOptions::builder().page_size(4096).no_sync().build().open(&theirs).unwrap();
            db.update(|mut tx| {
                for (p, k, v) in &entries {
                    let mut b = tx.create_bucket_if_not_exists(&p[0])?;
                    b.set_fill_percent(1.0);
                    if p.len() == 2 {
                        let mut n = b.create_bucket_if_not_exists(&p[1])?;
                        n.set_fill_percent(1.0);
                        n.put(k, v)?;
                    } else {
                        b.put(k, v)?;
                    }
                }
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(read_with_bbolt_rs(&theirs), entries);
        let ours_len = std::fs::metadata(&ours).unwrap().len();
        let theirs_in_use = pages_in_use(&std::fs::read(&theirs).unwrap());
        eprintln!(
            "ours: {} pages ({ours_len} bytes); bbolt-rs, one transaction, fill 1.0: {theirs_in_use} pages in use ({} bytes on disk)",
            stats.pages,
            std::fs::metadata(&theirs).unwrap().len()
        );
        assert!(stats.pages <= theirs_in_use, "ours {} > bbolt-rs {theirs_in_use}", stats.pages);
    }
}
