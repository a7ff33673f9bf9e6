//! A linear pre-scan of one YAML document that measures its nesting depth before the YAML
//! parser sees it.
//!
//! Why: libyaml (under serde_yaml) re-checks every open flow level (`[`, `{`) on every token,
//! so a document of n nested brackets costs O(n²): 120 KB of `[` froze the agent for seconds.
//! serde_yaml's own recursion limit applies only after libyaml has tokenized the document.
//!
//! The scan follows libyaml's tokenizer rules for the parts that decide nesting: block
//! indentation levels (`- `, `? `, `key:` at increasing columns), flow brackets, and what is
//! *not* structure (quoted, plain and block scalars, comments), so a bracket inside a string is
//! not counted and a bracket libyaml would open is never missed. Where libyaml stops with a
//! syntax error, the scan stops too: nothing after that point is ever parsed. Any doubt is
//! resolved towards counting, so the scan can only over-estimate the depth libyaml reaches.

/// The document opens more than the allowed number of levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooDeep {
    /// 1-based line (within the scanned text) where the limit was crossed.
    pub line: usize,
}

/// Why a document is refused before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    TooDeep(TooDeep),
    /// More nodes than allowed: the parser's memory grows with them (about 200 bytes each).
    TooManyNodes,
}

/// Checks that `doc` never nests more than `max_depth` levels (block indentation levels plus
/// open flow collections) and has at most `max_nodes` nodes (scalars, collections, aliases and
/// empty entries; what aliases repeat is bounded later, when values are built). Linear in the
/// length of `doc`; stops at the first limit crossed.
pub(crate) fn prescan(doc: &str, max_depth: usize, max_nodes: usize) -> Result<(), Refused> {
    let mut scanner = Scanner::new(doc.as_bytes(), max_depth);
    scanner.max_nodes = max_nodes;
    match scanner.run() {
        Ok(()) | Err(Halt::SyntaxError) => Ok(()),
        Err(Halt::TooDeep) => Err(Refused::TooDeep(TooDeep { line: scanner.line })),
        Err(Halt::TooManyNodes) => Err(Refused::TooManyNodes),
    }
}

/// [`prescan`] for depth only.
#[cfg(test)]
pub(crate) fn check_depth(doc: &str, limit: usize) -> Result<(), TooDeep> {
    match prescan(doc, limit, usize::MAX) {
        Ok(()) | Err(Refused::TooManyNodes) => Ok(()),
        Err(Refused::TooDeep(too_deep)) => Err(too_deep),
    }
}

enum Halt {
    TooDeep,
    TooManyNodes,
    /// libyaml stops here with an error, so nothing after this point reaches the parser.
    SyntaxError,
}

type Step = Result<(), Halt>;

struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
    /// 1-based line and 0-based column in characters, as libyaml counts them.
    line: usize,
    column: usize,
    limit: usize,
    /// Columns of the open block collections (libyaml's `indents` stack).
    indents: Vec<usize>,
    flow_level: usize,
    simple_key_allowed: bool,
    /// Where a possible block mapping key starts: (line, column).
    simple_key: Option<(usize, usize)>,
    nodes: usize,
    max_nodes: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8], limit: usize) -> Self {
        Self {
            text,
            pos: 0,
            line: 1,
            column: 0,
            limit,
            indents: Vec::new(),
            flow_level: 0,
            simple_key_allowed: true,
            simple_key: None,
            nodes: 0,
            max_nodes: usize::MAX,
        }
    }

    fn at(&self, offset: usize) -> u8 {
        self.text.get(self.pos + offset).copied().unwrap_or(0)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// Length of the line break at `pos + offset`, as libyaml recognizes them (CR, LF, CRLF,
    /// NEL, LS, PS); 0 when there is none.
    fn break_len(&self, offset: usize) -> usize {
        match (self.at(offset), self.at(offset + 1), self.at(offset + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_blank(&self, offset: usize) -> bool {
        matches!(self.at(offset), b' ' | b'\t')
    }

    /// Blank, line break or end of text (libyaml's `IS_BLANKZ`).
    fn is_blankz(&self, offset: usize) -> bool {
        self.is_blank(offset) || self.break_len(offset) > 0 || self.pos + offset >= self.text.len()
    }

    /// Moves past one byte, counting columns in characters (UTF-8 continuation bytes are not).
    fn bump(&mut self) {
        if self.text[self.pos] & 0xC0 != 0x80 {
            self.column += 1;
        }
        self.pos += 1;
    }

    fn skip_break(&mut self) {
        self.pos += self.break_len(0);
        self.line += 1;
        self.column = 0;
    }

    /// Control characters make libyaml's reader fail at that point.
    fn at_forbidden_byte(&self) -> bool {
        let b = self.at(0);
        !self.at_end() && ((b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7F)
    }

    fn at_document_marker(&self) -> bool {
        self.column == 0
            && (self.text[self.pos..].starts_with(b"---")
                || self.text[self.pos..].starts_with(b"..."))
            && self.is_blankz(3)
    }

    fn run(&mut self) -> Step {
        loop {
            self.skip_to_next_token();
            if self.at_end() {
                return Ok(());
            }
            if self.at_forbidden_byte() {
                return Err(Halt::SyntaxError);
            }
            self.unroll_indent(self.column);
            // Every token but `,` and closing brackets starts a node (or an empty one).
            if !matches!(self.at(0), b',' | b']' | b'}') {
                self.nodes += 1;
                if self.nodes > self.max_nodes {
                    return Err(Halt::TooManyNodes);
                }
            }
            self.next_token()?;
        }
    }

    /// libyaml's `yaml_parser_scan_to_next_token`: spaces, comments, line breaks.
    fn skip_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.text[self.pos..].starts_with("\u{FEFF}".as_bytes()) {
                self.pos += 3;
                self.column += 1;
            }
            while self.at(0) == b' '
                || ((self.flow_level > 0 || !self.simple_key_allowed) && self.at(0) == b'\t')
            {
                self.bump();
            }
            if self.at(0) == b'#' {
                while !self.at_end() && self.break_len(0) == 0 {
                    self.bump();
                }
            }
            if self.break_len(0) == 0 {
                return;
            }
            self.skip_break();
            if self.flow_level == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    /// libyaml's `yaml_parser_fetch_next_token` dispatch, keeping only what affects nesting.
    fn next_token(&mut self) -> Step {
        if self.column == 0 && self.at(0) == b'%' {
            return self.skip_line(); // a directive
        }
        if self.at_document_marker() {
            self.unroll_indent_all();
            self.simple_key = None;
            self.simple_key_allowed = false;
            self.pos += 3;
            self.column += 3;
            return Ok(());
        }
        let flow = self.flow_level > 0;
        match self.at(0) {
            b'[' | b'{' => self.flow_start(),
            b']' | b'}' => {
                self.flow_level = self.flow_level.saturating_sub(1);
                self.simple_key_allowed = false;
                self.bump();
                Ok(())
            }
            b',' => {
                self.simple_key_allowed = true;
                self.bump();
                Ok(())
            }
            b'-' if self.is_blankz(1) => self.block_indicator(true),
            b'?' if flow || self.is_blankz(1) => self.block_indicator(!flow),
            b':' if flow || self.is_blankz(1) => self.value_indicator(),
            b'*' | b'&' => {
                self.save_simple_key();
                self.bump();
                while self.at(0).is_ascii_alphanumeric() || matches!(self.at(0), b'_' | b'-') {
                    self.bump();
                }
                self.simple_key_allowed = false;
                Ok(())
            }
            b'!' => {
                self.save_simple_key();
                while !(self.is_blankz(0) || (flow && self.at(0) == b',')) {
                    self.bump();
                }
                self.simple_key_allowed = false;
                Ok(())
            }
            b'|' | b'>' if !flow => self.block_scalar(),
            quote @ (b'\'' | b'"') => self.quoted_scalar(quote),
            _ if self.plain_scalar_can_start() => self.plain_scalar(),
            _ => Err(Halt::SyntaxError), // "found character that cannot start any token"
        }
    }

    fn skip_line(&mut self) -> Step {
        while !self.at_end() && self.break_len(0) == 0 {
            self.bump();
        }
        Ok(())
    }

    fn depth(&self) -> usize {
        self.indents.len() + self.flow_level
    }

    fn check_depth(&self) -> Step {
        if self.depth() > self.limit {
            Err(Halt::TooDeep)
        } else {
            Ok(())
        }
    }

    /// Opens a block collection at `column` if it is deeper than the current one.
    fn roll_indent(&mut self, column: usize) -> Step {
        if self.flow_level > 0 || self.indents.last().is_some_and(|&top| top >= column) {
            return Ok(());
        }
        self.indents.push(column);
        self.check_depth()
    }

    fn unroll_indent(&mut self, column: usize) {
        if self.flow_level > 0 {
            return;
        }
        while self.indents.last().is_some_and(|&top| top > column) {
            self.indents.pop();
        }
    }

    fn unroll_indent_all(&mut self) {
        if self.flow_level == 0 {
            self.indents.clear();
        }
    }

    /// Only the block level's simple key matters: keys inside flow collections never open an
    /// indentation level.
    fn save_simple_key(&mut self) {
        if self.simple_key_allowed && self.flow_level == 0 {
            self.simple_key = Some((self.line, self.column));
        }
    }

    fn flow_start(&mut self) -> Step {
        self.save_simple_key();
        self.flow_level += 1;
        self.simple_key_allowed = true;
        self.bump();
        self.check_depth()
    }

    /// `- ` (block sequence entry) and `? ` (explicit key). `key_allowed_after` is libyaml's
    /// `simple_key_allowed` once the indicator is read.
    fn block_indicator(&mut self, key_allowed_after: bool) -> Step {
        if self.flow_level == 0 {
            if !self.simple_key_allowed {
                return Err(Halt::SyntaxError);
            }
            self.roll_indent(self.column)?;
        }
        self.simple_key = None;
        self.simple_key_allowed = key_allowed_after;
        self.bump();
        Ok(())
    }

    /// `:`: a block mapping opens at the column of its key (or of the `:` without one).
    fn value_indicator(&mut self) -> Step {
        if self.flow_level == 0 {
            match self.simple_key.take() {
                Some((line, column)) if line == self.line => {
                    self.roll_indent(column)?;
                    self.simple_key_allowed = false;
                }
                _ if !self.simple_key_allowed => return Err(Halt::SyntaxError),
                _ => {
                    self.roll_indent(self.column)?;
                    self.simple_key_allowed = true;
                }
            }
        }
        self.bump();
        Ok(())
    }

    /// libyaml's test for the first character of a plain scalar.
    fn plain_scalar_can_start(&self) -> bool {
        let c = self.at(0);
        let indicator = self.is_blankz(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c);
        !indicator
            || (c == b'-' && !self.is_blank(1))
            || (self.flow_level == 0 && matches!(c, b'?' | b':') && !self.is_blankz(1))
    }

    fn quoted_scalar(&mut self, quote: u8) -> Step {
        self.save_simple_key();
        self.simple_key_allowed = false;
        self.bump();
        loop {
            if self.at_end() || self.at_document_marker() || self.at_forbidden_byte() {
                return Err(Halt::SyntaxError);
            }
            let breaks = self.break_len(0);
            match self.at(0) {
                _ if breaks > 0 => self.skip_break(),
                b'\'' if quote == b'\'' && self.at(1) == b'\'' => {
                    self.bump();
                    self.bump();
                }
                b'\\' if quote == b'"' => {
                    self.bump();
                    if self.break_len(0) > 0 {
                        self.skip_break();
                    } else if !self.at_end() {
                        self.bump();
                    }
                }
                c if c == quote => {
                    self.bump();
                    return Ok(());
                }
                _ => self.bump(),
            }
        }
    }

    /// libyaml's `yaml_parser_scan_plain_scalar`: where it ends decides what is structure.
    fn plain_scalar(&mut self) -> Step {
        self.save_simple_key();
        self.simple_key_allowed = false;
        let indent = self.indents.last().map_or(0, |&top| top + 1);
        let flow = self.flow_level > 0;
        loop {
            if self.at_document_marker() || self.at(0) == b'#' {
                return Ok(());
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                // Most of a manifest: characters that never end a plain scalar (one byte,
                // one column each).
                if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'/' | b'_') {
                    self.pos += 1;
                    self.column += 1;
                    continue;
                }
                if flow && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    return Err(Halt::SyntaxError);
                }
                if (c == b':' && self.is_blankz(1)) || (flow && b",[]{}".contains(&c)) {
                    return Ok(());
                }
                if self.at_forbidden_byte() {
                    return Err(Halt::SyntaxError);
                }
                self.bump();
            }
            if !(self.is_blank(0) || self.break_len(0) > 0) {
                return Ok(()); // end of text
            }
            while self.is_blank(0) || self.break_len(0) > 0 {
                if self.break_len(0) > 0 {
                    self.skip_break();
                    self.simple_key_allowed = true;
                } else {
                    self.bump();
                }
            }
            if !flow && self.column < indent {
                return Ok(());
            }
        }
    }

    /// `|` and `>` scalars: every line indented deeper than the scalar's indentation is text.
    fn block_scalar(&mut self) -> Step {
        self.simple_key = None;
        self.simple_key_allowed = true;
        self.bump();
        let mut increment = 0;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.bump(),
                b'0' => return Err(Halt::SyntaxError),
                c @ b'1'..=b'9' => {
                    increment = usize::from(c - b'0');
                    self.bump();
                }
                _ => break,
            }
        }
        while self.is_blank(0) {
            self.bump();
        }
        if self.at(0) == b'#' {
            self.skip_line()?;
        }
        if self.at_end() {
            return Ok(());
        }
        if self.break_len(0) == 0 {
            return Err(Halt::SyntaxError);
        }
        self.skip_break();
        let parent = self.indents.last().copied();
        let mut indent = match (increment, parent) {
            (0, _) => 0,
            (n, Some(top)) => top + n,
            (n, None) => n,
        };
        self.block_scalar_breaks(&mut indent, parent)?;
        while self.column == indent && !self.at_end() {
            while !self.at_end() && self.break_len(0) == 0 {
                self.bump();
            }
            if self.at_end() {
                break;
            }
            self.skip_break();
            self.block_scalar_breaks(&mut indent, parent)?;
        }
        Ok(())
    }

    /// Skips empty lines and the indentation of the next text line; settles the indentation
    /// of an auto-indented scalar on its first text line.
    fn block_scalar_breaks(&mut self, indent: &mut usize, parent: Option<usize>) -> Step {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || self.column < *indent) && self.at(0) == b' ' {
                self.bump();
            }
            max_indent = max_indent.max(self.column);
            if (*indent == 0 || self.column < *indent) && self.at(0) == b'\t' {
                return Err(Halt::SyntaxError);
            }
            if self.break_len(0) == 0 {
                break;
            }
            self.skip_break();
        }
        if *indent == 0 {
            *indent = max_indent.max(parent.map_or(0, |top| top + 1)).max(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(doc: &str, limit: usize) -> bool {
        check_depth(doc, limit).is_ok()
    }

    #[test]
    fn counts_block_levels_like_the_parser() {
        let doc = "a:\n  b:\n    c:\n      - d: 1\n";
        // mapping a, mapping b, mapping c, sequence, mapping d
        assert!(depth_ok(doc, 5));
        assert!(!depth_ok(doc, 4));
        assert!(depth_ok("- - - x\n", 3));
        assert!(!depth_ok("- - - x\n", 2));
        // A sequence at its key's column opens no indentation level.
        assert!(depth_ok("a:\n- b\n- c\n", 1));
    }

    #[test]
    fn counts_flow_levels_and_reports_the_line() {
        let doc = "a: 1\nb: [[{c: [x]}]]\n";
        assert!(depth_ok(doc, 5));
        assert_eq!(check_depth(doc, 4), Err(TooDeep { line: 2 }));
        let deep = format!("spec: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(check_depth(&deep, 64), Err(TooDeep { line: 1 }));
    }

    #[test]
    fn counts_nodes_including_empty_entries() {
        // a, :, [, 1, 2, {, b, :, c
        assert_eq!(prescan("a: [1, 2, {b: c}]\n", 64, 9), Ok(()));
        assert_eq!(
            prescan("a: [1, 2, {b: c}]\n", 64, 8),
            Err(Refused::TooManyNodes)
        );
        // `-` entries with nothing after them are null nodes.
        let nulls = "-\n".repeat(100);
        assert_eq!(prescan(&nulls, 64, 99), Err(Refused::TooManyNodes));
    }

    #[test]
    fn brackets_in_scalars_and_comments_are_not_structure() {
        let doc = concat!(
            "a: \"[[[[[[[[\"\n",
            "b: '{{{{{{{{{{ it''s'\n",
            "c: x[[[[[[[[[[\n",
            "d: [\"]]]]]]]]]\", '[[[[[[[[[[[']\n",
            "# [[[[[[[[[[[[\n",
            "e: |\n  [[[[[[[[[[[[[[\n  {{{{{{{{{{{{{\n",
            "f: >-\n    [[[[[[[[[[[[\n\n    [[[[[[[[\n",
            "g: \"multi\n  line [[[[[[[[[[ \\\" [[[[[[[[\"\n",
        );
        assert!(depth_ok(doc, 2), "{:?}", check_depth(doc, 2));
    }

    #[test]
    fn a_quote_inside_a_plain_scalar_does_not_hide_brackets() {
        // libyaml reads `x 'y` as one plain scalar, so the brackets after it are real.
        let flow = format!("[x 'y, {}]\n", "[".repeat(10));
        assert!(!depth_ok(&flow, 5));
        let block = format!("a: it's\nb: {}\n", "[".repeat(10));
        assert!(!depth_ok(&block, 5));
    }

    #[test]
    fn a_block_scalar_ends_where_its_indentation_ends() {
        let doc = format!("a: |\n  text\nb: {}\n", "[".repeat(10));
        assert!(!depth_ok(&doc, 5));
        // Unicode line separators end lines for libyaml too.
        let doc = format!("a: x\u{2028}b: {}\n", "[".repeat(10));
        assert!(!depth_ok(&doc, 5));
    }

    #[test]
    fn scanning_stops_where_the_parser_would_fail() {
        // After the tab-indented line libyaml reports an error; nothing more is parsed.
        let doc = format!("a:\n\tb: 1\nc: {}\n", "[".repeat(100));
        assert!(depth_ok(&doc, 5));
    }

    #[test]
    fn real_manifests_stay_far_below_the_default_limit() {
        let doc = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: cafe
  annotations: {kubectl.kubernetes.io/last-applied-configuration: '{"a":{"b":{"c":[1]}}}'}
spec:
  tls:
  - hosts: [cafe.example.com]
    secretName: cafe-secret
  rules:
  - host: cafe.example.com
    http:
      paths:
      - path: /tea
        pathType: Prefix
        backend:
          service:
            name: tea
            port: {number: 80}
"#;
        // The sequences under `tls:`, `rules:` and `paths:` sit at their key's column, so
        // libyaml opens no indentation level for them.
        assert!(depth_ok(doc, 8));
        assert!(!depth_ok(doc, 7));
    }

    /// Differential check against the real parser on generated and mutated documents: the
    /// scan must never see fewer levels than libyaml (each level the scan counts covers at most
    /// two of the parser's: a mapping plus a sequence at its key's column), so whatever
    /// serde_yaml refuses as too deep (> 128 levels), the scan refuses at 64.
    #[test]
    fn never_sees_fewer_levels_than_the_yaml_parser() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let (mut parsed, mut too_deep) = (0, 0);
        for round in 0..4000 {
            let depth = if round % 10 == 0 {
                140
            } else {
                (rng.next() % 40) as usize
            };
            let mut doc = format!("root:{}", block_node(&mut rng, depth, 0));
            if round % 2 == 1 {
                mutate(&mut rng, &mut doc);
            }
            let scanned = scan_depth(&doc);
            match serde_yaml::from_str::<serde_yaml::Value>(&doc) {
                Ok(value) => {
                    parsed += 1;
                    let levels = value_depth(&value);
                    assert!(
                        levels <= 2 * scanned,
                        "parser {levels} > 2 x scan {scanned}:\n{doc}"
                    );
                }
                Err(err) if err.to_string().starts_with("recursion limit exceeded") => {
                    too_deep += 1;
                    assert!(
                        scanned > 64,
                        "scan {scanned} for a too-deep document:\n{doc}"
                    );
                }
                Err(_) => {}
            }
        }
        // The generator must produce mostly valid YAML, some of it too deep, or this proves
        // nothing.
        assert!(
            parsed > 2000 && too_deep > 100,
            "parsed {parsed}, too deep {too_deep}"
        );
    }

    fn scan_depth(doc: &str) -> usize {
        (0..)
            .find(|&limit| check_depth(doc, limit).is_ok())
            .unwrap()
    }

    fn value_depth(value: &serde_yaml::Value) -> usize {
        use serde_yaml::Value;
        match value {
            Value::Sequence(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
            Value::Mapping(map) => {
                let inner = map.iter().map(|(k, v)| value_depth(k).max(value_depth(v)));
                1 + inner.max().unwrap_or(0)
            }
            Value::Tagged(tagged) => value_depth(&tagged.value),
            _ => 0,
        }
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
            options[(self.next() % options.len() as u64) as usize]
        }
    }

    /// Scalars that look like structure to a careless scanner.
    fn scalar(rng: &mut Rng, flow: bool) -> String {
        let tricky_anywhere = [
            "x",
            "\"[[{{\\\"]]\"",
            "'it''s [[['",
            "\"multi\n  line [[[\"",
            "!tag v",
            "&anchor v",
            "'{{'",
        ];
        let tricky_in_block = ["it's", "a[b{c", "x 'y [[", "x # [[[ comment", "a -[b"];
        if !flow && rng.next().is_multiple_of(2) {
            rng.pick(&tricky_in_block).to_owned()
        } else {
            rng.pick(&tricky_anywhere).to_owned()
        }
    }

    fn flow_node(rng: &mut Rng, depth: usize) -> String {
        if depth == 0 {
            return scalar(rng, true);
        }
        match rng.next() % 4 {
            0 => format!("[{}, {}]", scalar(rng, true), flow_node(rng, depth - 1)),
            1 => format!("{{k: {}, '[q': x}}", flow_node(rng, depth - 1)),
            2 => format!(
                "[\n {},\n {}]",
                flow_node(rng, depth - 1),
                scalar(rng, true)
            ),
            _ => format!("{{\"{{k\": {}}}", flow_node(rng, depth - 1)),
        }
    }

    /// Text following `key:` at column `indent`.
    fn block_node(rng: &mut Rng, depth: usize, indent: usize) -> String {
        let pad = |n: usize| " ".repeat(n);
        if depth == 0 {
            return format!(" {}\n", scalar(rng, false));
        }
        let inner = indent + 2;
        let key = format!("k{}", rng.next() % 1_000_000_000);
        match rng.next() % 7 {
            0 | 1 => format!(
                "\n{}{key}:{}{}'[k2': {}\n",
                pad(inner),
                block_node(rng, depth - 1, inner),
                pad(inner),
                scalar(rng, false)
            ),
            2 => format!(
                "\n{}- {}\n{}- {key}:{}",
                pad(inner),
                scalar(rng, false),
                pad(inner),
                block_node(rng, depth - 1, inner + 2)
            ),
            3 => format!(
                "\n{}- {key}:{}",
                pad(indent),
                block_node(rng, depth - 1, indent + 2)
            ),
            4 => format!(" {}\n", flow_node(rng, depth)),
            5 => format!(
                " |\n{}[[[ {{{{ text\n\n{}more ]]] '\n{}{key}:{}",
                pad(inner),
                pad(inner + 1),
                pad(indent),
                block_node(rng, depth - 1, indent)
            ),
            _ => format!(
                " # [[[\n{}{key}:{}",
                pad(inner),
                block_node(rng, depth - 1, inner)
            ),
        }
    }

    /// Inserts or deletes one character that changes how text is tokenized.
    fn mutate(rng: &mut Rng, doc: &mut String) {
        let boundaries: Vec<usize> = (0..=doc.len())
            .filter(|&i| doc.is_char_boundary(i))
            .collect();
        let at = boundaries[(rng.next() % boundaries.len() as u64) as usize];
        if rng.next().is_multiple_of(3) && at < doc.len() {
            doc.remove(at);
        } else {
            let c = rng.pick(&[
                "'", "\"", "[", "{", "#", " ", "\n", "\t", ":", "-", "|", "\\",
            ]);
            doc.insert_str(at, c);
        }
    }
}
