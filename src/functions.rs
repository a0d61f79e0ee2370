//! What slotmux knows of the functions loaded through it: whether each one declared the
//! `no-writes` flag, so `FCALL` of a read-only function is not held by `CLIENT PAUSE WRITE`
//! (as Redis does not hold it).
//!
//! Owns: reading function names and flags out of a `FUNCTION LOAD` library (the
//! `redis.register_function{function_name=..., flags={...}}` table form; the positional form
//! has no flags), and forgetting them on `FUNCTION DELETE` / `FUNCTION FLUSH`.
//! Must not: be consulted per request outside a pause (only a held `FCALL` asks), or claim
//! `no-writes` for a function whose registration it cannot read: unknown means "may write".

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct Known {
    /// Function name → declared `no-writes`.
    no_writes: HashMap<String, bool>,
    /// Library name → its functions.
    libraries: HashMap<String, Vec<String>>,
}

/// Functions seen in `FUNCTION LOAD` through this proxy.
#[derive(Default)]
pub struct Functions {
    known: Mutex<Known>,
}

impl Functions {
    /// A `FUNCTION LOAD` library's code (cold path).
    pub fn load(&self, code: &[u8]) {
        let Some((library, functions)) = parse_library(code) else {
            return;
        };
        let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = k.libraries.remove(&library) {
            for f in old {
                k.no_writes.remove(&f);
            }
        }
        let names = functions.iter().map(|(n, _)| n.clone()).collect();
        for (name, no_writes) in functions {
            k.no_writes.insert(name, no_writes);
        }
        k.libraries.insert(library, names);
    }

    pub fn delete(&self, library: &[u8]) {
        let library = String::from_utf8_lossy(library);
        let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = k.libraries.remove(library.as_ref()) {
            for f in old {
                k.no_writes.remove(&f);
            }
        }
    }

    pub fn flush(&self) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Known::default();
    }

    /// Whether the function `name` declared `no-writes` (false when unknown).
    pub fn no_writes(&self, name: &[u8]) -> bool {
        let name = String::from_utf8_lossy(name);
        let k = self.known.lock().unwrap_or_else(|e| e.into_inner());
        k.no_writes.get(name.as_ref()).copied().unwrap_or(false)
    }
}

/// The library's name (from its `#!lua name=...` first line) and each registered function
/// with its `no-writes` flag.
pub fn parse_library(code: &[u8]) -> Option<(String, Vec<(String, bool)>)> {
    let text = std::str::from_utf8(code).ok()?;
    let shebang = text.lines().next()?.strip_prefix("#!")?;
    let library = shebang
        .split_whitespace()
        .find_map(|w| w.strip_prefix("name="))?
        .to_string();
    let mut functions = Vec::new();
    for seg in text.split("register_function").skip(1) {
        let seg = seg.trim_start();
        if seg.starts_with('{') {
            let Some(name) = assigned_string(seg, "function_name") else {
                continue;
            };
            let no_writes = flags_of(seg).is_some_and(|f| {
                f.split(',')
                    .any(|x| x.trim().trim_matches(['\'', '"']) == "no-writes")
            });
            functions.push((name, no_writes));
        } else if let Some(rest) = seg.strip_prefix('(') {
            if let Some(name) = string_literal(rest.trim_start()) {
                functions.push((name, false));
            }
        }
    }
    Some((library, functions))
}

/// The string literal assigned to `key` (`key = 'value'`) in `seg`.
fn assigned_string(seg: &str, key: &str) -> Option<String> {
    let at = seg.find(key)?;
    let rest = seg[at + key.len()..].trim_start().strip_prefix('=')?;
    string_literal(rest.trim_start())
}

/// The text inside `flags = { ... }` in `seg`.
fn flags_of(seg: &str) -> Option<&str> {
    let at = seg.find("flags")?;
    let rest = seg[at + 5..].trim_start().strip_prefix('=')?;
    let rest = rest.trim_start().strip_prefix('{')?;
    rest.find('}').map(|end| &rest[..end])
}

/// A Lua string literal in single or double quotes at the start of `s` (no escapes).
fn string_literal(s: &str) -> Option<String> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    body.find(quote).map(|end| body[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_from_the_table_form() {
        let code = b"#!lua name=f1
            redis.register_function{
                function_name='f1',
                callback=function() return 'hello' end,
                flags={'no-writes'}
            }
            redis.register_function('f2', function(keys, args) return redis.call('set', keys[1], 1) end)
            redis.register_function{function_name=\"f3\", callback=function() end, flags={ 'allow-stale', \"no-writes\" }}
            redis.register_function{function_name='f4', callback=function() end}";
        let (lib, fs) = parse_library(code).unwrap();
        assert_eq!(lib, "f1");
        assert_eq!(
            fs,
            vec![
                ("f1".to_string(), true),
                ("f2".to_string(), false),
                ("f3".to_string(), true),
                ("f4".to_string(), false),
            ]
        );
        let known = Functions::default();
        known.load(code);
        assert!(known.no_writes(b"f1") && known.no_writes(b"f3"));
        assert!(!known.no_writes(b"f2") && !known.no_writes(b"nope"));
        // REPLACE with a version that writes: the flag goes.
        known.load(b"#!lua name=f1\nredis.register_function('f1', function() end)");
        assert!(!known.no_writes(b"f1") && !known.no_writes(b"f3"));
        known.load(code);
        known.delete(b"f1");
        assert!(!known.no_writes(b"f1"));
        known.load(code);
        known.flush();
        assert!(!known.no_writes(b"f3"));
    }

    #[test]
    fn unreadable_code_claims_nothing() {
        assert!(parse_library(b"return 1").is_none());
        assert!(parse_library(&[0xff, 0xfe]).is_none());
        let (_, fs) = parse_library(b"#!lua name=x\nredis.register_function{callback=f}").unwrap();
        assert!(fs.is_empty());
    }
}
