//! `nftproxy render --check FILE`: compare a rendered ruleset with a golden file, for CI.
//!
//! The diff is unified, with a few lines of context, and each hunk is headed by the table and the
//! chain, set or map it falls in (`@@ -12,7 +12,8 @@ table ip nftproxy › map cluster-lb`), so a
//! reviewer sees which object changed without scrolling back. The JSON rendering is compared the
//! same way, line by line, with plain hunk headers.

use similar::{ChangeTag, DiffTag, TextDiff};

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// The unified diff from `expected` (the file's content) to `actual` (what renders now), or
/// `None` when they are equal. `expected_name` and `actual_name` head the diff.
pub fn diff(
    expected: &str,
    actual: &str,
    expected_name: &str,
    actual_name: &str,
) -> Option<String> {
    if expected == actual {
        return None;
    }
    let diff = TextDiff::from_lines(expected, actual);
    let old_lines: Vec<&str> = expected.lines().collect();
    let mut out = format!("--- {expected_name}\n+++ {actual_name}\n");
    for group in diff.grouped_ops(CONTEXT) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let old = first.old_range().start..last.old_range().end;
        let new = first.new_range().start..last.new_range().end;
        out.push_str(&format!(
            "@@ -{} +{} @@{}\n",
            range(old.start, old.len()),
            range(new.start, new.len()),
            group
                .iter()
                .find(|op| op.tag() != DiffTag::Equal)
                .and_then(|op| enclosing(&old_lines, op.old_range().start))
                .map(|s| format!(" {s}"))
                .unwrap_or_default()
        ));
        for op in &group {
            for change in diff.iter_changes(op) {
                let sign = match change.tag() {
                    ChangeTag::Equal => ' ',
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                };
                out.push(sign);
                out.push_str(change.value().trim_end_matches('\n'));
                out.push('\n');
            }
        }
    }
    Some(out)
}

/// `start,len` as unified diffs write it (1-based; `start` is the line before for empty ranges).
fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        n => format!("{},{n}", start + 1),
    }
}

/// The table and the chain, set or map that line `at` of nft text falls in, read from the
/// nearest opening lines above it (`None` for JSON, which has no such lines).
fn enclosing(lines: &[&str], at: usize) -> Option<String> {
    let at = at.min(lines.len());
    let mut table = None;
    let mut inner = None;
    for line in lines[..at].iter().rev() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if inner.is_none() && indent > 0 {
            for kw in ["chain ", "set ", "map "] {
                if let Some(rest) = t.strip_prefix(kw) {
                    if rest.ends_with('{') {
                        inner = Some(format!("{kw}{}", rest.trim_end_matches('{').trim()));
                    }
                }
            }
        }
        if indent == 0 && t.starts_with("table ") && t.ends_with('{') {
            table = Some(t.trim_end_matches('{').trim().to_owned());
            break;
        }
        if indent == 0 && t == "}" && inner.is_none() {
            // Between tables.
            break;
        }
    }
    match (table, inner) {
        (Some(t), Some(i)) => Some(format!("{t} › {i}")),
        (Some(t), None) => Some(t),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "table ip t {\n\tset a {\n\t\ttype ipv4_addr\n\t\telements = { 1.1.1.1 }\n\t}\n\n\tchain c {\n\t\taccept\n\t\tdrop\n\t}\n}\n";

    #[test]
    fn equal_is_none() {
        assert_eq!(diff(OLD, OLD, "a", "b"), None);
    }

    #[test]
    fn hunks_name_the_table_and_object() {
        let new = OLD
            .replace("1.1.1.1", "2.2.2.2")
            .replace("\t\tdrop\n", "\t\treject\n");
        let d = diff(OLD, &new, "golden.nft", "rendered").unwrap();
        assert!(d.starts_with("--- golden.nft\n+++ rendered\n"), "{d}");
        assert!(
            d.contains("-\t\telements = { 1.1.1.1 }\n+\t\telements = { 2.2.2.2 }\n"),
            "{d}"
        );
        assert!(d.contains("-\t\tdrop\n+\t\treject\n"), "{d}");
        // One hunk (the changes are within 2×context of each other), headed by the first.
        assert_eq!(d.matches("@@ -").count(), 1, "{d}");
        assert!(d.contains("@@ table ip t › set a\n"), "{d}");
        let far = OLD.replace("\t\tdrop\n", "\t\treject\n");
        let d = diff(OLD, &far, "a", "b").unwrap();
        assert!(d.contains("@@ table ip t › chain c\n"), "{d}");
    }
}
