//! Running a program (here `vfpctrl.exe`) for its output, with a deadline: a program that
//! hangs must not hold the collection (and with it the shipper's shutdown) forever. Nothing
//! here is Windows-specific, so it is tested on Linux with `sh`.

use crate::source::SourceError;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Runs `program args…` and returns its standard output. A program that cannot start,
/// exits unsuccessfully or has not closed its output within `timeout` (it is then killed) is
/// an error naming the command, with what it printed.
pub fn output(program: &str, args: &[&str], timeout: Duration) -> Result<String, SourceError> {
    let call = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let fail = |msg: String| SourceError::Call {
        call: call.clone(),
        msg,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("its output was not captured".into()));
    };
    // Both pipes are drained at once, so a child filling one while we wait on the other
    // cannot block.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let read = stdout.read_to_end(&mut buf).map(|_| buf);
        let _ = tx.send(read);
    });
    let errors = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("cannot read its output: {e}")));
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("no answer within {timeout:?}; killed it")));
        }
    };
    let status = child
        .wait()
        .map_err(|e| fail(format!("cannot wait for it: {e}")))?;
    let errors = errors.join().unwrap_or_default();
    let out = String::from_utf8_lossy(&out).into_owned();
    if !status.success() {
        let said = String::from_utf8_lossy(&errors);
        let said = if said.trim().is_empty() {
            out.trim()
        } else {
            said.trim()
        };
        return Err(fail(format!("{status}: {said}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(20);

    #[test]
    fn returns_standard_output() {
        let out = output("sh", &["-c", "printf 'a : 1\\r\\nb : 2\\r\\n'"], LONG).unwrap();
        assert_eq!(out, "a : 1\r\nb : 2\r\n");
    }

    #[test]
    fn a_failing_program_is_an_error_with_what_it_said() {
        let e = output(
            "sh",
            &["-c", "echo 'ERROR: no such port' >&2; exit 3"],
            LONG,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("sh -c "), "{e}");
        assert!(e.contains("ERROR: no such port"), "{e}");
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error() {
        let e = output("/nonexistent/vfpctrl.exe", &["/list-vmswitch-port"], LONG)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot start it"), "{e}");
    }

    #[test]
    fn a_hanging_program_is_killed_at_the_deadline() {
        let started = std::time::Instant::now();
        let e = output("sleep", &["30"], Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("killed it"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
