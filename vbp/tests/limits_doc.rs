//! docs/VBP.md's table of limits states the numbers `vortex_vbp::validator` defines (the one
//! definition the validator and the shard use): each row is read from the document and
//! compared, so neither can change without the other.

use vortex_vbp::validator::{
    DIMENSION_MAX, EF_CONSTRUCTION_MAX, EF_MAX, FILTER_NODES_MAX, GET_IDS_MAX, K_MAX,
    LIST_VALUES_MAX, M_MAX, M_MIN, NAME_BYTES_MAX, PAYLOAD_FIELDS_MAX, STRING_BYTES_MAX,
    WRITE_BODY_BYTES_MAX, WRITE_POINTS_MAX,
};

/// The rule of the table row whose field cell is `field`.
fn rule(doc: &str, field: &str) -> String {
    let start = doc
        .find("## 6. Limits and field rules")
        .expect("docs/VBP.md has its limits section");
    doc[start..]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells.len() >= 4 && cells[1] == field).then(|| cells[2].to_owned())
        })
        .next()
        .unwrap_or_else(|| panic!("no row for {field} in docs/VBP.md's limits"))
}

/// The numbers in `text` (thousands separated by commas), in order.
fn numbers(text: &str) -> Vec<u64> {
    let mut found = Vec::new();
    let mut digits = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            // A comma between digits groups thousands.
            if chars.peek() == Some(&',') {
                let mut ahead = chars.clone();
                ahead.next();
                if ahead.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                }
            }
        } else if !digits.is_empty() {
            found.push(digits.parse().unwrap());
            digits.clear();
        }
    }
    if !digits.is_empty() {
        found.push(digits.parse().unwrap());
    }
    found
}

#[test]
fn the_documented_limits_are_the_validators() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/VBP.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let rows: [(&str, Vec<u64>); 12] = [
        (
            "`upsert.ids`, `delete.ids`",
            vec![1, WRITE_POINTS_MAX as u64],
        ),
        ("upsert body", vec![WRITE_BODY_BYTES_MAX as u64]),
        ("`get.ids`", vec![1, GET_IDS_MAX as u64]),
        ("collection name", vec![1, NAME_BYTES_MAX as u64]),
        ("payload key, filter field", vec![1, NAME_BYTES_MAX as u64]),
        (
            "`dimension` (spec, upsert), search vector length",
            vec![1, u64::from(DIMENSION_MAX)],
        ),
        ("`m`", vec![u64::from(M_MIN), u64::from(M_MAX)]),
        ("`ef_construction`", vec![1, u64::from(EF_CONSTRUCTION_MAX)]),
        ("`search.k`", vec![1, u64::from(K_MAX)]),
        ("`search.ef`", vec![0, u64::from(EF_MAX)]),
        (
            "payload",
            vec![
                PAYLOAD_FIELDS_MAX as u64,
                LIST_VALUES_MAX as u64,
                STRING_BYTES_MAX as u64,
            ],
        ),
        (
            "filter",
            vec![1, FILTER_NODES_MAX as u64, 1, LIST_VALUES_MAX as u64],
        ),
    ];
    // The row's first numbers are the limits (a name's row goes on with `0-9`).
    for (field, expected) in rows {
        let found = numbers(&rule(&doc, field));
        assert_eq!(
            found.get(..expected.len()),
            Some(expected.as_slice()),
            "docs/VBP.md's row for {field}: {found:?}"
        );
    }
}

#[test]
fn numbers_are_read_with_their_thousands() {
    assert_eq!(numbers("1 to 16,384, or 2, 3"), vec![1, 16384, 2, 3]);
}
