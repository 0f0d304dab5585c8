//! A tiny aligned-column printer for human output.
use crate::render::clean;

/// Space between two columns.
const GAP: &str = "   ";

/// Rows of text cells printed under a header, each column as wide as its widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters in cells are escaped so a
    /// server-controlled string can neither break the layout nor the terminal.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| clean(&c).into_owned()).collect());
    }

    /// The table as lines ending in `\n`, without trailing spaces.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    text.push_str(GAP);
                }
                text.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "STATE", "LABELS"]);
        t.row(vec!["sbx_1".into(), "ready".into(), "team=x".into()]);
        t.row(vec!["sbx_22".into(), "provisioning".into(), String::new()]);
        t.row(vec!["sbx_ü".into(), "ok".into(), "a=b".into()]);
        assert_eq!(
            t.render(),
            "ID       STATE          LABELS\n\
             sbx_1    ready          team=x\n\
             sbx_22   provisioning\n\
             sbx_ü    ok             a=b\n"
        );
    }

    #[test]
    fn short_and_long_rows_and_control_characters() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x".into()]);
        t.row(vec!["y".into(), "two\nlines".into(), "extra".into()]);
        t.row(vec!["\u{1b}[31mred".into(), "z".into()]);
        let out = t.render();
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(!out.contains('\u{1b}'));
        assert!(out.contains("two\\nlines   extra"));
        for line in out.lines() {
            assert_eq!(line, line.trim_end());
        }
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(Table::new(&["ID", "STATE"]).render(), "ID   STATE\n");
    }
}
