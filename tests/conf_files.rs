//! Every file shipped in conf/ parses, validates and builds.

use std::path::Path;

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("conf/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).expect("read");
            if let Err(errors) = zkgate::config::load_str(&text, None) {
                panic!("{}:\n{errors}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "only {checked} config files found in {}",
        dir.display()
    );
}

#[test]
fn the_embedded_default_is_the_quickstart_file() {
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/zkgate.yaml"))
            .unwrap();
    assert_eq!(zkgate::config::EMBEDDED_DEFAULT, file);
}
