//! `kappie query` answers as tables: an instant vector as one row per series (a column per
//! label, then the value), a matrix as series × time, scalars and strings as they are.
//! A query's unit is unknown here, so values are not scaled, only freed of float noise
//! ([`sample_value`]).

use crate::client::{Labels, QueryData};
use crate::table::{sample_value, Cell, Column, Table};
use crate::time::utc_parts;
use std::collections::{BTreeSet, HashMap};

/// The label names of `series`, `__name__` first, then sorted.
fn label_names<'a>(series: impl Iterator<Item = &'a Labels>) -> Vec<String> {
    let names: BTreeSet<&String> = series.flat_map(|m| m.keys()).collect();
    let mut out: Vec<String> = names.into_iter().cloned().collect();
    if let Some(i) = out.iter().position(|n| n == "__name__") {
        let n = out.remove(i);
        out.insert(0, n);
    }
    out
}

fn label_cells(names: &[String], m: &Labels) -> Vec<Cell> {
    names
        .iter()
        .map(|n| Cell::from(m.get(n).map_or("", String::as_str)))
        .collect()
}

/// The table of an answer, or `None` for an empty vector or matrix.
pub fn render(data: &QueryData) -> Option<String> {
    match data {
        QueryData::Scalar(p) => Some(format!("{}\n", sample_value(&p.1))),
        QueryData::String(p) => Some(format!("{}\n", p.1)),
        QueryData::Vector(v) if v.is_empty() => None,
        QueryData::Matrix(m) if m.is_empty() => None,
        QueryData::Vector(v) => {
            let names = label_names(v.iter().map(|s| &s.metric));
            let mut t = Table::new(
                names
                    .iter()
                    .map(|n| Column::left(n))
                    .chain([Column::right("VALUE")])
                    .collect(),
            );
            for s in v {
                let mut cells = label_cells(&names, &s.metric);
                cells.push(Cell::from(sample_value(&s.value.1)));
                t.rows.push(cells);
            }
            Some(t.render(false))
        }
        QueryData::Matrix(m) => {
            let names = label_names(m.iter().map(|s| &s.metric));
            // Timestamps as milliseconds, so equal times from different series meet.
            let ms = |t: f64| (t * 1000.0).round() as i64;
            let times: BTreeSet<i64> = m
                .iter()
                .flat_map(|s| s.values.iter().map(|p| ms(p.0)))
                .collect();
            let days: BTreeSet<String> = times
                .iter()
                .map(|&t| utc_parts(t as f64 / 1000.0).0)
                .collect();
            let header = |t: i64| {
                let (day, hms) = utc_parts(t as f64 / 1000.0);
                if days.len() > 1 {
                    format!("{day} {hms}")
                } else {
                    hms
                }
            };
            let mut t = Table::new(
                names
                    .iter()
                    .map(|n| Column::left(n))
                    .chain(times.iter().map(|&t| Column::right(&header(t))))
                    .collect(),
            );
            for s in m {
                let by_time: HashMap<i64, &str> =
                    s.values.iter().map(|p| (ms(p.0), p.1.as_str())).collect();
                let mut cells = label_cells(&names, &s.metric);
                cells.extend(times.iter().map(|t| {
                    Cell::from(by_time.get(t).map_or("-".to_owned(), |v| sample_value(v)))
                }));
                t.rows.push(cells);
            }
            Some(t.render(false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> QueryData {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_vector_has_a_column_per_label_and_keeps_the_answer_order() {
        let v = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"__name__":"up","node_name":"node-b"},"value":[1,"2"]},
                {"metric":{"node_name":"node-a","reason":"NO_SOCKET"},"value":[1,"10.5"]}]}"#,
        );
        let want = [
            "__name__  node_name  reason     VALUE",
            "up        node-b                    2",
            "          node-a     NO_SOCKET   10.5",
        ];
        assert_eq!(render(&v).unwrap(), want.join("\n") + "\n");
    }

    #[test]
    fn a_matrix_is_series_by_time_with_gaps() {
        let m = data(
            r#"{"resultType":"matrix","result":[
                {"metric":{"n":"a"},"values":[[1700000000,"1"],[1700000060,"2"]]},
                {"metric":{"n":"b"},"values":[[1700000060,"3"]]}]}"#,
        );
        assert_eq!(
            render(&m).unwrap(),
            "n  22:13:20  22:14:20\na         1         2\nb         -         3\n"
        );
    }

    #[test]
    fn scalars_strings_and_empty_answers() {
        assert_eq!(
            render(&data(r#"{"resultType":"scalar","result":[1,"42"]}"#)).unwrap(),
            "42\n"
        );
        assert_eq!(
            render(&data(r#"{"resultType":"string","result":[1,"hi"]}"#)).unwrap(),
            "hi\n"
        );
        assert_eq!(
            render(&data(r#"{"resultType":"vector","result":[]}"#)),
            None
        );
    }
}
