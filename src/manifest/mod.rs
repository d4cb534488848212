//! Arrow schemas and Parquet readers/writers for data and sample manifests.
//!
//! A manifest is a table with a fixed [`Schema`]: rows go in as [`Cell`]s, are buffered
//! into Arrow record batches and written to an **uncompressed** Parquet file (our
//! `parquet` build has no codecs). This module knows nothing about images or stages:
//!
//! 1. describe the table once ([`data_schema`], [`rejects_schema`], [`pairs_schema`],
//!    [`index_schema`], or any [`Schema`] built from [`col`]),
//! 2. open a [`TableWriter`] (it writes a temporary file and renames on [`TableWriter::finish`],
//!    so a file under the final name is always complete),
//! 3. [`TableWriter::push`] rows, and
//! 4. read them back with [`read_rows`] (small tables, tests) or [`RowReader`] (streaming).
//!
//! The writer is deterministic: the same rows give the same bytes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, RecordBatch, StringArray, StringBuilder, UInt32Array, UInt32Builder, UInt64Array,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Rows buffered before a record batch is written.
const BATCH_ROWS: usize = 8192;

/// What went wrong reading or writing a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot {op} manifest `{}`", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {op} Parquet file `{}`", path.display())]
    Parquet {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("cannot build a record batch for `{}`", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("manifest `{}`: {message}", path.display())]
    Shape { path: PathBuf, message: String },
}

/// One value of a row. `Null` is allowed only in nullable columns.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Str(String),
    I64(i64),
    U32(u32),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl Cell {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Cell::I64(v) => Some(v),
            Cell::U32(v) => Some(v as i64),
            Cell::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Cell::U64(v) => Some(v),
            Cell::U32(v) => Some(v as u64),
            Cell::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Str(s.to_string())
    }
}
impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Str(s)
    }
}
impl From<Option<i64>> for Cell {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Cell::Null, Cell::I64)
    }
}
impl From<u32> for Cell {
    fn from(v: u32) -> Self {
        Cell::U32(v)
    }
}
impl From<u64> for Cell {
    fn from(v: u64) -> Self {
        Cell::U64(v)
    }
}
impl From<Option<u64>> for Cell {
    fn from(v: Option<u64>) -> Self {
        v.map_or(Cell::Null, Cell::U64)
    }
}

/// A column: `col("key", DataType::Utf8, false)`.
pub fn col(name: &str, ty: DataType, nullable: bool) -> Field {
    Field::new(name, ty, nullable)
}

/// The data manifest written by `shard`: one row per stored sample.
pub fn data_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        col("key", DataType::Utf8, false),
        col("shard", DataType::Utf8, false),
        col("label", DataType::Int64, true),
        col("source", DataType::Utf8, false),
        col("sha256", DataType::Utf8, false),
        col("width", DataType::UInt32, false),
        col("height", DataType::UInt32, false),
    ]))
}

/// Inputs that could not be read: `path` and `reason`.
pub fn rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        col("path", DataType::Utf8, false),
        col("reason", DataType::Utf8, false),
    ]))
}

/// The `downsample` manifest: one row per sample, one `sha256_R` column per resolution
/// (in the order given).
pub fn pairs_schema(resolutions: &[u32]) -> SchemaRef {
    let mut fields = vec![
        col("key", DataType::Utf8, false),
        col("shard", DataType::Utf8, false),
        col("label", DataType::Int64, true),
        col("source", DataType::Utf8, false),
    ];
    for r in resolutions {
        fields.push(col(&format!("sha256_{r}"), DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

/// What a source stage found (`index.parquet`): the sample's position is its row
/// number. `location` is a path relative to the source root, a zip member name or a
/// tar shard path; `offset`/`size` locate a member inside a tar shard.
pub fn index_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        col("location", DataType::Utf8, false),
        col("member", DataType::Utf8, true),
        col("label", DataType::Int64, true),
        col("offset", DataType::UInt64, true),
        col("size", DataType::UInt64, true),
    ]))
}

fn writer_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .build()
}

/// Writes rows to `path` through a temporary file of its own; the file appears under its name only once
/// [`finish`](TableWriter::finish) succeeded.
pub struct TableWriter {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    writer: Option<ArrowWriter<File>>,
    rows: Vec<Vec<Cell>>,
    count: u64,
}

impl TableWriter {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self, ManifestError> {
        let tmp = tmp_name(path);
        let file = File::create(&tmp).map_err(|source| ManifestError::Io {
            op: "create",
            path: tmp.clone(),
            source,
        })?;
        let writer =
            ArrowWriter::try_new(file, schema.clone(), Some(writer_props())).map_err(|source| {
                ManifestError::Parquet {
                    op: "create",
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            schema,
            writer: Some(writer),
            rows: Vec::new(),
            count: 0,
        })
    }

    /// Append one row; it must have one cell per column, of the column's type.
    pub fn push(&mut self, row: Vec<Cell>) -> Result<(), ManifestError> {
        if row.len() != self.schema.fields().len() {
            return Err(self.shape(format!(
                "a row has {} cells but the schema has {} columns",
                row.len(),
                self.schema.fields().len()
            )));
        }
        self.rows.push(row);
        self.count += 1;
        if self.rows.len() >= BATCH_ROWS {
            self.flush_rows()?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn shape(&self, message: String) -> ManifestError {
        ManifestError::Shape {
            path: self.path.clone(),
            message,
        }
    }

    fn flush_rows(&mut self) -> Result<(), ManifestError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let batch = build_batch(&self.schema, &rows).map_err(|m| self.shape(m))?;
        let batch = batch.map_err(|source| ManifestError::Arrow {
            path: self.path.clone(),
            source,
        })?;
        let writer = self.writer.as_mut().expect("writer is open until finish");
        writer
            .write(&batch)
            .map_err(|source| ManifestError::Parquet {
                op: "write",
                path: self.path.clone(),
                source,
            })
    }

    /// Write what is buffered, close the file, fsync it and rename it into place.
    pub fn finish(mut self) -> Result<PathBuf, ManifestError> {
        self.flush_rows()?;
        let writer = self.writer.take().expect("writer is open until finish");
        let file = writer
            .into_inner()
            .map_err(|source| ManifestError::Parquet {
                op: "close",
                path: self.path.clone(),
                source,
            })?;
        file.sync_all().map_err(|source| ManifestError::Io {
            op: "sync",
            path: self.tmp.clone(),
            source,
        })?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|source| ManifestError::Io {
            op: "rename into place",
            path: self.path.clone(),
            source,
        })?;
        Ok(self.path.clone())
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        // An unfinished writer leaves no file behind under either name.
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A temporary name of this writer's own (two writers of one file never share it).
fn tmp_name(path: &Path) -> PathBuf {
    crate::util::temp_path(path)
}

type BatchResult = Result<RecordBatch, arrow::error::ArrowError>;

fn build_batch(schema: &SchemaRef, rows: &[Vec<Cell>]) -> Result<BatchResult, String> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (c, field) in schema.fields().iter().enumerate() {
        let bad = |row: usize, cell: &Cell| {
            format!(
                "row {row}: column `{}` ({}{}) cannot hold {cell:?}",
                field.name(),
                field.data_type(),
                if field.is_nullable() {
                    ", nullable"
                } else {
                    ""
                }
            )
        };
        macro_rules! column {
            ($builder:ty, $variant:ident) => {{
                let mut b = <$builder>::with_capacity(rows.len());
                for (r, row) in rows.iter().enumerate() {
                    match &row[c] {
                        Cell::$variant(v) => b.append_value(v.clone()),
                        Cell::Null if field.is_nullable() => b.append_null(),
                        other => return Err(bad(r, other)),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        let array = match field.data_type() {
            DataType::Utf8 => {
                let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
                for (r, row) in rows.iter().enumerate() {
                    match &row[c] {
                        Cell::Str(v) => b.append_value(v),
                        Cell::Null if field.is_nullable() => b.append_null(),
                        other => return Err(bad(r, other)),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }
            DataType::Int64 => column!(Int64Builder, I64),
            DataType::UInt32 => column!(UInt32Builder, U32),
            DataType::UInt64 => column!(UInt64Builder, U64),
            DataType::Float64 => column!(Float64Builder, F64),
            DataType::Boolean => column!(BooleanBuilder, Bool),
            other => return Err(format!("column type {other} is not supported")),
        };
        columns.push(array);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns))
}

/// Streams the rows of a Parquet file written by [`TableWriter`].
pub struct RowReader {
    path: PathBuf,
    schema: SchemaRef,
    batches: ParquetRecordBatchReader,
    current: Option<RecordBatch>,
    row: usize,
}

impl RowReader {
    pub fn open(path: &Path) -> Result<Self, ManifestError> {
        let file = File::open(path).map_err(|source| ManifestError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
        let parquet = |source| ManifestError::Parquet {
            op: "read",
            path: path.to_path_buf(),
            source,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
        let schema = builder.schema().clone();
        let batches = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(parquet)?;
        Ok(Self {
            path: path.to_path_buf(),
            schema,
            batches,
            current: None,
            row: 0,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The column names, in order.
    pub fn columns(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }
}

impl Iterator for RowReader {
    type Item = Result<Vec<Cell>, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = &self.current {
                if self.row < batch.num_rows() {
                    let row = self.row;
                    self.row += 1;
                    let cells = (0..batch.num_columns())
                        .map(|c| cell_at(batch.column(c).as_ref(), row))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|message| ManifestError::Shape {
                            path: self.path.clone(),
                            message,
                        });
                    return Some(cells);
                }
            }
            match self.batches.next()? {
                Ok(batch) => {
                    self.current = Some(batch);
                    self.row = 0;
                }
                Err(source) => {
                    return Some(Err(ManifestError::Arrow {
                        path: self.path.clone(),
                        source,
                    }))
                }
            }
        }
    }
}

fn cell_at(array: &dyn Array, row: usize) -> Result<Cell, String> {
    if array.is_null(row) {
        return Ok(Cell::Null);
    }
    let any = array.as_any();
    macro_rules! get {
        ($ty:ty, $variant:ident) => {
            any.downcast_ref::<$ty>()
                .map(|a| Cell::$variant(a.value(row).to_owned()))
        };
    }
    let cell = match array.data_type() {
        DataType::Utf8 => get!(StringArray, Str),
        DataType::Int64 => get!(Int64Array, I64),
        DataType::UInt32 => get!(UInt32Array, U32),
        DataType::UInt64 => get!(UInt64Array, U64),
        DataType::Float64 => get!(Float64Array, F64),
        DataType::Boolean => get!(BooleanArray, Bool),
        _ => None,
    };
    cell.ok_or_else(|| format!("column type {} is not supported", array.data_type()))
}

/// The number of rows of a Parquet file (from its footer; reads no data).
pub fn row_count(path: &Path) -> Result<u64, ManifestError> {
    let file = File::open(path).map_err(|source| ManifestError::Io {
        op: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| {
        ManifestError::Parquet {
            op: "read",
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(builder.metadata().file_metadata().num_rows() as u64)
}

/// Column names and every row of a (small) table.
pub fn read_rows(path: &Path) -> Result<(Vec<String>, Vec<Vec<Cell>>), ManifestError> {
    let reader = RowReader::open(path)?;
    let columns = reader.columns();
    let rows = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((columns, rows))
}

/// Write `path` as the concatenation of `parts` (same schema), in the order given.
pub fn concat(path: &Path, schema: SchemaRef, parts: &[PathBuf]) -> Result<u64, ManifestError> {
    let mut out = TableWriter::create(path, schema)?;
    for part in parts {
        for row in RowReader::open(part)? {
            out.push(row?)?;
        }
    }
    let n = out.len();
    out.finish()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, label: Option<i64>) -> Vec<Cell> {
        vec![
            key.into(),
            "data-000000.tar".into(),
            label.into(),
            format!("dir/{key}.jpg").into(),
            "ab".repeat(32).into(),
            256u32.into(),
            256u32.into(),
        ]
    }

    #[test]
    fn round_trip_is_exact_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let path = dir.path().join(name);
            let mut w = TableWriter::create(&path, data_schema()).unwrap();
            for i in 0..20_000u32 {
                let label = (i % 3 != 0).then_some(i as i64 % 7);
                w.push(row(&format!("{i:08}"), label)).unwrap();
            }
            assert_eq!(w.len(), 20_000);
            w.finish().unwrap()
        };
        let a = write("a.parquet");
        let b = write("b.parquet");
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .all(|e| !crate::util::is_temp_name(&e.file_name().to_string_lossy())),
            "a temporary file of a.parquet is left"
        );

        let (cols, rows) = read_rows(&a).unwrap();
        assert_eq!(
            cols,
            ["key", "shard", "label", "source", "sha256", "width", "height"]
        );
        assert_eq!(rows.len(), 20_000);
        assert_eq!(rows[0], row("00000000", None));
        assert_eq!(rows[19_999], row("00019999", Some(19_999 % 7)));
    }

    #[test]
    fn wrong_cells_are_refused_with_the_column_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.parquet");
        let mut w = TableWriter::create(&path, rejects_schema()).unwrap();
        let e = w.push(vec!["x".into()]).unwrap_err();
        assert!(e.to_string().contains("2 columns"), "{e}");
        w.push(vec!["x".into(), Cell::Null]).unwrap();
        let e = w.finish().unwrap_err();
        assert!(e.to_string().contains("`reason`"), "{e}");
        assert!(!path.exists());
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .all(|e| !crate::util::is_temp_name(&e.file_name().to_string_lossy())),
            "a temporary file of r.parquet is left"
        );
    }

    #[test]
    fn concat_keeps_part_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut parts = Vec::new();
        for p in 0..3 {
            let path = dir.path().join(format!("p{p}.parquet"));
            let mut w = TableWriter::create(&path, rejects_schema()).unwrap();
            for i in 0..p {
                w.push(vec![format!("{p}/{i}").into(), "bad".into()])
                    .unwrap();
            }
            parts.push(w.finish().unwrap());
        }
        let out = dir.path().join("all.parquet");
        assert_eq!(concat(&out, rejects_schema(), &parts).unwrap(), 3);
        let (_, rows) = read_rows(&out).unwrap();
        let paths: Vec<_> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(paths, ["1/0", "2/0", "2/1"]);
    }
}
