//! A README's shell commands run as a reader pastes them: bash in a process group of its own,
//! within a deadline, with everything it left in the background killed with the group.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What the script did: its status (`None` when it did not end within the deadline) and all
/// it printed.
pub struct Ran {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Kills the whole process group of the shell, pass or fail.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// Runs `script` with `bash -c` from the repository's root, with `env` set, for at most
/// `within`. Both pipes are read to their end only once the shell is done and its group gone
/// (what it put in the background holds them open).
pub fn run_bash(script: &str, env: &[(&str, &str)], within: Duration) -> Ran {
    let child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash");
    let mut group = Group(child);
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = group.0.try_wait().expect("the shell's status") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = group.0.stdout.take().expect("piped");
    let mut err = group.0.stderr.take().expect("piped");
    drop(group);
    let (mut stdout, mut stderr) = (String::new(), String::new());
    out.read_to_string(&mut stdout).expect("stdout");
    err.read_to_string(&mut stderr).expect("stderr");
    Ran {
        status,
        stdout,
        stderr,
    }
}
