//! Plain-text tables like `kubectl get`: upper-case headers, columns padded to the widest
//! cell and separated by three spaces, no trailing blanks.

pub fn render(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0)
                - cell
                    .chars()
                    .count()
                    .min(widths.get(i).copied().unwrap_or(0));
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let out = super::render(
            &["NAME", "PORTS"],
            vec![
                vec!["default/web".into(), "80".into()],
                vec!["a".into(), "8080".into()],
            ],
        );
        assert_eq!(
            out,
            "NAME          PORTS\ndefault/web   80\na             8080\n"
        );
    }
}
