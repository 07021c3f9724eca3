//! `zkgate check` and `zkgate run` on hostile configs: each input that hung `check` (a YAML list
//! nested 100,000 deep, a template looping 10^4 x 10^4, a template file that never ends) or made
//! `run` panic (`threads` past what the system gives) ends with a clear error and exit status.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Generous: each case finishes in well under a second when bounded. Past it the command is
/// taken to hang, killed and reported, rather than holding the test run.
const WATCHDOG: Duration = Duration::from_secs(120);

/// Runs `cmd` to its end, or kills it at [`WATCHDOG`] and fails.
fn finish(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zkgate");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what}: still running after {WATCHDOG:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `zkgate check -c PATH`: exit status and stderr.
fn check(path: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(common::bin());
    cmd.args(["check", "-c"]).arg(path);
    let out = finish(cmd, &format!("check {}", path.display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

const ROUTE: &str = "routes: [{ name: r, match: { path_prefix: / }, respond: { status: 204 } }]\n";

fn alert_config(template: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, listen: "127.0.0.1:1" }}]
routes:
  - name: alerts
    match: {{ path_prefix: /alerts }}
    plugin:
      alert_webhook:
        destinations:
          - name: chat
            url: "https://chat.example.com/hook"
            template: {template}
"#
    )
}

#[test]
fn check_ends_with_a_clear_error_on_each_input_that_hung_it() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000;

    let deep = write(
        dir.path(),
        "deep.yaml",
        &format!("routes: {}{}\n", "[".repeat(n), "]".repeat(n)),
    );
    let (code, err) = check(&deep);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the config nests collections more than 64 deep (line 1)"),
        "{err}"
    );

    let deep_map = write(
        dir.path(),
        "deep-map.yaml",
        &format!("routes: {}1{}\n", "{a: ".repeat(n), "}".repeat(n)),
    );
    let (code, err) = check(&deep_map);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("more than 64 deep"), "{err}");

    let loops = write(
        dir.path(),
        "loops.yaml",
        &alert_config(
            r#"{ inline: "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}" }"#,
        ),
    );
    let (code, err) = check(&loops);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("routes[0].plugin.alert_webhook.destinations[0].template: ")
            && err.contains("ran more than 5000000 steps"),
        "{err}"
    );

    let zero = write(
        dir.path(),
        "zero.yaml",
        &alert_config("{ file: /dev/zero }"),
    );
    let (code, err) = check(&zero);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "routes[0].plugin.alert_webhook.destinations[0].template.file: cannot read /dev/zero: not a regular file"
        ),
        "{err}"
    );

    let big = dir.path().join("big.j2");
    std::fs::write(&big, "x".repeat(300 << 10)).unwrap();
    let big_template = write(
        dir.path(),
        "big-template.yaml",
        &alert_config(&format!("{{ file: {} }}", big.display())),
    );
    let (code, err) = check(&big_template);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("307200 bytes, more than the 262144 allowed"),
        "{err}"
    );

    // The config itself: never-ending, and too large.
    let (code, err) = check(Path::new("/dev/zero"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read /dev/zero: larger than the 1048576 bytes allowed"),
        "{err}"
    );
    let huge = write(
        dir.path(),
        "huge.yaml",
        &format!("{ROUTE}# {}\n", "x".repeat(2 << 20)),
    );
    let (code, err) = check(&huge);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("larger than the 1048576 bytes allowed"),
        "{err}"
    );
}

#[test]
fn process_settings_past_the_bounds_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "threads.yaml",
        &format!("server: {{ threads: 100000, listener_tasks_per_fd: 100000 }}\n{ROUTE}"),
    );
    let (code, err) = check(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("server.threads: must be between 1 and 1024"),
        "{err}"
    );
    assert!(
        err.contains("server.listener_tasks_per_fd: must be between 1 and 64"),
        "{err}"
    );
}

#[test]
fn a_start_up_failure_is_an_error_message_and_exit_status_1() {
    // Threads the system refuses, within the bound: as an unprivileged user (root is exempt)
    // allowed 40 processes, 64 worker threads cannot all be made. Pingora unwrapped that
    // thread's creation (exit 101). A limit on address space fails allocations too, not only
    // threads, so it would not test this alone.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = write(
        dir.path(),
        "threads.yaml",
        &format!(
            "server: {{ threads: 64 }}\nadmin: {{ listen: \"127.0.0.1:{}\" }}\nlisteners: [{{ name: web, listen: \"127.0.0.1:{}\" }}]\n{ROUTE}",
            common::free_port(),
            common::free_port()
        ),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nproc=40:40", "setpriv", "--reuid=65534", "--regid=65534"])
        .args(["--clear-groups", common::bin(), "run", "-c"])
        .arg(&path)
        .env("RUST_BACKTRACE", "0");
    let out = finish(cmd, "run with threads the system refuses");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("zkgate cannot run: ") && err.contains("Resource temporarily unavailable"),
        "{err}"
    );
    assert!(err.contains("server.threads"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
