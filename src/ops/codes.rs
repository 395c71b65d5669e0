//! `couponsd codes import|show`: a partner's codes into a pool coupon, and a coupon's
//! codes as ops see them.
//!
//! An import reads the file a line at a time ([`lines`]) and writes it [`CHUNK`] codes
//! per transaction ([`Conn::import_chunk`]): memory holds one chunk and the first
//! [`DETAIL`] problems of each kind, never the file. A code that repeats one earlier in
//! the file, or one `coupon_codes` holds under any coupon, is a duplicate and is not
//! written, so importing a file twice adds nothing. The codes an earlier chunk of the
//! same file wrote are only in the table when a later chunk meets them again; the
//! duplicates shown are told apart afterwards by reading the file once more, up to the
//! last of them.

pub mod lines;
mod report;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use clap::Subcommand;

use self::lines::Lines;
pub use self::report::{Duplicate, FirstSeen, ImportReport, InvalidLine, DETAIL};
use super::OpsError;
use crate::config::{Config, CouponConfig};
use crate::domain::codes::CodeSource;
use crate::installation::Installation;
use crate::store::codes::import::{ChunkImport, PoolStock};
use crate::store::codes::{is_duplicate, CodeCounts};
use crate::store::{self, Access, Conn, StoreError};

/// Codes per transaction: large enough that a million codes take a few hundred
/// commits, small enough that the coupon's row lock, which the grant step waits for, is
/// held for a moment.
pub const CHUNK: usize = 5_000;

/// Tries of one chunk: another importer writing one of its codes meanwhile, or a
/// deadlock with one, rolls it back, and it is checked again.
const CHUNK_ATTEMPTS: u32 = 5;

/// `couponsd codes …`
#[derive(Debug, Clone, Subcommand)]
pub enum CodesAction {
    /// Import codes into a pool coupon (`codes: {pool: true}`): one code per line, or
    /// the first column of a CSV whose first line is a header. Its stock rises by the
    /// number imported; duplicates and invalid lines are reported and skipped.
    Import {
        /// The pool coupon.
        coupon: String,
        /// The file of codes.
        file: PathBuf,
    },
    /// A coupon's available (imported, not issued) and issued codes, and for a pool
    /// coupon its remaining stock beside them.
    Show {
        /// The coupon.
        coupon: String,
    },
}

impl CodesAction {
    /// What the command may do to the database: `show` only reads.
    pub fn access(&self) -> Access {
        match self {
            CodesAction::Import { .. } => Access::ReadWrite,
            CodesAction::Show { .. } => Access::ReadOnly,
        }
    }
}

/// Runs a `codes` command and returns what to print.
pub async fn run(installation: &Installation, action: CodesAction) -> Result<String, OpsError> {
    Ok(match action {
        CodesAction::Import { coupon, file } => {
            import(installation, &coupon, &file).await?.to_string()
        }
        CodesAction::Show { coupon } => show(installation, &coupon).await?.to_string(),
    })
}

/// The coupon `id` of the config's campaigns, with its key path.
fn coupon_of<'a>(config: &'a Config, id: &str) -> Result<(String, &'a CouponConfig), OpsError> {
    config
        .campaigns
        .iter()
        .enumerate()
        .flat_map(|(i, k)| {
            k.coupons
                .iter()
                .enumerate()
                .map(move |(j, c)| (format!("campaigns[{i}].coupons[{j}]"), c))
        })
        .find(|(_, c)| c.id.as_str() == id)
        .ok_or_else(|| {
            OpsError::Refused(format!(
                "unknown coupon {id:?}: not in the config's campaigns"
            ))
        })
}

fn not_in_database(coupon: &str) -> OpsError {
    OpsError::Refused(format!(
        "coupon {coupon} is not in the database: run `couponsd migrate` with this config"
    ))
}

/// Imports the codes in `file` into the pool coupon `coupon` (see the module docs).
pub async fn import(
    installation: &Installation,
    coupon: &str,
    file: &Path,
) -> Result<ImportReport, OpsError> {
    let (key, config) = coupon_of(&installation.config, coupon)?;
    match &config.codes {
        Some(CodeSource::Pool) => {}
        Some(CodeSource::Generate(pattern)) => {
            return Err(OpsError::Refused(format!(
                "coupon {coupon} is not a pool coupon: its codes are generated \
                 ({key}.codes.generate: {:?}); only a coupon with codes: {{pool: true}} \
                 takes imports",
                pattern.as_str()
            )))
        }
        None => {
            return Err(OpsError::Refused(format!(
                "coupon {coupon} is not a pool coupon: its stock is counted ({key}.stock: {}); \
                 only a coupon with codes: {{pool: true}} takes imports",
                config.stock
            )))
        }
    }
    let cannot_read = |e: io::Error| {
        OpsError::Refused(format!(
            "codes import {coupon}: cannot read {}: {e}",
            file.display()
        ))
    };
    let mut lines = Lines::new(BufReader::new(File::open(file).map_err(cannot_read)?));
    let mut conn = installation.db.get().await?;
    let mut report = ImportReport {
        coupon: coupon.to_owned(),
        after: conn
            .pool_stock(coupon)
            .await
            .map_err(StoreError::from)?
            .ok_or_else(|| not_in_database(coupon))?,
        ..ImportReport::default()
    };
    let mut chunk = Vec::with_capacity(CHUNK);
    // The file is read on the runtime's thread: a buffered read of one chunk takes
    // far less than the transaction that writes it, and the command runs alone.
    loop {
        let end = read_chunk(&mut lines, &mut chunk, &mut report).map_err(cannot_read)?;
        write_chunk(&mut conn, coupon, &chunk, &mut report).await?;
        chunk.clear();
        if end {
            break;
        }
    }
    drop(conn);
    let again = File::open(file).map_err(cannot_read)?;
    find_first_lines(Lines::new(BufReader::new(again)), &mut report).map_err(cannot_read)?;
    Ok(report)
}

/// Reads lines into `chunk` until it holds [`CHUNK`] codes or the file ends (returns
/// true at the end); invalid lines go to the report.
fn read_chunk<R: io::BufRead>(
    lines: &mut Lines<R>,
    chunk: &mut Vec<(u64, String)>,
    report: &mut ImportReport,
) -> io::Result<bool> {
    while chunk.len() < CHUNK {
        let Some(line) = lines.next_line()? else {
            return Ok(true);
        };
        match line.code {
            Ok(code) => chunk.push((line.number, code)),
            Err(reason) => report.add_invalid(line.number, reason),
        }
    }
    Ok(false)
}

/// Writes one chunk's distinct codes and reports its duplicates in line order: those
/// repeated within the chunk with their first line, those the table held for now as
/// [`FirstSeen::Table`] ([`find_first_lines`] tells those of this file apart).
async fn write_chunk(
    conn: &mut Conn,
    coupon: &str,
    chunk: &[(u64, String)],
    report: &mut ImportReport,
) -> Result<(), OpsError> {
    if chunk.is_empty() {
        return Ok(());
    }
    let mut first: HashMap<&str, u64> = HashMap::with_capacity(chunk.len());
    let mut distinct = Vec::with_capacity(chunk.len());
    let mut duplicates = Vec::new();
    for (line, code) in chunk {
        match first.entry(code) {
            Entry::Occupied(at) => duplicates.push(Duplicate {
                line: *line,
                code: code.clone(),
                first: FirstSeen::Line(*at.get()),
            }),
            Entry::Vacant(at) => {
                at.insert(*line);
                distinct.push(code.clone());
            }
        }
    }
    let done = import_with_retries(conn, coupon, &distinct, chunk[0].0, report).await?;
    duplicates.extend(done.present.into_iter().filter_map(|code| {
        let line = *first.get(code.as_str())?;
        Some(Duplicate {
            line,
            code,
            first: FirstSeen::Table,
        })
    }));
    duplicates.sort_by_key(|d| d.line);
    report.imported += done.imported as u64;
    report.after = done.after;
    duplicates.into_iter().for_each(|d| report.add_duplicate(d));
    Ok(())
}

/// [`Conn::import_chunk`], tried again after a duplicate key or a deadlock.
async fn import_with_retries(
    conn: &mut Conn,
    coupon: &str,
    codes: &[String],
    first_line: u64,
    report: &ImportReport,
) -> Result<ChunkImport, OpsError> {
    let mut attempt = 1;
    loop {
        match conn.import_chunk(coupon, codes, store::now()).await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => return Err(not_in_database(coupon)),
            Err(e) if attempt < CHUNK_ATTEMPTS && (is_duplicate(&e) || store::is_retryable(&e)) => {
                tracing::info!(
                    coupon,
                    first_line,
                    attempt,
                    error = %e,
                    "chunk rolled back; checking it again"
                );
                attempt += 1;
            }
            Err(e) => {
                tracing::warn!(
                    coupon,
                    imported = report.imported,
                    "import stopped at the chunk from line {first_line}: the lines before it are \
                     imported; running the same import again adds only the rest"
                );
                return Err(StoreError::from(e).into());
            }
        }
    }
}

/// Reads the file again up to the last duplicate shown as [`FirstSeen::Table`], and
/// gives each the earlier line of the file where its code first is, if there is one:
/// that line's chunk wrote it.
fn find_first_lines<R: io::BufRead>(
    mut lines: Lines<R>,
    report: &mut ImportReport,
) -> io::Result<()> {
    let from_table = || {
        report
            .duplicate_lines
            .iter()
            .filter(|d| d.first == FirstSeen::Table)
    };
    let Some(last) = from_table().map(|d| d.line).max() else {
        return Ok(());
    };
    let mut first: HashMap<String, Option<u64>> =
        from_table().map(|d| (d.code.clone(), None)).collect();
    while let Some(line) = lines.next_line()? {
        if line.number >= last {
            break;
        }
        if let Ok(code) = line.code {
            if let Some(seen @ None) = first.get_mut(&code) {
                *seen = Some(line.number);
            }
        }
    }
    for d in report
        .duplicate_lines
        .iter_mut()
        .filter(|d| d.first == FirstSeen::Table)
    {
        if let Some(&Some(at)) = first.get(&d.code) {
            if at < d.line {
                d.first = FirstSeen::Line(at);
            }
        }
    }
    Ok(())
}

/// A coupon's codes (`codes show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodesShow {
    /// The coupon.
    pub coupon: String,
    /// Where its codes come from (`None`: its grants carry no code).
    pub source: Option<CodeSource>,
    /// Its available and issued codes.
    pub counts: CodeCounts,
    /// Its stock and remaining.
    pub stock: PoolStock,
}

/// Counts a coupon's codes.
pub async fn show(installation: &Installation, coupon: &str) -> Result<CodesShow, OpsError> {
    let (_, config) = coupon_of(&installation.config, coupon)?;
    let mut conn = installation.db.get().await?;
    let stock = conn
        .pool_stock(coupon)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| not_in_database(coupon))?;
    let counts = conn
        .code_counts_of(coupon)
        .await
        .map_err(StoreError::from)?;
    Ok(CodesShow {
        coupon: coupon.to_owned(),
        source: config.codes.clone(),
        counts,
        stock,
    })
}

impl fmt::Display for CodesShow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, available) = match &self.source {
            Some(CodeSource::Pool) => ("pool".to_owned(), self.counts.available.to_string()),
            Some(CodeSource::Generate(p)) => (
                format!("generated: {}", p.as_str()),
                "n/a (generated)".to_owned(),
            ),
            None => ("no codes".to_owned(), "n/a (no codes)".to_owned()),
        };
        writeln!(f, "coupon     {} ({kind})", self.coupon)?;
        writeln!(f, "available  {available}")?;
        writeln!(f, "issued     {}", self.counts.issued)?;
        if self.source == Some(CodeSource::Pool) {
            let agrees = match self.stock.remaining == self.counts.available {
                true => "agrees with the available codes".to_owned(),
                false => format!("DIFFERS from the {} available codes", self.counts.available),
            };
            writeln!(
                f,
                "remaining  {} of stock {}: {agrees}",
                self.stock.remaining, self.stock.stock
            )?;
        }
        Ok(())
    }
}
