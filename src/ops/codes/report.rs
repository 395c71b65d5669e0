//! What `codes import` reports: how many codes it wrote, and the duplicates and invalid
//! lines it skipped, the first [`DETAIL`] of each shown by line.

use std::fmt;

use super::lines::Invalid;
use crate::store::codes::import::PoolStock;

/// Duplicates, and invalid lines, shown one by one; the rest are counted.
pub const DETAIL: usize = 100;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The coupon.
    pub coupon: String,
    /// Codes written (and added to the coupon's stock).
    pub imported: u64,
    /// Lines whose code was a duplicate.
    pub duplicates: u64,
    /// Lines without a valid code.
    pub invalid: u64,
    /// The first [`DETAIL`] duplicates, in line order.
    pub duplicate_lines: Vec<Duplicate>,
    /// The first [`DETAIL`] invalid lines, in line order.
    pub invalid_lines: Vec<InvalidLine>,
    /// The coupon's stock after the last chunk.
    pub after: PoolStock,
}

/// A line whose code was not written because it exists already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// 1-based, counting a CSV header.
    pub line: u64,
    /// The code.
    pub code: String,
    /// Where it was first.
    pub first: FirstSeen,
}

/// Where a duplicate code was first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstSeen {
    /// At this earlier line of the file.
    Line(u64),
    /// In `coupon_codes` before the import.
    Table,
}

/// A line without a valid code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLine {
    /// 1-based, counting a CSV header.
    pub line: u64,
    /// Why.
    pub reason: Invalid,
}

impl ImportReport {
    pub(super) fn add_duplicate(&mut self, duplicate: Duplicate) {
        self.duplicates += 1;
        if self.duplicate_lines.len() < DETAIL {
            self.duplicate_lines.push(duplicate);
        }
    }

    pub(super) fn add_invalid(&mut self, line: u64, reason: Invalid) {
        self.invalid += 1;
        if self.invalid_lines.len() < DETAIL {
            self.invalid_lines.push(InvalidLine { line, reason });
        }
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "imported {} codes into {} (stock now {}, available {})",
            self.imported, self.coupon, self.after.stock, self.after.remaining
        )?;
        writeln!(f, "duplicates: {}", self.duplicates)?;
        for d in &self.duplicate_lines {
            match d.first {
                FirstSeen::Line(n) => {
                    writeln!(f, "  line {}: {:?} (also at line {n})", d.line, d.code)?
                }
                FirstSeen::Table => writeln!(
                    f,
                    "  line {}: {:?} (already in coupon_codes)",
                    d.line, d.code
                )?,
            }
        }
        more(f, self.duplicates, self.duplicate_lines.len())?;
        writeln!(f, "invalid: {}", self.invalid)?;
        for i in &self.invalid_lines {
            writeln!(f, "  line {}: {}", i.line, i.reason)?;
        }
        more(f, self.invalid, self.invalid_lines.len())
    }
}

fn more(f: &mut fmt::Formatter<'_>, total: u64, shown: usize) -> fmt::Result {
    match total.saturating_sub(shown as u64) {
        0 => Ok(()),
        rest => writeln!(f, "  … and {rest} more"),
    }
}
