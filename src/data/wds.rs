//! Reading WebDataset shards through the `webdataset` crate: brace patterns and one
//! shard's samples in archive order. (Writing is [`super::tar`]: the crate's writer is
//! not byte-reproducible; see DEPENDENCIES.md.)

use std::path::Path;

use webdataset::shard::{group_by_keys, TarFiles};

use super::{DataError, Result};

/// Expand `data-{000000..000099}.tar` (and `a.tar::b.tar` lists) into paths, in order.
pub fn expand(pattern: &str) -> Result<Vec<String>> {
    webdataset::core::expand_urls(pattern)
        .map_err(|e| DataError::Invalid(format!("shard pattern `{pattern}`: {e}")))
}

/// One sample of a shard: its key and its data fields (`png`, `256.png`, `cls`, ...), in
/// archive order; metadata fields (`__url__`, ...) are left out.
#[derive(Debug, Clone)]
pub struct ShardSample {
    pub key: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl ShardSample {
    pub fn get(&self, field: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, b)| b.as_slice())
    }

    /// The class index stored in `cls`, if any.
    pub fn label(&self) -> Option<i64> {
        let text = std::str::from_utf8(self.get("cls")?).ok()?;
        text.trim().parse().ok()
    }
}

/// The samples of one local shard, read with the `webdataset` crate.
pub fn read_shard(path: &Path) -> Result<impl Iterator<Item = Result<ShardSample>>> {
    let shown = path.display().to_string();
    let url = path
        .to_str()
        .ok_or_else(|| DataError::Invalid(format!("shard path `{shown}` is not UTF-8")))?;
    let files = TarFiles::open(url)
        .map_err(|e| DataError::Invalid(format!("cannot open shard `{shown}`: {e}")))?;
    Ok(group_by_keys(files).map(move |sample| {
        let sample =
            sample.map_err(|e| DataError::Invalid(format!("cannot read shard `{shown}`: {e}")))?;
        let key = sample.key().unwrap_or_default().to_string();
        let fields = sample
            .iter()
            .filter(|(name, _)| !webdataset::core::sample::is_meta(name))
            .filter_map(|(name, value)| Some((name.clone(), value.as_bytes()?.to_vec())))
            .collect();
        Ok(ShardSample { key, fields })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tar::ShardWriter;

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        for s in 0..2 {
            let mut w = ShardWriter::create(&dir.path().join(format!("d-{s:06}.tar"))).unwrap();
            for i in 0..3 {
                let key = format!("{:08}", s * 10 + i);
                w.write_sample(
                    &key,
                    &[("256.png", b"hi"), ("64.png", b"lo"), ("cls", b"4")],
                )
                .unwrap();
            }
            w.finish().unwrap();
        }
        let pattern = format!("{}/d-{{000000..000001}}.tar", dir.path().display());
        let shards = expand(&pattern).unwrap();
        assert_eq!(shards.len(), 2);
        let samples: Vec<_> = read_shard(Path::new(&shards[1]))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].key, "00000010");
        let names: Vec<_> = samples[0].fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["256.png", "64.png", "cls"]);
        assert_eq!(samples[2].label(), Some(4));
        assert_eq!(samples[1].get("64.png").unwrap(), b"lo");
    }
}
