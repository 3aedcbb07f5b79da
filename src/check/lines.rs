//! Where each node of a YAML stream is, by document and path, so that `check` can give line
//! numbers. Values are never read from here: the provider's own parser (serde_norway) reads
//! them; this only knows places.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// The places of one YAML stream's nodes.
#[derive(Debug, Default)]
pub struct Lines {
    docs: Vec<Doc>,
}

/// One document's nodes by path: `spec.parameters.objects`, `[2].fileName`, `items[0].spec`.
#[derive(Debug, Default)]
pub struct Doc {
    /// The line the document starts on (1-based).
    pub start: usize,
    nodes: HashMap<String, Node>,
}

/// Where a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// The line of its key in a mapping, else of the node itself.
    pub line: usize,
    /// The line its value starts on (a block scalar's first line of text, after the `|`).
    pub value_line: usize,
    /// A literal block scalar (`|`), whose lines are the file's lines one for one.
    pub literal: bool,
}

enum Frame {
    Map {
        path: String,
        /// The key whose value comes next, and its line; `None` while a key is expected.
        key: Option<(String, usize)>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

impl Lines {
    /// Indexes `text`; past a syntax error nothing more is known.
    pub fn of(text: &str) -> Self {
        let mut lines = Lines::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Some(Ok((event, span))) = parser.next_event() {
            let line = span.start.line();
            let (is_node, opens, literal) = match &event {
                Event::DocumentStart(_) => {
                    stack.clear();
                    lines.docs.push(Doc {
                        start: line,
                        nodes: HashMap::new(),
                    });
                    continue;
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    continue;
                }
                Event::Scalar(_, style, _, _) => (true, false, *style == ScalarStyle::Literal),
                Event::Alias(_) => (true, false, false),
                Event::MappingStart(..) | Event::SequenceStart(..) => (true, true, false),
                _ => (false, false, false),
            };
            if !is_node {
                continue;
            }
            // A key: remember it; its value is the next node.
            if let Some(Frame::Map { key, .. }) = stack.last_mut()
                && key.is_none()
            {
                let name = match &event {
                    Event::Scalar(value, ..) => value.to_string(),
                    _ => "?".to_owned(),
                };
                *key = Some((name, line));
                if opens {
                    stack.push(Frame::Seq {
                        path: "?".to_owned(),
                        next: 0,
                    });
                }
                continue;
            }
            let (path, key_line) = match stack.last_mut() {
                None => (String::new(), line),
                Some(Frame::Map { path, key }) => {
                    let (name, key_line) = key.take().unwrap_or_default();
                    let path = if path.is_empty() {
                        name
                    } else {
                        format!("{path}.{name}")
                    };
                    (path, key_line)
                }
                Some(Frame::Seq { path, next }) => {
                    *next += 1;
                    (format!("{path}[{}]", *next - 1), line)
                }
            };
            if let Some(doc) = lines.docs.last_mut() {
                doc.nodes.entry(path.clone()).or_insert(Node {
                    line: key_line,
                    value_line: line,
                    literal,
                });
            }
            match event {
                Event::MappingStart(..) => stack.push(Frame::Map { path, key: None }),
                Event::SequenceStart(..) => stack.push(Frame::Seq { path, next: 0 }),
                _ => {}
            }
        }
        lines
    }

    /// The `i`th document (0-based), as serde_norway counts them.
    pub fn doc(&self, i: usize) -> Option<&Doc> {
        self.docs.get(i)
    }
}

impl Doc {
    pub fn node(&self, path: &str) -> Option<Node> {
        self.nodes.get(path).copied()
    }
}

impl Node {
    /// The file's line of line `inner` (1-based) of this node's text, when it is a literal
    /// block whose lines are the file's.
    pub fn inner_line(&self, inner: usize) -> Option<usize> {
        self.literal.then(|| self.value_line + inner - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment
kind: Pod
---
kind: SecretProviderClass
spec:
  parameters:
    objects: |
      - secretPath: /a
        fileName: a
      - secretPath: /b
    plain: x
  list:
    - name: one
    - {name: two}
";

    #[test]
    fn nodes_are_found_by_document_and_path() {
        let lines = Lines::of(TEXT);
        assert_eq!(lines.doc(0).unwrap().node("kind").unwrap().line, 2);
        let doc = lines.doc(1).unwrap();
        assert_eq!(doc.start, 3);
        let objects = doc.node("spec.parameters.objects").unwrap();
        assert_eq!((objects.line, objects.literal), (7, true));
        assert_eq!(objects.inner_line(1), Some(8), "the block's first line");
        assert_eq!(objects.inner_line(3), Some(10));
        let plain = doc.node("spec.parameters.plain").unwrap();
        assert_eq!((plain.line, plain.inner_line(1)), (11, None));
        assert_eq!(doc.node("spec.list[1].name").unwrap().line, 14);
        assert_eq!(doc.node("spec.list[0]").unwrap().line, 13);
        assert!(lines.doc(2).is_none());
    }

    #[test]
    fn a_syntax_error_keeps_what_came_before() {
        let lines = Lines::of("a: 1\nb: [\n");
        assert_eq!(lines.doc(0).unwrap().node("a").unwrap().line, 1);
    }
}
