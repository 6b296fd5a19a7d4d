//! `GET /logs`: the instances' `server.log` families, read on the supervisor's machine for
//! `storeherd logs` (which may run elsewhere, with `--admin ADDR`).
//!
//! `?instance=ID` (default: every instance, interleaved by time), `?lines=N` (the last N,
//! default 50), or `?cursor=C` for what was written since an earlier answer's `cursor`.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::response::{error_response, json_response};
use crate::control::{Handle, LogLine, LogsPage};
use crate::serverlog::{self, Cursor};

/// Most lines one request may ask for.
pub const MAX_LINES: usize = 10_000;
/// Bound on the text of one answer; a follower asks again for the rest.
const MAX_BYTES: usize = 4 << 20;

#[derive(Debug, Default, PartialEq)]
struct Query {
    instance: Option<u32>,
    lines: usize,
    cursor: Option<Vec<(u32, Cursor)>>,
}

fn parse_query(query: Option<&str>) -> Result<Query, String> {
    let mut q = Query {
        lines: 50,
        ..Query::default()
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "instance" => {
                q.instance = Some(
                    value
                        .parse()
                        .map_err(|_| format!("instance={value}: expected an instance id"))?,
                )
            }
            "lines" => match value.parse::<usize>() {
                Ok(n) if n <= MAX_LINES => q.lines = n,
                _ => return Err(format!("lines={value}: expected 0 to {MAX_LINES}")),
            },
            "cursor" => q.cursor = Some(decode_cursor(value)?),
            k => return Err(format!("unknown query parameter {k:?}")),
        }
    }
    Ok(q)
}

/// `id.inode.offset` per instance, `_`-separated (no characters a query would escape).
fn encode_cursor(cursors: &[(u32, Cursor)]) -> String {
    let parts: Vec<String> = cursors
        .iter()
        .map(|(id, c)| format!("{id}.{}.{}", c.inode, c.offset))
        .collect();
    parts.join("_")
}

fn decode_cursor(text: &str) -> Result<Vec<(u32, Cursor)>, String> {
    let bad = || format!("cursor={text}: not a cursor from an earlier answer");
    text.split('_')
        .filter(|p| !p.is_empty())
        .map(|part| {
            let mut it = part.split('.');
            let (Some(id), Some(inode), Some(offset), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(bad());
            };
            Ok((
                id.parse().map_err(|_| bad())?,
                Cursor {
                    inode: inode.parse().map_err(|_| bad())?,
                    offset: offset.parse().map_err(|_| bad())?,
                },
            ))
        })
        .collect()
}

/// Reads the logs asked for; file reads run on the blocking pool.
pub async fn answer(handle: &Handle, query: Option<&str>) -> Response<Full<Bytes>> {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &e),
    };
    let homes: Vec<(u32, PathBuf)> = handle
        .status
        .borrow()
        .instances
        .iter()
        .filter(|i| q.instance.is_none_or(|id| id == i.id))
        .map(|i| (i.id, PathBuf::from(&i.home).join(serverlog::FILE)))
        .collect();
    if let (Some(id), true) = (q.instance, homes.is_empty()) {
        return error_response(StatusCode::NOT_FOUND, &format!("no instance {id}"));
    }
    let read = tokio::task::spawn_blocking(move || read(&q, &homes)).await;
    match read {
        Ok(Ok(page)) => match serde_json::to_value(&page) {
            Ok(serde_json::Value::Object(mut doc)) => {
                doc.insert("ok".into(), true.into());
                json_response(StatusCode::OK, &serde_json::Value::Object(doc))
            }
            _ => error_response(StatusCode::INTERNAL_SERVER_ERROR, "encoding the lines"),
        },
        Ok(Err(e)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn read(q: &Query, homes: &[(u32, PathBuf)]) -> Result<LogsPage, String> {
    let share = MAX_BYTES / homes.len().max(1);
    let mut streams = Vec::with_capacity(homes.len());
    let mut cursors = Vec::with_capacity(homes.len());
    for (id, path) in homes {
        let result = match &q.cursor {
            // An instance the cursor does not know is new since: all of its log is news.
            Some(cs) => {
                let at = cs
                    .iter()
                    .find(|(c, _)| c == id)
                    .map(|(_, c)| *c)
                    .unwrap_or_default();
                serverlog::since(path, at, share)
            }
            None => serverlog::tail(path, q.lines, share),
        };
        let (lines, cursor) = result.map_err(|e| format!("reading {}: {e}", path.display()))?;
        streams.push((*id, lines));
        cursors.push((*id, cursor));
    }
    let mut merged = serverlog::interleave(streams);
    if q.cursor.is_none() {
        merged.drain(..merged.len().saturating_sub(q.lines));
    }
    Ok(LogsPage {
        lines: merged
            .into_iter()
            .map(|(instance, line)| LogLine { instance, line })
            .collect(),
        cursor: encode_cursor(&cursors),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_cursors() {
        let q = parse_query(Some("instance=2&lines=7")).unwrap();
        assert_eq!((q.instance, q.lines, q.cursor), (Some(2), 7, None));
        assert_eq!(parse_query(None).unwrap().lines, 50);
        assert!(parse_query(Some("lines=10001")).is_err());
        assert!(parse_query(Some("instance=x")).is_err());
        assert!(parse_query(Some("tail=3")).is_err());
        assert!(parse_query(Some("cursor=1.2")).is_err());
        let cs = vec![
            (
                1,
                Cursor {
                    inode: 77,
                    offset: 5,
                },
            ),
            (
                3,
                Cursor {
                    inode: 9,
                    offset: 0,
                },
            ),
        ];
        let text = encode_cursor(&cs);
        assert_eq!(decode_cursor(&text).unwrap(), cs);
        let q = parse_query(Some(&format!("cursor={text}"))).unwrap();
        assert_eq!(q.cursor, Some(cs));
    }
}
