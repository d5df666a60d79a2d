//! A served adapter's panels saved beside its files, so that loading it again (after the
//! adapter cache evicted it, or in a restarted process) reads 3.7 MB of ready panels instead
//! of mapping, parsing, checking, converting and packing 7.4 MB of f32 (issue 18's cold load;
//! llama.cpp's LoRA files are likewise converted once, ahead of time).
//!
//! [`ADAPTER_PANELS`] in the adapter's directory: [`MAGIC`], the header's length (u32 LE), the
//! header (JSON), then the buffer's values, little-endian. The header names what the panels were
//! made from: the size, times and inode of `adapter_model.safetensors`, a hash of
//! `adapter_config.json`'s text and of the base model's configuration, and the panel layout
//! ([`LAYOUT`], `kernels::adapter`'s lanes). Anything that differs, or a file that is short,
//! malformed or holds a value that is not finite, is a miss: the adapter is built from its
//! files as before and the panels saved again. Saving is best effort (a read-only directory
//! only costs the next load the conversion): written to a temporary name and renamed, so a
//! reader never sees half a file.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapters::ADAPTER_PANELS;
use crate::config::ModelConfig;
use crate::lora::{AdapterConfig, HostPanels, LoraAdapter, SavedPair};

const MAGIC: &[u8; 8] = b"OLPANELS";
/// The panel layout's version: raise it whenever `kernels::adapter` packs differently.
const LAYOUT: u32 = 1;
/// Largest header accepted (a pair is ~100 bytes of JSON; seven targets of 128 layers fit).
const MAX_HEADER_BYTES: usize = 1 << 20;
/// The writer's buffer (the values go through in one write).
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// What a saved buffer must have been made from to be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Source {
    weights_len: u64,
    weights_modified_ns: u64,
    /// Device, inode and change time (Unix): a file replaced or rewritten within one tick of
    /// the modification clock still differs in one of them.
    weights_identity: [u64; 3],
    config_blake3: String,
    base_blake3: String,
}

impl Source {
    /// `weights` is the metadata of `adapter_model.safetensors`; `config_text` what
    /// `adapter_config.json` holds.
    pub(crate) fn new(weights: &std::fs::Metadata, config_text: &str, base: &ModelConfig) -> Self {
        let modified = weights.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        Self {
            weights_len: weights.len(),
            weights_modified_ns: modified.map_or(0, |d| d.as_nanos() as u64),
            weights_identity: identity(weights),
            config_blake3: blake3::hash(config_text.as_bytes()).to_hex().to_string(),
            // Every field of the base's configuration (shapes, RoPE layout): the pairs' shapes
            // and `B`'s row order depend on them.
            base_blake3: blake3::hash(format!("{base:?}").as_bytes()).to_hex().to_string(),
        }
    }
}

#[cfg(unix)]
fn identity(metadata: &std::fs::Metadata) -> [u64; 3] {
    use std::os::unix::fs::MetadataExt;
    let changed = (metadata.ctime() as u64).wrapping_mul(1_000_000_000).wrapping_add(metadata.ctime_nsec() as u64);
    [metadata.dev(), metadata.ino(), changed]
}

#[cfg(not(unix))]
fn identity(_metadata: &std::fs::Metadata) -> [u64; 3] {
    [0; 3]
}

#[derive(Serialize, Deserialize)]
struct Header {
    layout: u32,
    lanes: usize,
    dtype: Dtype,
    source: Source,
    elements: usize,
    pairs: Vec<SavedPair>,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Dtype {
    F16,
    F32,
}

/// An element of a saved buffer: a float whose every bit pattern is a value, read and written
/// as its little-endian bytes in place (this module refuses big-endian hosts).
trait Element: Copy + Default {
    /// Whether every value of `values` is finite (a loop the compiler vectorizes: no early exit).
    fn all_finite(values: &[Self]) -> bool;
    fn as_bytes(values: &[Self]) -> &[u8];
    fn as_bytes_mut(values: &mut [Self]) -> &mut [u8];
}

macro_rules! element {
    ($type:ty, $bits:ty, $exponent:expr) => {
        impl Element for $type {
            fn all_finite(values: &[Self]) -> bool {
                values.iter().fold(true, |ok, v| ok & (v.to_bits() & $exponent != $exponent))
            }
            #[allow(unsafe_code)]
            fn as_bytes(values: &[Self]) -> &[u8] {
                // SAFETY: `$type` is a plain float (f32, or f16: `repr(transparent)` over u16) with
                // no padding, so its memory is `size_of_val(values)` initialized bytes; u8 has
                // alignment 1; the borrow keeps `values` alive and unchanged.
                unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
            }
            #[allow(unsafe_code)]
            fn as_bytes_mut(values: &mut [Self]) -> &mut [u8] {
                // SAFETY: as in `as_bytes`, and every bit pattern of a `$bits` is a `$type`
                // (NaNs included, which `all_finite` then refuses), so any bytes written through
                // the view leave valid values.
                unsafe {
                    std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(values))
                }
            }
        }
    };
}

element!(half::f16, u16, 0x7c00);
element!(f32, u32, 0x7f80_0000);

/// The adapter in `dir`'s saved panels, if they were made from `source` and read whole and
/// sound; `None` otherwise (why, at debug level).
pub(crate) fn load(
    dir: &Path,
    source: &Source,
    id: &str,
    config: &AdapterConfig,
    base: &ModelConfig,
) -> Option<LoraAdapter> {
    let path = dir.join(ADAPTER_PANELS);
    match read(&path, source, id, config, base) {
        Ok(adapter) => adapter,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "saved adapter panels not used");
            None
        }
    }
}

fn read(
    path: &Path,
    source: &Source,
    id: &str,
    config: &AdapterConfig,
    base: &ModelConfig,
) -> std::result::Result<Option<LoraAdapter>, String> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut head = [0u8; 12];
    file.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[..8] != MAGIC {
        return Err("not a panels file".into());
    }
    let header_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if header_len > MAX_HEADER_BYTES {
        return Err(format!("header of {header_len} bytes"));
    }
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: Header = serde_json::from_slice(&header).map_err(|e| e.to_string())?;
    if header.layout != LAYOUT || header.lanes != crate::kernels::adapter::LANES {
        return Err(format!("layout {} with {} lanes", header.layout, header.lanes));
    }
    if header.source != *source {
        return Ok(None);
    }
    let buffer = match header.dtype {
        Dtype::F16 => HostPanels::F16(read_values(&mut file, header.elements)?),
        Dtype::F32 => HostPanels::F32(read_values(&mut file, header.elements)?),
    };
    if file.read(&mut [0u8; 1]).map_err(|e| e.to_string())? != 0 {
        return Err("bytes after the values".into());
    }
    LoraAdapter::from_panels(id, config, base, buffer, &header.pairs).map(Some).map_err(|e| e.to_string())
}

/// `elements` finite values read from `file` into a buffer whose pages are present.
fn read_values<W: Element>(file: &mut File, elements: usize) -> std::result::Result<Vec<W>, String> {
    if cfg!(target_endian = "big") {
        return Err("saved panels are little-endian".into());
    }
    let bytes = elements.checked_mul(size_of::<W>()).ok_or("too many values")?;
    // Panels of the largest weights file accepted, held as f32 (rank padding included).
    if bytes as u64 > 2 * crate::adapters::MAX_ADAPTER_BYTES {
        return Err(format!("{bytes} bytes of values"));
    }
    if file.metadata().map_err(|e| e.to_string())?.len() < bytes as u64 {
        return Err("shorter than its values".into());
    }
    let mut out = crate::memory::prefaulted::<W>(elements);
    out.resize(elements, W::default());
    file.read_exact(W::as_bytes_mut(&mut out)).map_err(|e| e.to_string())?;
    if !W::all_finite(&out) {
        return Err("a value that is not finite".into());
    }
    Ok(out)
}

/// Saves `adapter`'s panels in `dir`, made from `source`, on a thread of its own (the load
/// that built them does not wait for the disk); on failure says why at debug level and leaves
/// no file.
pub(crate) fn save(dir: &Path, source: &Source, adapter: &LoraAdapter) {
    let Some((buffer, pairs)) = adapter.panels() else { return };
    let (dir, source) = (dir.to_path_buf(), source.clone());
    let spawned = std::thread::Builder::new().name("save-panels".into()).spawn(move || {
        let path = dir.join(ADAPTER_PANELS);
        // Unique per process and thread: two loads of one adapter may save at once.
        let staging: PathBuf =
            dir.join(format!(".{ADAPTER_PANELS}.{}.{:?}.partial", std::process::id(), std::thread::current().id()));
        let written = write(&staging, &source, &buffer, &pairs).and_then(|()| std::fs::rename(&staging, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&staging);
            tracing::debug!(path = %path.display(), %error, "adapter panels not saved");
        }
    });
    if let Err(error) = spawned {
        tracing::debug!(%error, "adapter panels not saved: no thread");
    }
}

fn write(path: &Path, source: &Source, buffer: &HostPanels, pairs: &[SavedPair]) -> std::io::Result<()> {
    let (dtype, elements) = match buffer {
        HostPanels::F16(values) => (Dtype::F16, values.len()),
        HostPanels::F32(values) => (Dtype::F32, values.len()),
    };
    let header = Header {
        layout: LAYOUT,
        lanes: crate::kernels::adapter::LANES,
        dtype,
        source: source.clone(),
        elements,
        pairs: pairs.to_vec(),
    };
    let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, File::create(path)?);
    out.write_all(MAGIC)?;
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(&header)?;
    match buffer {
        HostPanels::F16(values) => write_values(&mut out, values)?,
        HostPanels::F32(values) => write_values(&mut out, values)?,
    }
    // On the disk before the rename makes it visible: a crash leaves the old state or the whole
    // file, never a named file whose values the disk has not got yet.
    out.into_inner().map_err(|e| e.into_error())?.sync_data()
}

fn write_values<W: Element>(out: &mut impl Write, values: &[W]) -> std::io::Result<()> {
    if cfg!(target_endian = "big") {
        return Err(std::io::Error::other("saved panels are little-endian"));
    }
    out.write_all(W::as_bytes(values))
}
