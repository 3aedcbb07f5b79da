//! Templates in Go `text/template` syntax (`{{ .key }}`), shared by ExternalSecret-style
//! `template.data` values ([`crate::sync`]) and templated files ([`crate::render`]).
//!
//! Why our own: the only Rust crate that speaks Go templates (`gtmpl`) has had no release since
//! 2021, and a maintained engine (`minijinja`) speaks Jinja, where `{{ .key }}` is a syntax
//! error — ESO users' templates would not work unchanged. The subset ESO templates for Secrets
//! use is small and is implemented here, parsed once when the mapping is parsed:
//!
//! - `{{ .key }}`, `{{ index . "key-with-dashes" }}`, string literals (`"..."`, `` `...` ``);
//! - pipelines `{{ .key | b64enc | quote }}` (the left value becomes the last argument, as in
//!   Go) and calls `{{ printf "%s:%s" .user .pass }}`; `{{-` and `-}}` trim spaces;
//! - functions: `b64enc`, `b64dec`, `upper`, `lower`, `trim`, `quote`, `squote`, `toJson`,
//!   `printf` (verbs `%s`, `%v`, `%%`), `index`.
//!
//! A key missing from the data is an error (ESO's `missingkey=error`). Errors never contain a
//! value: they name the template's key and the problem only.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};

use crate::secret::SecretBytes;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// Commands joined by `|`.
    Action(Vec<Command>),
}

type Command = Vec<Arg>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    /// `.key`
    Field(String),
    /// `.` — the whole data map (only `index` takes it).
    Dot,
    Str(String),
    Func(String),
}

const FUNCTIONS: &[&str] = &[
    "b64enc", "b64dec", "upper", "lower", "trim", "quote", "squote", "toJson", "printf", "index",
];

/// A value while a pipeline runs.
enum Value<'a> {
    Bytes(Vec<u8>),
    Map(&'a BTreeMap<String, SecretBytes>),
}

impl Template {
    /// Parses `text`; the error says what is wrong and where (byte offset), never the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(start) = rest.find("{{") {
            let mut literal = &rest[..start];
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(format!("unclosed {{{{ at byte {}", offset + start));
            };
            let mut inner = &after[..end];
            if let Some(trimmed) = inner.strip_prefix('-') {
                literal = literal.trim_end();
                inner = trimmed;
            }
            let trim_right = inner.ends_with('-') && inner.len() > 1;
            if trim_right {
                inner = &inner[..inner.len() - 1];
            }
            if !literal.is_empty() {
                parts.push(Part::Text(literal.to_owned()));
            }
            let action = parse_action(inner)
                .map_err(|why| format!("{why} in the action at byte {}", offset + start))?;
            parts.push(Part::Action(action));
            let consumed = start + 2 + end + 2;
            offset += consumed;
            rest = &rest[consumed..];
            if trim_right {
                let trimmed = rest.trim_start();
                offset += rest.len() - trimmed.len();
                rest = trimmed;
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Renders the template over the data; the error never contains a value.
    pub fn render(&self, data: &BTreeMap<String, SecretBytes>) -> Result<SecretBytes, String> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.extend_from_slice(text.as_bytes()),
                Part::Action(commands) => {
                    let mut piped: Option<Value> = None;
                    for command in commands {
                        piped = Some(run(command, piped, data)?);
                    }
                    match piped {
                        Some(Value::Bytes(bytes)) => out.extend_from_slice(&bytes),
                        _ => return Err("an action prints the whole data map (.)".to_owned()),
                    }
                }
            }
        }
        Ok(SecretBytes::new(out))
    }
}

/// Consumes the letters, digits and `_` that form a field or function name.
fn identifier(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> String {
    let mut name = String::new();
    while let Some(&(_, c)) = chars.peek() {
        if !(c.is_alphanumeric() || c == '_') {
            break;
        }
        name.push(c);
        chars.next();
    }
    name
}

fn parse_action(inner: &str) -> Result<Vec<Command>, String> {
    let tokens = tokenize(inner)?;
    let mut commands = vec![Vec::new()];
    for token in tokens {
        match token {
            Token::Pipe => commands.push(Vec::new()),
            Token::Arg(arg) => commands.last_mut().expect("never empty").push(arg),
        }
    }
    for (i, command) in commands.iter().enumerate() {
        match command.first() {
            None => return Err("an empty command".to_owned()),
            Some(Arg::Func(_)) => {}
            Some(_) if command.len() > 1 => {
                return Err("arguments follow a value that is not a function".to_owned());
            }
            Some(_) if i > 0 => return Err("a value after | is not a function".to_owned()),
            Some(_) => {}
        }
    }
    Ok(commands)
}

enum Token {
    Pipe,
    Arg(Arg),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '|' => {
                chars.next();
                tokens.push(Token::Pipe);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c @ ('"' | '\\')) => s.push(c),
                            _ => return Err("an unknown escape in a string".to_owned()),
                        },
                        c => s.push(c),
                    }
                }
                if !closed {
                    return Err("an unterminated string".to_owned());
                }
                tokens.push(Token::Arg(Arg::Str(s)));
            }
            '`' => {
                chars.next();
                let rest = &text[i + 1..];
                let end = rest.find('`').ok_or("an unterminated raw string")?;
                tokens.push(Token::Arg(Arg::Str(rest[..end].to_owned())));
                for _ in 0..rest[..end].chars().count() + 1 {
                    chars.next();
                }
            }
            '.' => {
                chars.next();
                let name = identifier(&mut chars);
                tokens.push(Token::Arg(if name.is_empty() {
                    Arg::Dot
                } else {
                    Arg::Field(name)
                }));
            }
            c if c.is_alphabetic() => {
                let name = identifier(&mut chars);
                if !FUNCTIONS.contains(&name.as_str()) {
                    return Err(format!(
                        "unknown function {name:?} (supported: {})",
                        FUNCTIONS.join(", ")
                    ));
                }
                tokens.push(Token::Arg(Arg::Func(name)));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(tokens)
}

fn run<'a>(
    command: &[Arg],
    piped: Option<Value<'a>>,
    data: &'a BTreeMap<String, SecretBytes>,
) -> Result<Value<'a>, String> {
    let eval = |arg: &Arg| -> Result<Value<'a>, String> {
        match arg {
            Arg::Field(name) => data
                .get(name)
                .map(|v| Value::Bytes(v.expose().to_vec()))
                .ok_or_else(|| format!(".{name} is not a key of the data")),
            Arg::Dot => Ok(Value::Map(data)),
            Arg::Str(s) => Ok(Value::Bytes(s.as_bytes().to_vec())),
            Arg::Func(f) => Err(format!("{f} is used as a value")),
        }
    };
    let Some(Arg::Func(name)) = command.first() else {
        // A single value, the start of a pipeline.
        return eval(&command[0]);
    };
    let mut args = command[1..]
        .iter()
        .map(eval)
        .collect::<Result<Vec<_>, _>>()?;
    args.extend(piped);
    let bytes = |v: Value| match v {
        Value::Bytes(b) => Ok(b),
        Value::Map(_) => Err(format!("{name} got the whole data map (.)")),
    };
    let one = |mut args: Vec<Value<'a>>| {
        if args.len() != 1 {
            return Err(format!("{name} takes 1 argument, got {}", args.len()));
        }
        bytes(args.remove(0))
    };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Ok(Value::Bytes(match name.as_str() {
        "b64enc" => STANDARD.encode(one(args)?).into_bytes(),
        "b64dec" => {
            let input = one(args)?;
            let input = text(input);
            let input = input.trim();
            STANDARD
                .decode(input)
                .or_else(|_| URL_SAFE.decode(input))
                .map_err(|_| "b64dec: the value is not base64".to_owned())?
        }
        "upper" => text(one(args)?).to_uppercase().into_bytes(),
        "lower" => text(one(args)?).to_lowercase().into_bytes(),
        "trim" => text(one(args)?).trim().as_bytes().to_vec(),
        "quote" => serde_json::to_string(&text(one(args)?))
            .unwrap_or_default()
            .into_bytes(),
        "squote" => format!("'{}'", text(one(args)?)).into_bytes(),
        "toJson" => serde_json::to_string(&text(one(args)?))
            .unwrap_or_default()
            .into_bytes(),
        "index" => {
            if args.len() != 2 {
                return Err(format!("index takes 2 arguments, got {}", args.len()));
            }
            let key = bytes(args.remove(1))?;
            let key = text(key);
            match args.remove(0) {
                Value::Map(map) => map
                    .get(&key)
                    .map(|v| v.expose().to_vec())
                    .ok_or_else(|| format!("{key:?} is not a key of the data"))?,
                Value::Bytes(_) => return Err("index takes the data map (.) first".to_owned()),
            }
        }
        "printf" => {
            if args.is_empty() {
                return Err("printf needs a format".to_owned());
            }
            let format = text(bytes(args.remove(0))?);
            let mut values = args.into_iter();
            let mut out = Vec::new();
            let mut chars = format.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    continue;
                }
                match chars.next() {
                    Some('%') => out.push(b'%'),
                    Some('s' | 'v') => {
                        let value = values.next().ok_or("printf has fewer values than verbs")?;
                        out.extend(bytes(value)?);
                    }
                    _ => return Err("printf supports only %s, %v and %%".to_owned()),
                }
            }
            out
        }
        other => return Err(format!("unknown function {other:?}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, SecretBytes> {
        [
            ("username", "app"),
            ("password", "s3cr:et"),
            ("my-key", "dashed"),
            ("b64", "aGVsbG8="),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), SecretBytes::new(v.as_bytes().to_vec())))
        .collect()
    }

    fn render(text: &str) -> Result<String, String> {
        let out = Template::parse(text)?.render(&data())?;
        Ok(String::from_utf8(out.expose().to_vec()).unwrap())
    }

    #[test]
    fn eso_syntax_renders() {
        assert_eq!(
            render("postgres://{{ .username }}:{{ .password }}@db:5432/app").unwrap(),
            "postgres://app:s3cr:et@db:5432/app"
        );
        assert_eq!(render("{{ index . \"my-key\" }}").unwrap(), "dashed");
        assert_eq!(render("{{ .username | upper }}").unwrap(), "APP");
        assert_eq!(render("{{ .b64 | b64dec }}").unwrap(), "hello");
        assert_eq!(render("{{ .username | b64enc }}").unwrap(), "YXBw");
        assert_eq!(
            render("{{ printf \"%s:%s\" .username .password | b64enc }}").unwrap(),
            STANDARD.encode("app:s3cr:et")
        );
        assert_eq!(render("{{ .password | toJson }}").unwrap(), "\"s3cr:et\"");
        assert_eq!(render("a {{- .username -}}  b").unwrap(), "aappb");
        assert_eq!(render("{{ `raw` | upper }}").unwrap(), "RAW");
        assert_eq!(render("no actions").unwrap(), "no actions");
    }

    #[test]
    fn errors_name_the_problem_not_the_value() {
        let e = render("{{ .missing }}").unwrap_err();
        assert!(e.contains(".missing is not a key"), "{e}");
        let e = Template::parse("{{ sprig .username }}").unwrap_err();
        assert!(e.contains("unknown function \"sprig\""), "{e}");
        assert!(Template::parse("{{ .username").is_err());
        assert!(Template::parse("{{ .username .password }}").is_err());
        assert!(Template::parse("{{ .username | .password }}").is_err());
        let e = render("{{ .username | b64dec }}").unwrap_err();
        assert!(!e.contains("app"), "{e}");
    }
}
