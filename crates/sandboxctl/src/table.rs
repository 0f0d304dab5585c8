//! Aligned columns for human output: comfy-table without borders, columns
//! three spaces apart, no trailing spaces. Widths are display widths, so a
//! wide (CJK) character counts as two columns.
use comfy_table::presets::NOTHING;
use std::borrow::Cow;

/// `s` with control characters (newlines, escape sequences) escaped.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Space between two columns.
const GAP: u16 = 3;

/// Rows of text cells printed under a header, each column as wide as its widest cell.
#[derive(Debug)]
pub struct Table(comfy_table::Table);

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        let mut t = comfy_table::Table::new();
        t.load_preset(NOTHING).set_header(headers.to_vec());
        Table(t)
    }

    /// Adds a row; control characters in cells are escaped so a
    /// server-controlled string can neither break the layout nor the terminal.
    pub fn row(&mut self, cells: Vec<String>) {
        self.0
            .add_row(cells.into_iter().map(|c| clean(&c).into_owned()));
    }

    /// The table as lines ending in `\n`, without trailing spaces.
    pub fn render(&self) -> String {
        let mut t = self.0.clone();
        let last = t.column_count().saturating_sub(1);
        for (i, column) in t.column_iter_mut().enumerate() {
            column.set_padding((0, if i < last { GAP } else { 0 }));
        }
        t.lines().map(|l| l.trim_end().to_owned() + "\n").collect()
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
        t.row(vec!["  lead".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "ID       STATE          LABELS\n\
             sbx_1    ready          team=x\n\
             sbx_22   provisioning\n\
             sbx_ü    ok             a=b\n"
                .to_owned()
                + "  lead   x\n"
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
