//! Files a config names (templates, CA bundles, the config itself), read with a size bound.

/// A file's text, read up to `max` bytes: a larger file (or `/dev/zero`, which never ends) is
/// an error after `max + 1` bytes rather than a read that fills memory or never returns.
pub fn read_bounded(path: &std::path::Path, max: usize) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {max} bytes allowed"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}
