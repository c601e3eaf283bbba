//! Streaming AES-256-GCM (NIST SP 800-38D, 96-bit nonces), written on the RustCrypto `aes`,
//! `ctr` and `ghash` primitives because the `aes-gcm` crate seals and opens whole buffers
//! only: a multi-gigabyte blob would have to sit in memory. The output is plain GCM,
//! `nonce || ciphertext || tag`, the same bytes `aes-gcm` (and Python's `AESGCM`) give for
//! the same key, nonce and associated data; the tests check it against `aes-gcm`.

use aes::cipher::{BlockEncrypt, InnerIvInit, StreamCipher};
use aes::Aes256;
use ghash::universal_hash::{KeyInit, UniversalHash};
use ghash::GHash;
use std::io::{self, Read, Write};
use subtle::ConstantTimeEq;

/// Bytes of a nonce.
pub(crate) const NONCE_LEN: usize = 12;
/// Bytes of a tag.
pub(crate) const TAG_LEN: usize = 16;
/// Most plaintext one GCM message may hold: 2^32 − 2 blocks (about 64 GiB).
pub(crate) const MAX_MESSAGE: u64 = ((1 << 32) - 2) * 16;
/// Bytes processed per step (a multiple of the block size).
const CHUNK: usize = 64 << 10;

struct Gcm {
    ctr: ctr::Ctr32BE<Aes256>,
    ghash: GHash,
    mask: ghash::Block,
    aad_len: u64,
    len: u64,
}

impl Gcm {
    /// Applies the counter keystream; an error (not a panic) where the 32-bit counter would
    /// wrap, a block or so before [`MAX_MESSAGE`].
    fn keystream(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.ctr
            .try_apply_keystream(buf)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "longer than one AES-GCM message may be"))
    }

    fn new(aes: &Aes256, nonce: &[u8; NONCE_LEN], aad: &[u8]) -> Self {
        let mut h = ghash::Block::default();
        aes.encrypt_block(&mut h);
        let mut ghash = GHash::new(&h);
        zeroize::Zeroize::zeroize(h.as_mut_slice());
        ghash.update_padded(aad);
        let mut j0 = [0u8; 16];
        j0[..NONCE_LEN].copy_from_slice(nonce);
        j0[15] = 1;
        let mut mask = ghash::Block::from(j0);
        aes.encrypt_block(&mut mask);
        j0[15] = 2;
        let ctr = ctr::Ctr32BE::from_core(ctr::CtrCore::inner_iv_init(aes.clone(), &j0.into()));
        Self { ctr, ghash, mask, aad_len: aad.len() as u64, len: 0 }
    }

    /// Adds ciphertext to the hash; only the last piece of a message may be a partial block.
    fn hash(&mut self, ciphertext: &[u8]) -> io::Result<()> {
        self.len += ciphertext.len() as u64;
        if self.len > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "larger than one AES-GCM message can be (64 GiB)"));
        }
        self.ghash.update_padded(ciphertext);
        Ok(())
    }

    fn tag(mut self) -> [u8; TAG_LEN] {
        let mut lengths = ghash::Block::default();
        lengths[..8].copy_from_slice(&(self.aad_len * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(self.len * 8).to_be_bytes());
        self.ghash.update(&[lengths]);
        let s = self.ghash.finalize();
        let mut tag = [0u8; TAG_LEN];
        for (t, (a, b)) in tag.iter_mut().zip(s.iter().zip(self.mask.iter())) {
            *t = a ^ b;
        }
        tag
    }
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Seals everything `plain` yields into `out` as `nonce || ciphertext || tag`; returns the
/// plaintext length.
pub(crate) fn seal(
    aes: &Aes256,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plain: &mut dyn Read,
    out: &mut dyn Write,
) -> io::Result<u64> {
    out.write_all(nonce)?;
    let mut gcm = Gcm::new(aes, nonce, aad);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(plain, &mut buf)?;
        gcm.keystream(&mut buf[..n])?;
        gcm.hash(&buf[..n])?;
        out.write_all(&buf[..n])?;
        if n < CHUNK {
            break;
        }
    }
    let len = gcm.len;
    out.write_all(&gcm.tag())?;
    Ok(len)
}

/// Why [`open`] failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Reading or writing failed.
    Io(io::Error),
    /// The bytes are not a message sealed under this key and associated data.
    Forged(&'static str),
}

/// Opens `sealed_len` bytes of `nonce || ciphertext || tag` from `sealed` into `out`. The
/// plaintext is written before the tag is checked: on an error, discard what `out` got.
pub(crate) fn open(
    aes: &Aes256,
    aad: &[u8],
    sealed: &mut dyn Read,
    sealed_len: u64,
    out: &mut dyn Write,
) -> Result<u64, OpenError> {
    let Some(mut left) = sealed_len.checked_sub((NONCE_LEN + TAG_LEN) as u64) else {
        return Err(OpenError::Forged("shorter than a nonce and a tag"));
    };
    let mut nonce = [0u8; NONCE_LEN];
    sealed.read_exact(&mut nonce).map_err(OpenError::Io)?;
    let mut gcm = Gcm::new(aes, &nonce, aad);
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        sealed.read_exact(&mut buf[..want]).map_err(OpenError::Io)?;
        gcm.hash(&buf[..want]).map_err(OpenError::Io)?;
        gcm.keystream(&mut buf[..want]).map_err(OpenError::Io)?;
        out.write_all(&buf[..want]).map_err(OpenError::Io)?;
        left -= want as u64;
    }
    let mut tag = [0u8; TAG_LEN];
    sealed.read_exact(&mut tag).map_err(OpenError::Io)?;
    let len = gcm.len;
    if !bool::from(gcm.tag().ct_eq(&tag)) {
        return Err(OpenError::Forged("does not decrypt: wrong key, wrong associated data or changed bytes"));
    }
    if sealed.read(&mut [0u8; 1]).map_err(OpenError::Io)? != 0 {
        return Err(OpenError::Forged("has bytes after its tag"));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, Payload};
    use aes_gcm::{Aes256Gcm, Nonce};

    /// Past the last block its 32-bit counter allows, the keystream is an error, not a panic.
    #[test]
    fn the_end_of_the_counter_is_an_error() {
        use aes::cipher::StreamCipherSeek;
        let aes = Aes256::new(&[7u8; 32].into());
        let mut gcm = Gcm::new(&aes, &[1u8; NONCE_LEN], b"");
        gcm.ctr.seek(MAX_MESSAGE - 64);
        let mut buf = [0u8; 128];
        let err = gcm.keystream(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// A reader that hands out at most 7 bytes per call, to exercise `read_full`.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn equals_aes_gcm_and_opens_back() {
        let key = [7u8; 32];
        let aes = Aes256::new_from_slice(&key).unwrap();
        let oracle = Aes256Gcm::new_from_slice(&key).unwrap();
        let nonce = [3u8; 12];
        for len in [0, 1, 15, 16, 17, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for aad in [&b""[..], b"run:data/blobs/x", &[9u8; 40]] {
                let mut sealed = Vec::new();
                assert_eq!(seal(&aes, &nonce, aad, &mut Dribble(&plain), &mut sealed).unwrap(), len as u64);
                let expected = oracle.encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad }).unwrap();
                assert_eq!(&sealed[..12], &nonce, "len {len}");
                assert_eq!(&sealed[12..], &expected[..], "len {len}, aad {}", aad.len());
                let mut back = Vec::new();
                open(&aes, aad, &mut &sealed[..], sealed.len() as u64, &mut back).unwrap();
                assert_eq!(back, plain);
            }
        }
    }

    #[test]
    fn changed_bytes_other_aad_and_appended_bytes_fail() {
        let aes = Aes256::new_from_slice(&[1u8; 32]).unwrap();
        let plain = vec![5u8; CHUNK + 100];
        let mut sealed = Vec::new();
        seal(&aes, &[0u8; 12], b"a", &mut &plain[..], &mut sealed).unwrap();
        let n = sealed.len() as u64;
        let forged = |r: Result<u64, OpenError>| matches!(r, Err(OpenError::Forged(_)));
        assert!(forged(open(&aes, b"b", &mut &sealed[..], n, &mut io::sink())), "other aad");
        for at in [0, 12, 12 + CHUNK, sealed.len() - 1] {
            let mut bent = sealed.clone();
            bent[at] ^= 1;
            assert!(forged(open(&aes, b"a", &mut &bent[..], n, &mut io::sink())), "flip at {at}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(forged(open(&aes, b"a", &mut &longer[..], n, &mut io::sink())), "appended byte");
        assert!(forged(open(&aes, b"a", &mut &sealed[..20], 20, &mut io::sink())), "too short");
        assert!(
            matches!(open(&aes, b"a", &mut &sealed[..100], n, &mut io::sink()), Err(OpenError::Io(_))),
            "truncated"
        );
    }
}
